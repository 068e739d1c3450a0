"""The run's job ledger: ``OUTPUT/.finephrase/jobs.json``, every job a launch submitted, by id.

``{"launches": [{"time", "executor", "servers": [ids], "stages": [{"name", "tasks", "arrays": [ids], "jobs": [ids]}],
"finish": id, "supervisor": id, "wanted_servers", "replaced", "driver": {"pid", "host", "identity", "address", "ended"}}],
"endpoints_file": path, "recipe": path, "api_key_id": fingerprint}``. ``finephrase stop`` cancels exactly these ids
(and stops a Ray launch's driver: the process named by ``driver``); ``finephrase status`` reads them back; a new
launch reuses the server jobs still alive.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field

from finephrase.pipeline.build import RunPaths

LEDGER = "jobs.json"


def ledger_path(output: str) -> str:
    return RunPaths(output).w(LEDGER)


class JobRecorder:
    """datatrove's ``job_id_retriever`` for one stage: reads the id from sbatch's answer and keeps it (the stage's
    arrays first, then its merge-stats job). Module level: it travels with the pickled executor."""

    def __init__(self):
        self.ids: list[str] = []

    def __call__(self, sbatch_output: str) -> str:
        job = sbatch_output.split()[-1].split(";")[0]
        self.ids.append(job)
        return job


@dataclass
class StageJobs:
    name: str
    tasks: int
    kind: str = "cpu"
    jobs: list[str] = field(default_factory=list)  # every job of the stage: its arrays, then merge-stats

    @property
    def arrays(self) -> list[str]:
        return self.jobs[:-1] if len(self.jobs) > 1 else list(self.jobs)


@dataclass
class RayDriver:
    """The process that runs a Ray launch's stages (``finephrase launch --executor ray``, in the foreground)."""

    pid: int
    host: str  # socket.gethostname() of the machine it runs on
    identity: str  # its boot id and start time (finephrase.lifetime.process_identity): a reused pid is not it
    address: str | None = None  # the Ray cluster it drives (redacted)
    ended: str | None = None  # "done", "stopped" or "failed" once it ended by itself (None: running, or killed)


@dataclass
class Launch:
    time: float
    executor: str
    servers: list[str] = field(default_factory=list)
    stages: list[StageJobs] = field(default_factory=list)
    finish: str | None = None
    supervisor: str | None = None  # the job that replaces dead server jobs and releases them all after rephrase
    wanted_servers: int = 0
    replaced: int = 0  # server jobs the supervisor submitted in place of dead ones
    driver: RayDriver | None = None  # a Ray launch's driver process

    def all_ids(self) -> list[str]:
        ids = list(self.servers) + [j for s in self.stages for j in s.jobs]
        return ids + [j for j in (self.finish, self.supervisor) if j]


@dataclass
class Ledger:
    recipe: str | None = None
    endpoints_file: str | None = None
    api_key_id: str | None = None  # a fingerprint of the API key the server jobs hold (never the key)
    launches: list[Launch] = field(default_factory=list)

    def all_ids(self) -> list[str]:
        return [i for launch in self.launches for i in launch.all_ids()]

    def server_ids(self) -> list[str]:
        return [i for launch in self.launches for i in launch.servers]

    def pipeline_ids(self) -> list[str]:
        """Stage and finish jobs (not servers)."""
        return [i for launch in self.launches for i in launch.all_ids() if i not in launch.servers]


def load_ledger(output: str) -> Ledger | None:
    try:
        with open(ledger_path(output)) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    launches = [Launch(time=x["time"], executor=x["executor"], servers=x.get("servers", []),
                       stages=[StageJobs(**s) for s in x.get("stages", [])], finish=x.get("finish"),
                       supervisor=x.get("supervisor"), wanted_servers=x.get("wanted_servers", 0),
                       replaced=x.get("replaced", 0), driver=RayDriver(**x["driver"]) if x.get("driver") else None)
                for x in data.get("launches", [])]
    return Ledger(recipe=data.get("recipe"), endpoints_file=data.get("endpoints_file"),
                  api_key_id=data.get("api_key_id"), launches=launches)


def save_ledger(output: str, ledger: Ledger) -> str:
    path = ledger_path(output)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(asdict(ledger), f, indent=1)
    os.replace(tmp, path)
    return path
