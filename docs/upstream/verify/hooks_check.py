"""Exercises the public hooks added by the patches in docs/upstream/ (run against the fully patched package).

PYTHONPATH=<patched>/src python hooks_check.py         -> checks every new public API, prints HOOKS OK
PYTHONPATH=<pristine>/src python hooks_check.py --flush-only
    -> only the "RequestCache.flush returns under a steady stream of rows" check (fails on 0.10.1)
"""
import asyncio
import os
import sqlite3
import sys
import tempfile

from smoke import make_runner, read_output, start_server  # noqa: F401  (same folder)

from datatrove.data import Document
from datatrove.pipeline.inference.checkpointing import CheckpointManager, RequestCache
from datatrove.pipeline.inference.run_inference import InferenceConfig, InferenceRunner
from datatrove.pipeline.writers.jsonl import JsonlWriter


async def flush_under_stream(cache_cls, **kwargs) -> bool:
    """True when RequestCache.flush() returns while another task keeps storing rows (checkpoint chunks are dropped
    with drop_chunk -> flush while answers keep arriving)."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = cache_cls(tmp, **kwargs)
        await cache.initialize(0)
        stop = False

        async def producer():
            i = 0
            while not stop:
                await cache.store_result(0, f"d{i}", 0, {"text": "x"}, payload_hash=f"h{i}")
                i += 1
                await asyncio.sleep(0.0005)  # a steady stream of answers, ~1-2k rows/s

        task = asyncio.create_task(producer())
        await asyncio.sleep(0.05)
        try:
            await asyncio.wait_for(cache.flush(), timeout=3)
            ok = True
        except asyncio.TimeoutError:
            ok = False
        stop = True
        await task
        await cache.close(delete_file=True)  # drains the rows still queued
        return ok


async def check_request_cache():
    with tempfile.TemporaryDirectory() as tmp:
        cache = RequestCache(tmp, commit_interval_s=0.02, journal_mode="WAL")
        await cache.initialize(0)
        for i in range(200):
            await cache.store_result(i // 100, f"d{i}", 0, {"text": str(i)}, payload_hash=f"h{i}")
        cache.store_result_nowait(2, "d-nowait", 0, {"text": "n"}, payload_hash="hn")
        await cache.store_error(2, "d-err", 0, "BadRequestError: no", payload_hash="he")
        await cache.flush()
        db = os.path.join(tmp, "00000", "replay.sqlite3")
        con = sqlite3.connect(db)
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert con.execute("SELECT COUNT(*) FROM request_cache").fetchone()[0] == 202
        con.close()
        await cache.drop_chunk(0)
        await cache.close()
        # a new attempt: rows of unfinished documents are replayed
        cache = RequestCache(tmp, journal_mode="WAL")
        await cache.initialize(0)
        assert cache.holds_document("d150") and not cache.holds_document("d50") and not cache.holds_document("zz")
        result, error = await cache.get_cached_response("d150", 0, payload_hash="h150")
        assert result == {"text": "150"} and error is None
        _, error = await cache.get_cached_response("d-err", 0, payload_hash="he")
        assert error.startswith("BadRequestError")
        await cache.mark_document_complete("d150")
        assert not cache.holds_document("d150")
        await cache.close(delete_file=True)
        leftovers = os.listdir(os.path.join(tmp, "00000"))
        assert leftovers == [], leftovers
    assert await flush_under_stream(RequestCache), "flush() did not return under a steady stream"
    print("request cache ok (batched commits, WAL, holds_document, store_result_nowait, barrier flush)")


def check_disk_writer():
    with tempfile.TemporaryDirectory() as tmp:
        w = JsonlWriter(tmp, output_filename="${rank}_chunk_${chunk_index}.jsonl", compression=None)
        doc = Document(text="t", id="x")
        name = w.output_path_for(doc, 0, chunk_index=3)
        assert name == "00000_chunk_3.jsonl", name
        with w:
            w.write_raw(b'{"id":"a"}\n{"id":"b"}\n', name)
            w.write(doc, 0, chunk_index=3)
            w.close_file(w.output_path_for(doc, 0, chunk_index=3))
        with open(os.path.join(tmp, name), "rb") as f:
            lines = f.read().splitlines()
        assert lines[:2] == [b'{"id":"a"}', b'{"id":"b"}'] and b'"id":"x"' in lines[2], lines
        w = JsonlWriter(tmp, output_filename="${rank}_split.jsonl", compression=None, max_file_size=15)
        with w:
            for _ in range(3):
                w.write_raw(b'{"id":"abcdef"}\n', w.output_path_for(doc, 0))
        files = sorted(f for f in os.listdir(tmp) if "split" in f)
        assert files == ["000_00000_split.jsonl", "001_00000_split.jsonl", "002_00000_split.jsonl"], files
    print("disk writer ok (output_path_for, write_raw, max_file_size switching)")


async def check_server(port):
    from datatrove.pipeline.inference.servers.base import InferenceServer
    from datatrove.pipeline.inference.servers.endpoint_server import EndpointServer
    from datatrove.pipeline.inference.types import ServerError

    config = InferenceConfig(server_type="endpoint", model_name_or_path="fake", endpoint_url=f"http://127.0.0.1:{port}")
    server = EndpointServer(config, 0)
    assert not server.ready
    # used without `async with`: make_request starts it instead of waiting forever
    response = await asyncio.wait_for(server.make_request(
        {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}), timeout=30)
    assert response["choices"][0]["message"]["content"] == "HI" and server.ready
    await server.wait_ready()
    assert server.monitoring
    await server.server_cleanup()

    class External(InferenceServer):
        """A server started elsewhere, with its own readiness rule: the bg_start_server override uses only
        public API (no _server_ready / _server_monitoring_task)."""

        def __init__(self, config, rank, fail=False):
            super().__init__(config, rank)
            self.fail = fail

        async def start_server(self):
            return None

        async def monitor_health(self):
            await asyncio.Future()

        async def bg_start_server(self):
            if self.fail:
                self.set_failed(ServerError("no replica"))
                return
            self.set_ready()
            self.start_monitoring()

    ok = External(config, 0)
    async with ok:
        await asyncio.wait_for(ok.wait_ready(), timeout=5)
        assert ok.ready and ok.monitoring
    bad = External(config, 0, fail=True)
    async with bad:
        try:
            await asyncio.wait_for(bad.wait_ready(), timeout=5)
        except ServerError as e:
            assert "no replica" in str(e)
        else:
            raise AssertionError("wait_ready did not raise")
        assert not bad.ready
    print("server ok (ready, wait_ready, set_ready, set_failed, start_in_background, start_monitoring, monitoring)")


async def check_fifo_semaphore():
    from datatrove.pipeline.inference.concurrency import FifoSemaphore

    sem = FifoSemaphore(1)
    order = []
    await sem.acquire()

    async def waiter(i):
        async with sem:
            order.append(i)

    tasks = [asyncio.create_task(waiter(i)) for i in range(5)]
    await asyncio.sleep(0)
    tasks[1].cancel()  # a cancelled waiter gives up its place
    sem.release()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 2, 3, 4], order
    assert sem._value == 1 and not sem.locked()
    # a waiter cancelled after being handed the unit passes it on
    await sem.acquire()
    t1 = asyncio.create_task(sem.acquire())
    t2 = asyncio.create_task(sem.acquire())
    await asyncio.sleep(0)
    sem.release()  # hands the unit to t1 ...
    t1.cancel()  # ... which is cancelled before it runs
    await asyncio.gather(t1, return_exceptions=True)
    assert await asyncio.wait_for(t2, 1) is True
    sem.release()
    assert sem._value == 1
    print("FifoSemaphore ok (FIFO, cancellation while waiting and after hand-over)")


def check_runner(port):
    events = {"handled": 0, "sent": 0, "ticks": 0, "batches": 0, "in_flight": 0, "max_in_flight": 0}

    class MyCache(RequestCache):
        pass

    class MyManager(CheckpointManager):
        pass

    class Runner(InferenceRunner):
        def make_request_cache(self, checkpoints_local_dir):
            return MyCache(checkpoints_local_dir, commit_interval_s=0.01)

        def make_checkpoint_manager(self, checkpoints_local_dir, records_per_chunk, request_cache):
            return MyManager(checkpoints_local_dir, records_per_chunk, request_cache=request_cache)

        async def handle_document(self, doc, *args):
            events["handled"] += 1
            events["in_flight"] += 1
            events["max_in_flight"] = max(events["max_in_flight"], events["in_flight"])
            try:
                await super().handle_document(doc, *args)
            finally:
                events["in_flight"] -= 1

        async def send_request(self, server, payload, semaphore):
            events["sent"] += 1
            return await super().send_request(server, payload, semaphore)

        async def iter_documents(self, data):
            batch = []
            for doc in data:
                batch.append(doc)
                if len(batch) == 10:
                    events["batches"] += 1
                    for d in batch:
                        yield d
                    batch = []
                    await asyncio.sleep(0)
            for d in batch:
                yield d

        def background_tasks(self):
            async def tick():
                while True:
                    events["ticks"] += 1
                    await asyncio.sleep(0.001)

            return [tick()]

    async def rollout(doc, generate):
        await asyncio.sleep(0.001)
        return (await generate({"messages": [{"role": "user", "content": doc.text}]})).text

    with tempfile.TemporaryDirectory() as tmp:
        config = InferenceConfig(server_type="endpoint", model_name_or_path="fake",
                                 endpoint_url=f"http://127.0.0.1:{port}", max_concurrent_generations=4,
                                 max_concurrent_documents=3, metric_interval=3600)
        writer = JsonlWriter(os.path.join(tmp, "out"), output_filename="${rank}_chunk_${chunk_index}.jsonl",
                             compression=None)
        runner = Runner(rollout, config, writer, checkpoints_local_dir=os.path.join(tmp, "ckpt"), records_per_chunk=7)
        assert isinstance(runner.request_cache, MyCache) and isinstance(runner.checkpoint_manager, MyManager)
        assert runner.checkpoint_manager.request_cache is runner.request_cache
        runner.run((Document(text=f"doc {i}", id=f"d{i}") for i in range(40)), rank=0)
        rows = read_output(os.path.join(tmp, "out"))
        assert sorted(r["id"] for r in rows) == sorted(f"d{i}" for i in range(40))
    assert events["handled"] == 40 and events["sent"] == 40 and events["batches"] == 4, events
    assert events["ticks"] > 0 and events["max_in_flight"] <= 3, events
    print(f"runner hooks ok (make_request_cache, make_checkpoint_manager, handle_document, send_request, "
          f"iter_documents, background_tasks; max documents in flight {events['max_in_flight']} <= 3)")


def main():
    if "--flush-only" in sys.argv:
        ok = asyncio.run(flush_under_stream(RequestCache))
        print("RequestCache.flush under a steady stream:", "returns" if ok else "DOES NOT RETURN (timed out after 3 s)")
        return 0
    port = start_server()
    check_disk_writer()
    asyncio.run(check_request_cache())
    asyncio.run(check_server(port))
    asyncio.run(check_fifo_semaphore())
    check_runner(port)
    print("HOOKS OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
