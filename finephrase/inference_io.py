"""Cheaper per-document bookkeeping for datatrove's InferenceRunner (same files, same semantics).

Profiling ``InferenceRunner`` against an instant server (``benchmarks/inference_client.py``)
showed the client spending most of its CPU outside the HTTP call: a thread-pool hop and an
``aiofiles`` open/append/close per checkpointed document, ``dataclasses.asdict`` (a deep copy of
the metadata) twice per document, gzip for an intermediate file, an sqlite ``commit`` per cached
request (after a thread hop for ``orjson.dumps``), a thread hop per input document. These
subclasses keep the formats and the resume semantics of datatrove's ``CheckpointManager`` and
``RequestCache`` and only change how the bytes get written:

- checkpoint chunks are appended through file handles kept open per chunk, flushed after
  every document (so a SIGKILL loses nothing that was acknowledged);
- documents are serialized from their fields directly (no deep copy);
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
    (the rephrase stage reports its own per-prompt counts and token totals)."""

    def write(self, document: Document, rank: int = 0, **kwargs):
        if self.max_file_size > 0:
            return super().write(document, rank, **kwargs)
        filename = self._get_output_filename(document, rank, **kwargs)
        self._write(self.adapter(document), self._get_output_file_with_retry(filename), filename)
        self.stat_update(StatHints.total)


class FastCheckpointManager(CheckpointManager):
    """datatrove's CheckpointManager with persistent per-chunk file handles (same files and format)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._handles: dict[int, Any] = {}

    def _handle(self, rank: int, chunk_index: int):
        f = self._handles.get(chunk_index)
        if f is None:
            path = os.path.join(self.checkpoints_local_dir, f"{rank:05d}/chunk_{chunk_index:05d}.jsonl")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            f = self._handles[chunk_index] = open(path, "ab")
        return f

    def _close(self, chunk_index: int) -> None:
        f = self._handles.pop(chunk_index, None)
        if f is not None:
            f.close()

    async def write_document(self, document: Document, rank: int, chunk_index: int, output_writer_context):
        if "__no_rollouts_remove" not in document.metadata:
            output_writer_context.write(document, rank=rank, chunk_index=chunk_index)
        self.per_chunk_counts[chunk_index] += 1
        if self.checkpoints_local_dir is None:
            return
        f = self._handle(rank, chunk_index)
        f.write(orjson.dumps(document_dict(document), option=orjson.OPT_APPEND_NEWLINE))
        f.flush()
        if self.per_chunk_counts[chunk_index] == self.records_per_chunk:
            self._close(chunk_index)
            output_writer_context.close_file(
                output_writer_context._get_output_filename(document, rank, chunk_index=chunk_index)
            )
            self.new_completed_chunks.add(chunk_index)
            await self.update_last_chunk_index(rank)

    async def cleanup_last_chunk(self, rank: int, chunk_index: int):
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

    async def initialize(self, rank: int) -> None:
        await super().initialize(rank)
        if self._conn is not None:
            await self._conn.execute("PRAGMA journal_mode=WAL")
            await self._conn.execute("PRAGMA synchronous=NORMAL")

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
                rows_result, rows_error = [], []
                for item in items:
                    if item is None:
                        stop = True
                        continue
                    op_type, data = item
                    if op_type == "result":
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
