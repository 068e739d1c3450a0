"""``LeanInferenceRunner``: a datatrove step that runs a rollout over every document, through an inference server.

finephrase owns this loop: the runner is a plain datatrove ``PipelineStep`` and uses datatrove's public types
only (``Document``, ``InferenceConfig``, ``InferenceResult``, ``InferenceError``, ``ServerError``,
``MetricsKeeper``, ``MetricStats``, ``TimingStats``). What it keeps of datatrove's ``InferenceRunner`` is the
contract and the files: the same rollout function (``rollout_fn(document, generate)``), the same chunked
checkpoints and sqlite request cache (same folders and formats, see :mod:`.checkpoints` and
:mod:`.request_cache`), the same stats names and the same resume semantics (documents done are skipped, answered
requests replayed, nothing is written twice). ``docs/upstream/`` holds the datatrove patches that would let it go
back to subclassing datatrove's runner.

What it does with less work than datatrove's runner, per document (profiled against an instant server,
``benchmarks/inference_client.py``):

- admission through a semaphore released by each document task's done-callback, and a single rollout awaited
  inside the document's own task (:mod:`.admission`);
- about ten ``stat_update`` calls (each a Welford update of a ``MetricStats``) and one
  ``MetricsKeeper.add_metrics`` per document — buffered here and folded into the same ``MetricStats`` /
  ``MetricsKeeper`` in batches (at most every ``stats_flush_interval_s``, before every metrics report and when
  the step ends);
- a hash, a queue entry and an sqlite row for every answer — with final payloads (``payloads_final``) answers
  are held per document and only written for documents still in progress at a flush; the cache is only queried
  for documents it holds rows for;
- checkpoint lines and output lines written in one ``write`` per chunk per ``flush_interval_s``;
- input documents fetched from the reader in batches per thread hop.

The server is anything ``make_server(rank)`` returns with this contract (finephrase's ``ReplicaPool``): an async
context manager whose ``request(payload)`` returns an OpenAI-style chat completion (``choices[0].message``,
``usage``) or raises :class:`~finephrase.errors.RequestFailed` (a bad request: stored in the request cache and
raised again, of the same kind, on resume) or ``ServerError`` / ``GeneratorError`` (the task cannot go on). Retries are the server's business.

What a SIGKILL can cost is unchanged in kind: documents whose checkpoint line was not yet written are processed
again on resume, their requests answered from the request cache when it already holds them (both are written
within ``flush_interval_s``), otherwise sent again; nothing is written twice.
"""

from __future__ import annotations

import asyncio
import gc
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from functools import partial

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.inference.metrics import MetricsKeeper
from datatrove.pipeline.inference.types import InferenceError, InferenceResult, ServerError
from datatrove.utils.stats import TimingStats
from loguru import logger

from finephrase.errors import GeneratorError, RequestFailed
from finephrase.inference.runner.admission import DocumentTasks, FastSemaphore
from finephrase.inference.runner.checkpoints import FastCheckpointManager
from finephrase.inference.runner.request_cache import BatchedRequestCache, result_row
from finephrase.inference.runner.stat_buffer import StatBuffer


