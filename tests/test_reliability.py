"""Runs anywhere, fails loudly: real processes and real faults.

- an embedded replica SIGKILLed mid-run is noticed, logged and restarted; the run completes with every
  document exactly once;
- a server that dies on its first generation (a real SIGSEGV) fails the run in well under a minute with the
  signal, the likely cause and the fix, and no traceback; one that dies on every real request after a good
  health check stops the run the same way, from inside the rephrase step;
- no endpoint reachable: the run stops after ``unavailable_timeout`` with nothing recorded as failed; with a
  server started on that port, the rerun completes with nothing lost or sent twice;
- a server that refuses every request stops the run early with the server's words and the recipe key;
- an API key never reaches a file the run writes, nor its console.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tgi_server
from conftest import FAST_GENERATOR, ROOT, replica_once_rephrasing, run_cli, source_ids
from datasets import load_dataset

from finephrase.errors import GeneratorUnavailable, InputTooLong, RequestRejected
from finephrase.inference.client.pool import refusal, rejection_hint
from finephrase.inference.servers.embedded import default_gguf_path

CRASHING_SERVER = str(Path(__file__).with_name("crashing_server.py"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def small_recipe(make_recipe, generator: dict, prompts=("finephrase/faq",), **extra):
    return make_recipe({
        "filters": {"quality": None, "language": None, "min_chars": 200},
        "dedup": None,
        "mix": None,
        "prompts": list(prompts),
        "output_checks": "flag",
        "generator": generator,
        **extra,
    })


def tgi_generator(endpoints, **over):
    gen = {"server": "tgi", "api": "generate", "tokenizer": default_gguf_path(), "model": None,
           "replicas": None, "threads": None, "n_ctx": None, "context_length": None,
           "params": {"max_new_tokens": 16, "temperature": 0.0, "seed": 0, "top_p": None},
           "concurrency": 2, "endpoints": endpoints}
    gen.update(over)
    return gen


def rows(out: Path, config: str = "faq"):
    return load_dataset("parquet", data_dir=str(out / "data" / config), split="train")


def assert_clean_failure(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode not in (0, None), proc.stdout[-2000:]
    console = proc.stdout + proc.stderr
    assert "Traceback" not in console, console[-4000:]
    for needle in needles:
        assert needle in console, f"{needle!r} not in:\n{console[-4000:]}"


# ---------------------------------------------------------------- refusals are read, not assumed
@pytest.mark.parametrize("status,body,kind", [
    (422, '{"error":"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 768. Given: 900 `inputs` '
          'tokens and 24 `max_new_tokens`","error_type":"validation"}', InputTooLong),
    (422, '{"error":"Input validation error: `inputs` must have less than 512 tokens. Given: 600",'
          '"error_type":"validation"}', InputTooLong),
    (400, '{"object":"error","message":"This model\'s maximum context length is 2048 tokens. However, you requested '
          '2100 tokens","type":"BadRequestError"}', InputTooLong),
    (400, '{"error":{"message":"Requested tokens (2100) exceed context window of 2048","code":400}}', InputTooLong),
    (413, "Payload Too Large", InputTooLong),
    (422, '{"error":"Input validation error: `top_p` must be > 0.0 and < 1.0","error_type":"validation"}',
     RequestRejected),
    (401, '{"detail":"Invalid API key"}', RequestRejected),
    (404, '{"error":"The model `nope` does not exist"}', RequestRejected),
])
def test_refusals_are_classified_from_the_servers_words(status, body, kind):
    error = refusal(status, body, "http://replica")
    assert type(error) is kind
    assert error.status == status and error.body and "BadRequestError" in str(error.error)


def test_rejection_hints_name_the_recipe_key():
    assert "generator.params.top_p" in rejection_hint(422, "`top_p` must be > 0.0 and < 1.0")
    assert "generator.params.temperature" in rejection_hint(422, "`temperature` must be strictly positive")
    assert "api_key_env" in rejection_hint(401, "Invalid API key")
    assert "generator.model" in rejection_hint(404, "The model `nope` does not exist")


# ---------------------------------------------------------------- supervised embedded replicas
def embedded_generator(**over):
    gen = {"server": "embedded", "replicas": 2, "threads": 1, "n_ctx": 1024, "concurrency": 2, **FAST_GENERATOR}
    gen.update(over)
    return gen


@pytest.mark.slow
def test_embedded_replica_sigkilled_mid_run_is_restarted(tmp_path, demo_data, make_recipe):
    recipe = small_recipe(make_recipe, embedded_generator(), output={"records_per_chunk": 2})
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "finephrase.cli.main", "run", str(recipe), "--limit", "8",
                            "--output", str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    state_file = out / ".finephrase" / "logs" / "server" / "state.json"
    victim = replica_once_rephrasing(run, out, timeout=300)  # requests in flight
    os.kill(victim["pid"], signal.SIGKILL)
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-4000:]
    state = json.loads(state_file.read_text())
    assert "signal SIGKILL (9)" in state["replicas"][0]["exits"]
    assert state["replicas"][0]["restarts"] >= 1 and state["replicas"][0]["pid"] != victim["pid"]
    assert "exited with signal SIGKILL" in output and "restarting" in output
    ids = source_ids(out)
    assert len(ids) >= 4
    assert sorted(rows(out)["source_id"]) == sorted(ids), "every document exactly once"


def test_server_dying_on_its_first_generation_fails_the_run_fast(tmp_path, demo_data, make_recipe):
    command = [sys.executable, CRASHING_SERVER, "--port", "{port}", "--crash-after", "0"]
    recipe = small_recipe(make_recipe, embedded_generator(command=command, replicas=2))
    start = time.monotonic()
    proc = run_cli("run", str(recipe), "--limit", "3", "--output", str(tmp_path / "out"), check=False, timeout=120)
    elapsed = time.monotonic() - start
    assert elapsed < 60, f"took {elapsed:.0f}s"
    assert_clean_failure(proc, "SIGSEGV", "finephrase setup-embedded", "no embedded llama.cpp server could be kept alive")


def test_server_dying_on_every_request_stops_the_run_from_the_step(tmp_path, demo_data, make_recipe):
    # the health generation passes, every real request kills the server: restarts, then the step stops the run
    command = [sys.executable, CRASHING_SERVER, "--port", "{port}", "--crash-after", "1", "--signal", "SIGILL"]
    recipe = small_recipe(make_recipe, embedded_generator(command=command, replicas=1, concurrency=1, max_retries=10))
    start = time.monotonic()
    proc = run_cli("run", str(recipe), "--limit", "3", "--output", str(tmp_path / "out"), check=False, timeout=180)
    assert time.monotonic() - start < 90
    assert_clean_failure(proc, "SIGILL", "illegal CPU instruction", "finephrase setup-embedded")


# ---------------------------------------------------------------- nothing reachable
def test_unreachable_endpoints_stop_the_run_and_a_rerun_resumes(tmp_path, demo_data, make_recipe):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    recipe = small_recipe(make_recipe, tgi_generator([url], unavailable_timeout=4))
    out = tmp_path / "out"
    start = time.monotonic()
    proc = run_cli("run", str(recipe), "--limit", "4", "--output", str(out), check=False, timeout=120)
    assert time.monotonic() - start < 60
    assert_clean_failure(proc, "no inference replica answered for 4s", "run the same command again")
    rephrased = out / ".finephrase" / "rephrased"
    recorded = [line for f in rephrased.glob("*.jsonl") for line in f.read_text().splitlines()] if rephrased.exists() \
        else []
    assert recorded == [], "no document may be recorded (as failed or otherwise) while nothing is reachable"

    server, url2 = tgi_server.start(port=port, log_path=str(tmp_path / "tgi.log"), max_input_tokens=512,
                                    max_total_tokens=768)
    try:
        assert url2 == url
        run_cli("run", str(recipe), "--limit", "4", "--output", str(out))
        ids = source_ids(out)
        assert sorted(rows(out)["source_id"]) == sorted(ids), "nothing lost, nothing twice"
        received = json.loads(subprocess.check_output(["curl", "-s", f"{url}/_test/requests"]))
        assert len(received["completed"]) >= len(ids)
    finally:
        server.kill()
        server.wait()


def test_pool_waits_for_a_replica_then_gives_up_without_failing_the_request(tmp_path):
    """Mid-run: the only replica goes away; a request waits (it is not failed), and after ``unavailable_timeout``
    the pool raises ``GeneratorUnavailable`` (which ends the task) rather than a per-document failure."""
    from datatrove.pipeline.inference.run_inference import InferenceConfig

    from finephrase.inference.client.pool import ReplicaPool

    server, url = tgi_server.start(log_path=str(tmp_path / "tgi.log"), max_input_tokens=512, max_total_tokens=768)
    config = InferenceConfig(server_type="endpoint", model_name_or_path="m", request_timeout=60)
    payload = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0.0}

    async def scenario():
        pool = ReplicaPool(config, 0, endpoints=[url], protocol="tgi-chat", unavailable_timeout=3, probe_interval=0.2)
        async with pool:
            first = await pool.request(payload)
            assert first["choices"][0]["message"]["content"] is not None
            server.kill()
            server.wait()
            start = time.monotonic()
            with pytest.raises(GeneratorUnavailable, match="no inference replica answered for 3s"):
                await pool.request(payload)
            return time.monotonic() - start

    try:
        waited = asyncio.run(scenario())
        assert 2.5 < waited < 15
    finally:
        if server.poll() is None:
            server.kill()


# ---------------------------------------------------------------- refusals stop the run
def test_server_refusing_every_request_stops_the_run_early(tmp_path, demo_data, make_recipe):
    server, url = tgi_server.start(log_path=str(tmp_path / "tgi.log"), max_input_tokens=512, max_total_tokens=768)
    try:
        body = json.dumps({"status": 422, "count": 10000, "route": "generate"}).encode()
        subprocess.check_call(["curl", "-s", "-o", "/dev/null", "-X", "POST", "-H", "Content-Type: application/json",
                               "--data-binary", body, f"{url}/_test/faults"])
        recipe = small_recipe(make_recipe, tgi_generator([url], concurrency=1))
        start = time.monotonic()
        proc = run_cli("run", str(recipe), "--limit", "12", "--output", str(tmp_path / "out"), check=False,
                       timeout=120)
        assert time.monotonic() - start < 60
        assert_clean_failure(proc, "HTTP 422", "fix:")
        stats = json.loads(subprocess.check_output(["curl", "-s", f"{url}/_test/stats"]))
        assert stats.get("generate:422", 0) <= 4, "stopped early, not after every document"
    finally:
        server.kill()
        server.wait()


# ---------------------------------------------------------------- secrets
@pytest.mark.slow
def test_api_key_never_touches_disk_or_console(tmp_path, demo_data, make_recipe):
    key = "sk-finephrase-test-" + os.urandom(8).hex()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", default_gguf_path(), "--host",
                               "127.0.0.1", "--port", str(port), "--n_ctx", "1024", "--api_key", key],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        gen = {"server": "openai", "endpoints": [f"http://127.0.0.1:{port}"], "api_key_env": "MY_SECRET_KEY",
               "model": "smollm2", "tokenizer": default_gguf_path(), "replicas": None, "threads": None,
               "n_ctx": None, "concurrency": 1, "unavailable_timeout": 30, **FAST_GENERATOR}
        recipe = small_recipe(make_recipe, gen)
        out = tmp_path / "out"
        # without the key the server refuses (so the key is really what makes the run work)
        refused = run_cli("run", str(recipe), "--limit", "2", "--output", str(tmp_path / "nokey"), check=False,
                          timeout=300, env={"MY_SECRET_KEY": "wrong"})
        assert_clean_failure(refused, "HTTP 401", "api_key_env")
        ok = run_cli("run", str(recipe), "--limit", "2", "--output", str(out), timeout=600,
                     env={"MY_SECRET_KEY": key})
        assert len(rows(out)) >= 1
        assert key not in ok.stdout + ok.stderr + refused.stdout + refused.stderr
        leaks = [str(p) for p in [*out.rglob("*"), *(tmp_path / "nokey").rglob("*")]
                 if p.is_file() and key.encode() in p.read_bytes()]
        assert not leaks, f"the key was written to {leaks}"
        executor_json = out / ".finephrase" / "logs" / "rephrase" / "executor.json"
        assert "MY_SECRET_KEY" in executor_json.read_text()  # the variable's name is what travels
    finally:
        server.kill()
        server.wait()
