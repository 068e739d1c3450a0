"""The rows of a config, read for the HTML report (:mod:`finephrase.report.html`): every row's small columns (token
counts, scores, finish reason, flags) for the distributions, and a bounded sample of whole rows to read.

Bounded at any size: the small columns of 100k rows are a few MB; the text columns are read only from the row
groups that hold a sampled row. The sample is the ``k`` rows whose ``source_id`` hashes lowest (bottom-k
sampling): deterministic, uniform over documents, and the same source documents in every config of a run (the
page can show one document's rewrites by each prompt).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field

import pyarrow.parquet as pq

from finephrase.report.files import parquet_files

# what the distributions and the filters need, for every row
SMALL_COLUMNS = ("source_id", "finish_reason", "checks", "truncated", "prompt_tokens", "completion_tokens",
                 "source_tokens", "source_tokens_used", "quality_score", "language_score", "language",
                 "output_quality_score", "quality_uplift", "bucket")
# what a shown sample adds
TEXT_COLUMNS = ("id", "text", "source_text", "source_url", "chunks")
DEFAULT_SAMPLES = 200  # rows per config in the page
DEFAULT_MAX_CHARS = 6000  # of each text shown (the rest is cut, and the page says how much)


@dataclass
class ConfigRows:
    """One config: every row's small columns (``columns``: name -> list) and the sampled rows (``samples``)."""

    name: str
    rows: int = 0
    columns: dict[str, list] = field(default_factory=dict)
    samples: list[dict] = field(default_factory=list)


def doc_hash(source_id) -> int:
    """The sampling key of a row: a stable hash of its source document's id."""
    return int.from_bytes(hashlib.blake2b(str(source_id).encode(), digest_size=8).digest(), "big")


def bottom_k(source_ids: list, k: int) -> list[int]:
    """Positions of the ``k`` rows whose source ids hash lowest, in file order."""
    order = sorted(range(len(source_ids)), key=lambda i: (doc_hash(source_ids[i]), i))
    return sorted(order[:k])


def _present(schema, names) -> list[str]:
    return [n for n in names if n in schema.names]


def read_small_columns(files: list[str]) -> dict[str, list]:
    """Every row's small columns over ``files`` (a column missing from a file: ``None`` for its rows)."""
    out: dict[str, list] = {name: [] for name in SMALL_COLUMNS}
    for path in files:
        pf = pq.ParquetFile(path)
        n = pf.metadata.num_rows
        table = pf.read(columns=_present(pf.schema_arrow, SMALL_COLUMNS))
        for name in SMALL_COLUMNS:
            values = table.column(name).to_pylist() if name in table.column_names else [None] * n
            out[name] += [None if isinstance(v, float) and math.isnan(v) else v for v in values]
    return out


def read_rows(files: list[str], positions: list[int], columns) -> list[dict]:
    """The rows at ``positions`` (over the files in order, sorted), reading only the row groups that hold one."""
    wanted, out, offset = sorted(positions), [], 0
    i = 0
    for path in files:
        pf = pq.ParquetFile(path)
        cols = _present(pf.schema_arrow, columns)
        for g in range(pf.metadata.num_row_groups):
            size = pf.metadata.row_group(g).num_rows
            local = []
            while i < len(wanted) and wanted[i] < offset + size:
                local.append(wanted[i] - offset)
                i += 1
            if local:
                out += pf.read_row_group(g, columns=cols).take(local).to_pylist()
            offset += size
    return out


def cut(text: str | None, max_chars: int) -> tuple[str, int]:
    """``text`` cut to ``max_chars`` characters, and how many were cut."""
    text = text or ""
    return (text, 0) if len(text) <= max_chars else (text[:max_chars], len(text) - max_chars)


def read_config(output: str, name: str, samples: int = DEFAULT_SAMPLES,
                max_chars: int = DEFAULT_MAX_CHARS) -> ConfigRows:
    """A config's small columns and its sample of ``samples`` rows (texts cut to ``max_chars``)."""
    files = parquet_files(output, name)
    columns = read_small_columns(files)
    rows = ConfigRows(name=name, rows=len(columns["source_id"]), columns=columns)
    positions = bottom_k(columns["source_id"], samples)
    for pos, extra in zip(positions, read_rows(files, positions, TEXT_COLUMNS)):
        row = {k: columns[k][pos] for k in SMALL_COLUMNS}
        row.update(extra)
        row["text"], row["text_cut"] = cut(row.get("text"), max_chars)
        row["source_text"], row["source_cut"] = cut(row.get("source_text"), max_chars)
        row["config"] = name
        rows.samples.append(row)
    return rows
