"""``finephrase quality train``: a fastText quality classifier trained the DCLM way.

DCLM's ``fasttext-oh-eli5`` is a supervised fastText model over whole documents with two labels
(``__label__hq`` for the reference text, ``__label__cc`` for random web text), bigrams, and the document on one
line. Here: ``__label__hq`` (``--positive``) and ``__label__lq`` (``--negative``), text normalised exactly as the
filter sees it (:func:`finephrase.quality.text.fasttext_text`), a seeded held-out split on which precision,
recall and F1 are reported per label (and the accuracy over both), and a quantised model (``.ftz``) unless told
otherwise. ``finephrase demo-data`` trains the demo's model with this code too (:mod:`finephrase.demo_data`).

fastText is trained in a fresh ``spawn`` process: in a process that already did other work it sometimes
diverges to NaN (seen after trafilatura); a diverged run is retried with a lower learning rate.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import tempfile
from dataclasses import asdict, dataclass, field

from finephrase.errors import TrainingError
from finephrase.quality.inputs import read_texts
from finephrase.quality.text import fasttext_text

LABELS = ("hq", "lq")
LEARNING_RATES = (0.1, 0.05, 0.02)


@dataclass
class LabelScores:
    precision: float
    recall: float
    f1: float
    support: int


@dataclass
class TrainResult:
    model: str
    examples: dict[str, int]  # label -> training examples
    held_out: int
    labels: dict[str, LabelScores] = field(default_factory=dict)
    learning_rate: float = 0.0
    accuracy: float = 0.0  # held-out documents whose top label is their own

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainSettings:
    valid_fraction: float = 0.1
    seed: int = 0
    epoch: int = 25  # small corpora (hundreds of documents) need more passes than DCLM's millions
    word_ngrams: int = 2
    dim: int = 64
    min_count: int = 1
    quantize: bool = True
    max_per_label: int | None = None


def _examples(positive: str, negative: str, s: TrainSettings) -> list[tuple[str, str]]:
    examples = []
    for label, path in (("hq", positive), ("lq", negative)):
        texts = [fasttext_text(t) for t in read_texts(path, s.max_per_label)]
        examples += [(label, t) for t in texts if t]
    counts = {label: sum(1 for lab, _ in examples if lab == label) for label in LABELS}
    if min(counts.values()) < 10:
        raise TrainingError(f"too few documents to train on: {counts} (at least 10 of each label); "
                            "fix: give more documents with --positive / --negative")
    return examples


def _scores(truth: list[str], predicted: list[str]) -> tuple[dict[str, LabelScores], float]:
    """Per-label precision / recall / F1, and the accuracy over both labels."""
    out = {}
    for label in LABELS:
        tp = sum(1 for t, p in zip(truth, predicted) if t == p == label)
        guessed = sum(1 for p in predicted if p == label)
        actual = sum(1 for t in truth if t == label)
        precision = tp / guessed if guessed else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = LabelScores(round(precision, 4), round(recall, 4), round(f1, 4), actual)
    return out, round(sum(1 for t, p in zip(truth, predicted) if t == p) / len(truth), 4)


def _fit(train_file: str, held_out: list[tuple[str, str]], output: str, lr: float, s: TrainSettings):
    """In the spawned process: train, evaluate on the held-out split, save. None when training diverged."""
    import fasttext

    try:
        model = fasttext.train_supervised(train_file, lr=lr, epoch=s.epoch, wordNgrams=s.word_ngrams, dim=s.dim,
                                          minCount=s.min_count, seed=s.seed, verbose=0, thread=1, bucket=200000)
    except RuntimeError:
        return None
    if s.quantize:
        model.quantize(input=train_file, retrain=False, qnorm=True, cutoff=100000)
    predicted = [labels[0].removeprefix("__label__") for labels in model.predict([t for _, t in held_out])[0]]
    os.makedirs(os.path.dirname(os.path.abspath(output)) or ".", exist_ok=True)
    model.save_model(output)
    return _scores([label for label, _ in held_out], predicted)


def train_classifier(positive: str, negative: str, output: str, settings: TrainSettings | None = None) -> TrainResult:
    """Train on the documents under ``positive`` (hq) and ``negative`` (lq); write the model to ``output``."""
    s = settings or TrainSettings()
    examples = _examples(positive, negative, s)
    random.Random(s.seed).shuffle(examples)
    n_valid = max(2, int(len(examples) * s.valid_fraction))
    held_out, train = examples[:n_valid], examples[n_valid:]
    with tempfile.TemporaryDirectory() as tmp:
        train_file = os.path.join(tmp, "train.txt")
        with open(train_file, "w", encoding="utf-8") as f:
            f.writelines(f"__label__{label} {text}\n" for label, text in train)
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            for lr in LEARNING_RATES:
                fitted = pool.apply(_fit, (train_file, held_out, output, lr, s))
                if fitted is not None:
                    counts = {label: sum(1 for lab, _ in train if lab == label) for label in LABELS}
                    return TrainResult(output, counts, len(held_out), fitted[0], lr, fitted[1])
    raise TrainingError("fastText training diverged at every learning rate tried "
                        f"({', '.join(map(str, LEARNING_RATES))}); fix: check the inputs hold real text")
