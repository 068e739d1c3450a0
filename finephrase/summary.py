"""Summaries of a run from datatrove's merged stats (``logs/<stage>/stats.json``)."""

from __future__ import annotations

import json
import os

from finephrase.pipeline import RunPaths
from finephrase.prompts import Prompt


def _value(v) -> float:
    if isinstance(v, dict):
        return v.get("total", 0)
    return v or 0


def load_stage_stats(output: str, stage: str) -> list[dict]:
    path = os.path.join(RunPaths(output).logs(stage), "stats.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return json.load(f)


def _find(steps: list[dict], needle: str) -> dict:
    for step in steps:
        if needle in step["name"]:
            return step.get("stats", {})
    return {}


def collect_summary(output: str, stages: list[str], prompts: list[Prompt]) -> dict:
    """Documents in/out of every step, per-prompt generation counts and tokens."""
    steps_out = []
    for stage in stages:
        for step in load_stage_stats(output, stage):
            stats = step.get("stats", {})
            entry = {"stage": stage, "step": step["name"], "stats": {k: _value(v) for k, v in stats.items()}}
            steps_out.append(entry)
    filter_steps = load_stage_stats(output, "filter")
    reader = filter_steps[0]["stats"] if filter_steps else {}
    summary: dict = {
        "documents_read": _value(reader.get("documents")),
        "skipped_input": {k: _value(reader.get(k)) for k in ("malformed_lines", "empty_documents", "invalid_utf8_lines")
                          if reader.get(k)},
        "filters": [],
        "dedup": {},
        "prompts": {},
        "steps": steps_out,
    }
    for step in filter_steps[1:]:
        if "FILTER" in step["name"]:
            s = step["stats"]
            summary["filters"].append({"name": step["name"].split(": ", 1)[-1], "in": _value(s.get("total")),
                                       "kept": _value(s.get("forwarded")), "dropped": _value(s.get("dropped"))})
    for stage, label in (("exact-filter", "exact"), ("minhash-filter", "minhash")):
        steps = load_stage_stats(output, stage)
        if steps:
            s = steps[1]["stats"] if len(steps) > 1 else {}
            summary["dedup"][label] = {"in": _value(steps[0]["stats"].get("documents")),
                                       "kept": _value(s.get("forwarded")), "dropped": _value(s.get("dropped"))}
    rephrase = _find(load_stage_stats(output, "rephrase"), "Rephrase")
    rows_steps = load_stage_stats(output, "rows")
    rows = _find(rows_steps, "Rows")
    # per-prompt counts come from the rows stage, which reads every rephrased document: the rephrase
    # stage's stats only cover its last run when a killed run was resumed
    for p in prompts:
        n = p.name
        dropped = {k.split("/", 2)[2]: _value(v) for k, v in rows.items() if k.startswith(f"dropped/{n}/")}
        failed = _value(rows.get(f"dropped/{n}/generation_failed"))
        summary["prompts"][n] = {
            "rephrased": _value(rows.get(f"generated/{n}")) - failed,
            "failed": failed,
            "truncated_inputs": _value(rows.get(f"generated_truncated/{n}")),
            "prompt_tokens": _value(rows.get(f"generated_prompt_tokens/{n}")),
            "completion_tokens": _value(rows.get(f"generated_completion_tokens/{n}")),
            "rows": _value(rows.get(f"rows/{n}")),
            "row_prompt_tokens": _value(rows.get(f"row_prompt_tokens/{n}")),
            "row_completion_tokens": _value(rows.get(f"row_completion_tokens/{n}")),
            "dropped": dropped,
            "flagged": {k.split("/", 2)[2]: _value(v) for k, v in rows.items() if k.startswith(f"flagged/{n}/")},
        }
    summary["rephrase_documents"] = _value(rows_steps[0]["stats"].get("documents")) if rows_steps else 0
    summary["inference_time_s"] = _value(rephrase.get("inference_time"))
    mix = _find(load_stage_stats(output, "mix"), "Mix")
    if mix:
        summary["mix"] = {k: _value(mix.get(k)) for k in ("synthetic_documents", "synthetic_tokens", "real_documents",
                                                           "real_tokens", "real_tokens_short")}
    return summary


def first_generation_error(output: str, prompt: str, limit_files: int = 64) -> str | None:
    """The first recorded generation error for ``prompt`` in the rephrase stage's output (None if none)."""
    folder = RunPaths(output).w("rephrased")
    if not os.path.isdir(folder):
        return None
    for name in sorted(os.listdir(folder))[:limit_files]:
        with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    results = json.loads(line).get("metadata", {}).get("rollout_results") or []
                except ValueError:
                    continue
                entry = (results[0] if results else {}).get(prompt) or {}
                if entry.get("error"):
                    return entry["error"]
    return None


def empty_output_problem(summary: dict, output: str) -> str | None:
    """Why a run produced nothing (cause and fix), or None when every prompt that got documents has rows."""
    read = summary["documents_read"]
    if not read:
        return "the source gave no documents: check source.path, source.kind and source.text_key in the recipe"
    if not summary.get("rephrase_documents"):
        funnel = [f"{f['name']} kept {f['kept']} of {f['in']}" for f in summary["filters"]]
        funnel += [f"{k} dedup kept {d['kept']} of {d['in']}" for k, d in summary["dedup"].items()]
        return (f"none of the {read} documents read reached the rephrase stage ({'; '.join(funnel) or 'no filter'}): "
                "loosen the recipe's filters")
    problems = []
    for name, p in summary["prompts"].items():
        if p["rows"] or not (p["rephrased"] or p["failed"]):
            continue
        if not p["rephrased"]:
            error = first_generation_error(output, name)
            problems.append(f"prompt {name}: all {p['failed']} generations failed"
                            + (f"; the first error: {error}" if error else ""))
        else:
            dropped = ", ".join(f"{k} {v}" for k, v in p["dropped"].items())
            problems.append(f"prompt {name}: the output checks dropped all {p['rephrased']} generations ({dropped}); "
                            "set output_checks: flag to keep them with a flag, or fix the prompt")
    return "\n".join(problems) or None


def summary_rows(summary: dict) -> list[tuple[str, str]]:
    """(label, value) lines for the end-of-run table."""
    rows = [("documents read", str(summary["documents_read"]))]
    for k, v in summary.get("skipped_input", {}).items():
        rows.append((f"  skipped: {k.replace('_', ' ')}", str(v)))
    for f in summary["filters"]:
        rows.append((f"kept by {f['name']}", f"{f['kept']} (dropped {f['dropped']})"))
    for label, d in summary["dedup"].items():
        rows.append((f"kept by {label} dedup", f"{d['kept']} (duplicates {d['dropped']})"))
    for name, p in summary["prompts"].items():
        dropped = ", ".join(f"{k} {v}" for k, v in p["dropped"].items()) or "none"
        rows.append((f"rephrased [{name}]", f"{p['rephrased']} ok, {p['failed']} failed, {p['truncated_inputs']} truncated inputs"))
        flagged = ", ".join(f"{k} {v}" for k, v in p.get("flagged", {}).items())
        rows.append((f"  rows kept [{name}]", f"{p['rows']} (dropped by checks: {dropped})"
                     + (f"; flagged: {flagged}" if flagged else "")))
        rows.append((f"  tokens [{name}]", f"prompt {p['prompt_tokens']:,}, completion {p['completion_tokens']:,}"))
    if "mix" in summary:
        m = summary["mix"]
        rows.append(("mix", f"{m['synthetic_documents']} synthetic ({m['synthetic_tokens']:,} tok) + "
                            f"{m['real_documents']} real ({m['real_tokens']:,} tok)"))
    if "wall_time_s" in summary:
        rows.append(("wall time", f"{summary['wall_time_s']:.0f} s"))
    return rows
