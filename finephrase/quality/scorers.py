"""One interface over the quality classifiers the papers used: ``score_batch(texts) -> list[float]``.

* :class:`FastTextScorer` — a supervised fastText model (DCLM's ``fasttext-oh-eli5``, ``finephrase quality train``):
  the probability of ``__label__<label>``, on the text as training saw it (:func:`finephrase.quality.fasttext_text`).
* :class:`TransformersScorer` — a ``transformers`` sequence-classification model (a local folder saved with
  ``save_pretrained``, or a Hub repo resolved to one), e.g. the FineWeb-Edu classifier
  (``HuggingFaceFW/fineweb-edu-classifier``: a BERT-style regression head). Documents are tokenized and scored in
  batches (``padding="longest"``, ``truncation=True``, as its model card does) on ``device`` (``cpu`` locally,
  ``cuda`` on a GPU node). A regression head (one label) gives its raw output (``function_to_apply="none"``: what
  transformers' ``text-classification`` pipeline gives with that setting); a classification head gives the softmax
  probability of ``label``.

:func:`int_score` is the FineWeb-Edu card's integer score, ``int(round(max(0, min(score, 5))))``: its buckets are
the integers 0-5 (FineWeb-Edu keeps ``int_score >= 3``).

torch is imported only when a transformers model is loaded (``pip install 'finephrase[classifiers]'``).
"""

from __future__ import annotations

import os

from finephrase.errors import ScorerError
from finephrase.quality.fasttext_model import load_fasttext
from finephrase.quality.text import fasttext_text

EDU_MAX_SCORE = 5  # the FineWeb-Edu classifier's scale: 0 (not educational) .. 5 (highly educational)


def int_score(score: float) -> int:
    """The FineWeb-Edu classifier card's integer score: ``int(round(max(0, min(score, 5))))``."""
    return int(round(max(0, min(score, EDU_MAX_SCORE))))


def label_score(model, text: str, label: str) -> float:
    """A fastText model's probability of ``__label__<label>`` for ``text`` (0 when the label is not predicted)."""
    labels, probs = model.predict(fasttext_text(text), k=-1)
    return float(dict(zip(labels, probs)).get(f"__label__{label}", 0.0))


def is_transformers_model(path: str) -> bool:
    """A folder saved by ``save_pretrained`` (it holds ``config.json``)."""
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, "config.json"))


class FastTextScorer:
    kind = "fasttext"

    def __init__(self, path: str, label: str = "hq"):
        if not os.path.isfile(path):
            raise ScorerError(f"fastText model {path!r} not found")
        self.path, self.label = path, label
        self.model = load_fasttext(path)  # the file itself, never a cached copy of an older one
        labels = [x.removeprefix("__label__") for x in self.model.labels]
        if label not in labels:
            raise ScorerError(f"{label!r} is not a label of {path} (its labels: {labels})")

    def score_batch(self, texts: list[str]) -> list[float]:
        return [label_score(self.model, text, self.label) for text in texts]


class TransformersScorer:
    """A sequence-classification / regression model scoring documents in batches.

    Args:
        path: a folder holding ``config.json``, the weights and the tokenizer.
        label: for a classification head, the label whose probability is the score (ignored for a regression head).
        device: ``cpu``, ``cuda``, ``cuda:1``...
        batch_size: documents per forward pass.
        max_length: tokens per document (default: the tokenizer's ``model_max_length``, capped by the model's
            position embeddings).
    """

    kind = "transformers"

    def __init__(self, path: str, label: str | None = None, device: str = "cpu", batch_size: int = 32,
                 max_length: int | None = None):
        try:
            import torch
            from transformers import AutoModelForSequenceClassification, AutoTokenizer
        except ImportError as e:
            raise ScorerError(f"a transformers classifier needs torch ({e}); fix: pip install 'finephrase[classifiers]'"
                              ) from None
        self.torch, self.path, self.batch_size = torch, path, batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).to(device).eval()
        self.device = device
        config = self.model.config
        self.regression = config.num_labels == 1
        self.label_index = None
        if not self.regression:
            names = {str(v): int(k) for k, v in config.id2label.items()}
            if label not in names:
                raise ScorerError(f"{label!r} is not a label of {path} (its labels: {sorted(names)})")
            self.label_index = names[label]
        limit = getattr(config, "max_position_embeddings", None)
        self.max_length = max_length or min(x for x in (self.tokenizer.model_max_length, limit) if x)

    def score_batch(self, texts: list[str]) -> list[float]:
        torch, out = self.torch, []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding="longest",
                                   truncation=True, max_length=self.max_length).to(self.device)
            with torch.inference_mode():
                logits = self.model(**batch).logits.float()
            if self.regression:
                out += logits.squeeze(-1).cpu().tolist()
            else:
                out += torch.softmax(logits, dim=-1)[:, self.label_index].cpu().tolist()
        return out


def load_scorer(path: str, label: str | None = "hq", device: str = "cpu", batch_size: int = 32):
    """The scorer for a resolved classifier path (a transformers folder, else a fastText file)."""
    if is_transformers_model(path):
        return TransformersScorer(path, label, device=device, batch_size=batch_size)
    return FastTextScorer(path, label or "hq")
