"""``build_stages``' stages on datatrove's distributed executors: ``SlurmPipelineExecutor`` (one job array per stage,
chained with ``depends``) and ``RayPipelineExecutor``."""

from __future__ import annotations

import os
import shlex
from collections.abc import Callable

from datatrove.executor.slurm import SlurmPipelineExecutor

from finephrase.cluster.jobs import JobRecorder, StageJobs
from finephrase.pipeline.build import RunPaths, Stage
from finephrase.recipe import ClusterConfig

# a task's own Xet cache: a shared one corrupted under parallel tasks in FinePhrase's production run
XET_CACHE = 'export HF_XET_CACHE="${TMPDIR:-/tmp}/finephrase-xet/${SLURM_JOB_ID:-0}_${SLURM_ARRAY_TASK_ID:-0}"'


class FinephraseSlurmExecutor(SlurmPipelineExecutor):
    """datatrove's executor, plus ``after_started``: the stage starts only once that job (the first server job) has
    started (``--dependency=after:ID``): rephrase tasks do not burn their wait for a replica while servers queue."""

    def __init__(self, *args, after_started: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.after_started = after_started

    @property
    def dependency(self) -> str:
        deps = [d for d in (super().dependency, f"after:{self.after_started}" if self.after_started else "") if d]
        return ",".join(deps)


def task_env_command(cluster: ClusterConfig, activate: str) -> str:
    lines = [activate] if activate else []
    lines += [f"export {k}={shlex.quote(v)}" for k, v in cluster.environment.items()]
    return "\n".join(lines + [XET_CACHE])


def slurm_executors(stages: list[Stage], output: str, cluster: ClusterConfig, job_prefix: str, partition: str,
                    activate: str, after_started: str | None = None,
                    colocated: str | None = None) -> tuple[dict, dict[str, JobRecorder]]:
    """One executor per stage, chained with ``depends`` ({name: executor}, {name: its job recorder}). The
    inference stage waits for ``after_started``; with ``colocated`` (the lines that start a task's own server) its
    tasks get the server's GPUs and CPUs and start it first. Nothing is submitted yet: ``launch_slurm`` does."""
    paths = RunPaths(output)
    executors: dict[str, SlurmPipelineExecutor] = {}
    recorders: dict[str, JobRecorder] = {}
    for stage in stages:
        recorders[stage.name] = JobRecorder()
        own_server = bool(colocated) and stage.kind == "inference"
        env_command = task_env_command(cluster, activate) + (f"\n{colocated}" if own_server else "")
        executors[stage.name] = FinephraseSlurmExecutor(
            pipeline=stage.pipeline, tasks=stage.tasks, time=cluster.time, partition=partition,
            cpus_per_task=cluster.cpus if own_server else cluster.task_cpus,
            gpus_per_task=cluster.gpus if own_server else 0, mem_per_cpu_gb=cluster.task_mem_per_cpu_gb,
            workers=-1, job_name=f"{job_prefix}-{stage.name}", qos=cluster.qos or "", env_command=env_command,
            sbatch_args={k: v for k, v in (("account", cluster.account),) if v},
            depends=executors.get(stage.depends) if stage.depends else None,
            logging_dir=paths.logs(stage.name), skip_completed=True, srun_args={"cpu-bind": "none"},
            job_id_retriever=recorders[stage.name], mail_user=None, requeue=False,
            after_started=after_started if stage.kind == "inference" else None)
    return executors, recorders


def launch_slurm(stages: list[Stage], executors: dict, recorders: dict[str, JobRecorder]) -> list[StageJobs]:
    """Submit every stage (datatrove submits the chain from the last one; completed tasks are skipped, a stage
    with none left is not submitted) and return the job ids of each."""
    executors[stages[-1].name].run()
    return [StageJobs(name=s.name, tasks=s.tasks, kind=s.kind, jobs=list(recorders[s.name].ids)) for s in stages]


def connect_ray() -> str:
    """Connect this process, the driver, to the Ray cluster ``ray.init()`` finds (``RAY_ADDRESS``, else a local
    one); the cluster's address."""
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=False)
    return ray.get_runtime_context().gcs_address


def run_ray(stages: list[Stage], output: str, cluster: ClusterConfig, workers: int | None = None,
            resume: str | None = None, on_stop: Callable | None = None) -> None:
    """Run the stages, in order, on the Ray cluster (:func:`connect_ray`); blocks. Stages are not chained with
    ``depends`` (datatrove's Ray executor then polls a failed dependency forever): a stage with a task left
    unfinished stops the run (a relaunch resumes it). SIGTERM (``finephrase stop``) or Ctrl-C: datatrove's executor
    cancels the stage's tasks and kills its actors on the way out, the driver disconnects (Ray ends what is left of
    its job), and :class:`~finephrase.errors.RunStopped` (with ``resume``, the command that resumes) says
    where it stopped; if that clean-up outlasts its grace, ``on_stop(RunStopped)`` and the process exits."""
    import signal

    import ray

    from finephrase.cluster.driver import stop_on_sigterm
    from finephrase.errors import RunStopped

    connect_ray()
    current, received = stages[0], []

    def stopped(signum: int) -> RunStopped:
        done = RunPaths(output).completed_tasks(current.name)
        return RunStopped.by_signal(signum, current.name, current.tasks - min(done, current.tasks), current.tasks,
                                    resume)

    try:
        with stop_on_sigterm(last_words=(lambda signum: on_stop(stopped(signum))) if on_stop else None) as received:
            check_output_visible(output)
            for current in stages:
                _run_stage(current, output, cluster, workers)
    except KeyboardInterrupt:  # driver.StopSignal (SIGTERM) or Ctrl-C
        ray.shutdown()
        raise stopped(received[0] if received else signal.SIGINT) from None


def _run_stage(stage: Stage, output: str, cluster: ClusterConfig, workers: int | None) -> None:
    from datatrove.executor.ray import RayPipelineExecutor

    from finephrase.errors import ClusterError

    paths = RunPaths(output)
    executor = RayPipelineExecutor(
        pipeline=stage.pipeline, tasks=stage.tasks, workers=workers or stage.tasks,
        logging_dir=paths.logs(stage.name), skip_completed=True, cpus_per_task=cluster.task_cpus,
        mem_per_cpu_gb=cluster.task_mem_per_cpu_gb)
    executor.run()
    left = executor.get_incomplete_ranks(skip_completed=True)
    if left:
        raise ClusterError(f"stage {stage.name}: {len(left)} of {stage.tasks} task(s) did not finish "
                           f"(logs: {paths.logs(stage.name)})\nfix the cause, then launch again: finished tasks are "
                           "skipped")


def check_output_visible(output: str) -> None:
    """Every alive node of the Ray cluster sees ``output`` (tasks write there): else a clear error, before any stage
    runs."""
    import socket

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from finephrase.errors import ClusterError

    @ray.remote(num_cpus=0)
    def sees(path: str) -> tuple[bool, str]:
        return os.path.isdir(path), socket.gethostname()

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    answers = ray.get([sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(output)
                       for n in nodes])
    blind = sorted({host for ok, host in answers if not ok})
    if blind:
        raise ClusterError(f"{output} is not visible on Ray node(s) {', '.join(blind)}: the tasks write there\n"
                           "put OUTPUT on a file system every node mounts (the same path everywhere)")
