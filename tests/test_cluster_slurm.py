"""``finephrase launch/status/stop`` on a real one-node Slurm (tests/slurm_cluster.py): a server job runs the embedded
llama.cpp server through the launch/ template machinery, the stages run as sbatch job arrays through datatrove's
SlurmPipelineExecutor, and the finish job writes the card and releases the server."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import FAST_GENERATOR, run_cli, run_marker, run_processes, write_recipe
from finephrase.cluster import slurm
from finephrase.cluster.jobs import load_ledger
from finephrase.cluster.status import RunStatus, run_status
from finephrase.cluster.stop import stop_run

LIMIT = 4
RUN_TIMEOUT = 420  # seconds for a launched run to complete (~100 s on 2 cores)
SECRETS = {"HF_TOKEN": "hf_" + uuid.uuid4().hex + "Zz", "FINEPHRASE_API_KEY": ""}  # a new key per launch
COLUMNS = ["id", "source_id", "prompt", "text", "completion_tokens", "finish_reason"]


def cluster_recipe(path: Path, servers: int = 1) -> Path:
    """A small recipe: the demo's filters, one prompt, greedy 48-token answers, one 1-CPU embedded server job."""
    return write_recipe(path, {
        "dedup": None, "mix": None, "prompts": ["finephrase/faq"],
        "generator": {**FAST_GENERATOR, "params": {**FAST_GENERATOR["params"], "top_p": None}},
        "run": {"limit": LIMIT, "tasks": 1},
        "cluster": {"server": "embedded", "servers": servers, "gpus": 0, "cpus": 1, "memory": "2G",
                    "time": "00:30:00", "task_mem_per_cpu_gb": 1, "ready_timeout": 300, "secrets": ["HF_TOKEN"]},
    })


def squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%F"], capture_output=True, text=True, timeout=30).stdout
    return set(out.split())


def logs_tail(out: Path) -> str:
    text = []
    for path in sorted((out / ".finephrase" / "logs").rglob("*.out")) + sorted((out / ".finephrase" / "logs").rglob("*.log")):
        text.append(f"--- {path}\n{path.read_text(errors='replace')[-1500:]}")
    return "\n".join(text)


def wait_complete(out: Path, timeout: float = RUN_TIMEOUT, samples: list | None = None) -> RunStatus:
    """Poll ``run_status`` until every stage is done and the finish job has ended; fail on a failed task."""
    deadline = time.monotonic() + timeout
    while True:
        st = run_status(str(out), probe=False)
        if samples is not None:
            samples.append(st)
        if any(s.failed or s.blocked for s in st.stages):
            pytest.fail(f"a stage failed: {st.stages}\n{logs_tail(out)}")
        if st.complete and st.finish in (None, "ENDED") and st.supervisor in (None, "ENDED"):
            return st
        if time.monotonic() > deadline:
            pytest.fail(f"the launched run did not complete in {timeout:.0f}s: {st.stages}, finish {st.finish}\n"
                        f"{logs_tail(out)}")
        time.sleep(2)


def rows(out: Path) -> list[dict]:
    table = pq.read_table([str(p) for p in sorted((out / "data" / "faq").glob("*.parquet"))][0]).select(COLUMNS)
    return sorted(table.to_pylist(), key=lambda r: r["id"])


@pytest.fixture(scope="module")
def launched(slurm_cluster, demo_data, tmp_path_factory):
    """One real run through Slurm, with its status sampled while it ran; every job of it cancelled at the end."""
    folder = tmp_path_factory.mktemp("cluster")
    recipe, out = cluster_recipe(folder / "recipe.yaml"), folder / "out"
    start = time.monotonic()
    marker, env = run_marker()
    proc = run_cli("launch", str(recipe), "--executor", "slurm", "--output", str(out), env={**env, **SECRETS})
    samples: list[RunStatus] = [run_status(str(out), probe=False)]  # right after the launch
    try:
        server_env = server_environment(out, marker)
        final = wait_complete(out, samples=samples)
        yield {"recipe": recipe, "out": out, "launch": proc.stdout, "final": final, "samples": samples,
               "wall": time.monotonic() - start, "server_env": server_env}
    finally:
        stop_run(str(out), timeout=60)


