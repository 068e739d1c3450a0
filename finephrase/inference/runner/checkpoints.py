"""``FastCheckpointManager``: the chunked checkpoints of a task, from which a killed task resumes.

The files and their meaning are datatrove's ``CheckpointManager`` (``datatrove.pipeline.inference.checkpointing``),
so a checkpoints folder is the same whichever wrote it:

- ``CHECKPOINTS/<rank:05d>/chunk_<index:05d>.jsonl``: one line per document done in a chunk still open (the
  document as written, with its rollout results), ``records_per_chunk`` documents per chunk, in input order;
- ``CHECKPOINTS/last_chunk/<rank:05d>.txt``: the index of the last chunk completed with every chunk before it
  (its output file is closed and whole); a resume skips the documents of those chunks without reading them,
  re-writes the documents of the open chunks' checkpoint files to the output and skips those documents too;
- when the task ends, the rank's folder (chunk files and request cache) is removed.

finephrase owns the class (it does not subclass datatrove's) and writes the bytes differently:

- a document is serialized once (``orjson``, from its fields: no deep copy) and the same line goes to the
  output file (``LeanJsonlWriter.write_line``) and to the checkpoint chunk;
- checkpoint lines are queued and written by ``flush()`` — one ``write`` per chunk, every ``flush_interval_s``
  of the runner and always before a chunk is closed — to files kept open per chunk;
- a completed chunk is recorded in ``last_chunk`` before its checkpoint file and its request-cache rows are
  deleted (datatrove deletes first: a task cancelled in between processes the chunk again on resume);
- on resume a checkpoint chunk that ends in a partial line (a kill in the middle of a write) is cut back to its
  last complete line first, so the document on that line is processed again instead of the line corrupting
  the next one appended.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections import Counter

import orjson
from datatrove.data import Document
from datatrove.io import get_datafolder
from datatrove.pipeline.readers.jsonl import JsonlReader
from loguru import logger

from finephrase.inference.runner.writer import jsonl_adapter, output_path_for

NO_OUTPUT = "__no_rollouts_remove"  # datatrove's metadata flag: checkpointed, not written to the output


def truncate_partial_line(path: str) -> int:
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


def checkpoint_line(document: Document) -> bytes:
    """The document's checkpoint line (datatrove's ``asdict`` layout, empty fields dropped unless it has media)."""
    if document.media:  # datatrove's own layout for media documents
        return orjson.dumps(dataclasses.asdict(document), option=orjson.OPT_APPEND_NEWLINE)
    return orjson.dumps(jsonl_adapter(None, document), option=orjson.OPT_APPEND_NEWLINE)  # the output's line too


class FastCheckpointManager:
    """The checkpoints of one task (see the module docstring); without ``checkpoints_local_dir`` it only writes
    documents to the output writer and counts them per chunk."""

    def __init__(self, checkpoints_local_dir: str | None = None, records_per_chunk: int = 6000, request_cache=None):
        if checkpoints_local_dir is not None and not get_datafolder(checkpoints_local_dir).is_local():
            raise ValueError("checkpoints_local_dir must be a local directory")
        if records_per_chunk <= 0:
            raise ValueError("records_per_chunk must be positive")
        self.checkpoints_local_dir = checkpoints_local_dir
        self.records_per_chunk = records_per_chunk
        self.request_cache = request_cache  # a BatchedRequestCache: a completed chunk's rows are dropped
        self.per_chunk_counts: Counter = Counter()
        self.new_completed_chunks: set[int] = set()
        self.last_chunk_index = -1
        self.progress_lock = asyncio.Lock()  # one update of last_chunk at a time (it awaits the request cache)
        self.handles: dict[int, int] = {}  # chunk index -> open file descriptor of its checkpoint file
        self.queued: dict[int, list[bytes]] = {}  # chunk index -> checkpoint lines not written yet
        self.task_rank = 0
        self.line_writer = None  # the output writer with queued lines (LeanJsonlWriter), flushed with the checkpoints

    def chunk_path(self, rank: int, chunk_index: int) -> str:
        return os.path.join(self.checkpoints_local_dir, f"{rank:05d}/chunk_{chunk_index:05d}.jsonl")

    def marker_path(self, rank: int) -> str:
        return os.path.join(self.checkpoints_local_dir, "last_chunk", f"{rank:05d}.txt")

    # ------------------------------------------------------------------ writing
    def descriptor(self, chunk_index: int) -> int:
        fd = self.handles.get(chunk_index)
        if fd is None:
            path = self.chunk_path(self.task_rank, chunk_index)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = self.handles[chunk_index] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        return fd

    def close_chunk_file(self, chunk_index: int) -> None:
        fd = self.handles.pop(chunk_index, None)
        if fd is not None:
            os.close(fd)

    def flush(self, chunk_index: int | None = None) -> None:
        """Write the queued checkpoint lines (of one chunk, or of all), and the output writer's queued lines."""
        if self.line_writer is not None and chunk_index is None:
            self.line_writer.flush_lines()
        if not self.queued:
            return
        indices = [chunk_index] if chunk_index is not None else list(self.queued)
        for index in indices:
            lines = self.queued.pop(index, None)
            if not lines:
                continue
            data = memoryview(b"".join(lines))
            fd = self.descriptor(index)
            while data:
                written = os.write(fd, data)
                data = data[written:]

    def write_document_nowait(self, document: Document, rank: int, chunk_index: int, output_writer_context) -> bool:
        """Write without awaiting; True when this document completes its chunk (then await ``complete_chunk``)."""
        line = checkpoint_line(document)
        if NO_OUTPUT not in document.metadata:
            write_line = None if document.media else getattr(output_writer_context, "write_line", None)
            if write_line is not None:
                write_line(line, document, rank, chunk_index)
                self.line_writer = output_writer_context
            else:
                output_writer_context.write(document, rank=rank, chunk_index=chunk_index)
        self.per_chunk_counts[chunk_index] += 1
        if self.checkpoints_local_dir is None:
            return False
        self.task_rank = rank
        queued = self.queued.get(chunk_index)
        if queued is None:
            self.queued[chunk_index] = [line]
        else:
            queued.append(line)
        return self.per_chunk_counts[chunk_index] == self.records_per_chunk

    async def complete_chunk(self, document: Document, rank: int, chunk_index: int, output_writer_context) -> None:
        """The chunk's last document is written: its checkpoint lines and output file are finished, then recorded."""
        self.flush(chunk_index)
        self.close_chunk_file(chunk_index)
        output_writer_context.close_file(output_path_for(output_writer_context, document, rank, chunk_index=chunk_index))
        self.new_completed_chunks.add(chunk_index)
        await self.update_last_chunk_index(rank)

    async def update_last_chunk_index(self, rank: int) -> None:
        """Record every completed chunk that follows the last recorded one (chunk n+2 may finish before n+1), then
        delete its checkpoint file and its request-cache rows."""
        async with self.progress_lock:
            while self.last_chunk_index + 1 in self.new_completed_chunks:
                self.last_chunk_index += 1
                chunk_index = self.last_chunk_index
                os.makedirs(os.path.dirname(self.marker_path(rank)), exist_ok=True)
                with open(self.marker_path(rank), "w") as f:
                    f.write(str(chunk_index))
                if os.path.exists(self.chunk_path(rank, chunk_index)):
                    os.remove(self.chunk_path(rank, chunk_index))
                logger.info(f"Finished chunk {chunk_index}")
                self.per_chunk_counts.pop(chunk_index, None)
                self.new_completed_chunks.remove(chunk_index)
                if self.request_cache is not None:
                    await self.request_cache.drop_chunk(chunk_index)

    async def cleanup_last_chunk(self, rank: int, chunk_index: int) -> None:
        """The task is done (``chunk_index``: the chunk of the last document read): record it, remove the rank's
        folder."""
        self.flush()
        for index in list(self.handles):
            self.close_chunk_file(index)
        if self.checkpoints_local_dir is None:
            return
        self.new_completed_chunks.add(chunk_index)
        await self.update_last_chunk_index(rank)
        rank_dir = os.path.join(self.checkpoints_local_dir, f"{rank:05d}")
        if os.path.exists(rank_dir) and self.last_chunk_index == chunk_index:
            shutil.rmtree(rank_dir)

    # ------------------------------------------------------------------ resume
    async def parse_existing_checkpoints(self, rank: int, output_writer_context) -> tuple[int, set[str]]:
        """What a previous attempt of this task did: (documents to skip: those of the recorded chunks, ids of the
        documents done in the open chunks), re-writing the latter to the output."""
        self.task_rank = rank
        done: set[str] = set()
        if not self.checkpoints_local_dir:
            return 0, done
        if os.path.exists(self.marker_path(rank)):
            with open(self.marker_path(rank)) as f:
                self.last_chunk_index = int(f.read().strip())
        for chunk_index, name in self.open_chunk_files(rank):
            self.replay_chunk(chunk_index, name, rank, output_writer_context, done)
        await self.update_last_chunk_index(rank)
        return (self.last_chunk_index + 1) * self.records_per_chunk if self.last_chunk_index >= 0 else 0, done

    def open_chunk_files(self, rank: int) -> list[tuple[int, str]]:
        """(chunk index, path relative to the checkpoints folder) of the chunks after the recorded one, in order;
        a partial last line (a kill mid-write) is cut off first."""
        folder = os.path.join(self.checkpoints_local_dir, f"{rank:05d}")
        if not os.path.isdir(folder):
            return []
        chunks = []
        for name in os.listdir(folder):
            if not (name.startswith("chunk_") and name.endswith(".jsonl")):
                continue
            chunk_index = int(name.removeprefix("chunk_").removesuffix(".jsonl"))
            if chunk_index <= self.last_chunk_index:
                continue  # leftovers of a recorded chunk
            dropped = truncate_partial_line(os.path.join(folder, name))
            if dropped:
                logger.warning(f"checkpoint {name} ended in a partial line (a kill mid-write): "
                               f"dropped {dropped} bytes; that document is processed again")
            chunks.append((chunk_index, f"{rank:05d}/{name}"))
        return sorted(chunks)

    def replay_chunk(self, chunk_index: int, name: str, rank: int, output_writer_context, done: set[str]) -> None:
        """Re-write the documents of one checkpoint file to the output; a full chunk is closed and completed."""
        reader = JsonlReader(self.checkpoints_local_dir, compression=None, add_file_path=False)
        for document in reader.read_file(name):
            if NO_OUTPUT not in document.metadata:
                output_writer_context.write(document, rank=rank, chunk_index=chunk_index)
            done.add(document.id)
            self.per_chunk_counts[chunk_index] += 1
            if self.per_chunk_counts[chunk_index] == self.records_per_chunk:
                output_writer_context.close_file(output_path_for(output_writer_context, document, rank,
                                                                 chunk_index=chunk_index))
                self.new_completed_chunks.add(chunk_index)

    def chunk_index_gen(self):
        """The checkpoint chunk of each input document, in order."""
        ci = 0
        while True:
            for _ in range(self.records_per_chunk):
                yield ci
            ci += 1
