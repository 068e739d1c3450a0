"""``finephrase stop RUN_DIR``: stop a Ray launch's driver (SIGTERM to the recorded process, on its host; its Ray
tasks end with it) and cancel exactly the Slurm jobs the run's launches submitted (by id, from ``jobs.json``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from finephrase.cluster import slurm
from finephrase.cluster.driver import last_driver, stop_driver
from finephrase.cluster.jobs import load_ledger
from finephrase.errors import ClusterError


@dataclass
class Stopped:
    cancelled: list[str] = field(default_factory=list)  # the Slurm ids cancelled that were still queued
    left: list[str] = field(default_factory=list)  # those still in the queue after ``timeout`` seconds
    slurm: bool = False  # the run has Slurm jobs at all
    driver: str | None = None  # what happened to the Ray driver (one line), None when the run has none


def stop_run(output: str, timeout: float = 120.0) -> Stopped:
    """Stop the run's Ray driver first (it may have submitted the servers; a driver on another host is an error, and
    nothing is cancelled), then cancel its queued Slurm jobs. Needs no Slurm tools when the run has no Slurm job."""
    ledger = load_ledger(output)
    if ledger is None:
        raise ClusterError(f"{output}: no jobs.json: not a folder `finephrase launch` wrote\n"
                           "name the output folder of a launched run")
    driver = last_driver(ledger)
    result = Stopped(driver=stop_driver(driver, output, timeout) if driver else None)
    ids = ledger.all_ids()
    if ids:
        result.slurm = True
        result.cancelled = sorted({j.job for j in slurm.squeue(ids)})
        slurm.scancel(result.cancelled)
        result.left = slurm.wait_gone(result.cancelled, timeout=timeout) if result.cancelled else []
    return result
