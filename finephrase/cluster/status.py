"""``finephrase status RUN_DIR``: server replicas, per-stage tasks, documents and tokens so far, rates and an ETA.

Sources: the run's job ledger (``jobs.json``), ``squeue`` (what is queued or running; not asked when the run has
no Slurm job), a Ray launch's driver process (running, or how it ended), datatrove's completion
markers (what is done), the endpoints file and a probe of each replica (what serves), and the rephrase stage's output
chunks (documents and completion tokens so far). A task neither done nor in the queue once its stage's jobs left the
queue is failed (relaunch to rerun it). The previous call's numbers (``.finephrase/status.json``) give "tokens/s now".
"""

from __future__ import annotations

import glob
import json
import os
import time
import urllib.request
from dataclasses import asdict, dataclass, field

import orjson

from finephrase.cluster import slurm
from finephrase.cluster.driver import describe
from finephrase.cluster.jobs import Ledger, StageJobs, load_ledger
from finephrase.errors import ClusterError
from finephrase.inference.client.fleet import fleet_line, summarise
from finephrase.inference.endpoints import read_endpoints_file
from finephrase.pipeline.build import RunPaths
from finephrase.stats import ROLLOUTS

SAMPLE = "status.json"


@dataclass
class StageStatus:
    name: str
    tasks: int
    done: int = 0
    running: int = 0
    pending: int = 0
    failed: int = 0
    blocked: bool = False  # its jobs wait on a dependency that can no longer be satisfied


@dataclass
class ServerStatus:
    job: str
    state: str  # a squeue state, or "ENDED"


@dataclass
class RunStatus:
    output: str
    servers: list[ServerStatus] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)
    healthy: list[str] = field(default_factory=list)
    stages: list[StageStatus] = field(default_factory=list)
    finish: str | None = None  # the finish job's state: a squeue state, "ENDED" or None
    supervisor: str | None = None  # the server supervisor's state: a squeue state, "ENDED" or None
    servers_replaced: int = 0  # server jobs submitted in place of dead ones
    replacement_limit: int | None = None
    documents: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0
    tokens_per_s: float | None = None
    tokens_per_s_now: float | None = None
    documents_in: int | None = None  # the rephrase stage's input, once known
    eta_s: float | None = None
    fleet: str | None = None  # the replicas' utilisation and windows, from the rephrase tasks' fleet records
    driver: str | None = None  # a Ray launch's driver: running, or how it ended (driver.describe)

    @property
    def complete(self) -> bool:
        return bool(self.stages) and all(s.done == s.tasks for s in self.stages)

    def to_dict(self) -> dict:
        return {**asdict(self), "complete": self.complete}


def _healthy(endpoint: str, timeout: float = 3.0) -> bool:
    for route in ("/health", "/v1/models"):
        try:
            with urllib.request.urlopen(endpoint + route, timeout=timeout) as r:
                if r.status == 200:
                    return True
        except OSError:
            continue
    return False


def _stage_status(output: str, stage: StageJobs, queued: list[slurm.QueuedJob]) -> StageStatus:
    done = RunPaths(output).completed_tasks(stage.name)
    st = StageStatus(stage.name, stage.tasks, done=min(done, stage.tasks))
    mine = [q for q in queued if q.job in stage.arrays]
    st.running = sum(q.state in ("RUNNING", "COMPLETING", "CONFIGURING") for q in mine)
    st.pending = sum(q.state == "PENDING" for q in mine)
    st.blocked = any(q.reason == "DependencyNeverSatisfied" for q in mine)
    if stage.jobs and not mine:
        st.failed = st.tasks - st.done
    return st


