"""Cheaper per-document bookkeeping for datatrove's InferenceRunner (same files, same semantics).

Profiling ``InferenceRunner`` against an instant server (``benchmarks/inference_client.py``)
showed the client spending most of its CPU outside the HTTP call: a thread-pool hop and an
``aiofiles`` open/append/close per checkpointed document, ``dataclasses.asdict`` (a deep copy of
the metadata) twice per document, gzip for an intermediate file, an sqlite ``commit`` per cached
request (after a thread hop for ``orjson.dumps``), a thread hop per input document. These
subclasses keep the formats and the resume semantics of datatrove's ``CheckpointManager`` and
``RequestCache`` and only change how the bytes get written:

- a document is serialized once, from its fields (no deep copy), for the output file and the
  checkpoint chunk; checkpoint lines are written in batches to files kept open per chunk, and
  a partial last line left by a kill is cut off on resume (``FastCheckpointManager``);
- request-cache rows are committed in batches — at most one commit per 20 ms window, in
  sqlite's WAL mode (an answer received less than ~20 ms before a SIGKILL may be requested
  again on resume; nothing is ever written twice).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any

import orjson
from datatrove.data import Document
from datatrove.pipeline.inference.checkpointing import CheckpointManager, RequestCache
from datatrove.pipeline.writers.jsonl import JsonlWriter
from datatrove.utils.stats import MetricStats
from datatrove.utils.typeshelper import StatHints
from loguru import logger


def document_dict(doc: Document) -> dict[str, Any]:
    """``dataclasses.asdict(doc)`` without the deep copy (the dict is serialized right away)."""
    return {
        "text": doc.text,
        "id": doc.id,
        "media": [dataclasses.asdict(m) for m in doc.media] if doc.media else [],
        "metadata": doc.metadata,
    }


def jsonl_adapter(self, doc: Document) -> dict:
    """DiskWriter adapter equivalent to datatrove's default one (empty fields dropped), without the deep copy."""
    return {k: v for k, v in document_dict(doc).items() if v}


