"""Ensembles the Nemotron-CC way: several classifiers, each score mapped to an integer bucket by percentile
thresholds computed on a sample, the maximum taken.

Nemotron-CC scores every document with three classifiers (the FineWeb-Edu classifier, DCLM's fastText, one trained
on Nemotron annotations), turns each score into a bucket 0-19 — the thresholds are the 5th, 10th, ... 95th
percentiles of that classifier's scores on a sample, so each bucket holds 5 % of the sample — and takes the highest
bucket as the document's quality; the 20 buckets are then grouped into quality levels (``routing.buckets``).

What lives here is pure (numbers in, numbers out): :func:`percentile_thresholds`, :func:`bucket_of` and the
thresholds file (:class:`EnsembleThresholds`), written once per run by the ``quality-thresholds`` stage and read
by every task of the filter stage (:mod:`finephrase.pipeline.filters.quality_ensemble`).
"""

from __future__ import annotations

import bisect
import json
from dataclasses import asdict, dataclass

import numpy as np

DEFAULT_BUCKETS = 20  # Nemotron-CC: 0-19


def percentile_thresholds(scores: list[float], buckets: int = DEFAULT_BUCKETS) -> list[float]:
    """The ``buckets - 1`` cut points splitting ``scores`` into ``buckets`` equal shares (percentiles 100/b, ...)."""
    if not scores:
        raise ValueError("no scores to compute percentile thresholds from")
    return [float(x) for x in np.percentile(np.asarray(scores, dtype=float),
                                            [100.0 * i / buckets for i in range(1, buckets)])]


def bucket_of(score: float, thresholds: list[float]) -> int:
    """The integer bucket of ``score``: how many thresholds it reaches (0 .. len(thresholds))."""
    return bisect.bisect_right(thresholds, score)


@dataclass
class EnsembleThresholds:
    """Each classifier's percentile thresholds (``{name: [cut points]}``) and the sample they were computed on."""

    thresholds: dict[str, list[float]]
    sample: int
    buckets: int = DEFAULT_BUCKETS

    def buckets_of(self, scores: dict[str, float]) -> dict[str, int]:
        return {name: bucket_of(score, self.thresholds[name]) for name, score in scores.items()}

    def dumps(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def loads(cls, text: str) -> EnsembleThresholds:
        return cls(**json.loads(text))