def server_environment(out: Path, marker: str, timeout: float = 180) -> dict:
    """Once the run's server job has registered: the environment of its server process (found by the run's marker,
    which every process of the run inherits through sbatch), and whether it refused a request without the key."""
    endpoints = out / ".finephrase" / "endpoints.txt"
    deadline = time.monotonic() + timeout
    while not (endpoints.exists() and endpoints.read_text().strip()):
        assert time.monotonic() < deadline, logs_tail(out)
        time.sleep(1)
    pids = [pid for pid, cmd in run_processes(marker).items() if "llama_server" in cmd]
    assert len(pids) == 1, run_processes(marker)
    with open(f"/proc/{pids[0]}/environ", "rb") as f:
        env = dict(item.decode().split("=", 1) for item in f.read().split(b"\0") if b"=" in item)
    endpoint = endpoints.read_text().split()[0]
    try:
        urllib.request.urlopen(f"http://{endpoint}/v1/models", timeout=10)
        env["_status_without_key"] = 200
    except urllib.error.HTTPError as e:
        env["_status_without_key"] = e.code
    return env


def test_a_secret_reaches_the_server_and_no_file(launched, slurm_cluster):
    """cluster.secrets: the token reaches the server process from the launching shell's environment, with the
    run's API key, which the server requires; neither is in any file under OUTPUT (logs, recipe.yaml, job scripts,
    datatrove's executor files) nor in any job script Slurm keeps."""
    env = launched["server_env"]
    assert env["HF_TOKEN"] == SECRETS["HF_TOKEN"]
    key = env["FINEPHRASE_API_KEY"]
    assert len(key) >= 32 and env["API_KEY"] == key, "the embedded server reads its key from API_KEY"
    assert env["_status_without_key"] == 401, "a request without the run's key is refused"
    scripts = [p for p in Path(slurm_cluster.folder).rglob("script")]  # slurmctld's copies of the job scripts
    files = [p for p in launched["out"].rglob("*") if p.is_file()] + scripts
    assert len(files) > 20 and (launched["out"] / ".finephrase" / "logs" / "servers" / "server.sbatch") in files
    assert any(p.name == "launch_script.slurm" for p in files) and any(p.name == "executor.pik" for p in files)
    for path in files:
        data = path.read_bytes()
        for secret in (SECRETS["HF_TOKEN"], key):
            assert secret.encode() not in data, f"{path} holds a secret"
    assert "HF_TOKEN" in (launched["out"] / "recipe.yaml").read_text(), "the recipe names the secret"


def test_launch_submits_servers_stages_and_finish(launched):
    ledger = load_ledger(str(launched["out"]))
    first = ledger.launches[0]
    assert len(first.servers) == 1 and first.finish and first.supervisor
    assert [s.name for s in first.stages] == ["filter", "rephrase", "rows"]
    assert all(len(s.jobs) == 2 for s in first.stages), "each stage: its array and datatrove's merge-stats job"
    for job in [*first.servers, first.finish, first.supervisor, *[j for s in first.stages for j in s.jobs]]:
        assert job in launched["launch"], "launch prints every job id"
    assert (launched["out"] / "README.md").exists() and (launched["out"] / "recipe.yaml").exists()
    # the finish job released the server, and the server removed its line from the endpoints file on the way out
    assert not set(ledger.all_ids()) & squeue_ids()
    assert (launched["out"] / ".finephrase" / "endpoints.txt").read_text().strip() == ""
    server_log = next((launched["out"] / ".finephrase" / "logs" / "servers").glob("*.out")).read_text()
    assert "server ready at" in server_log and "stopped" in server_log
    # servers follow the work: the server job started after the filter stage, and was released when rephrase ended
    supervisor_log = next((launched["out"] / ".finephrase" / "logs").glob("supervisor-*.out")).read_text()
    assert "the rephrase stage ended: server jobs released" in supervisor_log


def test_same_rows_as_the_local_executor(launched, tmp_path):
    local = tmp_path / "local"
    run_cli("launch", str(launched["recipe"]), "--executor", "local", "--output", str(local))
    slurm_rows, local_rows = rows(launched["out"]), rows(local)
    assert len(slurm_rows) == LIMIT
    assert slurm_rows == local_rows


