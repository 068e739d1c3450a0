"""Inference at scale against real server processes on loopback: TGI's native and Messages
protocols (protocol-faithful TGI test server with real generation), several replicas,
injected HTTP faults, a replica killed mid-run, replicas joining through an endpoints file,
and a killed pipeline whose answered requests are not sent again."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest
from datasets import load_dataset

import tgi_server
from conftest import (
    ROOT,
    assert_no_survivors,
    process_tree,
    run_cli,
    run_marker,
    run_processes,
    run_summary,
    source_ids,
)
from finephrase.inference.servers.embedded import default_gguf_path


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _post(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture
def tgi(tmp_path):
    """Factory: start TGI test servers (subprocesses); all are killed at teardown."""
    procs = []

    def start(**options):
        options.setdefault("max_input_tokens", 512)
        options.setdefault("max_total_tokens", 768)
        proc, url = tgi_server.start(log_path=str(tmp_path / f"tgi{len(procs)}.log"), **options)
        procs.append(proc)
        return proc, url

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def tgi_recipe(make_recipe, endpoints=None, endpoints_file=None, api="generate", n_prompts=1, min_chars=200,
               **generator):
    prompts = ["finephrase/faq", "finephrase/table"][:n_prompts]
    gen = {"server": "tgi", "api": api, "tokenizer": default_gguf_path(), "model": None,
           "replicas": None, "threads": None, "n_ctx": None, "context_length": None,
           "params": {"max_new_tokens": 24, "temperature": 0.0, "seed": 0, "top_p": None},
           "concurrency": 4, "max_retries": 4, **generator}
    if endpoints is not None:
        gen["endpoints"] = endpoints
    if endpoints_file is not None:
        gen["endpoints_file"] = str(endpoints_file)
    return make_recipe({
        "filters": {"quality": None, "language": None, "min_chars": min_chars},
        "dedup": None,
        "mix": None,
        "prompts": prompts,
        "output_checks": "flag",
        "generator": gen,
    })


def _rows(out, config="faq"):
    return load_dataset("parquet", data_dir=str(out / "data" / config), split="train")


def _summary(out):
    return run_summary(out / ".finephrase")


@pytest.mark.parametrize("api", ["generate", "chat"])
def test_tgi_protocols_record_info_in_provenance(tmp_path, demo_data, make_recipe, tgi, api):
    _, url = tgi()
    info = _get(f"{url}/info")
    recipe = tgi_recipe(make_recipe, endpoints=[url], api=api)
    out = tmp_path / "out"
    run_cli("run", str(recipe), "--limit", "3", "--output", str(out))
    ds = _rows(out)
    assert len(ds) == len(source_ids(out)) >= 2
    for row in ds:
        assert row["model"] == info["model_id"]
        assert row["model_revision"] == info["model_sha"]
        assert row["text"].strip()
        assert row["prompt_tokens"] > 20 and 0 < row["completion_tokens"] <= 24
        # the source is truncated to what /info allows: max_input_tokens minus the prompt's own tokens
        assert row["source_tokens_used"] <= info["max_input_tokens"]
    stats = _get(f"{url}/_test/stats")
    route = "generate" if api == "generate" else "chat"
    assert stats[f"{route}:200"] == len(ds) and stats.get(f"{route}:422", 0) == 0


def test_retryable_faults_are_retried_across_replicas(tmp_path, demo_data, make_recipe, tgi):
    _, url1 = tgi()
    _, url2 = tgi()
    # every kind of transient error once on replica 1, twice 503 on replica 2
    for status in (503, 429, 424, 500):
        _post(f"{url1}/_test/faults", {"status": status, "count": 1, "route": "generate"})
    _post(f"{url2}/_test/faults", {"status": 503, "count": 2, "route": "generate"})
    recipe = tgi_recipe(make_recipe, endpoints=[url1, url2])
    out = tmp_path / "out"
    run_cli("run", str(recipe), "--limit", "6", "--output", str(out))
    ids = source_ids(out)
    ds = _rows(out)
    assert sorted(ds["source_id"]) == sorted(ids)
    s1, s2 = _get(f"{url1}/_test/stats"), _get(f"{url2}/_test/stats")
    for status in (503, 429, 424, 500):
        assert s1.get(f"generate:{status}") == 1
    assert s2.get("generate:503") == 2
    assert s1["generate:200"] + s2["generate:200"] == len(ids)
    assert s1["generate:200"] > 0 and s2["generate:200"] > 0
    assert _summary(out)["prompts"]["faq"]["failed"] == 0


def test_real_over_length_422_is_retried_with_half_the_input(tmp_path, demo_data, make_recipe, tgi):
    # a replica whose /info states a larger input limit (700) than it enforces (500): every long document is
    # sent at a budget that does not fit, TGI answers its real 422, and the retry with half the budget fits
    _, url = tgi(max_input_tokens=500, max_total_tokens=768, advertise_max_input_tokens=700)
    recipe = tgi_recipe(make_recipe, endpoints=[url], concurrency=1)
    out = tmp_path / "out"
    run_cli("run", str(recipe), "--limit", "4", "--output", str(out))
    ids = source_ids(out)
    ds = _rows(out)
    assert sorted(ds["source_id"]) == sorted(ids)
    stats = _get(f"{url}/_test/stats")
    retried = [row for row in ds if row["source_tokens"] > 700]  # long documents: sent at the full budget first
    assert retried, "the demo pages used here are long"
    assert stats["generate:422"] == len(retried) and stats["generate:200"] == len(ids)
    rephrase = next(v for s in _summary(out)["steps"] if s["stage"] == "rephrase" and "Rephrase" in s["step"]
                    for v in [s["stats"]])
    assert rephrase.get("retried_truncated/faq") == len(retried)
    for row in retried:
        # about half of the budget computed from /info's 700 (700 - 24 new tokens - prompt - margin ~ 560), and
        # small enough that prompt + input fit the enforced 500
        assert row["truncated"] and 200 < row["source_tokens_used"] < 300, row["source_tokens_used"]
        assert row["prompt_tokens"] <= 500


def test_input_too_long_twice_fails_the_document_and_other_422s_are_not_retried(tmp_path, demo_data, make_recipe,
                                                                              tgi):
    _, url = tgi()
    too_long = "Input validation error: `inputs` must have less than 10 tokens. Given: 400"
    # 1st document: too long once -> retried with half the input; 2nd: too long twice -> failed and counted
    _post(f"{url}/_test/faults", {"status": 422, "count": 3, "route": "generate", "message": too_long})
    recipe = tgi_recipe(make_recipe, endpoints=[url], concurrency=1)
    out = tmp_path / "out"
    run_cli("run", str(recipe), "--limit", "4", "--output", str(out))
    ids = source_ids(out)
    summary = _summary(out)
    rephrase = next(s["stats"] for s in summary["steps"] if s["stage"] == "rephrase" and "Rephrase" in s["step"])
    assert rephrase.get("retried_truncated/faq") == 2
    assert summary["prompts"]["faq"]["failed"] == 1
    assert len(_rows(out)) == len(ids) - 1
    assert _get(f"{url}/_test/stats")["generate:422"] == 3

    # a 422 that is not about length (a parameter) is not retried: one request, then a counted failure
    _, url2 = tgi()
    _post(f"{url2}/_test/faults", {"status": 422, "count": 1, "route": "generate",
                                   "message": "Input validation error: `top_k` must be strictly positive"})
    out2 = tmp_path / "out2"
    run_cli("run", str(tgi_recipe(make_recipe, endpoints=[url2], concurrency=1)), "--limit", "3", "--output", str(out2))
    stats2 = _get(f"{url2}/_test/stats")
    assert stats2["generate:422"] == 1 and stats2["generate:200"] == len(source_ids(out2)) - 1
    assert _summary(out2)["prompts"]["faq"]["failed"] == 1


def test_replica_killed_mid_run(tmp_path, demo_data, make_recipe, tgi):
    p1, url1 = tgi()
    p2, url2 = tgi()
    recipe = tgi_recipe(make_recipe, endpoints=[url1, url2], concurrency=4)
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "finephrase.cli.main", "run", str(recipe), "--limit", "10", "--output",
                            str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and _get(f"{url2}/_test/stats").get("generate:200", 0) < 2:
        time.sleep(0.2)
    p2.send_signal(signal.SIGKILL)  # with requests in flight
    output, _ = run.communicate(timeout=600)
    assert run.returncode == 0, output[-3000:]
    ids = source_ids(out)
    ds = _rows(out)
    assert sorted(ds["source_id"]) == sorted(ids), "every document exactly once"
    assert "replica out of rotation" in output


def test_endpoints_file_replicas_join_while_running(tmp_path, demo_data, make_recipe, tgi):
    endpoints_file = tmp_path / "endpoints.txt"
    endpoints_file.write_text("")
    recipe = tgi_recipe(make_recipe, endpoints_file=endpoints_file)
    out = tmp_path / "out"
    log = tmp_path / "run.log"
    with open(log, "wb") as log_file:
        run = subprocess.Popen([sys.executable, "-m", "finephrase.cli.main", "run", str(recipe), "--limit", "6", "--output",
                                str(out)], cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        # the run reaches the rephrase stage and says it is waiting for replicas (with the endpoints file): it is
        # alive and waiting, not failed nor finished
        _wait_for(lambda: "waiting for inference replicas" in _tail(log, 1 << 20), 180,
                  "the run saying it waits for inference replicas", run=run, log=log)
        assert str(endpoints_file) in _tail(log, 1 << 20)
        assert run.poll() is None, "waits for a replica to join"
        _, url1 = tgi()
        with open(endpoints_file, "a") as f:
            f.write(url1.removeprefix("http://") + "\n")
        _wait_for(lambda: _get(f"{url1}/_test/stats").get("generate:200", 0) >= 1, 120,
                  "the first replica to join answered a request", run=run, log=log)
        _, url2 = tgi()
        with open(endpoints_file, "a") as f:
            f.write(url2.removeprefix("http://") + "  # a second job\n")
        try:
            run.wait(timeout=600)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not finish within 600 s:\n{_tail(log)}")
        output = log.read_text(errors="replace")
        assert run.returncode == 0, output[-3000:]
        assert sorted(_rows(out)["source_id"]) == sorted(source_ids(out))
        # INFO lines go to the run's log file (the console shows progress, warnings and errors)
        full = (out / ".finephrase" / "logs" / "console.log").read_text(errors="replace")
        assert f"replica joined: {url1}" in full and f"replica joined: {url2}" in full
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def test_killed_pipeline_does_not_resend_answered_requests(tmp_path, demo_data, make_recipe, tgi):
    _, url = tgi()
    recipe = tgi_recipe(make_recipe, endpoints=[url], n_prompts=2, concurrency=2)
    data = json.loads(json.dumps(__import__("yaml").safe_load(recipe.read_text())))
    data["output"]["records_per_chunk"] = 3
    recipe.write_text(__import__("yaml").safe_dump(data))
    out = tmp_path / "out"
    marker, env = run_marker()
    cmd = [sys.executable, "-m", "finephrase.cli.main", "run", str(recipe), "--limit", "8", "--output", str(out)]
    run = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                           start_new_session=True)
    deadline = time.time() + 300
    while len(_get(f"{url}/_test/requests")["completed"]) < 7:
        assert run.poll() is None, "the run ended before 7 requests were answered"
        assert time.time() < deadline, "7 requests were not answered within 300 s"
        time.sleep(0.1)
    # hold every further request at the server, let the answered ones reach the request cache, then SIGKILL
    _post(f"{url}/_test/faults", {"status": 0, "delay_s": 60, "count": 1000})
    time.sleep(2)
    first = _get(f"{url}/_test/requests")
    answered_before = set(first["completed"])
    held_before = set(first["received"]) - answered_before  # sent, never answered: must be sent again
    assert held_before, "no request was in flight at the kill"
    tree = process_tree(run.pid)
    assert run.pid in run_processes(marker)  # positive control for the check below
    run.send_signal(signal.SIGKILL)
    run.wait()
    # nothing of the killed run survives it
    assert_no_survivors(marker, pids=tree - {run.pid}, session=run.pid, timeout=10)
    _post(f"{url}/_test/reset", {})
    run_cli("run", str(recipe), "--limit", "8", "--output", str(out))
    received_after = _get(f"{url}/_test/requests")["received"]
    # positive control: request bodies are comparable across runs — the unanswered ones are seen again
    assert held_before <= set(received_after), "requests unanswered at the kill were not recognised when re-sent"
    resent = set(received_after) & answered_before
    assert not resent, f"{len(resent)} answered requests were sent again"
    assert len(received_after) == len(set(received_after)), "a request was sent twice in the resumed run"
    ids = source_ids(out)
    for config in ("faq", "table"):
        assert sorted(_rows(out, config)["source_id"]) == sorted(ids)


# ---------------------------------------------------------------- helpers for runs watched while they go
def _tail(path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _wait_for(condition, timeout: float, what: str, run=None, log=None, interval: float = 0.2) -> None:
    """Poll ``condition`` until it holds; fail (with the run's output) when ``run`` ends first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        if run is not None and run.poll() is not None:
            pytest.fail(f"the run ended (exit code {run.returncode}) before {what}:\n{_tail(log) if log else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout:.0f}s:\n{_tail(log) if log else ''}")
        time.sleep(interval)


def _rephrase_stats(out) -> dict:
    return next(s["stats"] for s in _summary(out)["steps"] if s["stage"] == "rephrase" and "Rephrase" in s["step"])


# ---------------------------------------------------------------- 502 / 504 / 400 / 413, failover, least loaded
def test_502_and_504_are_retried_and_succeed(tmp_path, demo_data, make_recipe, tgi):
    _, url1 = tgi()
    _, url2 = tgi()
    # each gateway error once on each replica (TGI's error body, as a proxy in front of TGI would answer)
    for url in (url1, url2):
        for status in (502, 504):
            _post(f"{url}/_test/faults", {"status": status, "count": 1, "route": "generate",
                                          "message": f"injected {status} (gateway)"})
    recipe = tgi_recipe(make_recipe, endpoints=[url1, url2], concurrency=2)
    out = tmp_path / "out"
    run_cli("run", str(recipe), "--limit", "4", "--output", str(out))
    ids = source_ids(out)
    assert len(ids) >= 3
    assert sorted(_rows(out)["source_id"]) == sorted(ids), "every document answered once despite the faults"
    s1, s2 = _get(f"{url1}/_test/stats"), _get(f"{url2}/_test/stats")
    for s in (s1, s2):
        # both faults were served (so both were retried), and nothing else failed
        assert s.get("generate:502") == 1 and s.get("generate:504") == 1, (s1, s2)
        assert s["generate:requests"] == s.get("generate:200", 0) + 2, (s1, s2)
    assert s1.get("generate:200", 0) + s2.get("generate:200", 0) == len(ids), (s1, s2)
    assert _summary(out)["prompts"]["faq"]["failed"] == 0
    assert not any(k.startswith("retried_truncated") for k in _rephrase_stats(out))


def test_413_is_retried_with_half_the_input_and_a_400_refusal_is_not_retried(tmp_path, demo_data, make_recipe,
                                                                              tgi):
    # long documents only (min_chars 3000: the first pages of --limit 4 are 8-18k characters), so that every input
    # is cut at the full token budget and the retried one stands out at half of it
    _, url = tgi()
    _post(f"{url}/_test/faults", {"status": 413, "count": 1, "route": "generate", "message": "Payload Too Large"})
    out = tmp_path / "out"
    run_cli("run", str(tgi_recipe(make_recipe, endpoints=[url], concurrency=1, min_chars=3000)), "--limit", "4",
            "--output", str(out))
    ids = source_ids(out)
    assert len(ids) >= 2
    stats = _get(f"{url}/_test/stats")
    # one 413, retried once (one extra request), then every document answered
    assert stats.get("generate:413") == 1 and stats["generate:requests"] == len(ids) + 1, stats
    assert stats["generate:200"] == len(ids), stats
    assert _rephrase_stats(out).get("retried_truncated/faq") == 1
    assert _summary(out)["prompts"]["faq"]["failed"] == 0
    ds = _rows(out)
    assert sorted(ds["source_id"]) == sorted(ids)
    full = max(ds["source_tokens_used"])
    assert all(row["truncated"] and row["source_tokens"] > full for row in ds), "long documents only"
    # the retried document was sent with half the budget (the budget is ~360 tokens here); the others with all of it
    used = sorted(ds["source_tokens_used"])
    assert used[0] <= full * 0.6 and used[1] > full * 0.9, used

    # a 400 whose words say nothing about length (axum's JSON rejection, as TGI answers it) is a refusal: one
    # request, not retried (neither halved nor sent elsewhere), the document a counted failure with the server's words
    _, url2 = tgi()
    refusal_words = "Failed to parse the request body as JSON: expected value"
    _post(f"{url2}/_test/faults", {"status": 400, "count": 1, "route": "generate", "message": refusal_words})
    out2 = tmp_path / "out2"
    proc = run_cli("run", str(tgi_recipe(make_recipe, endpoints=[url2], concurrency=1, min_chars=3000)), "--limit",
                   "4", "--output", str(out2))
    ids2 = source_ids(out2)
    assert len(ids2) >= 2
    stats2 = _get(f"{url2}/_test/stats")
    assert stats2.get("generate:400") == 1 and stats2["generate:requests"] == len(ids2), stats2
    assert stats2["generate:200"] == len(ids2) - 1, stats2
    assert _summary(out2)["prompts"]["faq"]["failed"] == 1
    assert "retried_truncated/faq" not in _rephrase_stats(out2)
    assert len(_rows(out2)) == len(ids2) - 1, "the refused document has no row; every other one has"
    assert refusal_words in proc.stdout + proc.stderr


def test_a_failed_request_is_retried_on_the_other_replica(tmp_path, demo_data, make_recipe, tgi):
    # two idle replicas, nothing sent yet: the pool picks the first endpoint (fewest in flight, then fewest sent,
    # ties in endpoint order) — that one answers 503 once; the retry must go to the other one
    _, url_a = tgi()
    _, url_b = tgi()
    _post(f"{url_a}/_test/faults", {"status": 503, "count": 1, "route": "generate"})
    out = tmp_path / "out"
    run_cli("run", str(tgi_recipe(make_recipe, endpoints=[url_a, url_b], concurrency=1)), "--limit", "1",
            "--output", str(out))
    assert len(source_ids(out)) == 1 and len(_rows(out)) == 1
    sa, sb = _get(f"{url_a}/_test/stats"), _get(f"{url_b}/_test/stats")
    assert sa.get("generate:503") == 1 and sa.get("generate:200", 0) == 0 and sa["generate:requests"] == 1, sa
    assert sb.get("generate:200") == 1 and sb["generate:requests"] == 1, sb
    assert _summary(out)["prompts"]["faq"]["failed"] == 0


def test_pool_sends_each_request_to_the_least_loaded_replica(tmp_path, tgi):
    """ReplicaPool driven directly: while replica A holds a slow request, every new request goes to B (fewest in
    flight); once both are idle, the next one goes to A again (fewest sent)."""
    from datatrove.pipeline.inference.run_inference import InferenceConfig

    from finephrase.inference.client.pool import ReplicaPool

    _, url_a = tgi()
    _, url_b = tgi()
    delay, n = 5, 3
    _post(f"{url_a}/_test/faults", {"status": 0, "delay_s": delay, "count": 1, "route": "chat"})  # only delays
    config = InferenceConfig(server_type="endpoint", model_name_or_path="m", request_timeout=60)
    payload = {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, "temperature": 0.0}

    async def stats(url):
        return await asyncio.to_thread(_get, f"{url}/_test/stats")

    async def scenario():
        pool = ReplicaPool(config, 0, endpoints=[url_a, url_b], protocol="tgi-chat", probe_interval=0.2,
                           unavailable_timeout=60)
        async with pool:
            await asyncio.wait_for(pool.wait_ready(), 60)
            assert all(r.healthy for r in pool.replicas.values()), pool.stats()
            start = time.monotonic()
            slow = asyncio.create_task(pool.request(payload))  # idle pool, nothing sent: goes to A, held there
            deadline = time.monotonic() + 30
            while (await stats(url_a)).get("chat:requests", 0) < 1:
                assert time.monotonic() < deadline, "the first request did not reach replica A"
                assert not slow.done(), slow
                await asyncio.sleep(0.05)
            for _ in range(n):  # one after the other, while A holds the first one
                answer = await pool.request(payload)
                assert answer["choices"][0]["message"]["content"] is not None
            sa, sb = await stats(url_a), await stats(url_b)
            assert not slow.done(), (f"the slow request ended before the {n} others ({time.monotonic() - start:.1f}s):"
                                     " the test proves nothing; raise the delay")
            assert sa.get("chat:requests") == 1 and sa.get("chat:200", 0) == 0, sa
            assert sb.get("chat:requests") == n and sb.get("chat:200") == n, sb
            first = await asyncio.wait_for(slow, 60)
            assert first["choices"][0]["message"]["content"] is not None
            assert time.monotonic() - start >= delay - 0.5
            sa = await stats(url_a)
            assert sa.get("chat:200") == 1, sa
            # both idle now: A has been sent 1 request, B n: the next one goes to A
            await pool.request(payload)
            sa, sb = await stats(url_a), await stats(url_b)
            assert sa.get("chat:200") == 2 and sb.get("chat:200") == n, (sa, sb)

    asyncio.run(scenario())
