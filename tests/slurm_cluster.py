"""A real one-node Slurm cluster on this machine, for the tests (a pytest plugin: ``pytest_plugins`` in conftest).

``slurm_cluster`` (session-scoped) installs Debian's ``slurmctld``, ``slurmd``, ``slurm-client`` and ``munge`` when
they are missing (root and apt-get needed: CI runs as root and ``.ci/run`` installs them already), writes a
``slurm.conf`` under a temporary folder (this host's short name, its memory from ``slurmd -C``), starts
``munged``, ``slurmctld`` and ``slurmd``, waits until the node is idle, and stops every daemon it started when
the session ends. When Slurm cannot be installed or started, the tests that use it FAIL with the reason: there is
no fake ``sbatch``.

The node declares ``CPUS`` CPUs whatever the machine has (``SlurmdParameters=config_overrides``): a server job
and the pipeline's tasks then run side by side on a 2-core machine, as they would on separate nodes.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass

import pytest

PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
CPUS = 8
START_TIMEOUT = 60.0


@dataclass
class SlurmCluster:
    folder: str
    conf: str
    partition: str = "debug"

    @property
    def env(self) -> dict:
        """Environment for slurm clients (sbatch, squeue...) talking to this cluster."""
        return {**os.environ, "SLURM_CONF": self.conf}


def _missing() -> list[str]:
    return [b for b in ("slurmctld", "slurmd", "sbatch", "munged") if shutil.which(b) is None
            and not os.path.exists(f"/usr/sbin/{b}")]


def _install() -> None:
    if not _missing():
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(f"Slurm is not installed ({', '.join(_missing())} missing) and cannot be installed here "
                    f"(needs root and apt-get): apt-get install -y --no-install-recommends {' '.join(PACKAGES)}")
    proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if proc.returncode != 0 or _missing():
        pytest.fail(f"apt-get install {' '.join(PACKAGES)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")


def _real_memory() -> int:
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=30).stdout
    for part in out.split():
        if part.startswith("RealMemory="):
            return int(part.split("=", 1)[1])
    return 2048


def _conf_text(folder: str, node: str) -> str:
    return f"""ClusterName=finephrase-test
SlurmctldHost={node}
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
MailProg=/bin/true
KillWait=5
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
SlurmctldPort=6917
SlurmdPort=6918
NodeName={node} CPUs={CPUS} Sockets=1 CoresPerSocket={CPUS} ThreadsPerCore=1 RealMemory={_real_memory()} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


def _munge_works() -> bool:
    try:
        return subprocess.run(["munge", "-n"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _start_munge(folder: str) -> subprocess.Popen | None:
    """munged (its own, unless one already runs): returns the process to stop, or None."""
    if _munge_works():
        return None
    os.makedirs("/run/munge", exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    if not os.path.exists("/etc/munge/munge.key"):
        subprocess.run(["/usr/sbin/mungekey", "--create"], check=True, timeout=30)
        shutil.chown("/etc/munge/munge.key", "munge", "munge")
    proc = subprocess.Popen(["/usr/sbin/munged", "--foreground"], user="munge", group="munge", extra_groups=[],
                            stdout=open(os.path.join(folder, "munged.log"), "ab"), stderr=subprocess.STDOUT)
    _wait(_munge_works, "munged (munge -n)", proc)
    return proc


def _wait(ready, what: str, proc: subprocess.Popen | None = None, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: the daemon exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(0.3)


def _node_idle(cluster: SlurmCluster) -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=cluster.env, timeout=10)
    return out.returncode == 0 and out.stdout.strip() in ("idle", "mixed", "allocated")


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start_cluster(folder: str) -> tuple[SlurmCluster, list[subprocess.Popen]]:
    """Install if needed, configure and start; (cluster, the daemons started, in start order)."""
    _install()
    node = socket.gethostname().split(".")[0]
    for sub in ("state", "spool"):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    conf = os.path.join(folder, "slurm.conf")
    with open(conf, "w") as f:
        f.write(_conf_text(folder, node))
    cluster = SlurmCluster(folder, conf)
    procs: list[subprocess.Popen] = []
    try:
        munge = _start_munge(folder)
        if munge is not None:
            procs.append(munge)
        for daemon in ("slurmctld", "slurmd"):
            procs.append(subprocess.Popen([f"/usr/sbin/{daemon}", "-D", "-f", conf], env=cluster.env,
                                          stdout=open(os.path.join(folder, f"{daemon}.out"), "ab"),
                                          stderr=subprocess.STDOUT))
            time.sleep(0.5)
        _wait(lambda: _node_idle(cluster), "the Slurm node (sinfo idle)", procs[-1])
    except Exception as e:  # noqa: BLE001 - any failure to start is reported with the daemons' logs
        _stop(procs)
        logs = "".join(_tail(os.path.join(folder, n)) for n in ("slurmctld.log", "slurmd.log", "slurmd.out"))
        pytest.fail(f"could not start a one-node Slurm cluster: {e}\n{logs}")
    return cluster, procs


def _tail(path: str, n: int = 2000) -> str:
    if not os.path.exists(path):
        return ""
    with open(path, errors="replace") as f:
        return f"--- {path}\n{f.read()[-n:]}\n"


@pytest.fixture(scope="session")
def slurm_cluster():
    """A running one-node Slurm cluster; SLURM_CONF is set for the whole session (every subprocess, every job)."""
    folder = tempfile.mkdtemp(prefix="finephrase-slurm-")
    cluster, procs = start_cluster(folder)
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = cluster.conf
    try:
        yield cluster
    finally:
        subprocess.run(["scancel", "--user", "root"], env=cluster.env, capture_output=True, timeout=30)
        _stop(procs)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old
        shutil.rmtree(folder, ignore_errors=True)
