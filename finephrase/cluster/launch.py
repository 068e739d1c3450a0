"""``finephrase launch``: server jobs, the pipeline's stages on Slurm (or Ray, or this machine), the finish job.

A relaunch of the same output folder resubmits only what is unfinished (datatrove's completion markers; the rephrase
checkpoints inside a task) and reuses the run's server jobs that are still alive; it refuses while a stage of an
earlier launch is still queued, or while its Ray driver still runs (``finephrase status`` / ``finephrase stop``).
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass, field, replace

from finephrase.cluster import slurm
from finephrase.cluster.driver import check_no_live_driver
from finephrase.cluster.jobs import Launch, Ledger, load_ledger, save_ledger
from finephrase.cluster.secrets import (
    API_KEY_ENV,
    check_secrets,
    key_id,
    redact_file,
    run_api_key,
)
from finephrase.cluster.servers import (
    activate_command,
    colocated_server,
    endpoints_file,
    job_prefix,
    listed_endpoints_file,
    live_servers,
    submit_servers,
)
from finephrase.cluster.templates import model_for, server_kind
from finephrase.errors import ClusterError
from finephrase.inference.client.backends import GeneratorRuntime, backend_for
from finephrase.pipeline.build import RunPaths, Stage, build_stages
from finephrase.plan import resolve, save_plan
from finephrase.recipe import ClusterConfig, Recipe

EXECUTORS = ("slurm", "ray", "local")


@dataclass
class LaunchResult:
    output: str
    executor: str
    ledger: str | None = None
    servers: list[str] = field(default_factory=list)  # server jobs of this launch (new and reused)
    new_servers: list[str] = field(default_factory=list)
    stages: dict[str, list[str]] = field(default_factory=dict)  # stage -> job ids (empty: nothing left to run)
    finish: str | None = None
    supervisor: str | None = None


def server_count(recipe: Recipe, executor: str, servers: int | None = None) -> int:
    """Server jobs to run: ``--servers``, else ``cluster.servers`` as the recipe sets it; a Ray run whose generator
    names its endpoints (``generator.endpoints``/``endpoints_file``) and whose recipe does not ask for server jobs
    runs none (no Slurm needed)."""
    cluster = recipe.cluster or ClusterConfig()
    if cluster.placement == "colocated":
        return 0  # each rephrase task starts its own
    if servers is not None:
        return servers
    g = recipe.generator
    if executor == "ray" and (g.endpoints or g.endpoints_file) and "servers" not in cluster.model_fields_set:
        return 0
    return cluster.servers


def cluster_runtime(recipe: Recipe, output: str, servers: int | None = None) -> GeneratorRuntime:
    """How the rephrase stage reaches the launched servers: the run's endpoints file (plus generator.endpoints).
    ``servers``: the server jobs of the run (default ``cluster.servers``)."""
    g, kind = recipe.generator, server_kind(recipe)
    launched = bool(recipe.cluster and recipe.cluster.servers) if servers is None else servers > 0
    launched = launched or bool(recipe.cluster and recipe.cluster.placement == "colocated")
    backend = backend_for(g.server)
    if not launched:
        return backend.served_runtime(g, endpoints_file=endpoints_file(recipe, output), program=kind)
    return backend.served_runtime(g, endpoints_file=endpoints_file(recipe, output), model=model_for(recipe, kind)[0],
                                  api_key_env=API_KEY_ENV, program=kind)


def _cluster_recipe(recipe: Recipe) -> Recipe:
    """The recipe as the tasks run it: a rephrase task also waits for a server job to become ready."""
    out = recipe.model_copy(deep=True)
    cluster = out.cluster or ClusterConfig()
    out.generator.unavailable_timeout = recipe.generator.unavailable_timeout + cluster.ready_timeout
    return out


def _check_idle(ledger: Ledger) -> None:
    """Refuse while a stage or finish job of an earlier launch runs. Those that have not started (waiting on a
    dependency, or on one that failed: ``DependencyNeverSatisfied``) are cancelled: this launch submits what is
    unfinished again, so a relaunch after a failure just works."""
    jobs = slurm.squeue(ledger.pipeline_ids())
    running = sorted({j.job for j in jobs if j.state != "PENDING"})
    if running:
        raise ClusterError(f"jobs of an earlier launch of this run are still running ({', '.join(running)})\n"
                           "wait for them (`finephrase status RUN_DIR`) or cancel them (`finephrase stop RUN_DIR`)")
    waiting = sorted({j.job for j in jobs})
    slurm.scancel(waiting)
    left = slurm.wait_gone(waiting, timeout=60)
    if left:
        raise ClusterError(f"could not cancel the earlier launch's waiting jobs {', '.join(left)}\n"
                           "cancel them with `finephrase stop RUN_DIR`, then launch again")


def _submit_python(recipe: Recipe, output: str, name: str, module_args: list[str], partition: str,
                   dependency: str | None) -> str:
    """A one-CPU job of the run that runs ``python -m MODULE ARGS`` in finephrase's environment."""
    cluster = recipe.cluster or ClusterConfig()
    log = RunPaths(output).w("logs", f"{name}-%j.out")
    cmd = [sys.executable, "-m", *module_args]
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_prefix(recipe)}-{name}", f"#SBATCH --output={log}",
             "#SBATCH --export=ALL", "#SBATCH --cpus-per-task=1",
             f"#SBATCH --mem-per-cpu={cluster.task_mem_per_cpu_gb}G", f"#SBATCH --time={cluster.time}",
             f"#SBATCH --partition={partition}"]
    lines += [f"#SBATCH --{k}={v}" for k, v in (("account", cluster.account), ("qos", cluster.qos)) if v]
    lines += [activate_command(cluster)]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in cluster.environment.items()]
    lines += [" ".join(shlex.quote(c) for c in cmd)]
    args = ["--chdir", os.getcwd()] + ([f"--dependency={dependency}"] if dependency else [])
    return slurm.sbatch("\n".join(lines) + "\n", *args)


