"""fastText quality filter: keep documents whose score for a label reaches a threshold.

Wraps datatrove's ``FastTextClassifierFilter`` (whole-document mode) and records the score
under ``metadata["quality_score"]`` so it travels into every generated row's provenance.
"""

from __future__ import annotations

from datatrove.pipeline.filters.fasttext_filter import FastTextClassifierFilter


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

    def filter(self, doc) -> bool:
        labels, scores = self.model.predict(doc.text.replace("\n", " "), k=-1)
        score = dict(zip(labels, scores)).get(f"__label__{self.label}", 0.0)
        doc.metadata["quality_score"] = round(float(score), 6)
        if score >= self.threshold:
            return True
        return False, "low_quality"
