"""The rephrase step's output writer: datatrove's ``JsonlWriter`` driven through its public surface only.

Profiling datatrove's ``InferenceRunner`` against an instant server (``benchmarks/inference_client.py``) showed
the client spending much of its CPU on the output: ``dataclasses.asdict`` (a deep copy of the metadata) per
document, gzip for an intermediate file, and the writer's per-file and per-length stats. ``LeanJsonlWriter``
writes the same JSONL lines without them, and accepts an already-serialized line (``write_line``: the
checkpoint's line) so a document is serialized once for both the checkpoint and the output file.

It uses only what ``DiskWriter`` makes public: ``output_filename`` (the ``string.Template`` of the file names,
filled as datatrove fills it: :func:`output_path_for`), ``output_mg`` (the open files), ``write``,
``close_file`` and ``close``. ``output_mg.get_file`` is what datatrove opens files with, minus its retry of
Hugging Face Hub opens: the rephrase output is a local folder.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
from datatrove.data import Document
from datatrove.pipeline.writers.jsonl import JsonlWriter
from datatrove.utils.stats import MetricStats
from datatrove.utils.typeshelper import StatHints


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


def output_path_for(writer, document: Document, rank: int = 0, **kwargs) -> str:
    """The file a ``DiskWriter`` puts ``document`` in: its ``output_filename`` filled as datatrove fills it
    (``rank`` zero-padded to 5, the document's ``id`` and metadata, then ``kwargs`` such as ``chunk_index``)."""
    return writer.output_filename.substitute({"rank": str(rank).zfill(5), "id": document.id, **document.metadata,
                                              **kwargs})


class LeanJsonlWriter(JsonlWriter):
    """JsonlWriter that counts documents written but skips the per-file and per-length stats (the rephrase stage
    reports its own per-prompt counts and token totals), and that accepts an already-serialized line
    (``write_line``). Files split by size (``max_file_size``) and documents with media go through datatrove's
    own ``write``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.line_files: dict[tuple[int, int], tuple[str, list[bytes]]] = {}
        self.lines_written = 0
        identifiers = set(self.output_filename.get_identifiers())
        self.simple_name = identifiers <= {"rank", "chunk_index"}

    def write(self, document: Document, rank: int = 0, **kwargs):
        if self.max_file_size > 0 or document.media:
            return super().write(document, rank, **kwargs)
        try:
            line = orjson.dumps(self.adapter(document), option=orjson.OPT_APPEND_NEWLINE)
        except TypeError:  # a value orjson does not know (numpy, pandas): datatrove's writer converts it
            return super().write(document, rank, **kwargs)
        self.output_mg.get_file(output_path_for(self, document, rank, **kwargs)).write(line)
        self.lines_written += 1

    def write_line(self, line: bytes, document: Document, rank: int, chunk_index: int) -> None:
        """Queue ``line`` (``orjson.dumps(self.adapter(document))`` + newline) for the file ``write`` would put the
        document in; queued lines are written by ``flush_lines`` (one ``write`` per file) and before a file closes."""
        if self.max_file_size > 0 or not self.simple_name:
            return self.write(document, rank, chunk_index=chunk_index)
        entry = self.line_files.get((rank, chunk_index))
        if entry is None:
            filename = output_path_for(self, document, rank, chunk_index=chunk_index)
            entry = self.line_files[(rank, chunk_index)] = (filename, [])
        entry[1].append(line)
        self.lines_written += 1

    def flush_lines(self) -> None:
        for filename, lines in self.line_files.values():
            if lines:
                self.output_mg.get_file(filename).write(b"".join(lines))
                lines.clear()

    def fold_count(self) -> None:
        """Add the documents written since the last fold to the writer's ``total`` stat."""
        if self.lines_written:
            self.stats.stats[StatHints.total] = self.stats.stats[StatHints.total] + MetricStats(
                total=self.lines_written, n=self.lines_written, mean=1, min=1, max=1)
            self.lines_written = 0

    def close_file(self, filename):
        for key in [k for k, (name, _) in self.line_files.items() if name == filename]:
            lines = self.line_files.pop(key)[1]
            if lines:
                self.output_mg.get_file(filename).write(b"".join(lines))
        super().close_file(filename)

    def close(self):
        self.flush_lines()
        self.line_files.clear()
        self.fold_count()
        super().close()
