"""Output rules: decide, per prompt, whether a generation is kept, cleaned or dropped.

Rules come from the prompt file's ``output_rules`` (see ``prompts/README.md``). Each rule
returns a drop reason; the ``FormatRows`` step counts every reason in datatrove's stats, and
the card reports them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REFUSAL_RE = re.compile(
    r"^\s*(?:I'm sorry|I am sorry|I apologi[sz]e|Sorry,|I cannot|I can't|I can not|I won't|I am unable|I'm unable|"
    r"As an AI|As a language model|I'm an AI|I am an AI)",
    re.IGNORECASE,
)
META_PREFIX_RE = re.compile(
    r"^\s*(?:Sure[,!.]?[^\n]*|Certainly[,!.]?[^\n]*|Of course[,!.]?[^\n]*|Here(?: is|'s| are)\b[^\n]{0,160}?:)\s*\n",
    re.IGNORECASE,
)
TABLE_ROW_RE = re.compile(r"^\s*\|.*\|\s*$", re.MULTILINE)
TABLE_SEP_RE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$", re.MULTILINE)
QUESTION_RE = re.compile(r"(^|\n)\s*(?:[#*\d.)\s-]*)?(?:\*\*)?(?:Q(?:uestion)?\s*\d*\s*[:.)]|[^\n]{3,}\?\s*(?:\*\*)?\s*$)", re.IGNORECASE | re.MULTILINE)
ANSWER_RE = re.compile(r"(^|\n)\s*(?:[#*\s-]*)?(?:\*\*)?(?:A(?:nswer)?\s*\d*\s*[:.)])", re.IGNORECASE)
LIST_ITEM_RE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.MULTILINE)
MATH_SOLUTION_RE = re.compile(r"\b(?:solution|answer|therefore|thus|step\s*\d|=)", re.IGNORECASE)


@dataclass
class CheckResult:
    keep: bool
    text: str
    reason: str | None = None  # drop reason when keep is False
    notes: tuple[str, ...] = ()  # cleanups applied (e.g. "stripped_prefix")


def _format_ok(fmt: str, text: str) -> bool:
    if fmt == "table":
        return len(TABLE_ROW_RE.findall(text)) >= 2 and bool(TABLE_SEP_RE.search(text))
    if fmt == "qa":
        return len(QUESTION_RE.findall(text)) >= 1 and (bool(ANSWER_RE.search(text)) or len(text.split("\n")) >= 2)
    if fmt == "math":
        return bool(re.search(r"\d", text)) and bool(MATH_SOLUTION_RE.search(text))
    if fmt == "list":
        return len(LIST_ITEM_RE.findall(text)) >= 2
    return True


def check_output(
    text: str,
    rules: dict,
    *,
    finish_reason: str | None = None,
    completion_tokens: int | None = None,
    source_text: str = "",
    source_language: str | None = None,
    detect_language=None,
) -> CheckResult:
    """Apply a prompt's output rules to one generation."""
    notes: list[str] = []
    text = text or ""
    for prefix in rules.get("strip_prefixes") or []:
        stripped = text.lstrip()
        if stripped.lower().startswith(prefix.lower()):
            text = stripped[len(prefix):].lstrip()
            notes.append("stripped_prefix")
    if rules.get("drop_refusals", True):
        if REFUSAL_RE.match(text):
            return CheckResult(False, text, "refusal", tuple(notes))
        m = META_PREFIX_RE.match(text)
        if m and len(text) > m.end():
            text = text[m.end():].lstrip()
            notes.append("stripped_meta_talk")
    text = text.strip()
    if not text:
        return CheckResult(False, text, "empty", tuple(notes))
    if rules.get("drop_truncated", True) and finish_reason == "length":
        return CheckResult(False, text, "truncated", tuple(notes))
    lo_hi = rules.get("length_ratio")
    if lo_hi and source_text:
        ratio = len(text) / max(1, len(source_text))
        if ratio < lo_hi[0] or ratio > lo_hi[1]:
            return CheckResult(False, text, "length_ratio", tuple(notes))
    if completion_tokens is not None:
        if rules.get("min_tokens") is not None and completion_tokens < rules["min_tokens"]:
            return CheckResult(False, text, "too_short", tuple(notes))
        if rules.get("max_tokens") is not None and completion_tokens > rules["max_tokens"]:
            return CheckResult(False, text, "too_long", tuple(notes))
    fmt = rules.get("format")
    if fmt and not _format_ok(fmt, text):
        return CheckResult(False, text, f"format_{fmt}", tuple(notes))
    if rules.get("same_language") and source_language and detect_language is not None:
        lang = detect_language(text)
        if lang and lang != source_language:
            return CheckResult(False, text, "language_changed", tuple(notes))
    return CheckResult(True, text, None, tuple(notes))