class LeanJsonlWriter(JsonlWriter):
    """JsonlWriter that counts documents written but skips the per-file and per-length stats
    (the rephrase stage reports its own per-prompt counts and token totals), and that accepts an
    already-serialized line (``write_line``) so a document is serialized once for both the
    checkpoint and the output file."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._line_files: dict[tuple[int, int], tuple[str, list[bytes]]] = {}
        self._lines_written = 0
        identifiers = set(self.output_filename.get_identifiers())
        self._simple_name = identifiers <= {"rank", "chunk_index"}

    def write(self, document: Document, rank: int = 0, **kwargs):
        if self.max_file_size > 0:
            return super().write(document, rank, **kwargs)
        filename = self._get_output_filename(document, rank, **kwargs)
        self._write(self.adapter(document), self._get_output_file_with_retry(filename), filename)
        self._lines_written += 1

    def write_line(self, line: bytes, document: Document, rank: int, chunk_index: int) -> None:
        """Queue ``line`` (``orjson.dumps(self.adapter(document))`` + newline) for the file ``write`` would put the
        document in; queued lines are written by ``flush_lines`` (one ``write`` per file) and before a file closes."""
        if self.max_file_size > 0 or not self._simple_name:
            return self.write(document, rank, chunk_index=chunk_index)
        entry = self._line_files.get((rank, chunk_index))
        if entry is None:
            filename = self._get_output_filename(document, rank, chunk_index=chunk_index)
            entry = self._line_files[(rank, chunk_index)] = (filename, [])
        entry[1].append(line)
        self._lines_written += 1

    def flush_lines(self) -> None:
        for filename, lines in self._line_files.values():
            if lines:
                self._get_output_file_with_retry(filename).write(b"".join(lines))
                lines.clear()

    def _fold_count(self) -> None:
        if self._lines_written:
            self.stats.stats[StatHints.total] = self.stats.stats[StatHints.total] + MetricStats(
                total=self._lines_written, n=self._lines_written, mean=1, min=1, max=1)
            self._lines_written = 0

    def close_file(self, filename):
        for key in [k for k, (name, _) in self._line_files.items() if name == filename]:
            lines = self._line_files.pop(key)[1]
            if lines:
                self._get_output_file_with_retry(filename).write(b"".join(lines))
        super().close_file(filename)

    def close(self):
        self.flush_lines()
        self._line_files.clear()
        self._fold_count()
        super().close()


def _truncate_partial_line(path: str) -> int:
    """Cut a trailing line without its newline (a write cut short by a kill); returns the bytes dropped."""
    with open(path, "rb+") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return 0
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return 0
        pos = end
        keep = 0
        while pos > 0:
            start = max(0, pos - 65536)
            f.seek(start)
            block = f.read(pos - start)
            i = block.rfind(b"\n")
            if i >= 0:
                keep = start + i + 1
                break
            pos = start
        f.truncate(keep)
        return end - keep


class FastCheckpointManager(CheckpointManager):
    """datatrove's CheckpointManager (same files, same format, same resume) with cheaper writes:

    - a document is serialized once (``orjson``) and the same line goes to the output file and
      to the checkpoint chunk;
    - checkpoint lines are queued and written by ``flush()`` — one ``write`` per chunk, every
      ``flush_interval_s`` of ``LeanInferenceRunner`` and always before a chunk is closed — to
      files kept open per chunk;
    - on resume a checkpoint chunk that ends in a partial line (a kill in the middle of a write)
      is cut back to its last complete line first, so the document on that line is processed again
      instead of the line corrupting the next one appended.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._handles: dict[int, int] = {}
        self._pending: dict[int, list[bytes]] = {}
        self._task_rank = 0
        self._writer = None  # the output writer with queued lines (LeanJsonlWriter), flushed with the checkpoints

    def _fd(self, chunk_index: int) -> int:
        fd = self._handles.get(chunk_index)
        if fd is None:
            path = os.path.join(self.checkpoints_local_dir, f"{self._task_rank:05d}/chunk_{chunk_index:05d}.jsonl")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = self._handles[chunk_index] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return fd

    def _close(self, chunk_index: int) -> None:
        fd = self._handles.pop(chunk_index, None)
        if fd is not None:
            os.close(fd)

    def flush(self, chunk_index: int | None = None) -> None:
        """Write the queued checkpoint lines (of one chunk, or of all), and the output writer's queued lines."""
        if self._writer is not None and chunk_index is None:
            self._writer.flush_lines()
        if not self._pending:
            return
        indices = [chunk_index] if chunk_index is not None else list(self._pending)
        for index in indices:
            lines = self._pending.pop(index, None)
            if not lines:
                continue
            data = memoryview(b"".join(lines))
            fd = self._fd(index)
            while data:
                written = os.write(fd, data)
                data = data[written:]

    def write_document_nowait(self, document: Document, rank: int, chunk_index: int, output_writer_context) -> bool:
        """Write without awaiting; True when this document completes its chunk (then await ``complete_chunk``)."""
        if document.media:  # datatrove's own serialization handles media bytes
            line = orjson.dumps(dataclasses.asdict(document), option=orjson.OPT_APPEND_NEWLINE)
            if "__no_rollouts_remove" not in document.metadata:
                output_writer_context.write(document, rank=rank, chunk_index=chunk_index)
        else:
            line = orjson.dumps({k: v for k, v in (("text", document.text), ("id", document.id),
                                                   ("metadata", document.metadata)) if v},
                                option=orjson.OPT_APPEND_NEWLINE)
            if "__no_rollouts_remove" not in document.metadata:
                write_line = getattr(output_writer_context, "write_line", None)
                if write_line is not None:
                    write_line(line, document, rank, chunk_index)
                    self._writer = output_writer_context
                else:
                    output_writer_context.write(document, rank=rank, chunk_index=chunk_index)
        self.per_chunk_counts[chunk_index] += 1
        if self.checkpoints_local_dir is None:
            return False
        self._task_rank = rank
        pending = self._pending.get(chunk_index)
        if pending is None:
            self._pending[chunk_index] = [line]
        else:
            pending.append(line)
        return self.per_chunk_counts[chunk_index] == self.records_per_chunk

    async def complete_chunk(self, document: Document, rank: int, chunk_index: int, output_writer_context) -> None:
        self.flush(chunk_index)
        self._close(chunk_index)
        output_writer_context.close_file(
            output_writer_context._get_output_filename(document, rank, chunk_index=chunk_index)
        )
        self.new_completed_chunks.add(chunk_index)
        await self.update_last_chunk_index(rank)

    async def write_document(self, document: Document, rank: int, chunk_index: int, output_writer_context):
        if self.write_document_nowait(document, rank, chunk_index, output_writer_context):
            await self.complete_chunk(document, rank, chunk_index, output_writer_context)

    async def parse_existing_checkpoints(self, rank: int, output_writer_context):
        self._task_rank = rank
        if self.checkpoints_local_dir:
            folder = os.path.join(self.checkpoints_local_dir, f"{rank:05d}")
            if os.path.isdir(folder):
                for name in sorted(os.listdir(folder)):
                    if name.startswith("chunk_") and name.endswith(".jsonl"):
                        dropped = _truncate_partial_line(os.path.join(folder, name))
                        if dropped:
                            logger.warning(f"checkpoint {name} ended in a partial line (a kill mid-write): "
                                           f"dropped {dropped} bytes; that document is processed again")
        return await super().parse_existing_checkpoints(rank, output_writer_context)

    async def cleanup_last_chunk(self, rank: int, chunk_index: int):
        self.flush()
        for index in list(self._handles):
            self._close(index)
        await super().cleanup_last_chunk(rank, chunk_index)


