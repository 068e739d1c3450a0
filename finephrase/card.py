"""Dataset cards: ``OUTPUT/README.md`` from ``cards/dataset_card.md.j2`` with huggingface_hub's
``DatasetCard`` / ``DatasetCardData``.

Row counts and token counts per config are read from the parquet files actually written
(``data/<config>/*.parquet``; only the metadata and the small token columns are read), and every
config's ``data_files`` glob matches those files. The card never contains a token or a local
absolute path (:func:`scrub` runs on the rendered card).

When an output is pushed to a repository that already holds configs from an earlier push,
:func:`finephrase.hub.push_output` passes those configs as ``kept_configs``: they stay in the YAML
``configs`` (and in ``all``) and the body lists them as kept from an earlier push.
"""

from __future__ import annotations

import glob
import json
import os
import re

import pyarrow.parquet as pq
from huggingface_hub import DatasetCard, DatasetCardData

from finephrase.prompts import Prompt
from finephrase.resources import card_template

CARD_TEMPLATE = card_template()  # the wheel's package data, or cards/ of a source checkout
SPECIAL_CONFIGS = ("all", "mix")

# --- scrubbing -------------------------------------------------------------------------------------------------

# /an/absolute/path (not part of a URL, a relative path or a word); Windows C:\paths; file:// URLs
ABS_PATH_RE = re.compile(r"(?<![\w:/.~-])/(?:[\w.@+-]+/)+[\w.@+-]*")
WIN_PATH_RE = re.compile(r"(?<![\w])[A-Za-z]:\\(?:[^\\\s`'\"|<>]+\\)*[^\\\s`'\"|<>]*")
FILE_URL_RE = re.compile(r"file://[^\s`'\")<>|]+")
TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{8,}|\bsk-[A-Za-z0-9_-]{20,}")
SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def _basename(path: str) -> str:
    return re.split(r"[\\/]", path.rstrip("/\\"))[-1]


def scrub(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """Remove anything that looks like an HF/OpenAI token, the values of the token environment variables and
    of ``secrets``, and local absolute paths (``/home/me/data/x.jsonl`` -> ``<local>/x.jsonl``)."""
    values = [s for s in (*secrets, *(os.environ.get(v) for v in SECRET_ENV_VARS)) if s and len(s) >= 6]
    for value in sorted(set(values), key=len, reverse=True):
        text = text.replace(value, "<redacted>")
    text = TOKEN_RE.sub("<redacted>", text)
    text = FILE_URL_RE.sub(lambda m: "<local>/" + _basename(m.group(0)), text)
    text = WIN_PATH_RE.sub(lambda m: "<local>/" + _basename(m.group(0)), text)
    return ABS_PATH_RE.sub(lambda m: "<local>/" + _basename(m.group(0)), text)


# --- licenses --------------------------------------------------------------------------------------------------

# License identifiers the Hub knows (https://huggingface.co/docs/hub/repositories-licenses).
HF_LICENSES = frozenset("""
apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m
afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 cc-by-2.5
cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 cc-by-nc-nd-3.0
cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 cdla-permissive-1.0
cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl gpl gpl-2.0 gpl-3.0 lgpl
lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr mpl-2.0 odc-by odbl
openmdw-1.0 openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license
fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other
""".split())
KNOWN_LICENSE_LINKS = {
    "psf-2.0": "https://docs.python.org/3/license.html",
    "python-2.0": "https://docs.python.org/3/license.html",
}
_SPDX_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]*$")


def license_metadata(license: str | None) -> dict:
    """Card metadata for a license given as in a recipe: a Hub id (any case) -> ``{"license": id}``; anything
    else -> ``license: other`` with ``license_name`` (lowercase, dashes) and ``license_link``."""
    if not license or not str(license).strip():
        return {"license": "unknown"}
    value = str(license).strip()
    low = value.lower()
    if low in HF_LICENSES:
        return {"license": low}
    if low.startswith(("http://", "https://")):
        name = re.sub(r"[^a-z0-9.]+", "-", low.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]).strip("-")
        return {"license": "other", "license_name": name or "custom", "license_link": value}
    out = {"license": "other", "license_name": re.sub(r"[^a-z0-9.+]+", "-", low).strip("-") or "custom"}
    link = KNOWN_LICENSE_LINKS.get(low) or (f"https://spdx.org/licenses/{value}.html" if _SPDX_ID_RE.match(value) else None)
    if link:
        out["license_link"] = link
    return out


