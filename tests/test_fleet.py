"""The in-flight window per replica against simulated batching GPU servers (``tests/sim_gpu.py``, real server
processes on loopback): it fills a server's batch and stops at its capacity, backs off on 429 and on a growing
queue, shares a server fairly between two tasks, probes a server that publishes nothing, and loses or duplicates
no document on the way."""

from __future__ import annotations

import asyncio
import glob
import json
import time

import aiohttp
import pytest
import sim_gpu
from datatrove.data import Document
from datatrove.pipeline.inference.run_inference import InferenceConfig

from finephrase.inference.client.fleet import fleet_line, summarise
from finephrase.inference.client.pool import ReplicaPool
from finephrase.inference.client.window import queue_band

MODEL = sim_gpu.DEFAULT_MODEL


@pytest.fixture
def sim_servers():
    procs = []

    def start(**options):
        proc, url = sim_gpu.start(**{"step_a_ms": 5, "step_c_ms": 0.1, "min_answer": 10, "max_answer": 40, **options})
        procs.append(proc)
        return url

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def make_pool(urls: list[str], **kwargs) -> ReplicaPool:
    config = InferenceConfig(server_type="endpoint", model_name_or_path=MODEL, max_concurrent_generations=10_000,
                             max_concurrent_documents=10_000, request_timeout=60)
    return ReplicaPool(config, 0, endpoints=urls, probe_interval=0.2, **kwargs)


async def drive(pool: ReplicaPool, workers: int, seconds: float, tag: str = "", peak: list | None = None,
                count_after: float | None = None) -> dict:
    """``workers`` coroutines sending requests for ``seconds``; returns request counts (all / those answered after
    ``count_after``, by default half-way)."""
    stop = time.monotonic() + seconds
    half = count_after or time.monotonic() + seconds / 2
    counts = {"ok": 0, "late": 0}

    async def worker(i):
        n = 0
        while time.monotonic() < stop:
            await pool.request({"messages": [{"role": "user", "content": f"{tag} {i} {n}"}], "max_tokens": 64,
                                "model": MODEL})
            n += 1
            counts["ok"] += 1
            counts["late"] += time.monotonic() > half

    async def watch():
        while time.monotonic() < stop:
            if peak is not None:
                peak.append(max(r.in_flight for r in pool.replicas.values()))
            await asyncio.sleep(0.05)

    await asyncio.gather(watch(), *(worker(i) for i in range(workers)))
    return counts


async def server_stats(url: str) -> dict:
    async with aiohttp.ClientSession() as s, s.get(f"{url}/_test/stats") as r:
        return await r.json()


def test_window_fills_the_batch_and_stops_at_capacity(sim_servers):
    url = sim_servers(max_num_seqs=16)
    peak: list[int] = []

    async def main():
        async with make_pool([url]) as pool:
            await drive(pool, 200, 4.0, peak=peak)
            return pool.replicas[url].window, await server_stats(url)

    window, stats = asyncio.run(main())
    assert stats["max_running_seen"] == 16  # the batch was filled
    assert window.capacity == 16 and window.capacity_source == "learnt from /metrics"
    high = queue_band(16)[1]
    # it stopped there: the window ends at the batch plus a short queue (the cut comes once the queue is past
    # `high`: a poll may catch it just before); while the capacity was still being
    # learnt it overshot by at most one growth step (x1.5)
    assert 16 <= window.allowed <= 16 + 2 * high, window.decisions
    assert 16 <= max(peak) <= 1.5 * (16 + high), (max(peak), window.decisions)


def test_tgi_info_bounds_the_window_and_no_429(sim_servers):
    url = sim_servers(flavour="tgi", max_num_seqs=32, max_concurrent_requests=12)

    async def main():
        async with make_pool([url], protocol="tgi-chat") as pool:
            counts = await drive(pool, 100, 3.0)
            return pool.replicas[url].window, counts, await server_stats(url)

    window, counts, stats = asyncio.run(main())
    assert window.ceiling == 12 and window.allowed <= 12  # TGI's max_concurrent_requests, read from /info
    assert stats.get("status:429", 0) == 0 and counts["ok"] > 0


def test_window_backs_off_on_429(sim_servers):
    # a plain OpenAI endpoint (no /metrics, no /info) that refuses more than 10 requests at once
    url = sim_servers(flavour="openai", max_num_seqs=64, max_concurrent_requests=10)

    async def main():
        async with make_pool([url], backoff_base=0.05) as pool:
            counts = await drive(pool, 100, 4.0)
            return pool.replicas[url].window, counts, await server_stats(url)

    window, counts, stats = asyncio.run(main())
    reasons = [reason for _, _, reason in window.decisions]
    assert any("overloaded" in r for r in reasons), reasons
    assert window.allowed <= 10
    # the refusals stop once the window is below the limit: a few per cut, not one per request
    assert stats["status:429"] < 0.2 * stats["status:200"], stats
    assert counts["ok"] > 100


