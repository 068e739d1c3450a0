"""The supervisor of a launched run's server jobs: servers follow the rephrase stage.

``finephrase launch`` submits the server jobs held, then gives them ``afterok`` on the stage before rephrase (they
start when the GPUs are needed, not at launch) and submits this job with ``afterany`` on that stage. While the
rephrase stage has work queued or running, a server job that leaves the queue (node failure, time limit, OOM, a
killed server) is replaced, up to ``cluster.server_replacements`` (``finephrase status`` shows how many); the moment
the rephrase stage ends (done, failed, cancelled, or blocked for good by a failed stage before it), every server job
of the run is cancelled.

``python -m finephrase.cluster.supervise OUTPUT RECIPE PARTITION`` (what ``finephrase launch`` submits).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from finephrase.cluster import slurm
from finephrase.cluster.jobs import Launch, load_ledger, save_ledger
from finephrase.cluster.servers import submit_servers
from finephrase.plan import load_plan
from finephrase.recipe import ClusterConfig

INTERVAL = 5.0  # seconds between two looks at the queue
LEDGER_WAIT = 120.0  # seconds to wait for the launch that submitted this job to record it


def rephrase_ended(launch: Launch, queued: list[slurm.QueuedJob]) -> bool:
    """No array job of the run's inference stage is queued or running any more (or all wait on a dependency that
    can never be satisfied)."""
    arrays = {j for s in launch.stages if s.kind == "inference" for j in s.arrays}
    mine = [q for q in queued if q.job in arrays]
    return all(q.state == "PENDING" and q.reason == "DependencyNeverSatisfied" for q in mine)


def _my_launch(output: str, job: str | None) -> None:
    """Wait until the launch that submitted this job has written the ledger (it does after its last sbatch)."""
    deadline = time.monotonic() + LEDGER_WAIT
    while True:
        ledger = load_ledger(output)
        if ledger and ledger.launches and (job is None or ledger.launches[-1].supervisor == job):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"finephrase: {output}: jobs.json does not name this job ({job}) as the supervisor")
        time.sleep(1.0)


def _replace(output: str, recipe, partition: str, limit: int) -> None:
    """One look: submit server jobs in place of those gone, within the limit."""
    ledger = load_ledger(output)
    launch = ledger.launches[-1]
    alive = {q.job for q in slurm.squeue(launch.servers)}
    missing = min(launch.wanted_servers - len(alive & set(launch.servers)), limit - launch.replaced)
    if missing <= 0:
        return
    gone = [j for j in launch.servers if j not in alive]
    new = submit_servers(recipe, output, missing, partition)
    launch.servers += new
    launch.replaced += len(new)
    save_ledger(output, ledger)
    print(f"finephrase: server job(s) gone from the queue ({', '.join(gone)}): submitted {', '.join(new)} "
          f"(replacements {launch.replaced} of {limit})", flush=True)


def supervise(output: str, recipe_path: str, partition: str, interval: float = INTERVAL) -> None:
    recipe = load_plan(output).recipe  # saved by the launch
    limit = (recipe.cluster or ClusterConfig()).server_replacements
    _my_launch(output, os.environ.get("SLURM_JOB_ID"))
    try:
        while True:
            launch = load_ledger(output).launches[-1]
            if rephrase_ended(launch, slurm.squeue([j for s in launch.stages for j in s.arrays])):
                break
            _replace(output, recipe, partition, limit)
            time.sleep(interval)
    finally:
        servers = load_ledger(output).server_ids()
        slurm.scancel(servers)
        print(f"finephrase: the rephrase stage ended: server jobs released ({', '.join(servers) or '-'})", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m finephrase.cluster.supervise")
    p.add_argument("output")
    p.add_argument("recipe")
    p.add_argument("partition")
    args = p.parse_args(argv)
    supervise(args.output, args.recipe, args.partition)
    return 0


if __name__ == "__main__":
    sys.exit(main())
