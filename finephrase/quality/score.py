"""``finephrase quality score``: how a classifier scores a corpus, and what a threshold would keep."""

from __future__ import annotations

from dataclasses import dataclass

from finephrase.quality.inputs import read_texts
from finephrase.quality.fasttext_model import load_fasttext
from finephrase.quality.text import fasttext_text


@dataclass
class ScoreReport:
    scores: list[float]
    label: str

    def kept(self, threshold: float) -> int:
        return sum(1 for s in self.scores if s >= threshold)

    def histogram(self, bins: int = 10) -> list[tuple[float, float, int]]:
        """(low, high, count) for ``bins`` equal-width bins over [0, 1]."""
        counts = [0] * bins
        for s in self.scores:
            counts[min(bins - 1, int(s * bins))] += 1
        return [(i / bins, (i + 1) / bins, c) for i, c in enumerate(counts)]

    def lines(self, thresholds: list[float], width: int = 40) -> list[str]:
        """The histogram as text bars, then what each threshold keeps."""
        hist = self.histogram()
        top = max(c for _, _, c in hist) or 1
        out = [f"{len(self.scores)} documents scored for __label__{self.label}"]
        out += [f"  {lo:.1f}-{hi:.1f} | {'#' * round(width * c / top):<{width}} {c}" for lo, hi, c in hist]
        n = len(self.scores) or 1
        out += [f"threshold {t:g}: keeps {self.kept(t)} of {len(self.scores)} ({100 * self.kept(t) / n:.1f}%)"
                for t in thresholds]
        return out


def label_score(model, text: str, label: str) -> float:
    """The model's probability of ``__label__<label>`` for ``text`` (0 when the label is not predicted)."""
    labels, probs = model.predict(fasttext_text(text), k=-1)
    return float(dict(zip(labels, probs)).get(f"__label__{label}", 0.0))


def score_corpus(model_path: str, path: str, label: str = "hq", limit: int | None = None) -> ScoreReport:
    model = load_fasttext(model_path)
    return ScoreReport([label_score(model, t, label) for t in read_texts(path, limit)], label)
