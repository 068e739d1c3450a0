"""The text fastText sees: one line (fastText reads a line per example and refuses newlines in ``predict``).

Training (:mod:`finephrase.quality.train`), scoring and the quality filter all call :func:`fasttext_text`, so
a model is trained on exactly what it will be asked about.
"""

from __future__ import annotations


def fasttext_text(text: str) -> str:
    """``text`` on one line, every run of whitespace (line breaks, tabs) one space (fastText splits words on
    whitespace, so a model sees the same words either way)."""
    return " ".join(text.split())
