"""Datatrove's merged stats (``OUTPUT/.finephrase/logs/<stage>/stats.json``) -> :class:`RunCounts`.

``stats.json`` lists a stage's steps in pipeline order, each with its display name and its counters. A step is
found here by the counters it carries (:mod:`finephrase.stats`), never by its display name or its place
in the list: the reader carries ``documents``, a filter ``forwarded``/``dropped``, the rephrase step
``inference_time``, the rows step ``generated/<prompt>`` and friends, the output stages ``duplicates/<prompt>/...``
and ``contaminated/<prompt>/...``, the eval sets' index ``eval_ngrams/<set>``, the mix step
``synthetic_documents``. A step that saw no document carries no counter, and counts as zero.
"""

from __future__ import annotations

import json
import os

from finephrase import stats as names
from finephrase.report.run_report import (
    DecontCount,
    DedupCount,
    FilterCount,
    MixCount,
    RoutedCount,
    PromptCount,
    RunCounts,
    StepCount,
)

ROWS_STATS = {names.GENERATED, names.GENERATED_PROMPT_TOKENS, names.GENERATED_COMPLETION_TOKENS,
              names.GENERATED_TRUNCATED, names.ROWS, names.ROW_PROMPT_TOKENS, names.ROW_COMPLETION_TOKENS,
              names.ROW_DROPPED, names.ROW_FLAGGED, names.OUTPUT_SCORED, names.OUTPUT_QUALITY, names.QUALITY_UPLIFT,
              names.BELOW_SOURCE}


def logs_dir(output: str, stage: str) -> str:
    from finephrase.pipeline.build import (
        RunPaths,  # not at import time: the steps may import finephrase.stats
    )

    return RunPaths(output).logs(stage)


def total(value):
    """A counter's total (datatrove writes ``{"total": ..., "mean": ...}`` or a bare number)."""
    if isinstance(value, dict):
        return value.get("total", 0)
    return value or 0


