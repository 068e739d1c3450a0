"""Documents to train or score on, read with datatrove's readers: JSONL (``.jsonl``, ``.jsonl.gz``), Parquet
(``text`` column), or plain text (``.txt``: one document per non-empty line). A path is a file or a folder
(every such file below it)."""

from __future__ import annotations

import os
from collections.abc import Iterator

from finephrase.errors import InputError

SUFFIXES = {".jsonl": "jsonl", ".jsonl.gz": "jsonl", ".json.gz": "jsonl", ".parquet": "parquet", ".txt": "txt"}


def _kind(name: str) -> str | None:
    for suffix, kind in SUFFIXES.items():
        if name.endswith(suffix):
            return kind
    return None


def input_files(path: str) -> list[tuple[str, str]]:
    """(file, kind) for ``path`` (a file, or every readable file below a folder), sorted."""
    if os.path.isfile(path):
        kind = _kind(path)
        if kind is None:
            raise InputError(f"{path}: not a .jsonl, .jsonl.gz, .parquet or .txt file")
        return [(path, kind)]
    if not os.path.isdir(path):
        raise InputError(f"{path}: no such file or folder")
    found = sorted((os.path.join(root, f), _kind(f)) for root, _, files in os.walk(path) for f in files if _kind(f))
    if not found:
        raise InputError(f"{path}: no .jsonl, .jsonl.gz, .parquet or .txt files in this folder")
    return found


def read_texts(path: str, limit: int | None = None) -> Iterator[str]:
    """The non-empty texts of the documents under ``path`` (at most ``limit``)."""
    from datatrove.pipeline.readers import JsonlReader, ParquetReader

    n = 0
    for file, kind in input_files(path):
        if kind == "txt":
            with open(file, encoding="utf-8", errors="replace") as f:
                texts: Iterator[str] = (line for line in f)
        else:
            folder, name = os.path.split(os.path.abspath(file))
            reader = (JsonlReader if kind == "jsonl" else ParquetReader)(folder, glob_pattern=name)
            texts = (doc.text for doc in reader.run())
        for text in texts:
            if text and text.strip():
                yield text
                n += 1
                if limit is not None and n >= limit:
                    return
