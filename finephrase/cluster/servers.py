"""Server jobs: submit them (plain ``sbatch`` of a rendered ``launch/`` template) and find those still alive."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import sys

from finephrase.cluster import slurm
from finephrase.cluster.jobs import Ledger
from finephrase.cluster.secrets import write_redacted
from finephrase.cluster.templates import ServerJob, render_server_job, server_kind
from finephrase.pipeline.build import RunPaths
from finephrase.recipe import ClusterConfig, Recipe

ENDPOINTS_FILE = "endpoints.txt"


def endpoints_file(recipe: Recipe, output: str) -> str:
    """The run's endpoints file: ``generator.endpoints_file``, else ``OUTPUT/.finephrase/endpoints.txt``; with
    ``cluster.placement: colocated`` a node-local file (each task's own server registers where only the tasks of
    its node read)."""
    g = recipe.generator
    if g.endpoints_file:
        return os.path.abspath(g.endpoints_file)
    if recipe.cluster and recipe.cluster.placement == "colocated":
        return f"/tmp/finephrase-{hashlib.sha1(os.path.abspath(output).encode()).hexdigest()[:12]}/{ENDPOINTS_FILE}"
    return RunPaths(output).w(ENDPOINTS_FILE)


def listed_endpoints_file(recipe: Recipe, output: str) -> str:
    """The endpoints file ``finephrase status`` reads: the run's; for ``cluster.placement: colocated`` the run's
    ``OUTPUT/.finephrase/endpoints.txt``, where each task's server is listed besides its node-local file."""
    if recipe.cluster and recipe.cluster.placement == "colocated" and not recipe.generator.endpoints_file:
        return RunPaths(output).w(ENDPOINTS_FILE)
    return endpoints_file(recipe, output)


def colocated_server(recipe: Recipe, output: str) -> str:
    """The lines a colocated rephrase task runs first: its own server (the server template, run by bash in the
    background on the task's node), stopped when the task's script exits."""
    log_dir = RunPaths(output).w("logs", "servers")
    os.makedirs(log_dir, exist_ok=True)
    cluster = recipe.cluster or ClusterConfig()
    registered, listed = endpoints_file(recipe, output), listed_endpoints_file(recipe, output)
    script = render_server_job(recipe, ServerJob(
        endpoints_file=registered, log_dir=log_dir,
        job_name=f"{job_prefix(recipe)}-server-{server_kind(recipe)}", partition=None,
        env_command=activate_command(cluster), listed_in=listed if listed != registered else None))
    path = os.path.join(log_dir, "colocated.sh")
    write_redacted(path, script, cluster)
    out = shlex.quote(log_dir) + '/"colocated-${SLURM_JOB_ID:-local}.out"'
    # only the stage's tasks: datatrove's merge-stats job (a one-task array too) runs the same script header
    # (the bracket keeps this line from matching itself)
    return "\n".join(['if grep -q "launch_pickled_pipelin[e]" "$0"; then', f"bash {shlex.quote(path)} > {out} 2>&1 &",
                      "FP_SERVER_PID=$!",
                      "trap 'kill -TERM $FP_SERVER_PID 2>/dev/null; wait $FP_SERVER_PID || true' EXIT", "fi"])


def venv_activate(cluster: ClusterConfig) -> str | None:
    """``bin/activate`` of the environment jobs run in: ``cluster.venv``, else this Python's (if it has one)."""
    if cluster.venv:
        return cluster.venv
    path = os.path.join(sys.prefix, "bin", "activate")
    return path if os.path.isfile(path) else None


def activate_command(cluster: ClusterConfig) -> str:
    venv = venv_activate(cluster)
    return f"source {shlex.quote(venv)}" if venv else ""


def job_prefix(recipe: Recipe) -> str:
    return "fp-" + re.sub(r"[^A-Za-z0-9_.-]+", "-", recipe.name)[:40]


def submit_servers(recipe: Recipe, output: str, count: int, partition: str | None, hold: bool = False) -> list[str]:
    """Submit ``count`` server jobs (``hold``: held until :func:`finephrase.cluster.slurm.hold_until`); their ids."""
    if count <= 0:
        return []
    paths = RunPaths(output)
    log_dir = paths.w("logs", "servers")
    os.makedirs(log_dir, exist_ok=True)
    file = endpoints_file(recipe, output)
    os.makedirs(os.path.dirname(file), exist_ok=True)
    cluster = recipe.cluster or ClusterConfig()
    script = render_server_job(recipe, ServerJob(
        endpoints_file=file, log_dir=log_dir, job_name=f"{job_prefix(recipe)}-server-{server_kind(recipe)}",
        partition=partition, env_command=activate_command(cluster)))
    write_redacted(os.path.join(log_dir, "server.sbatch"), script, cluster)  # what was submitted, for the user
    args = ["--chdir", os.getcwd()] + (["--hold"] if hold else [])
    return [slurm.sbatch(script, *args) for _ in range(count)]


def live_servers(ledger: Ledger | None) -> list[str]:
    """The run's server jobs still queued or running."""
    if ledger is None or not ledger.server_ids():
        return []
    alive = {j.job for j in slurm.squeue(ledger.server_ids()) if j.state in ("PENDING", "RUNNING", "CONFIGURING")}
    return [i for i in ledger.server_ids() if i in alive]
