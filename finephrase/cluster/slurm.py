"""The Slurm commands finephrase runs: ``sbatch``, ``squeue``, ``scancel``, ``sinfo``, ``scontrol``. Nothing else talks to Slurm
(datatrove's ``SlurmPipelineExecutor`` runs its own ``sbatch``)."""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass

from finephrase.errors import ClusterError

TIMEOUT = 60  # seconds for one Slurm command


def _run(cmd: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    if shutil.which(cmd[0]) is None:
        raise ClusterError(f"`{cmd[0]}` not found: this machine is not a Slurm submit node\n"
                           "run it where `sbatch` works, or use --executor local")
    try:
        return subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"`{' '.join(cmd[:2])}` did not answer in {TIMEOUT}s: is slurmctld up? (`sinfo`)") from None


def sbatch(script: str, *args: str) -> str:
    """Submit ``script`` (its text); the job id."""
    proc = _run(["sbatch", "--parsable", *args], stdin=script)
    if proc.returncode != 0:
        raise ClusterError(f"sbatch refused the job: {proc.stderr.strip() or proc.stdout.strip()}\n"
                           "check the recipe's cluster: settings (partition, account, qos, gpus, memory)")
    return proc.stdout.strip().split(";")[0]


@dataclass(frozen=True)
class QueuedJob:
    job: str  # the (array) job id
    task: str  # array task id, or "" for a plain job
    state: str  # PENDING, RUNNING, COMPLETING...
    reason: str


def squeue(ids: list[str] | None = None) -> list[QueuedJob]:
    """The jobs in the queue (one entry per array task), only those of ``ids`` (array or plain job ids) if given."""
    proc = _run(["squeue", "-h", "-r", "-o", "%F|%K|%T|%r"])
    if proc.returncode != 0:
        raise ClusterError(f"squeue failed: {proc.stderr.strip()}")
    wanted = {str(i) for i in ids} if ids is not None else None
    jobs = []
    for line in proc.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4:
            continue
        job, task, state, reason = parts
        task = "" if task in ("N/A", "4294967294") else task
        if wanted is None or job in wanted:
            jobs.append(QueuedJob(job, task, state, reason))
    return jobs


def scancel(ids: list[str]) -> None:
    if ids:
        _run(["scancel", *[str(i) for i in ids]])


def wait_gone(ids: list[str], timeout: float = 120.0) -> list[str]:
    """Wait until none of ``ids`` is in the queue; the ids still there after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        left = sorted({j.job for j in squeue(ids)})
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(1.0)


def hold_until(job: str, dependency: str | None) -> None:
    """Give a held job (``sbatch --hold``) its dependency, then release it."""
    if dependency:
        proc = _run(["scontrol", "update", f"JobId={job}", f"Dependency={dependency}"])
        if proc.returncode != 0:
            raise ClusterError(f"scontrol could not set the dependency of job {job}: {proc.stderr.strip()}")
    proc = _run(["scontrol", "release", job])
    if proc.returncode != 0:
        raise ClusterError(f"scontrol could not release job {job}: {proc.stderr.strip()}")


def default_partition() -> str | None:
    """The cluster's default partition (``sinfo`` marks it with ``*``), or None when there is none."""
    proc = _run(["sinfo", "-h", "-o", "%P"])
    for name in proc.stdout.split():
        if name.endswith("*"):
            return name[:-1]
    return None
