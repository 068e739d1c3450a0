"""Drop documents shorter than a number of characters (whitespace stripped), counted in stats."""

from __future__ import annotations

from datatrove.pipeline.filters.base_filter import BaseFilter


class MinCharsFilter(BaseFilter):
    name = "📏 min chars"

    def __init__(self, min_chars: int, exclusion_writer=None):
        super().__init__(exclusion_writer)
        self.min_chars = min_chars

    def filter(self, doc) -> bool | tuple[bool, str]:
        return len(doc.text.strip()) >= self.min_chars or (False, "too_short")