def test_status_reports_the_true_numbers(launched):
    final, samples, out = launched["final"], launched["samples"], launched["out"]
    produced = rows(out)
    assert final.documents == len(produced) == LIMIT
    assert final.tokens == sum(r["completion_tokens"] for r in produced)
    assert final.documents_in == LIMIT
    assert [(s.name, s.tasks, s.done, s.failed) for s in final.stages] == [
        ("filter", 1, 1, 0), ("rephrase", 1, 1, 0), ("rows", 1, 1, 0)]
    assert [s.state for s in final.servers] == ["ENDED"]
    docs = [s.documents for s in samples]
    assert docs == sorted(docs), "documents only grow"
    assert any(s.stages[0].done == 0 and (s.stages[0].running or s.stages[0].pending) for s in samples[:1]), \
        "the first sample saw the filter stage queued or running"
    shown = run_cli("status", str(out)).stdout
    assert "rephrase" in shown and f"{LIMIT} of {LIMIT} documents" in shown and "complete" in shown
    as_json = json.loads(run_cli("status", str(out), "--json", "--no-probe").stdout)
    assert as_json["complete"] and as_json["tokens"] == final.tokens


def test_colocated_gives_the_same_rows_as_pool(launched, tmp_path):
    """cluster.placement: colocated: no server job; the rephrase task starts its own server through the same
    template (on its node, registered in a node-local endpoints file, listed where `finephrase status` reads) and
    stops it when it ends."""
    import threading

    recipe = write_recipe(tmp_path / "recipe.yaml", {"cluster": {"placement": "colocated"}}, base=launched["recipe"])
    out = tmp_path / "out"
    listed, seen, done = out / ".finephrase" / "endpoints.txt", set(), threading.Event()

    def watch():  # the listing lives only while the task's server does
        while not done.is_set():
            seen.update(listed.read_text().split() if listed.exists() else ())
            time.sleep(0.05)

    marker, env = run_marker()
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    run_cli("launch", str(recipe), "--executor", "slurm", "--output", str(out), env={**env, **SECRETS})
    try:
        wait_complete(out)
        done.set()
        watcher.join()
        assert load_ledger(str(out)).endpoints_file == str(listed)  # what `finephrase status` reads
        assert len(seen) == 1 and listed.read_text().split() == [], "listed while it served, gone when it stopped"
        first = load_ledger(str(out)).launches[0]
        assert first.servers == [] and first.supervisor is None
        assert rows(out) == rows(launched["out"])
        outs = list((out / ".finephrase" / "logs" / "servers").glob("colocated-*.out"))
        assert len(outs) == 1, "one server, the task's (none for datatrove's merge-stats job)"
        server_out = outs[0].read_text()
        assert "server ready at" in server_out and "stopped" in server_out
        assert not [cmd for cmd in run_processes(marker).values() if "llama_server" in cmd], "the server ended"
    finally:
        stop_run(str(out), timeout=60)


def test_relaunch_runs_only_unfinished_tasks(launched):
    out, recipe = launched["out"], launched["recipe"]
    again = run_cli("launch", str(recipe), "--executor", "slurm", "--output", str(out), env=SECRETS).stdout
    last = load_ledger(str(out)).launches[-1]
    assert last.servers == [] and all(s.jobs == [] for s in last.stages), again  # complete: nothing to run
    wait_complete(out, timeout=120)
    before = rows(out)
    # the rows stage's task "failed": its output and completion marker are gone
    os.remove(out / ".finephrase" / "logs" / "rows" / "completions" / "00000")
    for p in (out / "data" / "faq").glob("*.parquet"):
        p.unlink()
    run_cli("launch", str(recipe), "--executor", "slurm", "--output", str(out), env=SECRETS)
    last = load_ledger(str(out)).launches[-1]
    assert {s.name: bool(s.jobs) for s in last.stages} == {"filter": False, "rephrase": False, "rows": True}
    assert last.servers == [], "no server for a run whose rephrase stage is complete"
    wait_complete(out, timeout=180)
    assert rows(out) == before


def test_stop_cancels_every_job_of_the_run(slurm_cluster, demo_data, tmp_path):
    recipe, out = cluster_recipe(tmp_path / "recipe.yaml"), tmp_path / "out"
    run_cli("launch", str(recipe), "--executor", "slurm", "--output", str(out), env=SECRETS)
    ledger = load_ledger(str(out))
    try:
        assert set(ledger.all_ids()) <= squeue_ids() | set()  # all queued right after the launch
        deadline = time.monotonic() + 120
        endpoints = out / ".finephrase" / "endpoints.txt"
        while not (endpoints.exists() and endpoints.read_text().strip()):  # the server job registered itself
            assert time.monotonic() < deadline, logs_tail(out)
            time.sleep(1)
        stopped = run_cli("stop", str(out)).stdout
        assert "cancelled" in stopped
        assert not set(ledger.all_ids()) & squeue_ids()
        assert endpoints.read_text().strip() == "", "the server job removed its endpoint when cancelled"
    finally:
        stop_run(str(out), timeout=60)


