"""LeanInferenceRunner and its helpers (admission, checkpoints, request cache, writer, buffered stats): the
cheaper per-document path keeps datatrove's results — the same stats, every document written once,
checkpoints that survive a write cut short, chunks finalised while answers keep arriving, request deadlines
enforced — against a real instant server process on loopback (``benchmarks/instant_server.py``)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys

import pytest
from datatrove.data import Document
from datatrove.utils.stats import MetricStats

from conftest import ROOT
from finephrase.inference.runner.admission import FastSemaphore
from finephrase.inference.runner.checkpoints import FastCheckpointManager
from finephrase.inference.runner.request_cache import BatchedRequestCache
from finephrase.inference.runner.stat_buffer import folded_stats
from finephrase.inference.runner.writer import LeanJsonlWriter
from finephrase.prompts import load_prompt
from finephrase.pipeline.rephrase import Rephrase


@pytest.fixture
def instant_server():
    """The benchmark's instant OpenAI-compatible server, as a real process on a free port."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "instant_server.py"), str(port)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "READY"
    yield f"http://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


def _docs(n: int) -> list[Document]:
    return [Document(text=f"{i}. The collections module provides specialized container datatypes.", id=f"doc-{i}")
            for i in range(n)]


def _step(tmp_path, url, **kwargs) -> Rephrase:
    kwargs.setdefault("checkpoints_dir", str(tmp_path / "ckpt"))
    return Rephrase([load_prompt("finephrase/faq")], output_folder=str(tmp_path / "out"), endpoints=[url],
                    generation_params={"max_new_tokens": 16}, context_length=4096, **kwargs)


def _written(tmp_path) -> list[dict]:
    rows = []
    for name in sorted(os.listdir(tmp_path / "out")):
        with open(tmp_path / "out" / name, "rb") as f:
            rows += [json.loads(line) for line in f]
    return rows


# ---------------------------------------------------------------------------------------------- whole step
def test_step_writes_every_document_once_with_datatrove_stats(tmp_path, instant_server):
    step = _step(tmp_path, instant_server, concurrency=16, records_per_chunk=40)
    step.run(iter(_docs(150)), 0, 1)
    rows = _written(tmp_path)
    assert sorted(r["id"] for r in rows) == sorted(f"doc-{i}" for i in range(150))
    assert sorted(os.listdir(tmp_path / "out")) == [f"00000_chunk_{i}.jsonl" for i in range(4)]
    entry = rows[0]["metadata"]["rollout_results"][0]["faq"]
    assert entry["text"] == "Q: What is it?\nA: An instant answer." and entry["completion_tokens"] == 12
    stats = step.stats.stats
    for key in ("documents_processed", "successful_rollouts", "successful_requests", "requests", "rephrased/faq"):
        assert stats[key].total == 150, key
    assert stats["failed_rollouts"].total == 0
    tokens = stats["completion_tokens/faq"]
    assert (tokens.total, tokens.n, tokens.min, tokens.max, tokens.variance) == (1800, 150, 12, 12, 0)
    # finished: checkpoints and request cache are gone, as with datatrove's runner
    assert not os.path.exists(tmp_path / "ckpt" / "00000")


def test_checkpoint_cut_mid_line_is_repaired_on_resume(tmp_path, instant_server):
    """A kill in the middle of a checkpoint write leaves a partial last line: on resume it is cut
    off and that document processed again, instead of corrupting the line appended after it."""
    first = _step(tmp_path, instant_server, concurrency=4, records_per_chunk=1000)
    docs = _docs(30)
    # what an interrupted run leaves: 10 complete checkpoint lines and half of an 11th
    asyncio.run(_write_checkpoint(first, docs[:11], cut_last=True))
    step = _step(tmp_path, instant_server, concurrency=4, records_per_chunk=1000)
    step.run(iter(docs), 0, 1)
    rows = _written(tmp_path)
    # 10 from the checkpoint, the cut 11th processed again with the 19 new ones: each once
    assert sorted(r["id"] for r in rows) == sorted(d.id for d in docs)
    assert step.stats.stats["documents_processed"].total == 20


