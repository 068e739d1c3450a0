"""Routing by score buckets, as Nemotron-CC does: a document's quality score picks its bucket, the bucket picks the
prompts it is rephrased with.

Two recipe forms (``routing:``):

- ``buckets``: ``[{name, min, prompts}, ...]``; a score goes to the bucket with the highest ``min`` it reaches;
  ``prompts`` are prompt names of the recipe. A score below every ``min`` is counted as ``below-buckets`` and
  goes to no prompt; a document without a score goes to the ``unscored`` prompts (none by default).
- ``threshold`` (the first form, kept): two buckets, ``high-quality`` (score >= threshold) and ``low-quality``,
  each going to the prompts whose ``suits`` is that bucket or ``any``; unscored documents to ``suits: any`` only.

A bucket with ``keep: true`` keeps its documents as they are (Nemotron-CC's medium quality, ``prompts`` usually
empty): :meth:`Router.keeps` says so, and the mix draws its real text from these documents
(:class:`finephrase.pipeline.mix.Mix`'s ``real_filter``).

The bucket is written in the document's metadata (``bucket``): the rows stage counts documents per bucket and per
prompt from it, and every row carries it.
"""

from __future__ import annotations

from dataclasses import dataclass

from finephrase.prompts import Prompt
from finephrase.stats import QUALITY_SCORE

BELOW_BUCKETS = "below-buckets"
UNSCORED = "unscored"


@dataclass(frozen=True)
class Bucket:
    name: str
    min: float
    prompts: tuple[Prompt, ...]
    keep: bool = False


class Router:
    """``route(metadata) -> (bucket name or None, prompts)`` for a recipe's ``routing`` settings (a dict)."""

    def __init__(self, routing: dict | None, prompts: list[Prompt]):
        self.prompts = list(prompts)
        self.routing = routing or {}
        self.buckets, self.unscored = self._buckets()

    def _buckets(self) -> tuple[list[Bucket], tuple[Prompt, ...]]:
        by_name = {p.name: p for p in self.prompts}
        if self.routing.get("buckets"):
            buckets = [Bucket(b["name"], float(b.get("min", 0.0)), tuple(by_name[n] for n in b.get("prompts") or ()),
                              bool(b.get("keep")))
                       for b in self.routing["buckets"]]
            unscored = tuple(by_name[n] for n in self.routing.get("unscored") or ())
        else:
            threshold = self.routing.get("threshold")
            threshold = 0.5 if threshold is None else float(threshold)
            buckets = [Bucket(suits, low, tuple(p for p in self.prompts if p.suits in ("any", suits)))
                       for suits, low in (("high-quality", threshold), ("low-quality", float("-inf")))]
            unscored = tuple(p for p in self.prompts if p.suits == "any")
        return sorted(buckets, key=lambda b: b.min, reverse=True), unscored

    def bucket(self, metadata: dict) -> Bucket | None:
        """The bucket of a scored document (None: unscored, or below every bucket)."""
        score = metadata.get(QUALITY_SCORE)
        if score is None:
            return None
        return next((b for b in self.buckets if float(score) >= b.min), None)

    @property
    def keeps_any(self) -> bool:
        return any(b.keep for b in self.buckets)

    def keeps(self, metadata: dict) -> bool:
        """The document's bucket keeps it as it is (the real text of the mix)."""
        found = self.bucket(metadata)
        return found is not None and found.keep

    def route(self, metadata: dict) -> tuple[str | None, list[Prompt]]:
        if not self.routing:
            return None, self.prompts
        if metadata.get(QUALITY_SCORE) is None:
            return UNSCORED, list(self.unscored)
        found = self.bucket(metadata)
        return (found.name, list(found.prompts)) if found else (BELOW_BUCKETS, [])

    def describe(self) -> list[dict]:
        """The buckets as the card lists them: name, score range, prompts."""
        out, upper = [], None
        for b in self.buckets:
            out.append({"name": b.name, "min": None if b.min == float("-inf") else b.min, "max": upper,
                        "prompts": [p.name for p in b.prompts], "keep": b.keep})
            upper = b.min
        return out
