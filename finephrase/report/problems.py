"""Why a run produced nothing: read from the report, said with its cause and its fix."""

from __future__ import annotations

import json
import os

from finephrase.report.run_report import RunCounts, RunReport
from finephrase import stats as names


def first_generation_error(output: str, prompt: str, limit_files: int = 64) -> str | None:
    """The first recorded generation error for ``prompt`` in the rephrase stage's output (None if none)."""
    from finephrase.pipeline.build import (
        RunPaths,  # not at import time: the steps may import finephrase.stats
    )

    folder = RunPaths(output).w("rephrased")
    if not os.path.isdir(folder):
        return None
    for name in sorted(os.listdir(folder))[:limit_files]:
        with open(os.path.join(folder, name), encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    results = json.loads(line).get("metadata", {}).get(names.ROLLOUTS) or []
                except ValueError:
                    continue
                entry = (results[0] if results else {}).get(prompt) or {}
                if entry.get("error"):
                    return entry["error"]
    return None


def _nothing_rephrased(counts: RunCounts) -> str:
    funnel = [f"{f.name} kept {f.kept} of {f.documents_in}" for f in counts.filters]
    funnel += [f"{label} dedup kept {d.kept} of {d.documents_in}" for label, d in counts.dedup.items()]
    return (f"none of the {counts.documents_read} documents read reached the rephrase stage "
            f"({'; '.join(funnel) or 'no filter'}): loosen the recipe's filters")


def empty_output_problem(report: RunReport, output: str) -> str | None:
    """Why a run produced nothing (cause and fix), or None when every prompt that got documents has rows."""
    counts = report.counts or RunCounts()
    if not counts.documents_read:
        return "the source gave no documents: check source.path, source.kind and source.text_key in the recipe"
    if not counts.rephrase_documents:
        return _nothing_rephrased(counts)
    problems = []
    for name, p in counts.prompts.items():
        if p.written or not (p.rephrased or p.failed):
            continue
        if p.rows:
            removed = [f"{k} duplicates {v}" for k, v in p.duplicates.items()]
            removed += [f"contaminated by {k} {v}" for k, v in p.contaminated.items()]
            problems.append(f"prompt {name}: the output dedup and decontamination removed all {p.rows} rows "
                            f"({', '.join(removed)}); check the generations (.finephrase/rows/) and the eval sets")
        elif not p.rephrased:
            error = first_generation_error(output, name)
            problems.append(f"prompt {name}: all {p.failed} generations failed"
                            + (f"; the first error: {error}" if error else ""))
        else:
            dropped = ", ".join(f"{k} {v}" for k, v in p.dropped.items())
            problems.append(f"prompt {name}: the output checks dropped all {p.rephrased} generations ({dropped}); "
                            "set output_checks: flag to keep them with a flag, or fix the prompt")
    return "\n".join(problems) or None
