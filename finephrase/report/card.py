"""Dataset cards: ``OUTPUT/README.md`` from ``cards/dataset_card.md.j2`` with huggingface_hub's
``DatasetCard`` / ``DatasetCardData``.

This module only renders. Every number comes from the run report (:mod:`finephrase.report`: datatrove's stats
and the parquet footers, read once when the run ended and saved in ``.finephrase/report.json``); the sentences
are in the template, the licence identifiers in ``cards/licenses.md``, the ``configs`` list (``all``, kept
configs) in :func:`finephrase.report.dataset_configs`. The card never contains a token or a local absolute
path (:func:`scrub` runs on the rendered card).

When an output is pushed to a repository that already holds configs from an earlier push,
:func:`finephrase.hub.push_output` passes those configs as ``kept_configs``: they stay in the YAML
``configs`` (and in ``all``) and the body lists them as kept from an earlier push.
"""

from __future__ import annotations

import functools
import os
import re

import yaml
from huggingface_hub import DatasetCard, DatasetCardData

from finephrase.inference.client.backends import backend_for
from finephrase.inference.client.tokens import CHARS_PER_TOKEN
from finephrase.prompts import Prompt
from finephrase.report import (
    ALL,
    MIX,
    RunReport,
    config_paths,
    dataset_configs,
    load_report,
)
from finephrase.report.configs import SPECIAL_CONFIGS, kept_names, local_entry
from finephrase.stats import HIDDEN_STEP_STAT_PREFIXES, SHOWN_STEP_STATS
from finephrase.report.run_report import ConfigFiles
from finephrase.resources import card_template
from finephrase.pipeline.formatters.rows import ROW_COLUMNS
from finephrase.pipeline.mix import MIX_SCHEMA_COLUMNS
from finephrase.redact import redact_secrets
from finephrase.report.views import fmt_num, generator_view, prompt_configs, prompt_views

COLUMN_NOTES = {"text": " (generated)", "generation_params": " (JSON)", "mix.kind": " (`real` or `synthetic`)",
                "mix.mixed_with": " (the prompt whose share a real document counts toward)"}

CARD_TEMPLATE = card_template()  # the wheel's package data, or cards/ of a source checkout
LICENSES_FILE = CARD_TEMPLATE.parent / "licenses.md"

__all__ = ["CARD_TEMPLATE", "SPECIAL_CONFIGS", "config_paths", "license_metadata", "render_card",
           "scrub", "write_card"]

# --- scrubbing -------------------------------------------------------------------------------------------------

# /an/absolute/path (not part of a URL, a relative path or a word); Windows C:\paths; file:// URLs
ABS_PATH_RE = re.compile(r"(?<![\w:/.~-])/(?:[\w.@+-]+/)+[\w.@+-]*")
WIN_PATH_RE = re.compile(r"(?<![\w])[A-Za-z]:\\(?:[^\\\s`'\"|<>]+\\)*[^\\\s`'\"|<>]*")
FILE_URL_RE = re.compile(r"file://[^\s`'\")<>|]+")


def _basename(path: str) -> str:
    return re.split(r"[\\/]", path.rstrip("/\\"))[-1]


def scrub(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """:func:`redact_secrets`, and local absolute paths (``/home/me/data/x.jsonl`` -> ``<local>/x.jsonl``)."""
    text = redact_secrets(text, secrets)
    text = FILE_URL_RE.sub(lambda m: "<local>/" + _basename(m.group(0)), text)
    text = WIN_PATH_RE.sub(lambda m: "<local>/" + _basename(m.group(0)), text)
    return ABS_PATH_RE.sub(lambda m: "<local>/" + _basename(m.group(0)), text)


# --- licenses --------------------------------------------------------------------------------------------------

_SPDX_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]*$")


