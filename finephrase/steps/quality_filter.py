"""fastText quality filter: keep documents whose score for a label reaches a threshold.

Wraps datatrove's ``FastTextClassifierFilter`` (whole-document mode) and records the score
under ``metadata["quality_score"]`` so it travels into every generated row's provenance. ``model_path`` is a
local file; a Hub reference is resolved to one first (:func:`finephrase.quality.models.resolve_classifier`).
"""

from __future__ import annotations

from datatrove.pipeline.filters.fasttext_filter import FastTextClassifierFilter

from finephrase.quality.score import label_score
from finephrase.steps.local_model import load_fasttext


class QualityFilter(FastTextClassifierFilter):
    name = "🤖 fastText quality"

    def __init__(self, model_path: str, label: str = "hq", threshold: float = 0.5, exclusion_writer=None):
        super().__init__(
            model_url=model_path,
            keep_labels=(label, threshold),
            save_labels_in_metadata=False,
            exclusion_writer=exclusion_writer,
            filter_mode="DOCUMENT",
        )
        self.label = label
        self.threshold = threshold

    @property
    def model(self):
        """The model file itself when local (datatrove's cache would keep a stale copy of a retrained model)."""
        if self._model is None:
            model = load_fasttext(self.model_url, lambda: FastTextClassifierFilter.model.fget(self))
            labels = [x.removeprefix("__label__") for x in model.labels]
            if self.label not in labels:
                raise ValueError(f"filters.quality.label {self.label!r} is not a label of {self.model_url} "
                                 f"(its labels: {labels})")
            self._model = model
        return self._model

    def filter(self, doc) -> bool:
        score = label_score(self.model, doc.text, self.label)  # the text as training saw it (fasttext_text)
        doc.metadata["quality_score"] = round(score, 6)
        if score >= self.threshold:
            return True
        return False, "low_quality"