def submit_finish(recipe: Recipe, output: str, after: list[str], partition: str, push_to: str | None) -> str:
    """The job after the last stage (``afterok``): report, card, optional push, then the server jobs are released."""
    args = ["finephrase.cluster.finish", output, os.path.abspath(recipe.path)] + (["--push-to", push_to] if push_to
                                                                                   else [])
    return _submit_python(recipe, output, "finish", args, partition, f"afterok:{':'.join(after)}" if after else None)


def _servers_follow_the_work(recipe: Recipe, output: str, launch: Launch, held: list[str], partition: str,
                             server_partition: str | None) -> None:
    """Release the held server jobs once the stage before rephrase has succeeded, and submit the supervisor
    (``afterany`` on that stage): it replaces dead server jobs and releases them all when rephrase ends."""
    inference = next((i for i, s in enumerate(launch.stages) if s.kind == "inference"), None)
    if inference is None or not launch.stages[inference].jobs:
        slurm.scancel(held)  # nothing to rephrase: no server
        return
    before = launch.stages[inference - 1].arrays if inference > 0 else []
    for job in held:
        slurm.hold_until(job, f"afterok:{':'.join(before)}" if before else None)
    launch.supervisor = _submit_python(
        recipe, output, "supervisor", ["finephrase.cluster.supervise", output, os.path.abspath(recipe.path),
                               server_partition or partition], partition,
        f"afterany:{':'.join(before)}" if before else None)