# --- statistics ------------------------------------------------------------------------------------------------


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
                         (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"),
                         (1_000_000_000_000, "100B<n<1T")):
        if n < limit:
            return label
    return "n>1T"


def config_files(output: str, config: str) -> list[str]:
    return sorted(glob.glob(os.path.join(output, "data", config, "*.parquet")))


def config_stats(output: str, config: str) -> dict:
    """Files, rows and token counts of ``data/<config>/*.parquet`` (reads metadata and the token columns only)."""
    files = config_files(output, config)
    stats = {"name": config, "files": len(files), "bytes": 0, "rows": 0, "prompt_tokens": 0, "completion_tokens": 0,
             "truncated": 0, "flagged": 0, "model_revisions": [], "generation_params": [], "kinds": {}}
    revisions, params = set(), set()
    for f in files:
        pf = pq.ParquetFile(f)
        stats["bytes"] += os.path.getsize(f)
        stats["rows"] += pf.metadata.num_rows
        names = set(pf.schema_arrow.names)
        wanted = [c for c in ("prompt_tokens", "completion_tokens", "tokens", "truncated", "checks", "model_revision",
                              "generation_params", "kind") if c in names]
        if not wanted or not pf.metadata.num_rows:
            continue
        table = pf.read(columns=wanted)
        col = {c: table.column(c).to_pylist() for c in wanted}
        if "completion_tokens" in col:
            stats["prompt_tokens"] += int(sum(x or 0 for x in col.get("prompt_tokens", [])))
            stats["completion_tokens"] += int(sum(x or 0 for x in col["completion_tokens"]))
        elif "tokens" in col:
            stats["completion_tokens"] += int(sum(x or 0 for x in col["tokens"]))
        stats["truncated"] += sum(1 for x in col.get("truncated", []) if x)
        stats["flagged"] += sum(1 for x in col.get("checks", []) if x)
        revisions.update(x for x in col.get("model_revision", []) if x)
        params.update(x for x in col.get("generation_params", []) if x)
        tokens = col.get("tokens") or col.get("completion_tokens") or []
        for i, k in enumerate(col.get("kind", [])):
            entry = stats["kinds"].setdefault(k, {"rows": 0, "tokens": 0})
            entry["rows"] += 1
            entry["tokens"] += int(tokens[i] or 0) if i < len(tokens) else 0
    stats["model_revisions"] = sorted(revisions)
    stats["generation_params"] = sorted(params)
    return stats


def _config_entry(name: str, paths) -> dict:
    return {"config_name": name, "data_files": [{"split": "train", "path": paths}]}


def config_paths(config: dict) -> list[str]:
    """The data_files patterns of a card ``configs`` entry, flattened."""
    df = config.get("data_files")
    out: list[str] = []
    items = df if isinstance(df, list) else [df]
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            p = item.get("path")
            out.extend(p if isinstance(p, list) else [p] if isinstance(p, str) else [])
    return out


_SUMMARY_DEFAULTS = {"documents_read": None, "skipped_input": {}, "filters": [], "dedup": {}, "prompts": {},
                     "steps": [], "rephrase_documents": None, "inference_time_s": None, "generator": {}}
_PROMPT_DEFAULTS = {"rephrased": 0, "failed": 0, "truncated_inputs": 0, "prompt_tokens": 0, "completion_tokens": 0,
                    "rows": 0, "dropped": {}, "flagged": {}}


def _normalize_summary(summary: dict | None) -> dict:
    s = {**_SUMMARY_DEFAULTS, **(summary or {})}
    s["prompts"] = {n: {**_PROMPT_DEFAULTS, **{k: v for k, v in p.items() if v is not None}}
                    for n, p in (s.get("prompts") or {}).items()}
    for key in ("skipped_input", "dedup", "generator"):
        s[key] = s.get(key) or {}
    s["filters"] = s.get("filters") or []
    s["steps"] = s.get("steps") or []
    return s


_STEP_STAT_KEYS = ("documents", "total", "forwarded", "dropped", "input_files", "documents_processed",
                   "malformed_lines", "empty_documents", "invalid_utf8_lines", "synthetic_documents", "real_documents")


