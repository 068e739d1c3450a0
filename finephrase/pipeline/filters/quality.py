"""fastText quality filter: keep documents whose score for a label reaches a threshold.

A datatrove ``BaseFilter`` that records the score under ``metadata["quality_score"]``, so it travels into every
generated row's provenance. ``model_path`` is a local file (a Hub reference is resolved to one when the recipe is
resolved, :func:`finephrase.plan.resolve`); the text is scored as training saw it (:func:`finephrase.quality.text.fasttext_text`).
"""

from __future__ import annotations

from datatrove.pipeline.filters.base_filter import BaseFilter

from finephrase.quality.fasttext_model import load_fasttext
from finephrase.quality.score import label_score


class QualityFilter(BaseFilter):
    name = "🤖 fastText quality"

    def __init__(self, model_path: str, label: str = "hq", threshold: float = 0.5, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.model_path = model_path
        self.label = label
        self.threshold = threshold
        self.loaded = None  # loaded in the worker, on first use (a fastText model does not pickle)

    @property
    def model(self):
        """The model file itself (datatrove's asset cache would keep a stale copy of a model retrained in place)."""
        if self.loaded is None:
            model = load_fasttext(self.model_path)
            labels = [x.removeprefix("__label__") for x in model.labels]
            if self.label not in labels:
                raise ValueError(f"filters.quality.label {self.label!r} is not a label of {self.model_path} "
                                 f"(its labels: {labels})")
            self.loaded = model
        return self.loaded

    def filter(self, doc) -> bool:
        score = label_score(self.model, doc.text, self.label)
        doc.metadata["quality_score"] = round(score, 6)
        if score >= self.threshold:
            return True
        return False, "low_quality"
