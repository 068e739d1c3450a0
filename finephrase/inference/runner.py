"""``LeanInferenceRunner``: datatrove's ``InferenceRunner`` with a cheaper per-document hot path.

Same constructor, same rollout contract, same checkpoint files, request cache, stats names and
resume semantics as datatrove's runner — only the bookkeeping around each document is done
with less work. Profiling datatrove's runner against an instant server
(``benchmarks/inference_client.py``) showed, per document:

- ``asyncio.wait(FIRST_COMPLETED)`` over the whole pool of in-flight documents each time a new
  document is admitted (a done-callback added to and removed from every task: O(concurrency)
  per document) — replaced by a semaphore released from each task's done-callback;
- one task per rollout plus a ``gather`` even when there is a single rollout — the rollout is
  awaited inside the document's own task;
- about ten ``stat_update`` calls (each a Welford update of a ``MetricStats``) and one
  ``MetricsKeeper.add_metrics`` (a deque entry and two dict loops) — buffered here and folded
  into the same ``MetricStats`` / ``MetricsKeeper`` in batches (at most every
  ``flush_interval_s``, before every metrics report and when the step ends);
- a hash, a queue entry and an sqlite row for every answer — with final payloads
  (``payloads_final``) answers are held per document and only written for documents still in
  progress at a flush (see ``BatchedRequestCache``); the cache is only queried for documents it
  holds rows for (datatrove's own condition);
- checkpoint lines flushed one by one — written in one ``write`` per chunk per flush interval
  (see ``FastCheckpointManager``).

What a SIGKILL can cost is unchanged in kind: documents whose checkpoint line was not yet
written are processed again on resume, their requests answered from the request cache when
it already holds them (both are written within ``flush_interval_s``), otherwise sent again;
nothing is written twice.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import operator
import time
from functools import partial

from datatrove.data import Document
from datatrove.pipeline.inference.run_inference import InferenceRunner
from datatrove.pipeline.inference.types import (
    InferenceError,
    InferenceResult,
    ServerError,
)
from datatrove.utils.stats import MetricStats, TimingStats
from loguru import logger

from finephrase.errors import GeneratorError


class FastSemaphore:
    """An ``asyncio.Semaphore`` with O(1) ``acquire``/``release`` (Python 3.11's checks every waiter for
    cancellation on each ``acquire`` through a generator). FIFO, cancellation-safe."""

    def __init__(self, value: int):
        self._value = value
        self._waiters: collections.deque[asyncio.Future] = collections.deque()

    def locked(self) -> bool:
        return self._value <= 0

    def try_acquire(self) -> bool:
        """Take a unit without waiting when one is free and nobody queues (no coroutine round trip)."""
        if self._value > 0 and not self._waiters:
            self._value -= 1
            return True
        return False

    async def acquire(self) -> bool:
        if self._value > 0 and not self._waiters:
            self._value -= 1
            return True
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut  # the releaser hands its unit over: _value is not incremented for us
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release()  # handed a unit while being cancelled: pass it on
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise
        return True

    def release(self) -> None:
        waiters = self._waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(True)
                return
        self._value += 1

    async def __aenter__(self):
        await self.acquire()

    async def __aexit__(self, *exc):
        self.release()


class DocumentTasks:
    """The documents in flight: at most ``limit`` at once; the first error (or a cancelled document: never lost
    silently) ends the task, raised at the next ``start`` or at ``wait``, as in datatrove."""

    def __init__(self, limit: int):
        self.pending: set[asyncio.Task] = set()
        self.failed: list[BaseException] = []
        self.done = 0  # documents finished without an error (the live progress shows them)
        self._slots = FastSemaphore(limit)

    async def start(self, make_coroutine) -> None:
        await self._slots.acquire()
        if self.failed:
            raise self.failed[0]
        task = asyncio.get_running_loop().create_task(make_coroutine())
        self.pending.add(task)
        task.add_done_callback(self._done)

    async def wait(self) -> None:
        if self.pending:
            await asyncio.wait(set(self.pending))
        if self.failed:
            raise self.failed[0]

    def _done(self, task: asyncio.Task) -> None:
        self.pending.discard(task)
        self._slots.release()
        error = None if task.cancelled() else task.exception()  # retrieved even when not the first
        self.done += not task.cancelled() and error is None
        if self.failed:
            return
        if task.cancelled():  # nothing but the shutdown cancels a document
            self.failed.append(RuntimeError("a document task was cancelled"))
        elif error is not None:
            self.failed.append(error)


def folded_stats(values: list, unit: str | None) -> MetricStats:
    """The ``MetricStats`` that ``update(v, unit)`` for every v in ``values`` would have produced."""
    n = len(values)
    total = sum(values)
    mean = total / n
    if n > 1:
        variance = max(0.0, sum(map(operator.mul, values, values)) - n * mean * mean)
    else:
        variance = 0.0
    stats = MetricStats(total=total, n=n, mean=mean, min=min(values), max=max(values), _running_variance=variance)
    if unit:
        stats.unit = unit
    return stats


class LeanInferenceRunner(InferenceRunner):
    """datatrove ``InferenceRunner`` with the lean per-document path described in the module docstring."""

    flush_interval_s = 0.02
    stats_flush_interval_s = 1.0
    #: True when the rollout never changes a payload after ``generate(payload)`` and ``_send_request`` does not
    #: either: answers can then be held and hashed only if they have to be written (see BatchedRequestCache)
    payloads_final = False
    #: tune Python's cyclic garbage collector while the step runs (see ``run``); None restores nothing
    gc_threshold: tuple[int, int, int] | None = (10_000, 20, 20)

    def __init__(self, *args, **kwargs):
        self._stat_buffer: dict[str, list] = {}  # label -> [unit, values]; str keys (datatrove dumps attributes)
        self._metric_sums = [0, 0, 0, 0, 0]  # tokens_input, tokens_output, requests, successful, failed
        self._totals = [0, 0, 0, 0, 0]  # the same, never reset: the live progress (finephrase.progress)
        self._document_tasks, self._pool, self._rank = None, None, 0
        super().__init__(*args, **kwargs)

    @property
    def stats(self):
        """datatrove's ``Stats`` of this step, with the buffered updates folded in first."""
        if self._stat_buffer:
            self._fold_stat_buffer()
        return self.__dict__["_stats"]

    @stats.setter
    def stats(self, value):
        self.__dict__["_stats"] = value

    # ------------------------------------------------------------------ buffered stats and metrics
    def stat_update(self, *labels, value: int = 1, unit: str = None):
        buffer = self._stat_buffer
        for label in labels:
            entry = buffer.get(label)
            if entry is None:
                buffer[label] = [unit, [value]]
            else:
                entry[1].append(value)
                if unit:
                    entry[0] = unit

    def _fold_stat_buffer(self) -> None:
        buffer, self._stat_buffer = self._stat_buffer, {}
        stats = self.__dict__["_stats"].stats
        for label, (unit, values) in buffer.items():
            stats[label] = stats[label] + folded_stats(values, unit)

    def flush_stats(self) -> None:
        """Fold buffered stat updates into ``self.stats`` and buffered request metrics into ``self.metrics``."""
        self._fold_stat_buffer()
        sums = self._metric_sums
        if sums[2]:
            self.metrics.add_metrics(tokens_input=sums[0], tokens_output=sums[1], requests=sums[2],
                                     successful_requests=sums[3], failed_requests=sums[4])
            self._metric_sums = [0, 0, 0, 0, 0]

    def count_request(self, prompt_tokens: int = 0, completion_tokens: int = 0, ok: bool = True) -> None:
        """What ``_send_request`` reports per request (``MetricsKeeper`` fields), summed until the next flush."""
        for sums in (self._metric_sums, self._totals):
            sums[0] += prompt_tokens
            sums[1] += completion_tokens
            sums[2] += 1
            sums[3 if ok else 4] += 1

    def publish_progress(self) -> None:
        """This task's counters for the live display of ``finephrase run`` (a no-op when nothing watches)."""
        from finephrase.progress import publish

        t, pool = self._totals, self._pool
        replicas = list(getattr(pool, "replicas", {}).values())
        publish(f"rephrase-{self._rank:05d}", {
            "documents": getattr(self._document_tasks, "done", 0), "requests": t[2], "ok": t[3], "failed": t[4],
            "prompt_tokens": t[0], "completion_tokens": t[1], "in_flight": len(getattr(pool, "_inflight", ())),
            "retried": getattr(pool, "retries", 0), "replicas": len(replicas),
            "replicas_healthy": sum(1 for r in replicas if r.healthy)})

    async def metrics_reporter(self, interval: int = 600):
        while True:
            self.flush_stats()
            logger.info("\n" + str(self.metrics))
            logger.info(str(self.stats))
            await asyncio.sleep(interval)

    async def _flusher(self) -> None:
        """Background: checkpoint lines every ``flush_interval_s``, stats every ``stats_flush_interval_s``."""
        last_stats = time.monotonic()
        while True:
            await asyncio.sleep(self.flush_interval_s)
            self._flush_progress()
            now = time.monotonic()
            if now - last_stats >= self.stats_flush_interval_s:
                self.flush_stats()
                self.publish_progress()
                last_stats = now

    def _flush_progress(self) -> None:
        """Checkpoint lines first, then the held answers of the documents still in progress."""
        flush = getattr(self.checkpoint_manager, "flush", None)
        if flush is not None:
            flush()
        flush_held = getattr(self.request_cache, "flush_held", None)
        if flush_held is not None:
            flush_held()

    def run(self, data, rank: int = 0, world_size: int = 1):
        """datatrove's ``run``, with the garbage collector tuned for an allocation-heavy asyncio client:
        the heap that exists when the step starts (modules, configuration, the pipeline) is frozen
        (``gc.freeze``: no collection traverses it again until the step ends) and young collections
        run every ``gc_threshold[0]`` allocations instead of every 700. Measured in
        ``benchmarks/inference_client.py``, collections over the import-time heap otherwise cost
        about a third of the client's CPU. Both are undone when the step returns."""
        previous = None
        if self.gc_threshold is not None:
            previous = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(*self.gc_threshold)
        try:
            return super().run(data, rank, world_size)
        finally:
            self.flush_stats()
            if previous is not None:
                gc.set_threshold(*previous)
                gc.unfreeze()

    # ------------------------------------------------------------------ requests
    async def _held_request(self, payload: dict, semaphore, server, doc_id: str, rollout_idx: int, chunk_index: int,
                            request_counters: list[int] | None = None) -> InferenceResult:
        """``_cached_request`` for final payloads and a cache that can hold answers: nothing is hashed or
        queued unless the document was in the cache already or is still in progress at the next flush."""
        if request_counters is not None:
            request_counters[rollout_idx] += 1
        cache = self.request_cache
        if cache.holds_document(doc_id):
            return await self._cached_request(payload, semaphore, server, doc_id, rollout_idx, chunk_index)
        result = await self._send_request(server, payload, semaphore)
        if cache.enabled:
            cache.hold_result(chunk_index, doc_id, rollout_idx, payload, result)
        return result

    # ------------------------------------------------------------------ documents
    async def _finish_document(self, doc: Document, rank: int, chunk_index: int, output_writer_context,
                               count_processed_stat: bool = True) -> None:
        try:
            if count_processed_stat:
                self.stat_update("documents_processed", value=1, unit="document")
            manager = self.checkpoint_manager
            if hasattr(manager, "write_document_nowait"):
                if manager.write_document_nowait(doc, rank, chunk_index, output_writer_context):
                    await manager.complete_chunk(doc, rank, chunk_index, output_writer_context)
            else:
                await manager.write_document(doc, rank, chunk_index, output_writer_context)
        except Exception as e:
            logger.warning(f"Failed to save document: {e}")
            self.stat_update("failed_documents", value=1, unit="document")
        cache = self.request_cache
        if hasattr(cache, "release_document"):
            cache.release_document(doc.id)
        else:
            await cache.mark_document_complete(doc.id)

    async def _handle_record(self, doc: Document, rank: int, chunk_index: int, rollout_fn, output_writer_context,
                             server, semaphore) -> None:
        if self.config.rollouts_per_document != 1:
            return await super()._handle_record(doc, rank, chunk_index, rollout_fn, output_writer_context, server,
                                                semaphore)
        key = self.metadata_key
        try:
            counters = [0]
            cache = self.request_cache
            holds = self.payloads_final and (not cache.enabled or hasattr(cache, "hold_result"))
            request = self._held_request if holds else self._cached_request
            generate = partial(request, semaphore=semaphore, server=server, doc_id=str(doc.id),
                               rollout_idx=0, chunk_index=chunk_index, request_counters=counters)
            result = await rollout_fn(doc, generate)
            self.stat_update("requests", value=counters[0], unit="rollout")
            ok = result is not None
            doc.metadata[key] = [result] if ok else []
            self.stat_update("successful_rollouts", value=int(ok), unit="document")
            self.stat_update("failed_rollouts", value=1 - int(ok), unit="document")
            if not ok:
                doc.metadata["__no_rollouts_remove"] = True
            await self._finish_document(doc, rank, chunk_index, output_writer_context)
        except InferenceError as e:
            if self.skip_bad_requests and self._is_bad_request_error(e):
                logger.warning(f"Skipping document {doc.id} due to bad request: {e.error}")
                self.stat_update("skipped_bad_requests", value=1, unit="document")
                self.stat_update("failed_rollouts", value=1, unit="document")
                doc.metadata[key] = []
                doc.metadata["__no_rollouts_remove"] = True
                await self._finish_document(doc, rank, chunk_index, output_writer_context, count_processed_stat=False)
                return
            raise
        except (ServerError, GeneratorError, asyncio.CancelledError):
            raise  # the task cannot go on (no replica, a refused configuration): the document stays unprocessed
        except Exception as e:
            raise InferenceError(doc, e) from e

    async def run_async(self, data_gen, rank: int = 0) -> None:
        async with self._init_server(rank=rank) as inference_server:
            if not inference_server:
                return  # a worker: it does not send requests
            semaphore = FastSemaphore(self.config.max_concurrent_generations)
            self._pool, self._rank = inference_server, rank
            await self.request_cache.initialize(rank)
            self.metrics.reset()
            metrics_task = asyncio.create_task(self.metrics_reporter(interval=self.config.metric_interval))
            flusher_task = asyncio.create_task(self._flusher())
            documents = self._document_tasks = DocumentTasks(self.config.max_concurrent_documents)
            completed_successfully = False
            try:
                with self._inference_timer(), self.output_writer as output_writer_context, \
                        self.get_shared_context_cm() as shared_context_data:
                    rollout_fn = partial(self.rollout_fn, **shared_context_data) if shared_context_data \
                        else self.rollout_fn
                    last_chunk: list[int] = []  # the chunk index of the last document read, skipped ones too
                    async for record, chunk_index in self._records_to_run(data_gen, rank, output_writer_context,
                                                                          last_chunk):
                        await documents.start(lambda r=record, c=chunk_index: self._handle_record(
                            r, rank, c, rollout_fn, output_writer_context, inference_server, semaphore))
                    await documents.wait()
                    if last_chunk:
                        await self.checkpoint_manager.cleanup_last_chunk(rank, last_chunk[0])
                completed_successfully = True
            finally:
                self._flush_progress()
                self.publish_progress()
                flusher_task.cancel()
                await self._cleanup(metrics_task, documents.pending, delete_cache_file=completed_successfully)

    def _inference_timer(self) -> TimingStats:
        """datatrove's ``inference_time`` stat (seconds), timing the whole loop."""
        timer = self.stats.stats.get("inference_time")
        if not isinstance(timer, TimingStats):
            timer = self.stats.stats["inference_time"] = TimingStats(unit="seconds")
        timer.unit = "seconds"
        return timer

    async def _records_to_run(self, data_gen, rank: int, output_writer_context, last_chunk: list[int]):
        """(document, checkpoint chunk index) of every document not done yet: the checkpoints of a previous
        attempt are read first (which re-writes the documents of unfinished chunks to the output)."""
        documents_to_skip, processed_ids = await self.checkpoint_manager.parse_existing_checkpoints(
            rank, output_writer_context)
        if documents_to_skip > 0:
            logger.info(f"Resuming from previous checkpoint. Will skip "
                        f"{documents_to_skip + len(processed_ids)} already processed documents")
        chunk_index_gen = self.checkpoint_manager.chunk_index_gen()
        record_idx = -1
        async for record in self._async_data_gen(data_gen):
            record_idx += 1
            chunk_index = next(chunk_index_gen)
            last_chunk[:] = [chunk_index]
            if record_idx < documents_to_skip:
                continue
            if record_idx == documents_to_skip and documents_to_skip > 0:
                logger.info(f"Skipped {documents_to_skip} documents. Resuming from chunk {chunk_index}")
            if processed_ids and record.id in processed_ids:
                processed_ids.remove(record.id)
                continue
            yield record, chunk_index