@functools.lru_cache(maxsize=1)
def _licenses() -> tuple[frozenset, dict]:
    """(Hub licence ids, links of other licences) from the YAML block of ``cards/licenses.md``."""
    block = re.search(r"```yaml\n(.*?)```", LICENSES_FILE.read_text(encoding="utf-8"), re.DOTALL)
    data = yaml.safe_load(block.group(1)) if block else {}
    return frozenset(str(x) for x in data.get("hub") or ()), {str(k): str(v) for k, v in (data.get("links") or {}).items()}


def license_metadata(license: str | None) -> dict:
    """Card metadata for a license given as in a recipe: a Hub id (any case) -> ``{"license": id}``; anything
    else -> ``license: other`` with ``license_name`` (lowercase, dashes) and ``license_link``."""
    if not license or not str(license).strip():
        return {"license": "unknown"}
    hub_ids, links = _licenses()
    value = str(license).strip()
    low = value.lower()
    if low in hub_ids:
        return {"license": low}
    if low.startswith(("http://", "https://")):
        name = re.sub(r"[^a-z0-9.]+", "-", low.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]).strip("-")
        return {"license": "other", "license_name": name or "custom", "license_link": value}
    out = {"license": "other", "license_name": re.sub(r"[^a-z0-9.+]+", "-", low).strip("-") or "custom"}
    link = links.get(low) or (f"https://spdx.org/licenses/{value}.html" if _SPDX_ID_RE.match(value) else None)
    if link:
        out["license_link"] = link
    return out


# --- views: the report's data, shaped for the template ------------------------------------------------------------


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
                         (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"),
                         (1_000_000_000_000, "100B<n<1T")):
        if n < limit:
            return label
    return "n>1T"


def _total(configs: list[ConfigFiles]) -> ConfigFiles | None:
    if not configs:
        return None
    return ConfigFiles(name=ALL, **{k: sum(getattr(c, k) for c in configs)
                                    for k in ("files", "rows", "bytes", "prompt_tokens", "completion_tokens")})


def _source_name(source) -> str:
    return source.name or source.dataset or (os.path.basename(source.path.rstrip("/")) if source.path else "source")


def _source_view(source) -> dict:
    name = _source_name(source)
    key = re.sub(r"[^a-z0-9]+", "", name.lower())[:40] or "source"
    lines = [f"@misc{{{key},", f"  title={{{name}}},"]
    if source.dataset:
        lines.append(f"  howpublished={{\\url{{https://huggingface.co/datasets/{source.dataset}}}}},")
    if source.license:
        lines.append(f"  note={{License: {source.license}}},")
    lines[-1] = lines[-1].rstrip(",")
    return {"name": name, "dataset": source.dataset, "license": source.license, "kind": source.kind,
            "citation": "\n".join(lines) + "\n}"}


def _card_data(recipe, prompts: list[Prompt], yaml_configs: list[dict], rows: int) -> DatasetCardData:
    source = recipe.source
    languages = (recipe.filters.language.languages if recipe.filters.language else None) or ["en"]
    return DatasetCardData(
        **license_metadata(recipe.output.license or source.license),
        language=languages,
        task_categories=["text-generation"],
        size_categories=[_size_category(rows)],
        source_datasets=[source.dataset] if source.dataset else None,
        pretty_name=recipe.output.pretty_name or recipe.name,
        tags=list(dict.fromkeys(["synthetic", "rephrased", "finephrase", *sorted({p.set for p in prompts})])),
        configs=yaml_configs,
    )


def _mix_tokenizer(recipe) -> str | None:
    """The file name of the tokenizer the mix counted real and synthetic tokens with (None: estimated)."""
    spec = backend_for(recipe.generator.server).request_settings(recipe.generator).tokenizer
    return os.path.basename(spec.rstrip("/")) if spec else None


