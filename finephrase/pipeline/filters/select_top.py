"""Selection by rank: keep the top ``percent`` % of documents (DCLM) or of generated rows (REWIRE) by a score,
computed over the whole run, not per task.

Two datatrove steps, run as two stages over the same folder:

* :class:`TopPercentCutoff` (one task, reading every task's files): ranks all documents of a group by
  ``(score, id)`` — the id breaks ties, so exactly ``k`` are kept — and writes the ``k``-th key to
  ``<folder>/cutoff.json``; ``k`` is ``percent`` % of the group's scored documents, rounded half up (at least one).
  Groups: the rows' prompt configs (each config is its own dataset), or one group (``by_config=False``).
* :class:`TopPercentFilter` (every task): keeps a document whose key reaches its group's cutoff. Counted:
  ``selected/<group>``, ``below_top/<group>`` (rows: with their tokens, ``removed_*_tokens/<prompt>``, as the other
  output stages count theirs); a document without a score is dropped as ``unscored``.
"""

from __future__ import annotations

import json
import math

from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from finephrase import stats as names
from finephrase.pipeline.formatters.rows import row_config, row_tokens

CUTOFF_FILE = "cutoff.json"
ALL = "all"


def kept_count(n: int, percent: float) -> int:
    """How many of ``n`` documents the top ``percent`` % is: rounded half up, at least one of a non-empty group."""
    return min(n, max(1, math.floor(n * percent / 100 + 0.5))) if n else 0


def _group(doc, by_config: bool) -> str:
    return row_config(doc) if by_config else ALL


def _key(doc, score_key: str) -> tuple[float, str] | None:
    score = doc.metadata.get(score_key)
    return None if score is None else (float(score), str(doc.id))


class TopPercentCutoff(PipelineStep):
    """One task: the cutoff key of each group's top ``percent`` %.

    Args:
        folder: where ``cutoff.json`` is written.
        percent: the share kept, in (0, 100].
        score_key: the metadata field ranked (``quality_score``, ``output_quality_score``).
        by_config: one ranking per prompt config (rows), or one for all documents.
    """

    type = "🏆 - SELECT"
    name = "🏆 top-percent cutoff"

    def __init__(self, folder: str, percent: float, score_key: str, by_config: bool):
        super().__init__()
        self.folder, self.percent, self.score_key, self.by_config = folder, percent, score_key, by_config

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if world_size != 1:
            raise ValueError("the cutoff is computed over the whole run by a single task")
        keys: dict[str, list[tuple[float, str]]] = {}
        for doc in data or []:
            key = _key(doc, self.score_key)
            if key is not None:
                keys.setdefault(_group(doc, self.by_config), []).append(key)
        cutoffs = {}
        for group, found in keys.items():
            found.sort(reverse=True)
            k = kept_count(len(found), self.percent)
            cutoffs[group] = {"score": found[k - 1][0], "id": found[k - 1][1], "kept": k, "of": len(found)}
            self.stat_update(f"ranked/{group}", value=len(found))
        with get_datafolder(self.folder).open(CUTOFF_FILE, "w") as f:
            f.write(json.dumps({"percent": self.percent, "score_key": self.score_key, "groups": cutoffs}, indent=1))
        yield from ()  # a generator that yields nothing: the documents stop here


class TopPercentFilter(BaseFilter):
    """Keep the documents at or above their group's cutoff (see :class:`TopPercentCutoff`)."""

    name = "🏆 top percent"

    def __init__(self, folder: str, score_key: str, by_config: bool, exclusion_writer=None):
        super().__init__(exclusion_writer=exclusion_writer)
        self.folder, self.score_key, self.by_config = folder, score_key, by_config
        self._cutoffs = None

    def cutoffs(self) -> dict:
        if self._cutoffs is None:
            with get_datafolder(self.folder).open(CUTOFF_FILE, "r") as f:
                self._cutoffs = json.load(f)["groups"]
        return self._cutoffs

    def filter(self, doc) -> bool | tuple[bool, str]:
        group, key = _group(doc, self.by_config), _key(doc, self.score_key)
        cut = self.cutoffs().get(group)
        if key is None or cut is None:
            return False, "unscored"
        if key >= (cut["score"], cut["id"]):
            self.stat_update(f"selected/{group}")
            return True
        self.stat_update(names.per_prompt(names.BELOW_TOP, group))
        if self.by_config:
            prompt_tokens, completion_tokens = row_tokens(doc)
            self.stat_update(names.per_prompt(names.REMOVED_PROMPT_TOKENS, group), value=prompt_tokens)
            self.stat_update(names.per_prompt(names.REMOVED_COMPLETION_TOKENS, group), value=completion_tokens)
        return False, names.BELOW_TOP