def _step_rows(summary: dict) -> list[dict]:
    rows = []
    for step in summary.get("steps", []):
        stats = step.get("stats", {})
        shown = {k: stats[k] for k in _STEP_STAT_KEYS if k in stats}
        for k, v in stats.items():  # per-prompt counters (rephrased/faq, rows/faq, dropped/faq/...)
            if "/" in k and "XXXXX" not in k and not k.startswith(("row_", "prompt_tokens", "completion_tokens")):
                shown[k] = v
        rows.append({"stage": step.get("stage", ""), "step": step.get("step", ""),
                     "stats": ", ".join(f"{k} {_fmt_num(v)}" for k, v in shown.items()) or "—"})
    return rows


def _fmt_num(v) -> str:
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.1f}"
    try:
        return f"{int(v):,}"
    except (TypeError, ValueError):
        return str(v)


def _source_citation(source, source_name: str) -> str:
    key = re.sub(r"[^a-z0-9]+", "", source_name.lower())[:40] or "source"
    lines = [f"@misc{{{key},", f"  title={{{source_name}}},"]
    if source.dataset:
        lines.append(f"  howpublished={{\\url{{https://huggingface.co/datasets/{source.dataset}}}}},")
    if source.license:
        lines.append(f"  note={{License: {source.license}}},")
    lines[-1] = lines[-1].rstrip(",")
    return "\n".join(lines) + "\n}"


# --- the card --------------------------------------------------------------------------------------------------