def _mix_view(report: RunReport, recipe, mix: ConfigFiles | None) -> dict | None:
    if not (recipe.mix or mix):
        return None
    counts = report.counts.mix if report.counts else None
    if counts is not None:
        m = counts.model_dump()
    elif mix is not None and mix.kinds:  # no counts: the mix's rows
        synthetic, real = mix.kinds.get("synthetic"), mix.kinds.get("real")
        m = {"synthetic_documents": synthetic.rows if synthetic else 0, "synthetic_tokens": synthetic.tokens if synthetic else 0,
             "real_documents": real.rows if real else 0, "real_tokens": real.tokens if real else 0}
    else:
        m = {}
    synth_t, real_t = m.get("synthetic_tokens"), m.get("real_tokens")
    achieved = synth_t / (synth_t + real_t) if synth_t is not None and real_t is not None and (synth_t + real_t) else None
    cfg = recipe.mix
    prompts = [{"name": name, "target": cfg.per_prompt.get(name, cfg.synthetic) if cfg else None,
                "achieved": counts.achieved(name), **part}
               for name, part in (counts.per_prompt.items() if counts else [])]
    source = cfg.source if cfg else None
    return {"target": cfg.synthetic if cfg else None, "per_prompt": cfg.per_prompt if cfg else {},
            "achieved": achieved, "stats": m, "prompts": prompts, "rows": mix.rows if mix else 0,
            "seed": cfg.seed if cfg else None, "tokenizer": _mix_tokenizer(recipe), "chars_per_token": CHARS_PER_TOKEN,
            "include_flagged": bool(cfg and cfg.include_flagged),
            "source": (source.name or source.dataset or source.path) if source else None}


def _eval_set_view(e, decont_counts, prompts: dict) -> dict:
    """One eval set of the recipe's ``decontamination``, with its index and the rows it caught per config."""
    counts = decont_counts
    return {"name": e.name, "dataset": e.dataset, "config": e.config, "split": e.split, "fields": e.text_keys,
            "file": _basename(e.path) if e.path else None,
            "passages": counts.passages.get(e.name) if counts else None,
            "ngrams": counts.ngrams.get(e.name) if counts else None,
            "sources_dropped": counts.sources_dropped.get(e.name, 0) if counts else None,
            "rows": {name: p.contaminated.get(e.name, 0) + p.contaminated_flagged.get(e.name, 0)
                     for name, p in prompts.items()}}


def _cleaning_view(report: RunReport, recipe) -> dict:
    """Dedup (sources, rows) and decontamination: the recipe's settings with the report's counts."""
    counts = report.counts
    prompts = counts.prompts if counts else {}
    source = [{"label": label, "minhash": recipe.dedup.minhash if label == "minhash" else None,
               "count": counts.dedup.get(label) if counts else None}
              for label, on in (("exact", recipe.dedup.exact), ("minhash", recipe.dedup.minhash)) if on]
    od = recipe.output_dedup
    decont = recipe.decontamination
    decont_view = None
    if decont:
        decont_view = {"n": decont.n_grams, "action": decont.action, "check_sources": decont.check_sources,
                       "eval_sets": [_eval_set_view(e, counts.decontamination if counts else None, prompts)
                                     for e in decont.eval_sets]}
    return {"source": source, "output": {"exact": od.exact, "minhash": od.minhash} if od.enabled else None,
            "decont": decont_view}


def _quality_view(report: RunReport, recipe, prompts: list[Prompt]) -> dict | None:
    """The quality classifier, the scored outputs per prompt and the routing buckets with their counts."""
    q = recipe.filters.quality
    if q is None:
        return None
    counts = report.counts
    scores = {name: p.scores() for name, p in (counts.prompts.items() if counts else [])}
    routing = None
    if recipe.routing is not None:
        from finephrase.pipeline.rephrase.routing import Router

        routing = Router(recipe.routing.model_dump(), prompts).describe()
        routed = counts.routing if counts else {}
        for bucket in routing:
            found = routed.get(bucket["name"])
            bucket["documents"], bucket["sent"] = (found.documents, found.prompts) if found else (0, {})
        routing += [{"name": name, "min": None, "max": None, "prompts": list(c.prompts), "documents": c.documents,
                     "sent": c.prompts} for name, c in routed.items() if name not in {b["name"] for b in routing}]
    ensemble = [{"name": c.name, "model": c.model, "label": c.label} for c in q.ensemble] if q.ensemble else None
    return {"model": q.model, "label": q.label, "threshold": q.threshold, "ensemble": ensemble,
            "buckets": q.buckets, "sample": q.sample, "top_percent": q.top_percent,
            "select_outputs": recipe.select_outputs.top_percent if recipe.select_outputs else None,
            "scores": {k: v for k, v in scores.items() if v}, "routing": routing}


