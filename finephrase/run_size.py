"""How much a run will ask of its generator, before it runs: what ``generator.engine: auto`` decides on.

Documents: ``run.limit`` x ``run.tasks`` when a limit is set; else the source's, counted cheaply (parquet footers,
jsonl lines) up to :data:`COUNT_CAP` — past that the run is large whatever the exact number; a Hub source is
large. Filters and dedup drop some of them: an upper bound, as the engine choice needs.
"""

from __future__ import annotations

import gzip
import os

from finephrase.inference.servers.engine_choice import expected_tokens
from finephrase.inference.client.request_builder import DEFAULT_MAX_NEW_TOKENS
from finephrase.plan import source_files

COUNT_CAP = 10_000


def _count_file(path: str, left: int) -> int:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    opener = gzip.open if path.endswith(".gz") else open
    n = 0
    with opener(path, "rb") as f:
        for _ in f:
            n += 1
            if n >= left:
                break
    return n


def source_documents(source) -> int | None:
    """Documents in a local jsonl/parquet source (at most about ``COUNT_CAP``); ``None`` for a Hub source."""
    if source.kind == "hub" or not source.path or not os.path.exists(source.path):
        return None
    n = 0
    for f in source_files(source):
        n += _count_file(f, COUNT_CAP - n)
        if n >= COUNT_CAP:
            break
    return n


def expected_requests(recipe, limit: int | None = None, tasks: int | None = None) -> int | None:
    limit = recipe.run.limit if limit is None else limit
    tasks = tasks or recipe.run.tasks
    documents = limit * tasks if limit and limit > 0 else source_documents(recipe.source)
    return None if documents is None else documents * max(1, len(recipe.prompts))


def expected_completion_tokens(recipe, limit: int | None = None, tasks: int | None = None) -> float | None:
    """The run's expected completion tokens (``None``: unknown, i.e. large)."""
    max_new = recipe.generator.params.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    return expected_tokens(expected_requests(recipe, limit, tasks), max_new)
