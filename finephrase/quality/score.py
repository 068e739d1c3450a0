"""``finephrase quality score``: how a classifier (fastText, or a transformers model) scores a corpus, and what a
threshold would keep."""

from __future__ import annotations

from dataclasses import dataclass

from finephrase.quality.inputs import read_texts
from finephrase.quality.scorers import EDU_MAX_SCORE, load_scorer

SCORE_BATCH = 256  # documents read and scored together


@dataclass
class ScoreReport:
    scores: list[float]
    label: str
    high: float = 1.0  # the top of the score range (fastText: a probability; a regression head: 5, FineWeb-Edu's)
    what: str = ""  # the first line's subject: "__label__hq", or the regression model

    def kept(self, threshold: float) -> int:
        return sum(1 for s in self.scores if s >= threshold)

    def histogram(self, bins: int = 10) -> list[tuple[float, float, int]]:
        """(low, high, count) for ``bins`` equal-width bins over [0, high] (scores outside it in the end bins)."""
        counts = [0] * bins
        for s in self.scores:
            counts[max(0, min(bins - 1, int(s / self.high * bins)))] += 1
        step = self.high / bins
        return [(i * step, (i + 1) * step, c) for i, c in enumerate(counts)]

    def lines(self, thresholds: list[float], width: int = 40) -> list[str]:
        """The histogram as text bars, then what each threshold keeps."""
        hist = self.histogram()
        top = max(c for _, _, c in hist) or 1
        out = [f"{len(self.scores)} documents scored for {self.what or '__label__' + self.label}"]
        out += [f"  {lo:.1f}-{hi:.1f} | {'#' * round(width * c / top):<{width}} {c}" for lo, hi, c in hist]
        n = len(self.scores) or 1
        out += [f"threshold {t:g}: keeps {self.kept(t)} of {len(self.scores)} ({100 * self.kept(t) / n:.1f}%)"
                for t in thresholds]
        return out


def score_corpus(model_path: str, path: str, label: str = "hq", limit: int | None = None) -> ScoreReport:
    """The scores of the documents under ``path`` by a fastText file or a transformers folder, batch by batch."""
    scorer = load_scorer(model_path, label)
    scores: list[float] = []
    batch: list[str] = []
    for text in read_texts(path, limit):
        batch.append(text)
        if len(batch) == SCORE_BATCH:
            scores += scorer.score_batch(batch)
            batch = []
    scores += scorer.score_batch(batch) if batch else []
    if getattr(scorer, "regression", False):
        return ScoreReport(scores, label, high=EDU_MAX_SCORE, what=f"{model_path} (regression, 0-{EDU_MAX_SCORE})")
    return ScoreReport(scores, label)