def _step_rows(report: RunReport) -> list[dict]:
    """Every datatrove step with the counters the card shows (per-prompt ``<stat>/<prompt>`` ones included)."""
    rows = []
    for step in report.counts.steps if report.counts else []:
        shown = {k: step.stats[k] for k in SHOWN_STEP_STATS if k in step.stats}
        shown.update({k: v for k, v in step.stats.items()
                      if "/" in k and "XXXXX" not in k and not k.startswith(HIDDEN_STEP_STAT_PREFIXES)})
        rows.append({"stage": step.stage, "step": step.step, "stats": shown})
    return rows


# --- the card --------------------------------------------------------------------------------------------------


def render_card(report: RunReport, recipe, prompts: list[Prompt], repo_id: str | None = None,
                kept_configs: list[dict] | None = None) -> DatasetCard:
    """The dataset card of a run, from its report.

    Args:
        report: the run report (:func:`finephrase.report.load_report`).
        recipe: the :class:`~finephrase.recipe.Recipe` that made it.
        prompts: the recipe's resolved prompts.
        repo_id: the Hub repository (for the loading snippets); default the recipe's ``output.hub_repo``.
        kept_configs: ``configs`` entries of the remote card that this output does not produce and that stay
            published (see :func:`finephrase.hub.push_output`).
    """
    repo_id = repo_id or recipe.output.hub_repo or f"your-org/{recipe.name}"
    configs, mix = prompt_configs(report, prompts), report.config(MIX)
    local = [c.name for c in configs] + ([MIX] if mix else [])
    yaml_configs = dataset_configs([local_entry(name) for name in local], kept_configs)
    total = _total(configs)
    card_data = _card_data(recipe, prompts, yaml_configs, max(total.rows if total else 0, mix.rows if mix else 0))
    card = DatasetCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        pretty_name=card_data.pretty_name,
        description=(recipe.description or "").strip(),
        repo_id=repo_id,
        prompts=prompt_views(report, recipe, prompts),
        configs=([total] if total else []) + configs + ([mix] if mix else []),
        kept_configs=kept_names(yaml_configs, local),
        run=report.counts,
        step_rows=_step_rows(report),
        source=_source_view(recipe.source),
        license_text=recipe.output.license or recipe.source.license or "unknown",
        generator=generator_view(report, recipe, configs),
        mix=_mix_view(report, recipe, mix),
        output_checks=recipe.output_checks,
        cleaning=_cleaning_view(report, recipe),
        quality=_quality_view(report, recipe, prompts),
        recipe_text=(recipe.raw_text or "").strip(),
        fmt=fmt_num,
        row_columns=ROW_COLUMNS,
        mix_columns=MIX_SCHEMA_COLUMNS,
        column_notes=COLUMN_NOTES,
    )
    return DatasetCard(scrub(str(card), secrets=_recipe_secrets(recipe)))


def _recipe_secrets(recipe) -> list[str]:
    env = getattr(recipe.generator, "api_key_env", None)
    return [os.environ[env]] if env and os.environ.get(env) else []


def write_card(output: str, recipe, prompts: list[Prompt], report: RunReport | None = None,
               repo_id: str | None = None, kept_configs: list[dict] | None = None) -> str:
    """Write ``OUTPUT/README.md`` from ``report`` (default: the saved one, ``OUTPUT/.finephrase/report.json``)."""
    report = load_report(output, prompts) if report is None else report
    card = render_card(report, recipe, prompts, repo_id=repo_id, kept_configs=kept_configs)
    path = os.path.join(output, "README.md")
    card.save(path)
    return path
