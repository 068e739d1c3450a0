"""Build, save and load the run report (``OUTPUT/.finephrase/report.json``).

:func:`build_report` runs once, when a run ends. :func:`load_report` gives it back to the card and the push;
for an output written before the report existed it is rebuilt from ``run.json``'s ``summary`` and the parquet
files (without a summary, from the files alone).
"""

from __future__ import annotations

import json
import os

from finephrase.report.configs import MIX
from finephrase.report.files import config_files_report
from finephrase.report.run_report import RunCounts, RunReport
from finephrase.report.stats import counts_from_stats

REPORT_FILE = "report.json"
RUN_FILE = "run.json"


def _path(output: str, name: str) -> str:
    from finephrase.pipeline import (
        RunPaths,  # not at import time: the steps may import finephrase.report.names
    )

    return RunPaths(output).w(name)


def _config_names(prompts) -> list[str]:
    return list(dict.fromkeys([p.config_name for p in prompts] + [MIX]))


def build_report(output: str, stages: list[str], prompts, generator: dict | None = None,
                 wall_time_s: float | None = None, limit: int | None = None, tasks: int | None = None) -> RunReport:
    """The report of the run that wrote ``output``: datatrove's stats of ``stages`` (names) for ``prompts``, and
    the parquet footers of their configs."""
    from finephrase.inference.fleet import summarise

    counts = counts_from_stats(output, stages, [p.name for p in prompts])
    generator = dict(generator or {})
    fleet = summarise(_path(output, "fleet"))  # what the rephrase tasks saw on the replicas
    if fleet:
        generator["fleet"] = fleet
    return RunReport(counts=counts, configs=config_files_report(output, _config_names(prompts), counts),
                     generator=generator, wall_time_s=wall_time_s, limit=limit, tasks=tasks)


def report_from_summary(output: str, summary: dict | None, prompts, limit: int | None = None,
                        tasks: int | None = None) -> RunReport:
    """A report from a ``run.json`` summary (``{}``/None: unknown) and the parquet files of ``prompts``' configs."""
    summary = summary or {}
    counts = RunCounts.from_summary(summary)
    generator = dict(summary.get("generator") or {})
    if summary.get("gpu_hours") is not None:  # an earlier summary's top-level GPU-hours
        generator.setdefault("gpu_hours", summary["gpu_hours"])
    return RunReport(counts=counts, configs=config_files_report(output, _config_names(prompts), counts),
                     generator=generator, wall_time_s=summary.get("wall_time_s"), limit=limit, tasks=tasks)


def save_report(output: str, report: RunReport) -> str:
    """Write ``report.json`` and ``run.json`` (``{"summary", "limit", "tasks"}``, as before the report)."""
    path = _path(output, REPORT_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(report.model_dump_json(indent=2, by_alias=True))
    with open(_path(output, RUN_FILE), "w") as f:
        json.dump({"summary": report.to_summary(), "limit": report.limit, "tasks": report.tasks}, f, indent=2)
    return path


def load_summary(output: str) -> dict:
    """The run summary from ``OUTPUT/.finephrase/run.json`` (``{}`` if the run left none)."""
    path = _path(output, RUN_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f).get("summary") or {}


def load_report(output: str, prompts) -> RunReport:
    """The saved report; for an output without one, rebuilt from ``run.json`` and the files (not saved). A config
    of ``prompts`` that the saved report does not know (the recipe changed since the run) is read from its files."""
    path = _path(output, REPORT_FILE)
    if os.path.exists(path):
        with open(path) as f:
            report = RunReport.model_validate_json(f.read())
        known = {c.name for c in report.configs}
        missing = [name for name in _config_names(prompts) if name not in known]
        report.configs += config_files_report(output, missing, report.counts)
        return report
    run = {}
    if os.path.exists(_path(output, RUN_FILE)):
        with open(_path(output, RUN_FILE)) as f:
            run = json.load(f)
    return report_from_summary(output, run.get("summary"), prompts, limit=run.get("limit"), tasks=run.get("tasks"))