class LeanInferenceRunner(StatBuffer, PipelineStep):
    """The lean inference loop described in the module docstring. Subclasses implement ``make_server(rank)``.

    Args:
        rollout_fn: ``rollout_fn(document, generate)`` -> a coroutine of the document's result (None: a failed
            rollout, the document is checkpointed but not written); ``generate(payload)`` sends one request and
            returns an ``InferenceResult``.
        config: datatrove's ``InferenceConfig`` (``max_concurrent_generations``, ``max_concurrent_documents``,
            ``model_name_or_path``, ``metric_interval``; one rollout per document).
        output_writer: the writer of the processed documents (its file name needs ``${chunk_index}`` when
            checkpointing).
        checkpoints_local_dir: local folder of the checkpoints and the request cache (None: no resume).
        records_per_chunk: documents per checkpoint chunk.
        metadata_key: where the rollout's result goes (``metadata[key] = [result]``).
        skip_bad_requests: a document whose request is refused as a bad request is checkpointed and skipped
            (counted) instead of ending the task.
    """

    name = "Inference 🔍"
    type = "Model call"
    flush_interval_s = 0.02
    stats_flush_interval_s = 1.0
    #: True when the rollout never changes a payload after ``generate(payload)`` and ``send_request`` does not
    #: either: answers can then be held and hashed only if they have to be written (see BatchedRequestCache)
    payloads_final = False
    #: tune Python's cyclic garbage collector while the step runs (see ``run``); None restores nothing
    gc_threshold: tuple[int, int, int] | None = (10_000, 20, 20)
    #: requests one document sends at once (the admission of documents is sized from it, see ``size_admission``)
    requests_per_document = 1
    #: where each task saves what happened on the server's replicas (``fleet_record``), None: nowhere
    fleet_dir: str | None = None
    fleet_save_interval_s = 10.0

    def __init__(self, rollout_fn, config, output_writer, checkpoints_local_dir: str | None = None,
                 records_per_chunk: int = 6000, metadata_key: str = "rollout_results", skip_bad_requests: bool = False):
        super().__init__()
        if config.rollouts_per_document != 1:
            raise ValueError("LeanInferenceRunner runs one rollout per document")
        if checkpoints_local_dir is not None:
            template = output_writer.output_filename
            if template.safe_substitute(chunk_index=0) == template.template:
                raise ValueError("Checkpoint chunking requires an output writer filename template that includes "
                                 "${chunk_index}. Example: '${rank}_chunk_${chunk_index}.jsonl'")
        self.config = config
        self.rollout_fn = rollout_fn
        self.output_writer = output_writer
        self.metadata_key = metadata_key
        self.skip_bad_requests = skip_bad_requests
        self.request_cache = BatchedRequestCache(checkpoints_local_dir)
        self.checkpoint_manager = FastCheckpointManager(checkpoints_local_dir, records_per_chunk,
                                                        request_cache=self.request_cache)
        self.metrics = MetricsKeeper(window=60 * 5)
        self.server = None  # the server of the running task (``make_server``)
        self.document_tasks: DocumentTasks | None = None
        self.task_rank = 0
        self.world_size = 1  # the tasks of this step (``run``): they share the server

    def make_server(self, rank: int):
        """The server this task sends its requests to (see the module docstring for what it must offer)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ progress
    def publish_progress(self) -> None:
        """This task's counters for the live display of ``finephrase run`` (a no-op when nothing watches)."""
        from finephrase.progress import publish

        t, server = self.totals, self.server
        replicas = list(getattr(server, "replicas", {}).values())
        publish(f"rephrase-{self.task_rank:05d}", {
            "documents": getattr(self.document_tasks, "done", 0), "requests": t[2], "ok": t[3], "failed": t[4],
            "prompt_tokens": t[0], "completion_tokens": t[1], "in_flight": getattr(server, "in_flight", 0),
            "retried": getattr(server, "retries", 0), "replicas": len(replicas),
            "replicas_healthy": sum(1 for r in replicas if r.healthy)})

    async def metrics_reporter(self, interval: int = 600):
        while True:
            self.flush_stats()
            logger.info("\n" + str(self.metrics))
            logger.info(str(self.stats))
            await asyncio.sleep(interval)

    async def flusher(self) -> None:
        """Background: checkpoint lines every ``flush_interval_s``, stats every ``stats_flush_interval_s``."""
        last_stats = last_fleet = time.monotonic()
        while True:
            await asyncio.sleep(self.flush_interval_s)
            self.flush_progress()
            self.size_admission()
            now = time.monotonic()
            if now - last_stats >= self.stats_flush_interval_s:
                self.flush_stats()
                self.publish_progress()
                last_stats = now
            if now - last_fleet >= self.fleet_save_interval_s:
                self.save_fleet()
                last_fleet = now

    def save_fleet(self) -> None:
        """This task's record of the server's replicas (windows, in flight, the servers' gauges) in ``fleet_dir``
        (read by the run report and ``finephrase status``)."""
        record = getattr(self.server, "fleet_record", None)
        if self.fleet_dir and record is not None:
            from finephrase.inference.client.fleet import save_record

            save_record(self.fleet_dir, self.task_rank, record())

    def size_admission(self) -> None:
        """Documents in flight follow the server's in-flight windows (``window_total``: what its replicas take now)
        with half as much again ready behind them, within ``max_concurrent_documents``; a server without windows
        keeps the configured limit."""
        total = getattr(self.server, "window_total", None)
        documents = self.document_tasks
        if total is None or documents is None:
            return
        wanted = min(self.config.max_concurrent_documents, int(total * 1.5 / self.requests_per_document) + 8)
        if wanted != documents.limit:
            documents.resize(wanted)

    def flush_progress(self) -> None:
        """Checkpoint lines (and the output lines queued with them) first, then the held answers of the documents
        still in progress."""
        self.checkpoint_manager.flush()
        self.request_cache.flush_held()

    # ------------------------------------------------------------------ the step
    def run(self, data, rank: int = 0, world_size: int = 1):
        """Process every document of ``data`` (yields nothing), with the garbage collector tuned for an
        allocation-heavy asyncio client: the heap that exists when the step starts (modules, configuration, the
        pipeline) is frozen (``gc.freeze``: no collection traverses it again until the step ends) and young
        collections run every ``gc_threshold[0]`` allocations instead of every 700. Measured in
        ``benchmarks/inference_client.py``, collections over the import-time heap otherwise cost about a third
        of the client's CPU. Both are undone when the step returns."""
        previous = None
        if self.gc_threshold is not None:
            previous = gc.get_threshold()
            gc.freeze()
            gc.set_threshold(*self.gc_threshold)
        self.world_size = world_size
        try:
            with self.track_time(unit="total"):
                asyncio.run(self.run_async(data, rank))
        finally:
            self.flush_stats()
            if previous is not None:
                gc.set_threshold(*previous)
                gc.unfreeze()

    async def run_async(self, data, rank: int = 0) -> None:
        self.server = self.make_server(rank)
        async with self.server as server:
            semaphore = FastSemaphore(self.config.max_concurrent_generations)
            self.task_rank = rank
            await self.request_cache.initialize(rank)
            self.metrics.reset()
            background = [asyncio.create_task(self.metrics_reporter(interval=self.config.metric_interval)),
                          asyncio.create_task(self.flusher())]
            documents = self.document_tasks = DocumentTasks(self.config.max_concurrent_documents)
            self.size_admission()
            completed_successfully = False
            try:
                with self.inference_timer(), self.output_writer as output:
                    last_chunk: list[int] = []  # the chunk index of the last document read, skipped ones too
                    async for record, chunk_index in self.records_to_run(data, rank, output, last_chunk):
                        await documents.start(lambda r=record, c=chunk_index: self.handle_document(
                            r, rank, c, output, server, semaphore))
                    await documents.wait()
                    if last_chunk:
                        await self.checkpoint_manager.cleanup_last_chunk(rank, last_chunk[0])
                completed_successfully = True
            finally:
                self.flush_progress()
                self.publish_progress()
                self.save_fleet()
                await self.cleanup(background, documents.pending, delete_cache_file=completed_successfully)

    async def cleanup(self, background: list[asyncio.Task], pending: set[asyncio.Task], delete_cache_file: bool,
                      timeout: int = 30) -> None:
        """Cancel what still runs, then close the request cache (its file deleted when the task completed)."""
        for task in (*pending, *background):
            task.cancel()

        async def wait_for_tasks():
            with suppress(Exception):
                await asyncio.wait_for(self.request_cache.close(delete_file=delete_cache_file), timeout=timeout // 2)
            await asyncio.gather(*background, *pending, return_exceptions=True)

        try:
            await asyncio.wait_for(wait_for_tasks(), timeout=timeout)
        except asyncio.TimeoutError:
            logger.warning("Timed out while cleaning up inference runner.")

    def inference_timer(self) -> TimingStats:
        """datatrove's ``inference_time`` stat (seconds), timing the whole loop."""
        timer = self.stats.stats.get("inference_time")
        if not isinstance(timer, TimingStats):
            timer = self.stats.stats["inference_time"] = TimingStats(unit="seconds")
        timer.unit = "seconds"
        return timer

    async def records_to_run(self, data, rank: int, output, last_chunk: list[int]):
        """(document, checkpoint chunk index) of every document not done yet: the checkpoints of a previous
        attempt are read first (which re-writes the documents of unfinished chunks to the output)."""
        documents_to_skip, processed_ids = await self.checkpoint_manager.parse_existing_checkpoints(rank, output)
        if documents_to_skip > 0:
            logger.info(f"Resuming from previous checkpoint. Will skip "
                        f"{documents_to_skip + len(processed_ids)} already processed documents")
        chunk_index_gen = self.checkpoint_manager.chunk_index_gen()
        record_idx = -1
        async for record in self.iter_documents(data):
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

    async def iter_documents(self, data):
        """Documents from the (synchronous) reader, fetched in batches per thread hop rather than one by one."""
        iterator = iter(data)
        pool = ThreadPoolExecutor(max_workers=1)
        batch_size = max(8, min(256, self.config.max_concurrent_documents))

        def next_batch():
            batch = []
            for doc in iterator:
                batch.append(doc)
                if len(batch) >= batch_size:
                    break
            return batch

        loop = asyncio.get_running_loop()
        try:
            while True:
                batch = await loop.run_in_executor(pool, next_batch)
                if not batch:
                    return
                for doc in batch:
                    yield doc
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ documents
    async def handle_document(self, doc: Document, rank: int, chunk_index: int, output, server, semaphore) -> None:
        """One document: its rollout, then its checkpoint line and output line. A bad request (when
        ``skip_bad_requests``) is a counted skip; ``ServerError``, ``GeneratorError`` and cancellation end the
        task with the document unprocessed; any other error ends it as datatrove's ``InferenceError``."""
        key = self.metadata_key
        try:
            counters = [0]
            request = self.held_request if self.payloads_final else self.cached_request
            generate = partial(request, semaphore=semaphore, server=server, doc_id=str(doc.id),
                               rollout_idx=0, chunk_index=chunk_index, request_counters=counters)
            result = await self.rollout_fn(doc, generate)
            self.stat_update("requests", value=counters[0], unit="rollout")
            ok = result is not None
            doc.metadata[key] = [result] if ok else []
            self.stat_update("successful_rollouts", value=int(ok), unit="document")
            self.stat_update("failed_rollouts", value=1 - int(ok), unit="document")
            if not ok:
                doc.metadata["__no_rollouts_remove"] = True
            await self.finish_document(doc, rank, chunk_index, output)
        except InferenceError as e:
            if self.skip_bad_requests and isinstance(e, RequestFailed):
                logger.warning(f"Skipping document {doc.id} due to bad request: {e.error}")
                self.stat_update("skipped_bad_requests", value=1, unit="document")
                self.stat_update("failed_rollouts", value=1, unit="document")
                doc.metadata[key] = []
                doc.metadata["__no_rollouts_remove"] = True
                await self.finish_document(doc, rank, chunk_index, output, count_processed_stat=False)
                return
            raise
        except (ServerError, GeneratorError, asyncio.CancelledError):
            raise  # the task cannot go on (no replica, a refused configuration): the document stays unprocessed
        except Exception as e:
            raise InferenceError(doc, e) from e

    async def finish_document(self, doc: Document, rank: int, chunk_index: int, output,
                              count_processed_stat: bool = True) -> None:
        try:
            if count_processed_stat:
                self.stat_update("documents_processed", value=1, unit="document")
            manager = self.checkpoint_manager
            if manager.write_document_nowait(doc, rank, chunk_index, output):
                await manager.complete_chunk(doc, rank, chunk_index, output)
        except Exception as e:
            logger.warning(f"Failed to save document: {e}")
            self.stat_update("failed_documents", value=1, unit="document")
        self.request_cache.release_document(doc.id)

    # ------------------------------------------------------------------ requests
    async def held_request(self, payload: dict, semaphore, server, doc_id: str, rollout_idx: int, chunk_index: int,
                           request_counters: list[int] | None = None) -> InferenceResult:
        """``generate`` for final payloads: the answer is held for the request cache (nothing is hashed or queued
        unless the document was in the cache already or is still in progress at the next flush)."""
        if request_counters is not None:
            request_counters[rollout_idx] += 1
        cache = self.request_cache
        if cache.holds_document(doc_id):
            return await self.cached_request(payload, semaphore, server, doc_id, rollout_idx, chunk_index)
        result = await self.send_request(server, payload, semaphore)
        if cache.enabled:
            cache.hold_result(chunk_index, doc_id, rollout_idx, payload, result)
        return result

    async def cached_request(self, payload: dict, semaphore, server, doc_id: str, rollout_idx: int, chunk_index: int,
                             request_counters: list[int] | None = None) -> InferenceResult:
        """``generate`` with the request cache as datatrove's runner has it: a stored answer is replayed (a stored
        bad request raised again), otherwise the request is sent and its answer (or bad request) stored."""
        if request_counters is not None:
            request_counters[rollout_idx] += 1
        cache = self.request_cache
        if not cache.enabled:
            return await self.send_request(server, payload, semaphore)
        payload_hash = cache.prepare_payload(payload)
        cached, error = await cache.get_cached_response(doc_id, rollout_idx, payload_hash=payload_hash)
        if error is not None:  # only refusals are stored
            raise RequestFailed.from_stored(error)
        if cached is not None:
            return InferenceResult(text=cached["text"], finish_reason=cached["finish_reason"],
                                   usage=cached["usage"], reasoning=cached.get("reasoning", ""))
        try:
            result = await self.send_request(server, payload, semaphore)
        except RequestFailed as e:
            await cache.store_error(chunk_index, doc_id, rollout_idx, e.stored(), payload_hash=payload_hash)
            raise
        await cache.store_result(chunk_index, doc_id, rollout_idx, result_row(result), payload_hash=payload_hash)
        return result

    async def send_request(self, server, payload: dict, semaphore) -> InferenceResult:
        """One request, in one coroutine: a slot of the request semaphore, the server's request (retries, back-off
        and replica choice are the server's), the stats and metrics."""
        if "model" not in payload:
            payload["model"] = self.config.model_name_or_path
        if not semaphore.try_acquire():  # uncontended: no coroutine round trip
            await semaphore.acquire()
        try:
            response = await server.request(payload)
        except InferenceError:
            self.count_request(ok=False)
            self.stat_update("failed_requests", unit="request")
            raise
        finally:
            semaphore.release()
        choice = response["choices"][0]
        usage = response.get("usage") or {}
        self.count_request(usage.get("prompt_tokens", 0), usage.get("completion_tokens", 0))
        self.stat_update("successful_requests", unit="request")
        message = choice.get("message") or {}
        return InferenceResult(text=message.get("content") or "", finish_reason=choice.get("finish_reason"),
                               usage=usage, reasoning=message.get("reasoning_content") or "")
