"""Dataset cards: ``OUTPUT/README.md`` from ``cards/dataset_card.md.j2`` with huggingface_hub's
``DatasetCard`` / ``DatasetCardData``.

Row counts and token counts per config are read from the parquet files actually written, and
every config's ``data_files`` glob matches those files. The card never contains a token or a
local absolute path.
"""

from __future__ import annotations

import glob
import json
import os
import re
from pathlib import Path

import pyarrow.parquet as pq
from huggingface_hub import DatasetCard, DatasetCardData

from finephrase.prompts import Prompt

CARD_TEMPLATE = Path(__file__).resolve().parent.parent / "cards" / "dataset_card.md.j2"
ABS_PATH_RE = re.compile(r"(?<![\w:/.])/(?:[\w.@+-]+/)+[\w.@+-]*")
TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{8,}")


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")):
        if n < limit:
            return label
    return "1B<n<10B"


def scrub(text: str) -> str:
    """Remove local absolute paths and anything that looks like an HF token."""
    text = TOKEN_RE.sub("<redacted>", text)
    return ABS_PATH_RE.sub(lambda m: "<local>/" + os.path.basename(m.group(0).rstrip("/")), text)


def config_stats(output: str, config: str) -> dict:
    files = sorted(glob.glob(os.path.join(output, "data", config, "*.parquet")))
    stats = {"name": config, "files": len(files), "rows": 0, "prompt_tokens": 0, "completion_tokens": 0}
    for f in files:
        table = pq.read_table(f)
        stats["rows"] += table.num_rows
        names = table.column_names
        if "completion_tokens" in names:
            stats["prompt_tokens"] += int(sum(x for x in table.column("prompt_tokens").to_pylist() if x))
            stats["completion_tokens"] += int(sum(x for x in table.column("completion_tokens").to_pylist() if x))
        elif "tokens" in names:
            stats["completion_tokens"] += int(sum(x for x in table.column("tokens").to_pylist() if x))
    return stats


def build_card(output: str, recipe, prompts: list[Prompt], summary: dict, repo_id: str | None = None) -> DatasetCard:
    repo_id = repo_id or recipe.output.hub_repo or f"your-org/{recipe.name}"
    configs, yaml_configs = [], []
    for p in prompts:
        s = config_stats(output, p.config_name)
        if s["files"]:
            configs.append(s)
            yaml_configs.append({"config_name": p.config_name, "data_files": [{"split": "train", "path": f"data/{p.config_name}/*.parquet"}]})
    if configs:
        total = {"name": "all", "rows": sum(c["rows"] for c in configs),
                 "prompt_tokens": sum(c["prompt_tokens"] for c in configs),
                 "completion_tokens": sum(c["completion_tokens"] for c in configs)}
        yaml_configs.insert(0, {"config_name": "all", "data_files": [
            {"split": "train", "path": [f"data/{c['name']}/*.parquet" for c in configs]}]})
        configs.insert(0, total)
    mix_stats = config_stats(output, "mix") if recipe.mix else None
    if mix_stats and mix_stats["files"]:
        configs.append(mix_stats)
        yaml_configs.append({"config_name": "mix", "data_files": [{"split": "train", "path": "data/mix/*.parquet"}]})
    if yaml_configs:
        yaml_configs[0]["default"] = True
    rows_total = max([c["rows"] for c in configs] or [0])
    source = recipe.source
    source_name = source.name or source.dataset or (os.path.basename(source.path.rstrip("/")) if source.path else "source")
    languages = (recipe.filters.language.languages if recipe.filters.language else None) or ["en"]
    sets = sorted({p.set for p in prompts})
    card_data = DatasetCardData(
        license=recipe.output.license or source.license or "other",
        language=languages,
        task_categories=["text-generation"],
        size_categories=[_size_category(rows_total)],
        source_datasets=[source.dataset] if source.dataset else None,
        pretty_name=recipe.output.pretty_name or recipe.name,
        tags=list(dict.fromkeys(["synthetic", "rephrased", "finephrase", *sets])),
        configs=yaml_configs,
    )
    gen = summary.get("generator", {})
    generator = {
        "model": gen.get("model") or recipe.generator.model or "unknown",
        "revision": gen.get("model_revision") or (f"gguf sha256 {gen['gguf_sha256'][:16]}" if gen.get("gguf_sha256") else None),
        "server": gen.get("server", recipe.generator.server),
        "context": recipe.generator.context_length or (recipe.generator.n_ctx if recipe.generator.server == "embedded" else None),
        "extra": {k: v for k, v in gen.items() if k in ("gguf", "replicas", "threads", "api", "endpoints")},
    }
    limitations = []
    for name, p in summary.get("prompts", {}).items():
        if p.get("truncated_inputs"):
            limitations.append(f"`{name}`: {p['truncated_inputs']} source documents were truncated to fit the context budget (`truncated` column).")
        if p.get("failed"):
            limitations.append(f"`{name}`: {p['failed']} generations failed after retries and are not in the data.")
        for reason, n in p.get("dropped", {}).items():
            limitations.append(f"`{name}`: {n} outputs dropped by the output rules ({reason}).")
    if summary.get("mix", {}).get("real_tokens_short"):
        limitations.append(f"the real data ran out: the mix is {summary['mix']['real_tokens_short']:,} real tokens short of the target ratio.")
    if not limitations:
        limitations.append("none recorded by the pipeline for this run.")
    prompt_views = []
    for p in prompts:
        prompt_views.append({**p.to_dict(), "ref": p.ref, "config_name": p.config_name,
                             "params": {**p.generation, **recipe.generator.params.model_dump(exclude_none=True)}})
    description = recipe.description.strip() or f"Synthetic rephrasings of `{source_name}` made with finephrase."
    card = DatasetCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        pretty_name=card_data.pretty_name,
        description=description,
        repo_id=repo_id,
        prompts=prompt_views,
        configs=configs,
        summary=summary,
        source={"name": source_name, "citation": None},
        generator=generator,
        mix=recipe.mix,
        limitations=limitations,
        recipe_text=(recipe.raw_text or "").strip(),
    )
    return DatasetCard(scrub(str(card)))


def write_card(output: str, recipe, prompts: list[Prompt], summary: dict | None = None, repo_id: str | None = None) -> str:
    if summary is None:
        run_json = os.path.join(output, ".finephrase", "run.json")
        with open(run_json) as f:
            summary = json.load(f)["summary"]
    card = build_card(output, recipe, prompts, summary, repo_id=repo_id)
    path = os.path.join(output, "README.md")
    card.save(path)
    return path