async def _write_checkpoint(step: Rephrase, docs: list[Document], cut_last: bool) -> None:
    manager, writer = step.checkpoint_manager, step.output_writer
    with writer as out:
        for doc in docs:
            doc.metadata["rollout_results"] = [{"faq": {"text": "earlier answer"}}]
            manager.write_document_nowait(doc, 0, 0, out)
        manager.flush()
    path = os.path.join(manager.checkpoints_local_dir, "00000", "chunk_00000.jsonl")
    if cut_last:
        with open(path, "rb") as f:
            data = f.read()
        last = data.rstrip(b"\n").rfind(b"\n") + 1
        with open(path, "wb") as f:
            f.write(data[: last + (len(data) - last) // 2])
    for name in os.listdir(step.output_writer.output_folder.path):  # the output is rebuilt from checkpoints
        os.remove(os.path.join(step.output_writer.output_folder.path, name))


def test_request_deadline_is_enforced_and_retried(tmp_path, instant_server):
    """A replica that accepts the connection and never answers: the request times out after
    ``request_timeout`` (one watchdog for all requests, not a timer each) and goes to the other replica."""
    import socket
    import threading

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(64)
    accepted = []
    threading.Thread(target=lambda: [accepted.append(silent.accept()) for _ in range(64)], daemon=True).start()
    silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
    step = Rephrase([load_prompt("finephrase/faq")], output_folder=str(tmp_path / "out"),
                    endpoints=[instant_server], generation_params={"max_new_tokens": 16}, context_length=4096,
                    checkpoints_dir=str(tmp_path / "ckpt"), concurrency=4, request_timeout=1.0, max_retries=2)
    # the silent replica joins after the health check (it would fail /v1/models): mark it healthy by hand
    original = step.make_server

    def init_server(rank):
        pool = original(rank)
        from finephrase.inference.client.pool import Replica

        pool.replicas[silent_url] = Replica(silent_url, healthy=True, requests=-1000)  # picked first
        return pool

    step.make_server = init_server
    step.run(iter(_docs(6)), 0, 1)
    rows = _written(tmp_path)
    assert sorted(r["id"] for r in rows) == sorted(d.id for d in _docs(6))
    assert all("text" in r["metadata"]["rollout_results"][0]["faq"] for r in rows)
    assert accepted, "the silent replica was never tried"
    assert step.server.timeouts >= 1
    silent.close()


# ---------------------------------------------------------------------------------------------- pieces
def test_fast_semaphore_bounds_concurrency_and_survives_cancellation():
    async def main():
        sem = FastSemaphore(3)
        active = peak = done = 0

        async def one(i):
            nonlocal active, peak, done
            async with sem:
                active += 1
                peak = max(peak, active)
                await asyncio.sleep(0.001 * (i % 3))
                active -= 1
            done += 1

        tasks = [asyncio.create_task(one(i)) for i in range(200)]
        await asyncio.sleep(0.002)
        for t in tasks[50:60]:  # cancel some waiters and some holders
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert peak == 3
        assert done == 200 - sum(t.cancelled() for t in tasks) >= 190
        # every unit came back
        assert sem._value == 3 and not sem._waiters
        await asyncio.wait_for(asyncio.gather(*(sem.acquire() for _ in range(3))), 1)

    asyncio.run(main())


def test_folded_stats_equal_datatrove_updates():
    rng = random.Random(0)
    for values in ([1] * 5, [7], [rng.randint(0, 5000) for _ in range(1000)], [0.5, 2.25, 9.0]):
        expected = MetricStats()
        for v in values:
            expected.update(v, "request")
        got = folded_stats(values, "request")
        assert (got.total, got.n, got.min, got.max, got.unit) == (expected.total, expected.n, expected.min,
                                                                  expected.max, expected.unit)
        assert got.mean == pytest.approx(expected.mean)
        assert got.variance == pytest.approx(expected.variance, rel=1e-9, abs=1e-9)


def test_chunk_is_dropped_from_the_request_cache_while_answers_keep_coming(tmp_path):
    """datatrove's drop_chunk waits for the whole queue to drain, which a steady stream of answers
    postpones to the end of the task; here it waits only for the rows queued before it."""

    async def main():
        cache = BatchedRequestCache(str(tmp_path))
        await cache.initialize(0)
        stop = False

        async def producer():
            i = 0
            while not stop:
                await cache.store_result(chunk_index=0 if i < 50 else 1, doc_id=f"d{i}", rollout_idx=0,
                                         result={"text": "x"}, payload_hash=f"h{i}")
                i += 1
                await asyncio.sleep(0.0005)

        task = asyncio.create_task(producer())
        await asyncio.sleep(0.2)
        await asyncio.wait_for(cache.drop_chunk(0), timeout=2)
        stop = True
        await task
        await cache.flush()
        cursor = await cache.connection.execute("SELECT COUNT(*) FROM request_cache WHERE chunk_index = 0")
        assert (await cursor.fetchone())[0] == 0
        cursor = await cache.connection.execute("SELECT COUNT(*) FROM request_cache WHERE chunk_index = 1")
        assert (await cursor.fetchone())[0] > 0
        await cache.close()

    asyncio.run(main())


def test_held_answers_reach_the_cache_only_for_unfinished_documents(tmp_path):
    from datatrove.pipeline.inference.types import InferenceResult

    async def main():
        cache = BatchedRequestCache(str(tmp_path))
        await cache.initialize(0)
        result = InferenceResult(text="t", finish_reason="stop", usage={}, reasoning="")
        cache.hold_result(0, "done", 0, {"messages": [1]}, result)
        cache.hold_result(0, "open", 0, {"messages": [2]}, result)
        cache.release_document("done")  # its checkpoint line carries the answer
        cache.flush_held()
        await cache.flush()
        cursor = await cache.connection.execute("SELECT doc_id, payload_hash FROM request_cache")
        rows = await cursor.fetchall()
        assert rows == [("open", cache.prepare_payload({"messages": [2]}))]
        await cache.close()

    asyncio.run(main())


def test_lean_writer_lines_are_written_before_a_file_closes(tmp_path):
    writer = LeanJsonlWriter(str(tmp_path), output_filename="${rank}_chunk_${chunk_index}.jsonl", compression=None)
    manager = FastCheckpointManager(str(tmp_path / "ckpt"), records_per_chunk=2)

    async def main():
        with writer as out:
            for i in range(3):
                doc = Document(text=f"t{i}", id=f"d{i}", metadata={"k": i})
                if manager.write_document_nowait(doc, 0, i // 2, out):
                    await manager.complete_chunk(doc, 0, i // 2, out)
            # chunk 0 complete: its file is closed and whole; chunk 1 is still open
            with open(tmp_path / "00000_chunk_0.jsonl") as f:
                assert [json.loads(line)["id"] for line in f] == ["d0", "d1"]
        with open(tmp_path / "00000_chunk_1.jsonl") as f:
            assert [json.loads(line) for line in f] == [{"text": "t2", "id": "d2", "metadata": {"k": 2}}]
        assert writer.stats.stats["total"].total == 3

    asyncio.run(main())


def test_a_stored_refusal_is_raised_again_of_the_same_kind_on_resume(tmp_path):
    """The request cache keeps a refusal with its kind: on resume an input the server found too long is an
    ``InputTooLong`` again (the truncate and chunked strategies retry it shorter), not a generic failure, and the
    request is not sent again."""
    from finephrase.errors import InputTooLong, RequestFailed

    class Refusing:  # the runner's server contract: request(payload) answers or raises
        calls = 0

        async def request(self, payload):
            self.calls += 1
            raise InputTooLong("BadRequestError 400 from http://replica: too long", status=400, body="too long")

    async def ask(step, server):
        payload = {"messages": [{"role": "user", "content": "a long document"}]}
        with pytest.raises(RequestFailed) as refused:
            await step.cached_request(payload, FastSemaphore(4), server, "doc-0", 0, 0)
        return refused.value

    async def main():
        server = Refusing()
        first = _step(tmp_path, "http://127.0.0.1:9")  # the server above is the only one asked
        await first.request_cache.initialize(0)
        live = await ask(first, server)
        await first.request_cache.close()
        resumed = _step(tmp_path, "http://127.0.0.1:9")
        await resumed.request_cache.initialize(0)
        replayed = await ask(resumed, server)
        await resumed.request_cache.close()
        return server.calls, live, replayed

    calls, live, replayed = asyncio.run(main())
    assert calls == 1
    assert type(live) is InputTooLong and type(replayed) is InputTooLong
    assert (replayed.status, replayed.body, str(replayed.error)) == (400, "too long", str(live.error))
