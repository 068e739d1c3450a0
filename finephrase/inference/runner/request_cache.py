"""``BatchedRequestCache``: the answered requests of a task, kept in sqlite so a resume sends none of them again.

The file and its format are datatrove's ``RequestCache`` (``datatrove.pipeline.inference.checkpointing``), so a
checkpoints folder is the same whichever wrote it: ``CHECKPOINTS/<rank:05d>/replay.sqlite3``, one table
``request_cache(chunk_index, doc_id, rollout_idx, payload_hash, result, error_message)``, the payload hashed as
``xxh128(orjson.dumps(payload, OPT_SORT_KEYS))``, the result an ``orjson`` blob of
``{text, finish_reason, usage, reasoning}``. finephrase owns the class (it does not subclass datatrove's) and
writes the rows differently:

- rows are committed in batches: at most one commit per ``batch_window_s`` (20 ms), with one ``executemany``
  per kind, in sqlite's WAL mode with ``synchronous=NORMAL`` (a commit is an append to the write-ahead log).
  Committed rows survive a SIGKILL; an operating-system crash can lose the last commits, which costs re-sending
  those requests, never wrong output;
- ``flush`` and ``drop_chunk`` wait only for the rows queued before them (a barrier), never for an empty queue,
  which a steady stream of answers postpones to the end of the task;
- with final payloads, answers are held in memory per document (``hold_result``) and only written for
  documents still in progress at a flush (``flush_held``): a document that completes drops them
  (``release_document``), since its checkpoint line — written in the same flush — already carries them.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import orjson
import xxhash
from loguru import logger

INSERT_RESULT = ("INSERT OR REPLACE INTO request_cache (chunk_index, doc_id, rollout_idx, payload_hash, result, "
                 "error_message) VALUES (?, ?, ?, ?, ?, NULL)")
INSERT_ERROR = ("INSERT OR REPLACE INTO request_cache (chunk_index, doc_id, rollout_idx, payload_hash, result, "
                "error_message) VALUES (?, ?, ?, ?, NULL, ?)")
CREATE_TABLE = """
    CREATE TABLE IF NOT EXISTS request_cache (
        chunk_index INTEGER NOT NULL,
        doc_id TEXT NOT NULL,
        rollout_idx INTEGER NOT NULL,
        payload_hash TEXT NOT NULL,
        result BLOB,
        error_message TEXT,
        PRIMARY KEY (doc_id, rollout_idx, payload_hash)
    )
