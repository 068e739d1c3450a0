"""The Nemotron-CC ensemble as two datatrove steps (the pure part lives in :mod:`finephrase.quality.ensemble`).

* :class:`EnsembleThresholdsStep` (the ``quality-thresholds`` stage, one task): scores a sample of the source with
  every classifier and writes each one's percentile thresholds to ``<folder>/thresholds.json``.
* :class:`EnsembleFilter` (in the filter stage, every task): scores each batch of documents with every classifier,
  maps each score to its bucket by those thresholds and keeps the maximum as ``metadata["quality_score"]`` (an integer
  0-19, what ``routing.buckets`` groups into levels); each classifier's score and bucket go to
  ``metadata["quality_scores"]`` and ``metadata["quality_buckets"]``. Documents below ``threshold`` are dropped.

A classifier is a dict: ``name``, ``path`` (resolved: a fastText file or a transformers folder), ``label``,
``device``, ``batch_size``.
"""

from __future__ import annotations

from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.batching import batched

from finephrase.errors import FinephraseError
from finephrase.quality.ensemble import DEFAULT_BUCKETS, EnsembleThresholds, percentile_thresholds
from finephrase.quality.scorers import load_scorer

THRESHOLDS_FILE = "thresholds.json"


def _scorers(classifiers: list[dict]) -> dict:
    return {c["name"]: load_scorer(c["path"], c.get("label"), c.get("device", "cpu"), c.get("batch_size", 32))
            for c in classifiers}


class EnsembleThresholdsStep(PipelineStep):
    """Each classifier's percentile thresholds on the documents it is given (a sample of the source).

    Args:
        folder: where ``thresholds.json`` is written.
        classifiers: the ensemble (dicts, see the module docstring).
        buckets: integer buckets per classifier (Nemotron-CC: 20).
        batch_size: documents scored together.
    """

    type = "🤖 - QUALITY"
    name = "📊 ensemble percentile thresholds"

    def __init__(self, folder: str, classifiers: list[dict], buckets: int = DEFAULT_BUCKETS, batch_size: int = 32):
        super().__init__()
        self.folder, self.classifiers, self.buckets, self.batch_size = folder, classifiers, buckets, batch_size

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if world_size != 1:
            raise ValueError("the ensemble's thresholds are computed by a single task")
        scorers = _scorers(self.classifiers)
        scores: dict[str, list[float]] = {name: [] for name in scorers}
        for batch in batched(data or [], self.batch_size):
            with self.track_time():
                texts = [doc.text for doc in batch]
                for name, scorer in scorers.items():
                    scores[name] += scorer.score_batch(texts)
            self.stat_update("ensemble_sample", value=len(batch))
        n = len(next(iter(scores.values()), []))
        if n < self.buckets:
            raise FinephraseError(f"the quality ensemble's sample has {n} documents, fewer than its {self.buckets} "
                                  "buckets; fix: raise filters.quality.sample or give more source documents")
        result = EnsembleThresholds({name: percentile_thresholds(s, self.buckets) for name, s in scores.items()},
                                    sample=n, buckets=self.buckets)
        with get_datafolder(self.folder).open(THRESHOLDS_FILE, "w") as f:
            f.write(result.dumps())
        yield from ()  # a generator that yields nothing: the documents stop here


class EnsembleFilter(BaseFilter):
    """Keep documents whose ensemble bucket (the maximum over the classifiers) reaches ``threshold``.

    Args:
        folder: where the ``quality-thresholds`` stage wrote ``thresholds.json``.
        classifiers: the ensemble (dicts, see the module docstring).
        threshold: the lowest bucket kept (0 keeps everything and only scores).
        batch_size: documents scored together.
    """

    name = "🤖 quality ensemble"

    def __init__(self, folder: str, classifiers: list[dict], threshold: int = 0, batch_size: int = 32,
                 exclusion_writer=None):
        super().__init__(exclusion_writer=exclusion_writer, batch_size=batch_size)
        self.folder, self.classifiers, self.threshold = folder, classifiers, threshold
        self._scorers = self._thresholds = None

    def __getstate__(self):
        return {**self.__dict__, "_scorers": None, "_thresholds": None}

    def _load(self):
        if self._scorers is None:
            with get_datafolder(self.folder).open(THRESHOLDS_FILE, "r") as f:
                self._thresholds = EnsembleThresholds.loads(f.read())
            self._scorers = _scorers(self.classifiers)
        return self._scorers, self._thresholds

    def filter_batch(self, batch) -> list:
        scorers, thresholds = self._load()
        texts = [doc.text for doc in batch]
        per_classifier = {name: scorer.score_batch(texts) for name, scorer in scorers.items()}
        out = []
        for i, doc in enumerate(batch):
            raw = {name: s[i] for name, s in per_classifier.items()}
            buckets = thresholds.buckets_of(raw)
            best = max(buckets.values())
            doc.metadata.update(quality_scores={k: round(v, 6) for k, v in raw.items()}, quality_buckets=buckets,
                                quality_score=best)
            self.stat_update(f"quality_bucket/{best}")
            out.append(True if best >= self.threshold else (False, "low_quality"))
        return out

    def filter(self, doc):
        return self.filter_batch([doc])[0]
