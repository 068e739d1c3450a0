"""The run summary as a dict (``run.json``'s ``summary``): a thin layer over :mod:`finephrase.report`.

The numbers are read by :mod:`finephrase.report` (datatrove's stats, once); these functions keep the dict-based
interface of earlier versions working.
"""

from __future__ import annotations

from finephrase.prompts import Prompt
from finephrase.report import (
    RunCounts,
    RunReport,
    counts_from_stats,
    first_generation_error,
    load_stage_stats,
)
from finephrase.report import empty_output_problem as _empty_output_problem
from finephrase.report import summary_rows as _summary_rows

__all__ = ["collect_summary", "empty_output_problem", "first_generation_error", "load_stage_stats", "summary_rows"]


def _report(summary: dict | RunReport) -> RunReport:
    if isinstance(summary, RunReport):
        return summary
    return RunReport(counts=RunCounts.from_summary(summary), wall_time_s=summary.get("wall_time_s"),
                     generator=summary.get("generator") or {})


def collect_summary(output: str, stages: list[str], prompts: list[Prompt]) -> dict:
    """Documents in/out of every step, per-prompt generation counts and tokens."""
    return counts_from_stats(output, stages, [p.name for p in prompts]).to_summary()


def empty_output_problem(summary: dict | RunReport, output: str) -> str | None:
    """Why a run produced nothing (cause and fix), or None when every prompt that got documents has rows."""
    return _empty_output_problem(_report(summary), output)


def summary_rows(summary: dict | RunReport) -> list[tuple[str, str]]:
    """(label, value) lines for the end-of-run table."""
    return _summary_rows(_report(summary))