def wait_for(what: str, out: Path, ready, timeout: float = RUN_TIMEOUT):
    """Poll ``run_status`` until ``ready(status)``; fail with the logs after ``timeout`` s or on a failed stage."""
    deadline = time.monotonic() + timeout
    while True:
        st = run_status(str(out), probe=False)
        if ready(st):
            return st
        if time.monotonic() > deadline or any(s.failed for s in st.stages if s.name != "rephrase"):
            pytest.fail(f"{what}: not after {timeout:.0f}s: {st}\n{logs_tail(out)}")
        time.sleep(0.5)


def test_dead_servers_are_replaced_and_a_lost_task_loses_nothing(slurm_cluster, demo_data, tmp_path):
    """Two server jobs. While the rephrase task runs, one job is cancelled and then the other's server process is
    killed (-9): the supervisor replaces both (``finephrase status`` counts them) and the task goes on. Then the
    rephrase task itself is cancelled: no server job is left. ``launch --servers 1`` again submits neither the filter
    stage nor the finished work, resumes the task from its checkpoint, and every document is rephrased exactly once."""
    recipe = write_recipe(tmp_path / "recipe.yaml", {"run": {"limit": 24}, "output": {"records_per_chunk": 1}},
                          base=cluster_recipe(tmp_path / "base.yaml", 2))  # enough work to outlast the faults
    out = tmp_path / "out"
    marker, env = run_marker()
    run_cli("launch", str(recipe), "--executor", "slurm", "--output", str(out), env={**env, **SECRETS})
    first = load_ledger(str(out)).launches[0]
    try:
        st = wait_for("two replicas and a first document", out, lambda s: len(s.endpoints) == 2 and s.documents >= 1)
        subprocess.run(["scancel", first.servers[1]], check=True, timeout=30)
        wait_for("the cancelled server job replaced", out, lambda s: s.servers_replaced == 1 and len(s.endpoints) == 2)
        victim = next(pid for pid, cmd in run_processes(marker).items() if "llama_server" in cmd)
        os.kill(victim, 9)
        st = wait_for("the killed server replaced, and documents from the replicas", out,
                      lambda s: s.servers_replaced == 2 and len(s.endpoints) == 2 and s.documents > st.documents)
        assert st.documents_in and st.documents < st.documents_in, "documents were left for the rest of the test"
        assert "replaced 2 of 3" in run_cli("status", str(out), "--no-probe").stdout
        rephrase = next(s for s in first.stages if s.name == "rephrase").arrays
        subprocess.run(["scancel", *rephrase], check=True, timeout=30)
        wait_for("the rephrase task gone, the supervisor ended", out,
                 lambda s: s.stages[1].running + s.stages[1].pending == 0 and s.supervisor == "ENDED", timeout=60)
        servers = load_ledger(str(out)).launches[0].servers
        assert len(servers) == 4 and slurm.wait_gone(servers, timeout=30) == [], "no server job left after rephrase"
        done_before = run_status(str(out), probe=False).documents
        run_cli("launch", str(recipe), "--executor", "slurm", "--output", str(out), "--servers", "1", env=SECRETS)
        second = load_ledger(str(out)).launches[-1]
        assert len(second.servers) == 1 and second.servers[0] not in servers
        assert {s.name: bool(s.jobs) for s in second.stages} == {"filter": False, "rephrase": True, "rows": True}
        final = wait_complete(out)
        ids = [json.loads(line)["id"] for p in (out / ".finephrase" / "rephrased").glob("*.jsonl")
               for line in p.read_text().splitlines() if line.strip()]
        assert len(ids) == len(set(ids)) == final.documents_in > done_before > 0
        assert len(rows(out)) == final.documents_in
        stats = json.loads((out / ".finephrase" / "logs" / "rephrase" / "stats.json").read_text())
        assert not any(k.startswith("failed/") for step in stats for k in (step.get("stats") or {})), stats
        assert not set(load_ledger(str(out)).server_ids()) & squeue_ids()
    finally:
        stop_run(str(out), timeout=60)