def test_window_backs_off_on_a_growing_queue(sim_servers):
    url = sim_servers(max_num_seqs=16, min_answer=30, max_answer=60)

    async def flood():  # another client, outside finephrase, queues 40 long requests at the server
        async with aiohttp.ClientSession() as s:
            async def one(i):
                async with s.post(f"{url}/v1/chat/completions", json={
                        "model": MODEL, "messages": [{"role": "user", "content": f"flood {i}"}], "max_tokens": 60}):
                    pass
            await asyncio.gather(*(one(i) for i in range(40)))

    async def main():
        async with make_pool([url]) as pool:
            steady = asyncio.create_task(drive(pool, 100, 6.0))
            await asyncio.sleep(3.0)
            window = pool.replicas[url].window
            before, flood_at = window.allowed, time.monotonic()
            await flood()
            await steady
            return window, before, flood_at

    window, before, flood_at = asyncio.run(main())
    shrinks = [(t, limit) for t, limit, reason in window.decisions if "shrink" in reason and t >= flood_at]
    assert shrinks, window.decisions
    assert min(limit for _, limit in shrinks) < before


def test_two_tasks_share_a_server_fairly(sim_servers):
    url = sim_servers(max_num_seqs=32)

    async def main():
        # two tasks of one run (world size 2: each knows it has half of the replica)
        async with make_pool([url], window={"share": 0.5}) as first, make_pool([url], window={"share": 0.5}) as second:
            late = time.monotonic() + 6.0  # both counted over the same last 4 s
            a = asyncio.create_task(drive(first, 150, 10.0, tag="a", count_after=late))
            await asyncio.sleep(2.0)  # the first task has the server to itself, then the second one arrives
            b = await drive(second, 150, 8.0, tag="b", count_after=late)
            return await a, b, first.replicas[url].window, second.replicas[url].window, await server_stats(url)

    a, b, wa, wb, stats = asyncio.run(main())
    assert 0.75 < a["late"] / b["late"] < 1.33, (a, b, wa.decisions[-5:], wb.decisions[-5:])
    assert stats["max_running_seen"] == 32


def test_server_without_gauges_is_probed(sim_servers):
    url = sim_servers(flavour="openai", max_num_seqs=8, step_a_ms=5, step_c_ms=1.0)

    async def main():
        async with make_pool([url]) as pool:
            await drive(pool, 100, 5.0)
            return pool.replicas[url]

    replica = asyncio.run(main())
    assert replica.gauges is False
    window = replica.window
    assert window.capacity_source == "probed", window.decisions
    assert 8 <= window.allowed <= 8 * 1.5 * 1.5, window.decisions


def test_no_document_lost_or_duplicated(sim_servers, tmp_path):
    from finephrase.prompts import load_prompt
    from finephrase.pipeline.rephrase import Rephrase

    # one server refuses beyond 6 requests at once (429s on the way), the other queues without limit
    urls = [sim_servers(flavour="openai", max_num_seqs=16, max_concurrent_requests=6), sim_servers(max_num_seqs=16)]
    step = Rephrase([load_prompt("finephrase/faq")], output_folder=str(tmp_path / "out"), endpoints=urls,
                    model=MODEL, generation_params={"max_new_tokens": 64}, context_length=4096,
                    checkpoints_dir=str(tmp_path / "ckpt"), records_per_chunk=50, fleet_dir=str(tmp_path / "fleet"))
    n = 400
    step.run((Document(text=f"document number {i} " * 5, id=f"doc-{i}") for i in range(n)), 0, 1)
    ids = []
    for path in glob.glob(str(tmp_path / "out" / "*.jsonl")):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                ids.append(row["id"])
                assert row["metadata"]["rollout_results"][0]["faq"]["text"]
    assert sorted(ids) == sorted(f"doc-{i}" for i in range(n))
    # what happened is saved with the run, and summarised for the report and the card
    with open(tmp_path / "fleet" / "rank-00000.json") as f:
        record = json.load(f)
    assert set(record["replicas"]) == set(urls)
    assert any("overloaded" in d[2] for d in record["replicas"][urls[0]]["decisions"])
    assert record["replicas"][urls[1]]["gauges"] and record["replicas"][urls[1]]["samples"]
    summary = summarise(str(tmp_path / "fleet"))
    assert summary["replicas"][urls[1]]["capacity"] == 16
    assert "2 replicas" in fleet_line(summary)