def _submit_stages(recipe: Recipe, stages: list[Stage], output: str, partition: str, first_server: str | None,
                   launch: Launch) -> None:
    from finephrase.cluster.executors import launch_slurm, slurm_executors

    cluster = recipe.cluster or ClusterConfig()
    colocated = colocated_server(recipe, output) if cluster.placement == "colocated" else None
    executors, recorders = slurm_executors(stages, output, cluster, job_prefix(recipe), partition,
                                           activate_command(cluster), after_started=first_server,
                                           colocated=colocated)
    try:
        launch.stages = launch_slurm(stages, executors, recorders)
    finally:  # what was submitted is recorded even when a later sbatch fails
        for stage in stages:  # datatrove's copies of the job script and the executor, without secrets
            for name in ("launch_script.slurm", "executor.json"):
                redact_file(os.path.join(RunPaths(output).logs(stage.name), name), cluster)
        if not launch.stages:
            from finephrase.cluster.jobs import StageJobs

            launch.stages = [StageJobs(s.name, s.tasks, s.kind, list(recorders[s.name].ids)) for s in stages]


def _checked_cluster(recipe: Recipe, executor: str) -> ClusterConfig:
    """The recipe's ``cluster`` block, its secrets set in this shell and its placement fit for ``executor``."""
    cluster = recipe.cluster or ClusterConfig()
    check_secrets(cluster)
    if cluster.placement == "colocated" and executor != "slurm":
        raise ClusterError("cluster.placement: colocated starts a server inside each Slurm rephrase task\n"
                           "launch it with --executor slurm, or use placement: pool")
    return cluster


def launch(recipe: Recipe, executor: str = "slurm", servers: int | None = None, output: str | None = None,
           tasks: int | None = None, limit: int | None = None, push_to: str | None = None,
           workers: int | None = None) -> LaunchResult:
    """Launch a recipe. ``slurm``: submit and return (the jobs are in ``OUTPUT/.finephrase/jobs.json``); ``ray``:
    servers as Slurm jobs when ``servers`` > 0, the stages on Ray, blocking; ``local``: ``finephrase run``."""
    if executor not in EXECUTORS:
        raise ClusterError(f"unknown executor {executor!r}; use one of {', '.join(EXECUTORS)}")
    output = os.path.abspath(output or recipe.output.folder)
    plan = resolve(recipe)
    if executor == "local":
        from finephrase.run import run_recipe

        run_recipe(plan, output=output, limit=limit, tasks=tasks, workers=workers)
        return LaunchResult(output, executor)
    cluster = _checked_cluster(recipe, executor)
    count = server_count(recipe, executor, servers)
    os.makedirs(RunPaths(output).work, exist_ok=True)
    save_plan(plan, output)  # what the stages' tasks and the finish job read
    ledger = load_ledger(output) or Ledger()
    check_no_live_driver(ledger, output)
    ledger.recipe, ledger.endpoints_file = os.path.abspath(recipe.path), listed_endpoints_file(recipe, output)
    needs_slurm = executor == "slurm" or count > 0
    if needs_slurm:
        _check_idle(ledger)
    partition = (cluster.partition or slurm.default_partition()) if needs_slurm else None
    reused = _run_key_and_reused_servers(recipe, ledger, count) if needs_slurm else []
    current = Launch(time=time.time(), executor=executor)
    ledger.launches.append(current)
    try:
        stages = build_stages(replace(plan, recipe=_cluster_recipe(recipe)), output,
                              cluster_runtime(recipe, output, count), tasks=tasks, limit=limit)
        held = executor == "slurm"  # servers follow the work: held until the stage before rephrase is done
        new: list[str] = []
        if not _inference_done(stages, output):  # no server for a run whose rephrase stage is complete
            new = submit_servers(recipe, output, max(0, count - len(reused)), partition, hold=held)
            current.servers, current.wanted_servers = reused + new, count
        if executor == "slurm":
            task_partition = cluster.task_partition or partition
            if not task_partition:
                raise ClusterError("no partition: set cluster.partition in the recipe (the cluster has no default)")
            _submit_stages(recipe, stages, output, task_partition, current.servers[0] if current.servers else None,
                           current)
            if current.servers:
                _servers_follow_the_work(recipe, output, current, new, task_partition, partition)
            after = [j for s in current.stages for j in s.jobs]
            current.finish = submit_finish(recipe, output, after, task_partition, push_to)
        else:
            _launch_ray(recipe, stages, output, ledger, workers, push_to)
    finally:
        path = save_ledger(output, ledger)
    return LaunchResult(output, executor, path, current.servers, current.servers[len(reused):],
                        {s.name: s.jobs for s in current.stages}, current.finish, current.supervisor)