"""


def result_row(result) -> dict[str, Any]:
    """What the cache stores of an ``InferenceResult``."""
    return {"text": result.text, "finish_reason": result.finish_reason, "usage": result.usage,
            "reasoning": result.reasoning}


class BatchedRequestCache:
    """The sqlite request cache of one task (see the module docstring). Disabled (every method a no-op) when
    ``checkpoints_local_dir`` is None."""

    batch_window_s = 0.02

    def __init__(self, checkpoints_local_dir: str | None):
        self.base_dir = checkpoints_local_dir
        self.enabled = checkpoints_local_dir is not None
        self.db_path: str | None = None
        self.connection = None  # the aiosqlite connection, between ``initialize`` and ``close``
        self.documents_in_cache: set[str] = set()  # ids with rows from an interrupted run (replayed)
        self.pending: asyncio.Queue | None = None  # rows (and barriers) for the writer task
        self.writer: asyncio.Task | None = None
        self.held: dict[str, list] = {}

    # ------------------------------------------------------------------ lifetime
    async def initialize(self, rank: int) -> None:
        if not self.enabled:
            return
        import aiosqlite

        os.makedirs(os.path.join(self.base_dir, f"{rank:05d}"), exist_ok=True)
        self.db_path = os.path.join(self.base_dir, f"{rank:05d}", "replay.sqlite3")
        self.connection = conn = await aiosqlite.connect(self.db_path)
        await conn.execute(CREATE_TABLE)
        await conn.execute("CREATE INDEX IF NOT EXISTS idx_request_cache_chunk ON request_cache(chunk_index)")
        await conn.commit()
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=NORMAL")
        cursor = await conn.execute("SELECT DISTINCT doc_id FROM request_cache")
        self.documents_in_cache = {row[0] for row in await cursor.fetchall()}
        await cursor.close()
        self.pending = asyncio.Queue()
        self.writer = asyncio.create_task(self.write_rows())

    async def close(self, delete_file: bool = False) -> None:
        if self.connection is None:
            return
        if self.writer is not None:
            self.pending.put_nowait(None)  # after every row queued so far: the writer writes them, then stops
            await self.writer
            self.writer = self.pending = None
        await self.connection.close()
        self.connection = None
        if delete_file and self.db_path:
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(self.db_path + suffix):
                    os.remove(self.db_path + suffix)
        self.db_path = None
        self.documents_in_cache.clear()

    # ------------------------------------------------------------------ reading
    @staticmethod
    def prepare_payload(payload: dict[str, Any]) -> str:
        """The payload's hash (datatrove's: xxh128 of the key-sorted orjson bytes)."""
        return xxhash.xxh128_hexdigest(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS))

    def holds_document(self, doc_id: str) -> bool:
        """Whether the cache has answers for this document from an interrupted run (they are replayed)."""
        return doc_id in self.documents_in_cache

    async def get_cached_response(self, doc_id: str, rollout_idx: int, *,
                                  payload_hash: str) -> tuple[dict[str, Any] | None, str | None]:
        """(result, error message) stored for this request, or (None, None)."""
        if self.connection is None or doc_id not in self.documents_in_cache:
            return None, None
        cursor = await self.connection.execute(
            "SELECT result, error_message FROM request_cache WHERE doc_id = ? AND rollout_idx = ? AND payload_hash = ?",
            (doc_id, rollout_idx, payload_hash))
        row = await cursor.fetchone()
        await cursor.close()
        if row is None:
            return None, None
        blob, error_message = row
        return (orjson.loads(blob) if blob is not None else None), error_message

    # ------------------------------------------------------------------ writing
    def store_result_nowait(self, chunk_index: int, doc_id: str, rollout_idx: int, result: dict[str, Any], *,
                            payload_hash: str) -> None:
        if self.pending is not None:
            self.pending.put_nowait(("result", (chunk_index, doc_id, rollout_idx, payload_hash, result)))

    async def store_result(self, chunk_index: int, doc_id: str, rollout_idx: int, result: dict[str, Any], *,
                           payload_hash: str) -> None:
        self.store_result_nowait(chunk_index, doc_id, rollout_idx, result, payload_hash=payload_hash)

    async def store_error(self, chunk_index: int, doc_id: str, rollout_idx: int, error_message: str, *,
                          payload_hash: str) -> None:
        if self.pending is not None:
            self.pending.put_nowait(("error", (chunk_index, doc_id, rollout_idx, payload_hash, error_message)))

    def hold_result(self, chunk_index: int, doc_id: str, rollout_idx: int, payload: dict, result) -> None:
        """Remember an answer (``payload`` must not change afterwards: it is hashed at flush time)."""
        rows = self.held.get(doc_id)
        if rows is None:
            self.held[doc_id] = [(chunk_index, rollout_idx, payload, result)]
        else:
            rows.append((chunk_index, rollout_idx, payload, result))

    def release_document(self, doc_id: str) -> None:
        """The document is complete: drop its held answers, and replay nothing more for it."""
        self.held.pop(doc_id, None)
        self.documents_in_cache.discard(doc_id)

    def flush_held(self) -> None:
        """Queue the held answers of documents still in progress for the sqlite writer."""
        if not self.held or self.pending is None:
            return
        held, self.held = self.held, {}
        put = self.pending.put_nowait
        for doc_id, rows in held.items():
            for chunk_index, rollout_idx, payload, result in rows:
                put(("result", (chunk_index, doc_id, rollout_idx, self.prepare_payload(payload), result_row(result))))

    async def flush(self) -> None:
        """Wait until the rows queued before now are committed."""
        if self.pending is None:
            return
        barrier = asyncio.get_running_loop().create_future()
        self.pending.put_nowait(("barrier", barrier))
        await barrier

    async def drop_chunk(self, chunk_index: int) -> None:
        """Delete a finished chunk's rows, once the rows queued before now are written."""
        if self.connection is None:
            return
        await self.flush()
        await self.connection.execute("DELETE FROM request_cache WHERE chunk_index = ?", (chunk_index,))
        await self.connection.commit()

    async def write_rows(self) -> None:
        """Background: commit queued rows, one commit per ``batch_window_s``; a None ends it (after the rows
        before it)."""
        queue = self.pending
        stop = False
        while not stop:
            items = [await queue.get()]
            if items[0] is not None:
                await asyncio.sleep(self.batch_window_s)  # let a batch build up: one commit per window
            while not queue.empty():
                items.append(queue.get_nowait())
            stop = await self.commit(items)

    async def commit(self, items: list) -> bool:
        """Write one batch of queued items and release its barriers; True when the batch held the stop marker."""
        results, errors, barriers, stop = [], [], [], False
        for item in items:
            if item is None:
                stop = True
            elif item[0] == "barrier":
                barriers.append(item[1])
            elif item[0] == "result":
                chunk_index, doc_id, rollout_idx, payload_hash, result = item[1]
                results.append((chunk_index, doc_id, rollout_idx, payload_hash, orjson.dumps(result)))
            else:
                errors.append(item[1])
        try:
            if results:
                await self.connection.executemany(INSERT_RESULT, results)
            if errors:
                await self.connection.executemany(INSERT_ERROR, errors)
            if results or errors:
                await self.connection.commit()
        except Exception as exc:  # noqa: BLE001 - a lost row is only a request sent again on resume
            logger.error(f"Failed to write request cache entries: {exc}")
        finally:
            for barrier in barriers:
                if not barrier.done():
                    barrier.set_result(None)
        return stop
