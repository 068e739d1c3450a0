"""Splitting a long document into chunks that fit a token budget (paragraphs, then lines, sentences, a cut).

Used by the ``chunked`` strategy (:mod:`.chunked`) and by ``finephrase prompts render``. Imports nothing of
finephrase.
"""

from __future__ import annotations

import re

PARAGRAPH_RE = re.compile(r"(\n[ \t]*\n\s*)")
LINE_RE = re.compile(r"(\n)")
SENTENCE_RE = re.compile(r"(?<=[.!?;:])(\s+)")
PACKING_SLACK = 0.95  # pieces are counted one by one; keep a little room for merges at the joins


def _units(text: str, pattern: re.Pattern) -> list[str]:
    """Split ``text`` after each separator; ``"".join(result) == text``."""
    parts = pattern.split(text)
    out = []
    for i in range(0, len(parts), 2):
        piece = parts[i] + (parts[i + 1] if i + 1 < len(parts) else "")
        if piece:
            out.append(piece)
    return out


def _hard_cut(piece: str, budget: int, count) -> list[str]:
    """Cut a piece with no usable boundary into parts of at most ``budget`` tokens (at whitespace if any)."""
    out = []
    while piece:
        n = count(piece)
        if n <= budget:
            out.append(piece)
            break
        cut = max(1, int(len(piece) * budget / n * PACKING_SLACK))
        space = piece.rfind(" ", cut // 2, cut)
        if space > 0:
            cut = space + 1
        while cut > 1 and count(piece[:cut]) > budget:
            cut = int(cut * 0.8)
        out.append(piece[:cut])
        piece = piece[cut:]
    return out


def split_chunks(text: str, budget: int, count) -> list[str]:
    """Split ``text`` at paragraph boundaries into chunks of at most ``budget`` tokens (by ``count``).

    Paragraphs are packed greedily in order; a paragraph longer than the budget is split at line
    breaks, then sentences, then cut. ``"".join(chunks) == text``.
    """
    budget = max(1, budget)
    limit = max(1, int(budget * PACKING_SLACK))
    pieces: list[tuple[str, int]] = []
    splitters = (LINE_RE, SENTENCE_RE)

    def add(piece: str, level: int) -> None:
        n = count(piece)
        if n <= limit:
            pieces.append((piece, n))
            return
        while level < len(splitters):
            sub = _units(piece, splitters[level])
            level += 1
            if len(sub) > 1:
                for s in sub:
                    add(s, level)
                return
        for part in _hard_cut(piece, limit, count):
            pieces.append((part, count(part)))

    for para in _units(text, PARAGRAPH_RE):
        add(para, 0)
    chunks: list[str] = []
    current, current_tokens = "", 0
    for piece, n in pieces:
        if current and current_tokens + n > limit:
            chunks.append(current)
            current, current_tokens = "", 0
        current += piece
        current_tokens += n
    if current:
        chunks.append(current)
    return chunks