def build_card(output: str, recipe, prompts: list[Prompt], summary: dict | None, repo_id: str | None = None,
               kept_configs: list[dict] | None = None) -> DatasetCard:
    """Render the dataset card for an output folder.

    Args:
        output: the output folder (``data/<config>/*.parquet`` are read for row and token counts).
        recipe: the :class:`~finephrase.recipe.Recipe` that made it.
        prompts: the recipe's resolved prompts.
        summary: the run summary (``.finephrase/run.json``'s ``summary``; ``{}`` when unknown).
        repo_id: the Hub repository (for the loading snippets); default the recipe's ``output.hub_repo``.
        kept_configs: ``configs`` entries of the remote card that this output does not produce and that stay
            published (see :func:`finephrase.hub.push_output`).
    """
    repo_id = repo_id or recipe.output.hub_repo or f"your-org/{recipe.name}"
    summary = _normalize_summary(summary)
    for p in prompts:
        if p.config_name in SPECIAL_CONFIGS:
            raise ValueError(f"prompt {p.ref!r}: the config name {p.config_name!r} is reserved (all, mix)")
    configs, yaml_configs = [], []
    for p in prompts:
        s = config_stats(output, p.config_name)
        if s["files"]:
            configs.append(s)
            yaml_configs.append(_config_entry(p.config_name, f"data/{p.config_name}/*.parquet"))
    local_names = {c["name"] for c in configs}
    mix_stats = config_stats(output, "mix")
    has_mix = bool(mix_stats["files"])
    if has_mix:
        local_names.add("mix")
    kept = [dict(c) for c in (kept_configs or [])
            if c.get("config_name") not in local_names and c.get("config_name") != "all"]
    kept_prompt = [c for c in kept if c["config_name"] != "mix"]
    kept_mix = [c for c in kept if c["config_name"] == "mix"]
    for c in kept:
        c.pop("default", None)
    yaml_configs.extend(kept_prompt)
    all_paths = [p for c in yaml_configs for p in config_paths(c)]
    if all_paths:
        yaml_configs.insert(0, {**_config_entry("all", all_paths), "default": True})
    if has_mix:
        yaml_configs.append(_config_entry("mix", "data/mix/*.parquet"))
    else:
        yaml_configs.extend(kept_mix)
    if yaml_configs and not any(c.get("default") for c in yaml_configs):
        yaml_configs[0]["default"] = True

    total = None
    if configs:
        total = {"name": "all", "files": sum(c["files"] for c in configs), "rows": sum(c["rows"] for c in configs),
                 "bytes": sum(c["bytes"] for c in configs),
                 "prompt_tokens": sum(c["prompt_tokens"] for c in configs),
                 "completion_tokens": sum(c["completion_tokens"] for c in configs)}
    rows_total = max([total["rows"] if total else 0, mix_stats["rows"]])

    source = recipe.source
    source_name = source.name or source.dataset or (os.path.basename(source.path.rstrip("/")) if source.path else "source")
    languages = (recipe.filters.language.languages if recipe.filters.language else None) or ["en"]
    sets = sorted({p.set for p in prompts})
    license_value = recipe.output.license or source.license
    card_data = DatasetCardData(
        **license_metadata(license_value),
        language=languages,
        task_categories=["text-generation"],
        size_categories=[_size_category(rows_total)],
        source_datasets=[source.dataset] if source.dataset else None,
        pretty_name=recipe.output.pretty_name or recipe.name,
        tags=list(dict.fromkeys(["synthetic", "rephrased", "finephrase", *sets])),
        configs=yaml_configs,
    )

    # generator, as it ran
    gen = summary["generator"]
    g = recipe.generator
    revisions = sorted({r for c in configs for r in c["model_revisions"]})
    revision = gen.get("model_revision") or (", ".join(revisions) if revisions else None)
    if not revision and gen.get("gguf_sha256"):
        revision = f"GGUF file sha256 `{gen['gguf_sha256']}`"
    server = gen.get("server", g.server)
    context = g.context_length or (gen.get("n_ctx") or g.n_ctx if server == "embedded" else None)
    extra = {k: gen[k] for k in ("gguf", "replicas", "threads", "api", "endpoints") if k in gen}
    if server != "embedded":
        extra.setdefault("api", g.api)
    sampling = {k: v for k, v in g.params.model_dump(exclude_none=True).items()}
    completion_tokens = sum(p.get("completion_tokens") or 0 for p in summary["prompts"].values()) \
        or sum(c["completion_tokens"] for c in configs)
    prompt_tokens = sum(p.get("prompt_tokens") or 0 for p in summary["prompts"].values()) \
        or sum(c["prompt_tokens"] for c in configs)
    inference_s = summary.get("inference_time_s") or 0
    throughput = None
    if inference_s and completion_tokens:
        throughput = {"completion": completion_tokens / inference_s,
                      "total": (prompt_tokens + completion_tokens) / inference_s}
    gpu_hours = summary.get("gpu_hours") or gen.get("gpu_hours")
    gpus = gen.get("gpus") or gen.get("gpu_count")
    if gpu_hours is None and gpus and inference_s:
        gpu_hours = gpus * inference_s / 3600
    if gpu_hours is not None:
        gpu_hours_text = f"{gpu_hours:,.2f}"
    elif server == "embedded":
        gpu_hours_text = "none (llama.cpp on CPU)"
    else:
        gpu_hours_text = "not recorded"
    generator = {
        "model": gen.get("model") or g.model or "unknown",
        "revision": revision,
        "server": server,
        "context": context,
        "concurrency": g.concurrency,
        "sampling": sampling,
        "extra": extra,
        "inference_s": inference_s,
        "throughput": throughput,
        "gpu_hours": gpu_hours_text,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
    }

    # known limitations
    by_name = {c["name"]: c for c in configs}
    limitations = []
    for name, p in summary["prompts"].items():
        if p.get("truncated_inputs"):
            limitations.append(f"`{name}`: {p['truncated_inputs']:,} source documents were longer than the context "
                               "budget and were truncated before rephrasing (`truncated` column).")
        if p.get("failed"):
            limitations.append(f"`{name}`: {p['failed']:,} generations failed after retries and are not in the data.")
        for reason, n in (p.get("dropped") or {}).items():
            limitations.append(f"`{name}`: {n:,} outputs dropped by the output rules ({reason}).")
        for reason, n in (p.get("flagged") or {}).items():
            limitations.append(f"`{name}`: {n:,} outputs break the output rules ({reason}) and are kept, flagged in "
                               "the `checks` column: filter on `checks` to drop them.")
        if not p.get("flagged") and by_name.get(name, {}).get("flagged"):
            limitations.append(f"`{name}`: {by_name[name]['flagged']:,} rows break the output rules and are kept, "
                               "flagged in the `checks` column: filter on `checks` to drop them.")
    if not summary["prompts"]:
        for c in configs:
            if c["truncated"]:
                limitations.append(f"`{c['name']}`: {c['truncated']:,} row(s) come from truncated source documents "
                                   "(`truncated` column).")
            if c["flagged"]:
                limitations.append(f"`{c['name']}`: {c['flagged']:,} row(s) are flagged in the `checks` column.")
    if (summary.get("mix") or {}).get("real_tokens_short"):
        limitations.append(f"the real data ran out: the mix is {summary['mix']['real_tokens_short']:,} real tokens "
                           "short of the target ratio.")
    limitations.append("the text is machine-generated: it can contain errors, hallucinated facts and formatting "
                       f"mistakes of **{generator['model']}**; the source text is kept in every row for comparison.")

    prompt_views = []
    for p in prompts:
        params = {**p.generation, **sampling}
        params.setdefault("max_new_tokens", 1024)
        ran = by_name.get(p.config_name, {}).get("generation_params") or []
        if len(ran) == 1:
            try:
                params = json.loads(ran[0])
            except ValueError:
                pass
        prompt_views.append({**p.to_dict(), "ref": p.ref, "config_name": p.config_name, "params": params,
                             "file": f"prompts/{p.set}/{p.name}.yaml"})

    mix = None
    if recipe.mix or has_mix:
        kinds = mix_stats["kinds"]
        m = summary.get("mix") or {}
        if not m and kinds:  # no run summary: count from the mix rows
            m = {"synthetic_documents": kinds.get("synthetic", {}).get("rows", 0),
                 "synthetic_tokens": kinds.get("synthetic", {}).get("tokens", 0),
                 "real_documents": kinds.get("real", {}).get("rows", 0),
                 "real_tokens": kinds.get("real", {}).get("tokens", 0)}
        synth_t, real_t = m.get("synthetic_tokens"), m.get("real_tokens")
        achieved = synth_t / (synth_t + real_t) if synth_t is not None and real_t is not None and (synth_t + real_t) else None
        mix = {"target": recipe.mix.synthetic if recipe.mix else None, "achieved": achieved, "stats": m,
               "rows": mix_stats["rows"], "seed": recipe.mix.seed if recipe.mix else None}

    notes = {"read": "; ".join(f"skipped {k.replace('_', ' ')}: {_fmt_num(v)}" for k, v in summary["skipped_input"].items()),
             "prompts": {}}
    for name, p in summary["prompts"].items():
        parts = [f"dropped {k}: {_fmt_num(v)}" for k, v in p["dropped"].items()] or ["none dropped"]
        parts += [f"flagged {k}: {_fmt_num(v)}" for k, v in p["flagged"].items()]
        notes["prompts"][name] = "; ".join(parts)

    description = (recipe.description or "").strip() or f"Synthetic rephrasings of `{source_name}` made with finephrase."
    card = DatasetCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        pretty_name=card_data.pretty_name,
        description=description,
        repo_id=repo_id,
        prompts=prompt_views,
        configs=([total] if total else []) + configs + ([mix_stats] if has_mix else []),
        kept_configs=[c["config_name"] for c in kept_prompt + (kept_mix if not has_mix else [])],
        summary=summary,
        step_rows=_step_rows(summary),
        notes=notes,
        source={"name": source_name, "dataset": source.dataset, "license": source.license, "kind": source.kind,
                "citation": _source_citation(source, source_name)},
        license_text=license_value or "unknown",
        generator=generator,
        mix=mix,
        output_checks=recipe.output_checks,
        limitations=limitations,
        recipe_text=(recipe.raw_text or "").strip(),
        fmt=_fmt_num,
    )
    return DatasetCard(scrub(str(card), secrets=_recipe_secrets(recipe)))


def _recipe_secrets(recipe) -> list[str]:
    env = getattr(recipe.generator, "api_key_env", None)
    return [os.environ[env]] if env and os.environ.get(env) else []


def load_summary(output: str) -> dict:
    """The run summary from ``OUTPUT/.finephrase/run.json`` (``{}`` if the run left none)."""
    run_json = os.path.join(output, ".finephrase", "run.json")
    if not os.path.exists(run_json):
        return {}
    with open(run_json) as f:
        return json.load(f).get("summary") or {}


def write_card(output: str, recipe, prompts: list[Prompt], summary: dict | None = None, repo_id: str | None = None,
               kept_configs: list[dict] | None = None) -> str:
    """Write ``OUTPUT/README.md``; ``summary`` defaults to the one in ``OUTPUT/.finephrase/run.json``."""
    if summary is None:
        summary = load_summary(output)
    card = build_card(output, recipe, prompts, summary, repo_id=repo_id, kept_configs=kept_configs)
    path = os.path.join(output, "README.md")
    card.save(path)
    return path
