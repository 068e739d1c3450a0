"""``finephrase stop RUN_DIR``: cancel exactly the jobs the run's launches submitted (by id, from ``jobs.json``)."""

from __future__ import annotations

from finephrase.cluster import slurm
from finephrase.cluster.jobs import load_ledger
from finephrase.errors import ClusterError


def stop_run(output: str, timeout: float = 120.0) -> tuple[list[str], list[str]]:
    """(the ids cancelled that were still queued, the ids still in the queue after ``timeout`` seconds)."""
    ledger = load_ledger(output)
    if ledger is None:
        raise ClusterError(f"{output}: no jobs.json: not a folder `finephrase launch` wrote\n"
                           "name the output folder of a launched run")
    ids = ledger.all_ids()
    queued = sorted({j.job for j in slurm.squeue(ids)})
    slurm.scancel(queued)
    return queued, slurm.wait_gone(queued, timeout=timeout)