class BatchedRequestCache(RequestCache):
    """datatrove's sqlite RequestCache, committing queued rows in batches instead of one by one.

    The database runs in WAL mode with ``synchronous=NORMAL``: a commit is an append to the
    write-ahead log instead of a rollback journal created, synced and deleted per transaction.
    Committed rows survive the process being killed (SIGKILL); only an operating-system crash can
    lose the last commits, which then costs re-sending those requests, never wrong output.
    """

    batch_window_s = 0.02

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._held: dict[str, list] = {}

    # Answers are held in memory per document and only written for documents still in progress at a
    # flush (``flush_held``, every 20 ms from LeanInferenceRunner, right after the checkpoint lines): a
    # document that completes drops its held answers (``release_document``), since its checkpoint line —
    # written in the same flush — already carries them. With one request per document almost no row
    # reaches sqlite; with several prompts or chunks, answered requests of unfinished documents do,
    # within one flush interval, as before.
    def hold_result(self, chunk_index: int, doc_id: str, rollout_idx: int, payload: dict, result) -> None:
        """Remember an answer (``payload`` must not change afterwards: it is hashed at flush time)."""
        rows = self._held.get(doc_id)
        if rows is None:
            self._held[doc_id] = [(chunk_index, rollout_idx, payload, result)]
        else:
            rows.append((chunk_index, rollout_idx, payload, result))

    def holds_document(self, doc_id: str) -> bool:
        """Whether the cache has answers for this document from an interrupted run (they are replayed)."""
        return doc_id in self._doc_ids_in_cache

    def release_document(self, doc_id: str) -> None:
        self._held.pop(doc_id, None)
        self._doc_ids_in_cache.discard(doc_id)

    def flush_held(self) -> None:
        """Queue the held answers of documents still in progress for the sqlite writer."""
        if not self._held or self._queue is None:
            return
        held, self._held = self._held, {}
        for doc_id, rows in held.items():
            for chunk_index, rollout_idx, payload, result in rows:
                self._queue.put_nowait(("result", (chunk_index, doc_id, rollout_idx, self.prepare_payload(payload), {
                    "text": result.text, "finish_reason": result.finish_reason, "usage": result.usage,
                    "reasoning": result.reasoning})))

    async def initialize(self, rank: int) -> None:
        await super().initialize(rank)
        if self._conn is not None:
            await self._conn.execute("PRAGMA journal_mode=WAL")
            await self._conn.execute("PRAGMA synchronous=NORMAL")

    async def drop_chunk(self, chunk_index: int) -> None:
        """Delete a finished chunk's rows once the rows queued before now are written. (datatrove's waits for the
        whole queue to be empty, which under a steady stream of answers may not happen until the task ends.)"""
        if not self.enabled or self._conn is None:
            return
        if self._queue is not None:
            barrier = asyncio.get_running_loop().create_future()
            self._queue.put_nowait(("barrier", barrier))
            await barrier
        await self._conn.execute("DELETE FROM request_cache WHERE chunk_index = ?", (chunk_index,))
        await self._conn.commit()

    async def _writer_loop(self) -> None:
        assert self._queue is not None
        stop = False
        while not stop:
            items = [await self._queue.get()]
            if items[0] is not None:
                await asyncio.sleep(self.batch_window_s)  # let a batch build up: one commit per window
            while True:
                try:
                    items.append(self._queue.get_nowait())
                except asyncio.QueueEmpty:
                    break
            try:
                rows_result, rows_error, barriers = [], [], []
                for item in items:
                    if item is None:
                        stop = True
                        continue
                    op_type, data = item
                    if op_type == "barrier":
                        barriers.append(data)
                    elif op_type == "result":
                        chunk_index, doc_id, rollout_idx, payload_hash, result = data
                        rows_result.append((chunk_index, doc_id, rollout_idx, payload_hash, orjson.dumps(result)))
                    elif op_type == "error":
                        rows_error.append(data)
                if self._conn is not None and (rows_result or rows_error):
                    if rows_result:
                        await self._conn.executemany(
                            "INSERT OR REPLACE INTO request_cache (chunk_index, doc_id, rollout_idx, payload_hash, "
                            "result, error_message) VALUES (?, ?, ?, ?, ?, NULL)", rows_result)
                    if rows_error:
                        await self._conn.executemany(
                            "INSERT OR REPLACE INTO request_cache (chunk_index, doc_id, rollout_idx, payload_hash, "
                            "result, error_message) VALUES (?, ?, ?, ?, NULL, ?)", rows_error)
                    await self._conn.commit()
            except Exception as exc:
                logger.error(f"Failed to write request cache entries: {exc}")
            finally:
                for _ in items:
                    self._queue.task_done()
                for barrier in barriers:
                    if not barrier.done():
                        barrier.set_result(None)
