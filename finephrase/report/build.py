"""Build, save and load the run report (``OUTPUT/.finephrase/report.json``).

:func:`build_report` runs once, when a run ends. :func:`load_report` gives it back to the card and the push;
for an output whose report is gone (a pruned folder) the configs are read from the parquet files alone.
"""

from __future__ import annotations

import os

from finephrase.report.configs import MIX
from finephrase.report.files import config_files_report
from finephrase.report.run_report import RunReport
from finephrase.report.stats import counts_from_stats

REPORT_FILE = "report.json"


def _path(output: str, name: str) -> str:
    from finephrase.pipeline.build import (
        RunPaths,  # not at import time: the steps may import finephrase.stats
    )

    return RunPaths(output).w(name)


def _config_names(prompts) -> list[str]:
    return list(dict.fromkeys([p.config_name for p in prompts] + [MIX]))


def build_report(output: str, stages: list[str], prompts, generator: dict | None = None,
                 wall_time_s: float | None = None, limit: int | None = None, tasks: int | None = None) -> RunReport:
    """The report of the run that wrote ``output``: datatrove's stats of ``stages`` (names) for ``prompts``, and
    the parquet footers of their configs."""
    from finephrase.inference.client.fleet import summarise

    counts = counts_from_stats(output, stages, [p.name for p in prompts])
    generator = dict(generator or {})
    fleet = summarise(_path(output, "fleet"))  # what the rephrase tasks saw on the replicas
    if fleet:
        generator["fleet"] = fleet
    return RunReport(counts=counts, configs=config_files_report(output, _config_names(prompts), counts),
                     generator=generator, wall_time_s=wall_time_s, limit=limit, tasks=tasks)


def save_report(output: str, report: RunReport) -> str:
    """Write ``report.json``."""
    path = _path(output, REPORT_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(report.model_dump_json(indent=2, by_alias=True))
    return path


def load_report(output: str, prompts) -> RunReport:
    """The saved report; for an output without one, the configs read from the files (no counts; not saved). A
    config of ``prompts`` that the saved report does not know is read from its files."""
    path = _path(output, REPORT_FILE)
    if os.path.exists(path):
        with open(path) as f:
            report = RunReport.model_validate_json(f.read())
        known = {c.name for c in report.configs}
        missing = [name for name in _config_names(prompts) if name not in known]
        report.configs += config_files_report(output, missing, report.counts)
        return report
    return RunReport(configs=config_files_report(output, _config_names(prompts), None))
