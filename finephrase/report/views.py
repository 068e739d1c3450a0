"""The run's facts shaped for a reader, shared by the dataset card (:mod:`.card`) and the HTML report (:mod:`.html`):
the generator as it ran, each prompt with the sampling it ran with, the prompts' configs, numbers as printed."""

from __future__ import annotations

import json

from finephrase.inference.client.backends import backend_for
from finephrase.inference.client.fleet import fleet_line
from finephrase.inference.client.request_builder import DEFAULT_MAX_NEW_TOKENS
from finephrase.prompts import Prompt
from finephrase.report import RunReport
from finephrase.report.configs import SPECIAL_CONFIGS
from finephrase.report.run_report import ConfigFiles


def fmt_num(v) -> str:
    if isinstance(v, float) and not v.is_integer():
        return f"{v:,.1f}"
    try:
        return f"{int(v):,}"
    except (TypeError, ValueError):
        return str(v)


def prompt_configs(report: RunReport, prompts: list[Prompt]) -> list[ConfigFiles]:
    """The report's configs of ``prompts`` (those with files), in the prompts' order."""
    for p in prompts:
        if p.config_name in SPECIAL_CONFIGS:
            raise ValueError(f"prompt {p.ref!r}: the config name {p.config_name!r} is reserved (all, mix)")
    found = (report.config(p.config_name) for p in prompts)
    return [c for c in found if c is not None and c.name not in SPECIAL_CONFIGS]


def _revision(report: RunReport, configs: list[ConfigFiles]) -> str | None:
    """The model revision as it ran: the generator's, else the one(s) in the rows' ``model_revision``."""
    if report.generator.get("model_revision"):
        return report.generator["model_revision"]
    revisions = sorted({r for c in configs for r in c.model_revisions})
    return ", ".join(revisions) if revisions else None


def generator_view(report: RunReport, recipe, configs: list[ConfigFiles]) -> dict:
    gen, g, counts = report.generator, recipe.generator, report.counts
    server = gen.get("server", g.server)
    if counts is not None:  # every generation, failed or dropped ones included
        prompt_tokens = sum(p.prompt_tokens for p in counts.prompts.values())
        completion_tokens = sum(p.completion_tokens for p in counts.prompts.values())
    else:  # no counts: the rows written
        prompt_tokens, completion_tokens = (sum(c.prompt_tokens for c in configs),
                                            sum(c.completion_tokens for c in configs))
    inference_s = (counts.inference_time_s if counts else None) or 0
    throughput = None
    if inference_s and completion_tokens:
        throughput = {"completion": completion_tokens / inference_s,
                      "total": (prompt_tokens + completion_tokens) / inference_s}
    gpu_hours, gpus = gen.get("gpu_hours"), gen.get("gpus") or gen.get("gpu_count")
    if gpu_hours is None and gpus and inference_s:
        gpu_hours = gpus * inference_s / 3600
    facts = backend_for(server).card_facts(g, gen)
    return {
        "model": gen.get("model") or g.model or "unknown", "revision": _revision(report, configs),
        "gguf_sha256": gen.get("gguf_sha256"), "server": server, "context": facts["context"], "extra": facts["extra"],
        "concurrency": gen.get("concurrency") or g.concurrency or "adaptive", "sampling": g.params.model_dump(exclude_none=True),
        "inference_s": inference_s, "throughput": throughput, "gpu_hours": gpu_hours,
        "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
        "fleet": fleet_line(gen.get("fleet")),
    }


def prompt_views(report: RunReport, recipe, prompts: list[Prompt]) -> list[dict]:
    """Each prompt with the sampling parameters it ran with (every row's, else its defaults and the recipe's)."""
    sampling = recipe.generator.params.model_dump(exclude_none=True)
    views = []
    for p in prompts:
        params = {**p.generation, **sampling}
        params.setdefault("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        config = report.config(p.config_name)
        if config is not None and config.generation_params:
            try:
                params = json.loads(config.generation_params)
            except ValueError:
                pass
        views.append({**p.to_dict(), "ref": p.ref, "config_name": p.config_name, "params": params,
                      "file": f"prompts/{p.set}/{p.name}.yaml"})
    return views