def rephrased_progress(output: str) -> tuple[int, int]:
    """(documents, completion tokens) the rephrase stage wrote so far (its output chunks, written with the
    checkpoints)."""
    docs = tokens = 0
    for path in glob.glob(os.path.join(RunPaths(output).w("rephrased"), "*.jsonl")):
        with open(path, "rb") as f:
            for line in f:
                try:
                    doc = orjson.loads(line)
                except orjson.JSONDecodeError:
                    continue  # a line being written
                docs += 1
                for results in (doc.get("metadata") or {}).get(ROLLOUTS) or []:
                    entries = results.values() if isinstance(results, dict) and "text" not in results else [results]
                    tokens += sum(int(e.get("completion_tokens") or 0) for e in entries if isinstance(e, dict))
    return docs, tokens


def _documents_in(output: str, stages: list[StageStatus]) -> int | None:
    """The rephrase stage's input: what the stage before it wrote (its merged stats), once that stage is done."""
    from finephrase.report.stats import counters, load_stage_stats

    names = [s.name for s in stages]
    if "rephrase" not in names or names.index("rephrase") == 0:
        return None
    before = stages[names.index("rephrase") - 1]
    steps = load_stage_stats(output, before.name) if before.done == before.tasks else []
    return int(counters(steps[-1]).get("total", 0)) if steps else None


def _rates(output: str, st: RunStatus, started: float) -> None:
    """Overall and recent tokens/s, and the ETA; remembers this sample for the next call."""
    now = time.time()
    st.elapsed_s = round(now - started, 1)
    if st.elapsed_s > 0:
        st.tokens_per_s = round(st.tokens / st.elapsed_s, 1)
    path = RunPaths(output).w(SAMPLE)
    try:
        with open(path) as f:
            prev = json.load(f)
        if now - prev["time"] > 0 and st.tokens >= prev["tokens"]:
            st.tokens_per_s_now = round((st.tokens - prev["tokens"]) / (now - prev["time"]), 1)
    except (OSError, ValueError, KeyError):
        pass
    with open(path, "w") as f:
        json.dump({"time": now, "tokens": st.tokens, "documents": st.documents}, f)
    if st.documents_in and st.documents and st.elapsed_s > 0:
        left = max(0, st.documents_in - st.documents)
        st.eta_s = round(left / (st.documents / st.elapsed_s), 1)


def run_status(output: str, probe: bool = True) -> RunStatus:
    """The status of the launched run in ``output``."""
    ledger: Ledger | None = load_ledger(output)
    if ledger is None or not ledger.launches:
        raise ClusterError(f"{output}: no jobs.json: not a folder `finephrase launch` wrote\n"
                           "name the output folder of a launched run")
    ids = ledger.all_ids()
    queued = slurm.squeue(ids) if ids else []  # a Ray run with given endpoints has no Slurm job (nor needs Slurm)
    states = {q.job: q.state for q in queued}
    last = ledger.launches[-1]
    st = RunStatus(output=output)
    st.servers = [ServerStatus(j, states.get(j, "ENDED")) for j in last.servers]
    st.endpoints = read_endpoints_file(ledger.endpoints_file) if ledger.endpoints_file else []
    st.healthy = [e for e in st.endpoints if _healthy(e)] if probe else []
    st.stages = [_stage_status(output, s, queued) for s in last.stages]
    st.finish = states.get(last.finish, "ENDED") if last.finish else None
    st.supervisor = states.get(last.supervisor, "ENDED") if last.supervisor else None
    st.servers_replaced = last.replaced
    st.replacement_limit = _replacement_limit(output)
    st.documents, st.tokens = rephrased_progress(output)
    st.documents_in = _documents_in(output, st.stages)
    _rates(output, st, ledger.launches[0].time)
    st.fleet = fleet_line(summarise(RunPaths(output).w("fleet")))
    st.driver = describe(last.driver) if last.driver else None
    return st


def _replacement_limit(output: str) -> int | None:
    """``cluster.server_replacements`` of the launched recipe (None when its plan cannot be read)."""
    from finephrase.errors import FinephraseError
    from finephrase.plan import load_plan

    try:
        recipe = load_plan(output).recipe
    except (FinephraseError, OSError, ValueError):
        return None
    return recipe.cluster.server_replacements if recipe and recipe.cluster else None