def load_stage_stats(output: str, stage: str) -> list[dict]:
    """The steps of ``stage`` as datatrove merged them (``[]`` if the stage did not run)."""
    path = os.path.join(logs_dir(output, stage), "stats.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def counters(step: dict) -> dict:
    """A datatrove step's stats (its ``stats.json`` entry) as name -> total."""
    return {k: total(v) for k, v in (step.get("stats") or {}).items()}


def _carrying(steps: list[dict], keys) -> list[dict]:
    """The counters of the steps that carry one of ``keys``."""
    keys = set(keys)
    return [c for c in map(counters, steps) if keys & c.keys()]


def _value(steps: list[dict], key: str):
    """``key``'s total in the step that carries it (0 if none does)."""
    return next((c[key] for c in _carrying(steps, [key])), 0)


def _filters(steps: list[dict]) -> list[FilterCount]:
    out = []
    for step in steps:
        c = counters(step)
        if names.FORWARDED in c or names.DROPPED in c:
            out.append(FilterCount(name=step["name"].split(": ", 1)[-1], documents_in=c.get(names.TOTAL, 0),
                                   kept=c.get(names.FORWARDED, 0), dropped=c.get(names.DROPPED, 0)))
    return out


def _dedup(output: str) -> dict[str, DedupCount]:
    out = {}
    for label, stage in names.DEDUP_STAGES.items():
        steps = load_stage_stats(output, stage)
        if steps:
            out[label] = DedupCount(documents_in=_value(steps, names.DOCUMENTS), kept=_value(steps, names.FORWARDED),
                                    dropped=_value(steps, names.DROPPED))
    return out


def _by_reason(rows: dict, stat: str, prompt: str) -> dict[str, int]:
    prefix = names.per_prompt(stat, prompt) + "/"
    return {k[len(prefix):]: v for k, v in rows.items() if k.startswith(prefix)}


def _prompt(rows: dict, name: str) -> PromptCount:
    """One prompt's counts from the per-prompt counters of the rows stage and the output stages."""
    def get(stat: str, reason: str | None = None):
        return rows.get(names.per_prompt(stat, name, reason), 0)

    failed = get(names.ROW_DROPPED, names.GENERATION_FAILED)
    return PromptCount(
        rephrased=get(names.GENERATED) - failed, failed=failed, truncated_inputs=get(names.GENERATED_TRUNCATED),
        prompt_tokens=get(names.GENERATED_PROMPT_TOKENS), completion_tokens=get(names.GENERATED_COMPLETION_TOKENS),
        rows=get(names.ROWS), row_prompt_tokens=get(names.ROW_PROMPT_TOKENS),
        row_completion_tokens=get(names.ROW_COMPLETION_TOKENS),
        dropped=_by_reason(rows, names.ROW_DROPPED, name), flagged=_by_reason(rows, names.ROW_FLAGGED, name),
        duplicates=_by_reason(rows, names.DUPLICATES, name), contaminated=_by_reason(rows, names.CONTAMINATED, name),
        contaminated_flagged=_by_reason(rows, names.CONTAMINATED_FLAGGED, name), below_top=get(names.BELOW_TOP),
        output_scored=get(names.OUTPUT_SCORED), output_quality=get(names.OUTPUT_QUALITY),
        quality_uplift=get(names.QUALITY_UPLIFT), below_source=get(names.BELOW_SOURCE),
        removed_prompt_tokens=get(names.REMOVED_PROMPT_TOKENS),
        removed_completion_tokens=get(names.REMOVED_COMPLETION_TOKENS))


def _rows_counters(steps: list[dict], stats=ROWS_STATS) -> dict:
    """The rows step's per-prompt counters (``<stat>/<prompt>...``)."""
    return {k: v for c in map(counters, steps) for k, v in c.items() if k.partition("/")[0] in stats
            and "/" in k}


def _output_counters(output: str) -> dict:
    """The output stages' per-prompt counters (duplicates, contaminated rows, their tokens), summed."""
    out: dict = {}
    for stage in names.OUTPUT_STAGES:
        for k, v in _rows_counters(load_stage_stats(output, stage), names.OUTPUT_STATS).items():
            out[k] = out.get(k, 0) + v
    return out


def _per_set(step_counts: dict, stat: str) -> dict[str, int]:
    prefix = stat + "/"
    return {k[len(prefix):]: v for k, v in step_counts.items() if k.startswith(prefix)}


def _decontamination(output: str, filter_stage: list[dict]) -> DecontCount | None:
    index = {k: v for c in map(counters, load_stage_stats(output, names.STAGE_DECONT_INDEX)) for k, v in c.items()}
    if not index:
        return None
    prefix = names.SOURCE_CONTAMINATED_PREFIX
    sources = {k[len(prefix):]: v for c in map(counters, filter_stage) for k, v in c.items() if k.startswith(prefix)}
    return DecontCount(passages=_per_set(index, names.EVAL_PASSAGES), ngrams=_per_set(index, names.EVAL_NGRAMS),
                       sources_dropped=sources)


def _routing(steps: list[dict]) -> dict[str, RoutedCount]:
    """``routed/<bucket>`` and ``routed/<bucket>/<prompt>`` of the rows step."""
    out: dict[str, RoutedCount] = {}
    for key, value in ((k, v) for c in map(counters, steps) for k, v in c.items()):
        stat, _, rest = key.partition("/")
        if stat != names.ROUTED or not rest:
            continue
        bucket, _, prompt = rest.partition("/")
        entry = out.setdefault(bucket, RoutedCount())
        if prompt:
            entry.prompts[prompt] = entry.prompts.get(prompt, 0) + value
        else:
            entry.documents += value
    return out


def _mix(output: str) -> MixCount | None:
    found = _carrying(load_stage_stats(output, names.STAGE_MIX), names.MIX_STATS)
    if not found:
        return None
    step_counts = found[0]
    per_prompt: dict[str, dict[str, int]] = {}
    for key, value in step_counts.items():
        stat, _, prompt = key.partition("/")
        if prompt and stat in names.MIX_PER_PROMPT_STATS:
            per_prompt.setdefault(prompt, {s: 0 for s in names.MIX_PER_PROMPT_STATS})[stat] = value
    return MixCount(**{k: step_counts.get(k, 0) for k in names.MIX_STATS}, per_prompt=per_prompt)


def counts_from_stats(output: str, stages: list[str], prompts: list[str]) -> RunCounts:
    """Read the stats of ``stages`` (stage names, as run) for ``prompts`` (prompt names)."""
    steps = [StepCount(stage=stage, step=step["name"], stats=counters(step))
             for stage in stages for step in load_stage_stats(output, stage)]
    filter_stage = load_stage_stats(output, names.STAGE_FILTER)
    reader = next(iter(_carrying(filter_stage, names.READER_STATS)), {})
    rows_stage = load_stage_stats(output, names.STAGE_ROWS)
    rows = {**_rows_counters(rows_stage), **_output_counters(output)}
    return RunCounts(
        documents_read=reader.get(names.DOCUMENTS, 0),
        skipped_input={k: reader[k] for k in names.SKIPPED_INPUT if reader.get(k)},
        filters=_filters(filter_stage + load_stage_stats(output, names.STAGE_QUALITY_TOP)),
        dedup=_dedup(output),
        prompts={name: _prompt(rows, name) for name in prompts},
        steps=steps,
        rephrase_documents=_value(rows_stage, names.DOCUMENTS),
        inference_time_s=_value(load_stage_stats(output, names.STAGE_REPHRASE), names.INFERENCE_TIME),
        mix=_mix(output),
        routing=_routing(rows_stage),
        decontamination=_decontamination(output, filter_stage),
    )
