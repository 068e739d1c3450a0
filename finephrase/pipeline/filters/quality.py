"""Quality filters: keep documents whose classifier score reaches a threshold.

:class:`QualityFilter` (a fastText file, the text scored as training saw it: :func:`finephrase.quality.text.fasttext_text`)
and :class:`TransformersQualityFilter` (a transformers sequence-classification / regression folder, e.g. the
FineWeb-Edu classifier, ``batch_size`` documents per forward pass on ``device``) are datatrove ``BaseFilter``s. Both
record the score under ``metadata["quality_score"]`` so it travels into every generated row's provenance; a
regression head's FineWeb-Edu integer score goes to ``metadata["quality_int_score"]``. ``model_path`` is local (a
Hub reference is resolved to one when the recipe is resolved, :func:`finephrase.plan.resolve`);
:func:`quality_filter` picks the class for a path.
"""

from __future__ import annotations

from datatrove.pipeline.filters.base_filter import BaseFilter

from finephrase.quality.fasttext_model import load_fasttext
from finephrase.quality.scorers import TransformersScorer, int_score, is_transformers_model, label_score
from finephrase.stats import QUALITY_SCORE


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
        doc.metadata[QUALITY_SCORE] = round(score, 6)
        if score >= self.threshold:
            return True
        return False, "low_quality"


class TransformersQualityFilter(BaseFilter):
    """Keep documents a transformers classifier scores at ``threshold`` or more, scored ``batch_size`` at a time.

    Args:
        model_path: a local folder (``config.json``, weights, tokenizer).
        label: a classification head's label whose probability is the score (a regression head: its output).
        threshold: the lowest score kept (FineWeb-Edu: ``int_score >= 3``, a score of 2.5 or more).
        device: where the model runs (``cpu``, ``cuda``).
        batch_size: documents per forward pass.
    """

    name = "🤗 transformers quality"

    def __init__(self, model_path: str, label: str | None = None, threshold: float = 0.5, device: str = "cpu",
                 batch_size: int = 32, exclusion_writer=None):
        super().__init__(exclusion_writer=exclusion_writer, batch_size=batch_size)
        self.model_path, self.label, self.threshold, self.device = model_path, label, threshold, device
        self._scorer = None

    @property
    def scorer(self) -> TransformersScorer:
        if self._scorer is None:  # loaded in the worker, not pickled with the step
            self._scorer = TransformersScorer(self.model_path, self.label, self.device, self.batch_size)
        return self._scorer

    def __getstate__(self):
        return {**self.__dict__, "_scorer": None}

    def filter_batch(self, batch) -> list:
        scores = self.scorer.score_batch([doc.text for doc in batch])
        out = []
        for doc, score in zip(batch, scores):
            doc.metadata[QUALITY_SCORE] = round(score, 6)
            if self.scorer.regression:
                doc.metadata["quality_int_score"] = int_score(score)
            out.append(True if score >= self.threshold else (False, "low_quality"))
        return out

    def filter(self, doc) -> bool | tuple[bool, str]:
        return self.filter_batch([doc])[0]


def quality_filter(model_path: str, label: str, threshold: float, device: str = "cpu", batch_size: int = 32):
    """The quality filter for a resolved classifier: a transformers folder, else a fastText file."""
    if is_transformers_model(model_path):
        return TransformersQualityFilter(model_path, label, threshold, device=device, batch_size=batch_size)
    return QualityFilter(model_path, label, threshold)
