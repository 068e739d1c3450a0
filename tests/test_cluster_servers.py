"""The real server templates (launch/) on the one-node Slurm (tests/slurm_cluster.py), in ``container: none`` mode,
with the stand-in ``text-generation-launcher``, ``vllm`` and ``python -m sglang.launch_server`` of tests/standins/
(exactly the upstream flags; served by the simulated batching GPU): each kind starts, registers and serves with the
run's API key; two TGI jobs on one node both serve; USR1 (sbatch --signal, before the time limit) deregisters."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest

from conftest import write_recipe
from finephrase.cluster import slurm
from finephrase.cluster.servers import submit_servers
from finephrase.recipe import load_recipe

STANDINS = Path(__file__).parent / "standins"
KEY = uuid.uuid4().hex + uuid.uuid4().hex


@pytest.fixture(scope="module")
def standins(slurm_cluster):
    """The stand-ins on PATH / PYTHONPATH and the run's API key, in the environment sbatch exports to the jobs."""
    old = {k: os.environ.get(k) for k in ("PATH", "PYTHONPATH", "FINEPHRASE_API_KEY")}
    os.environ["PATH"] = f"{STANDINS}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}"
    os.environ["PYTHONPATH"] = f"{STANDINS}:{old['PYTHONPATH'] or ''}"
    os.environ["FINEPHRASE_API_KEY"] = KEY
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def server_recipe(tmp_path: Path, kind: str):
    model = tmp_path / "model"
    model.mkdir(exist_ok=True)
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 2048}))
    generator = {"server": "tgi" if kind == "tgi" else "openai", "model": "smol", "tokenizer": None, "gguf": None}
    return load_recipe(write_recipe(tmp_path / "recipe.yaml", {"generator": generator, "cluster": {
        "server": kind, "container": "none", "gpus": 0, "cpus": 1, "memory": "1G", "time": "00:10:00",
        "model_path": str(model), "max_total_tokens": 8192, "ready_timeout": 60}}))


def endpoints(out: Path) -> list[str]:
    path = out / ".finephrase" / "endpoints.txt"
    return path.read_text().split() if path.exists() else []


def logs(out: Path) -> str:
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-2000:]}"
                     for p in sorted((out / ".finephrase" / "logs" / "servers").glob("*")) if p.is_file())


def wait(what: str, out: Path, ready, timeout: float = 90):
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not after {timeout:.0f}s\n{logs(out)}")
        time.sleep(0.5)


def chat(endpoint: str, key: str | None) -> tuple[int, dict]:
    body = json.dumps({"model": "smol", "messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 8})
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(f"http://{endpoint}/v1/chat/completions", body.encode(), headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, {}


def queued(ids: list[str]) -> set[str]:
    return {j.job for j in slurm.squeue(ids)}


@pytest.mark.parametrize("kind", ["tgi", "vllm", "sglang"])
def test_each_server_kind_starts_registers_and_serves(standins, tmp_path, kind):
    out = tmp_path / "out"
    recipe = server_recipe(tmp_path, kind)
    ids = submit_servers(recipe, str(out), 1, "debug")
    try:
        wait("the server job registered", out, lambda: len(endpoints(out)) == 1)
        endpoint = endpoints(out)[0]
        status, answer = chat(endpoint, KEY)
        assert status == 200 and answer["choices"][0]["message"]["content"], answer
        assert answer["usage"]["completion_tokens"] > 0
        assert chat(endpoint, None)[0] == 401 and chat(endpoint, "wrong-key")[0] == 401
        server_log = next((out / ".finephrase" / "logs" / "servers").glob("server-*.log")).read_text()
        assert f"{kind} stand-in: serving" in server_log and "SIM_GPU_READY" in server_log
        if kind == "sglang":  # SGLang prints its arguments, the key among them: the log is redacted
            assert "api_key='<redacted>'" in server_log
        for path in (out / ".finephrase").rglob("*"):
            assert not path.is_file() or KEY.encode() not in path.read_bytes(), path
        # sbatch --signal's USR1 (the time limit is near): the endpoint leaves, the job keeps serving
        subprocess.run(["scancel", "--signal=USR1", "--batch", ids[0]], check=True, timeout=30)
        wait("the endpoint removed on USR1", out, lambda: endpoints(out) == [], timeout=30)
        assert queued(ids) == set(ids) and chat(endpoint, KEY)[0] == 200
    finally:
        slurm.scancel(ids)
    assert slurm.wait_gone(ids, timeout=60) == []


def test_two_tgi_jobs_on_one_node_both_serve(standins, tmp_path):
    """Each job has its own shard socket and master port (the stand-in, as TGI's launcher, removes a socket left at
    its path: with one path for both, the first job's shard would be cut off)."""
    out = tmp_path / "out"
    ids = submit_servers(server_recipe(tmp_path, "tgi"), str(out), 2, "debug")
    try:
        wait("two TGI jobs registered", out, lambda: len(endpoints(out)) == 2)
        time.sleep(2)  # the first job's shard watch would have noticed a replaced socket by now
        assert len(endpoints(out)) == 2 and queued(ids) == set(ids), logs(out)
        for endpoint in endpoints(out):
            assert chat(endpoint, KEY)[0] == 200
    finally:
        slurm.scancel(ids)
    slurm.wait_gone(ids, timeout=60)


def test_standins_are_as_strict_as_upstream(tmp_path):
    """Unknown flags exit 2; a context longer than the model's own exits 1; one shard socket path for two TGI
    launchers cuts the first one off."""
    env = {**os.environ, "PYTHONPATH": str(STANDINS), "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"}
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"max_position_embeddings": 2048}')
    for cmd in ([str(STANDINS / "vllm"), "serve", str(model), "--max-model-length", "10"],
                [str(STANDINS / "text-generation-launcher"), "--model-id", str(model), "--max-model-len", "10"],
                [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model), "--tp", "1"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=60)
        assert proc.returncode == 2 and ("unrecognized arguments" in proc.stderr or "unexpected argument" in
                                         proc.stderr), proc.stderr
    proc = subprocess.run([str(STANDINS / "vllm"), "serve", str(model), "--max-model-len", "4096"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1 and "greater than the derived max_model_len" in proc.stderr
    uds = str(tmp_path / "shard")
    launch = [str(STANDINS / "text-generation-launcher"), "--model-id", str(model), "--hostname", "127.0.0.1",
              "--shard-uds-path", uds]
    first = subprocess.Popen([*launch, "--port", "0"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(uds + "-0"):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.2)
        second = subprocess.Popen([*launch, "--port", "0"], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        assert first.wait(timeout=30) == 1 and "socket" in first.stderr.read()
        second.kill()
        second.wait()
    finally:
        first.kill()
        first.wait()