def _inference_done(stages: list[Stage], output: str) -> bool:
    """Every task of every inference stage has its completion marker (datatrove's, as a relaunch skips them)."""
    return all(RunPaths(output).completed_tasks(s.name) >= s.tasks
               for s in stages if s.kind == "inference")


def _stage_entry(stage: Stage):
    from finephrase.cluster.jobs import StageJobs

    return StageJobs(stage.name, stage.tasks, stage.kind)


def _reusable_servers(ledger: Ledger, api_key_id: str) -> list[str]:
    """The run's live server jobs, when they hold this launch's API key; otherwise they are cancelled (they would
    refuse this launch's tasks) and the ledger takes the new key."""
    alive = live_servers(ledger)
    if ledger.api_key_id == api_key_id:
        return alive
    if alive:
        print(f"finephrase: server jobs {', '.join(alive)} hold an earlier launch's API key: cancelled (export "
              f"{API_KEY_ENV} as it was to keep servers across launches)", file=sys.stderr)
        slurm.scancel(alive)
    ledger.api_key_id = api_key_id
    return []


def _run_key_and_reused_servers(recipe: Recipe, ledger: Ledger, count: int) -> list[str]:
    """The run's API key (one for its servers and its tasks: the generator's own key if it names one) and the live
    server jobs this launch reuses."""
    cluster = recipe.cluster or ClusterConfig()
    if count <= 0 and cluster.placement != "colocated":
        return []
    g = recipe.generator
    if g.api_key_env and os.environ.get(g.api_key_env):
        os.environ.setdefault(API_KEY_ENV, os.environ[g.api_key_env])
    return _reusable_servers(ledger, key_id(run_api_key()))


def _launch_ray(recipe: Recipe, stages: list[Stage], output: str, ledger: Ledger, workers: int | None,
                push_to: str | None) -> None:
    """The stages on Ray, blocking; then the finish step (report, card, push; releases server jobs if any). The
    ledger records this process as the launch's driver (``finephrase stop`` signals it) and how it ended. A failed
    or stopped Ray run releases its server jobs too."""
    from finephrase.cluster.driver import this_driver
    from finephrase.errors import RunStopped
    from finephrase.cluster.executors import connect_ray, run_ray
    from finephrase.cluster.finish import finish

    current = ledger.launches[-1]
    current.stages = [_stage_entry(s) for s in stages]
    current.driver = this_driver(None)
    save_ledger(output, ledger)

    def last_words(stop: RunStopped) -> None:  # the driver exits without unwinding (its clean-up took too long)
        if current.driver.ended:  # it did unwind: the line is said already (or about to be)
            return
        print(stop.line, file=sys.stderr, flush=True)
        current.driver.ended = "stopped"
        save_ledger(output, ledger)
        slurm.scancel(current.servers)

    try:
        current.driver.address = this_driver(connect_ray()).address
        save_ledger(output, ledger)
        run_ray(stages, output, recipe.cluster or ClusterConfig(), workers=workers, on_stop=last_words,
                resume=shlex.join(["finephrase", "launch", recipe.path, "--executor", "ray", "--output", output]))
        finish(output, os.path.abspath(recipe.path), push_to)
    except BaseException as e:
        current.driver.ended = "stopped" if isinstance(e, (RunStopped, KeyboardInterrupt)) else "failed"
        slurm.scancel(current.servers)
        raise
    current.driver.ended = "done"
