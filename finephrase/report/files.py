"""A config's parquet files (``OUTPUT/data/<config>/*.parquet``) -> :class:`ConfigFiles`.

Rows, the rows with a flag (``checks`` not null), the model revisions and the generation parameters are read
from the footers (row-group statistics), not from the rows. Only an output whose run counts are gone has its
tokens, truncated rows and mix kinds counted from the rows' small columns (:func:`count_rows`).
"""

from __future__ import annotations

import glob
import os

import pyarrow.parquet as pq

from finephrase.report.configs import MIX
from finephrase.report.run_report import ConfigFiles, KindCount, RunCounts


def parquet_files(output: str, config: str) -> list[str]:
    return sorted(glob.glob(os.path.join(output, "data", config, "*.parquet")))


class _Range:
    """The lowest and highest non-null value of a column over row groups (``known`` False: a chunk had no
    statistics)."""

    def __init__(self):
        self.values: list = []
        self.known = True

    def add(self, column, num_rows: int) -> None:
        stats = column.statistics
        if stats is not None and stats.has_min_max:
            self.values += [stats.min, stats.max]
        elif stats is None or stats.null_count != num_rows:
            self.known = False

    @property
    def single(self):
        return self.values[0] if self.known and self.values and min(self.values) == max(self.values) else None

    def bounds(self) -> list:
        return sorted({min(self.values), max(self.values)}) if self.values else []


def _columns(row_group) -> dict:
    return {row_group.column(i).path_in_schema: row_group.column(i) for i in range(row_group.num_columns)}


def read_footers(output: str, config: str) -> ConfigFiles:
    files = parquet_files(output, config)
    out = ConfigFiles(name=config, files=len(files), flagged_rows=0)
    revisions, params = _Range(), _Range()
    for f in files:
        out.bytes += os.path.getsize(f)
        metadata = pq.ParquetFile(f).metadata
        out.rows += metadata.num_rows
        for i in range(metadata.num_row_groups):
            rg = metadata.row_group(i)
            cols = _columns(rg)
            checks = cols.get("checks")
            if checks is not None and out.flagged_rows is not None:
                stats = checks.statistics
                out.flagged_rows = None if stats is None else out.flagged_rows + rg.num_rows - stats.null_count
            for name, r in (("model_revision", revisions), ("generation_params", params)):
                if name in cols:
                    r.add(cols[name], rg.num_rows)
    out.model_revisions = revisions.bounds()
    out.generation_params = params.single
    return out


def count_rows(config: ConfigFiles, output: str) -> None:
    """Tokens, truncated rows and (the mix) kinds from the rows' small columns: for an output without counts."""
    config.counted_from, config.truncated_rows = "rows", 0
    for f in parquet_files(output, config.name):
        pf = pq.ParquetFile(f)
        wanted = [c for c in ("prompt_tokens", "completion_tokens", "tokens", "truncated", "kind")
                  if c in pf.schema_arrow.names]
        if not wanted or not pf.metadata.num_rows:
            continue
        col = {c: pf.read(columns=[c]).column(c).to_pylist() for c in wanted}
        tokens = col.get("completion_tokens") or col.get("tokens") or []
        config.prompt_tokens += int(sum(x or 0 for x in col.get("prompt_tokens", [])))
        config.completion_tokens += int(sum(x or 0 for x in tokens))
        config.truncated_rows += sum(1 for x in col.get("truncated", []) if x)
        for i, kind in enumerate(col.get("kind", [])):
            entry = config.kinds.setdefault(kind, KindCount())
            entry.rows += 1
            entry.tokens += int(tokens[i] or 0) if i < len(tokens) else 0


def _tokens_from_counts(config: ConfigFiles, counts: RunCounts | None) -> bool:
    """Fill ``config``'s tokens from the run's counts; False when the counts do not have them."""
    if counts is None:
        return False
    if config.name == MIX:
        if counts.mix is None:
            return False
        config.completion_tokens = counts.mix.synthetic_tokens + counts.mix.real_tokens
        return True
    recorded = counts.row_tokens(config.name)
    if recorded is None:
        return False
    config.prompt_tokens, config.completion_tokens = recorded
    return True


def config_files_report(output: str, configs: list[str], counts: RunCounts | None) -> list[ConfigFiles]:
    """The configs (names) that have parquet files, with their footers and tokens."""
    out = []
    for name in configs:
        config = read_footers(output, name)
        if not config.files:
            continue
        if not _tokens_from_counts(config, counts):
            count_rows(config, output)
        out.append(config)
    return out
