"""Output rules: decide, per prompt, whether a generation is kept, cleaned or dropped.

Rules come from the prompt file's ``output_rules`` (see ``prompts/README.md``). They run in two
stages:

1. cleaning (:func:`clean_output`): ``extract`` (REWIRE's ``<improved response starts>`` ...
   ``<improved response ends>``), ``strip_prefixes`` / ``require_prefix`` (Nemotron-CC's "Here is a
   paraphrased version:"), refusals and meta-talk ("Sure! Here is the FAQ:", "I hope this helps!");
2. checks on the cleaned text (:func:`check_output`): ``drop_truncated`` (finish_reason ==
   "length"), ``length_ratio``, ``min_tokens`` / ``max_tokens`` (Nemotron-CC's bounds), ``format``
   (table / qa / math / list) and ``same_language``.

Each rule returns a drop reason (``refusal``, ``meta_talk``, ``missing_prefix``, ``extract_failed``,
``empty``, ``truncated``, ``length_ratio``, ``too_short``, ``too_long``, ``format_<f>``,
``language_changed``); the ``FormatRows`` step counts every reason in datatrove's stats
(``dropped/<prompt>/<reason>`` or ``flagged/...``) and the card lists them. Cleanups are counted as
``cleaned/<prompt>/<note>``. Chunked rewriting (``finephrase.pipeline.rephrase.chunked``) runs the cleaning
stage on every chunk and the checks on the joined text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

REFUSAL_RE = re.compile(
    r"^\s*(?:I'm sorry|I am sorry|I apologi[sz]e|Sorry,|I cannot|I can't|I can not|I won't|I am unable|I'm unable|"
    r"I'm not able to|I am not able to|Unfortunately, I (?:cannot|can't|am unable)|"
    r"As an AI|As a language model|I'm an AI|I am an AI)",
    re.IGNORECASE,
)
# a refusal anywhere in a short answer ("The text you provided ... I cannot rewrite it.")
REFUSAL_ANYWHERE_RE = re.compile(
    r"\b(?:I (?:cannot|can't|can not|won't|am unable to|'m unable to) (?:fulfill|comply with|help with|assist with|"
    r"complete|rewrite|rephrase|provide)\b|as an AI(?: language)? model\b)",
    re.IGNORECASE,
)
REFUSAL_ANYWHERE_MAX_CHARS = 400
META_PREFIX_RE = re.compile(
    r"^\s*(?:(?:Sure|Certainly|Of course)[,!.:][^\n]*|"
    r"(?:Here(?: is|'s| are)|Below is|The following is)\b[^\n]{0,160}?:[ \t]*(?=\n))\s*\n",
    re.IGNORECASE,
)
META_ONLY_RE = re.compile(
    r"^\s*(?:(?:Sure|Certainly|Of course)[,!.:][^\n]*|(?:Here(?: is|'s| are)|Below is|The following is)\b[^\n]{0,160}?:)\s*$",
    re.IGNORECASE,
)
META_SUFFIX_RE = re.compile(
    r"\n\s*(?:I hope (?:this|that|it) helps|Let me know if|Feel free to|If you have any (?:other |further |more )?questions|"
    r"Please let me know|Is there anything else)[^\n]*(?:\n[^\n]*)?\s*$",
    re.IGNORECASE,
)
TABLE_ROW_RE = re.compile(r"^\s*\|.*\|\s*$", re.MULTILINE)
TABLE_SEP_RE = re.compile(r"^\s*\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)+\|?\s*$", re.MULTILINE)
QA_LONG_TAG_RE = re.compile(r"\b(?P<tag>Question|Answer)\s*\d*\s*(?:\*\*)?\s*:", re.IGNORECASE)
QA_SHORT_TAG_RE = re.compile(r"^[ \t#*>\-]*(?:\*\*)?(?P<tag>Q|A)\s*\d*\s*(?:\*\*)?\s*[:.)]", re.IGNORECASE | re.MULTILINE)
QUESTION_LINE_RE = re.compile(r"^\s*(?:[#*>\-\s\d.)]*)(?:\*\*)?[^\n]{3,}\?\s*(?:\*\*)?\s*$")
LIST_ITEM_RE = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s+\S", re.MULTILINE)
MATH_SOLUTION_RE = re.compile(r"\b(?:solution|answer|therefore|thus|step\s*\d)\b|=", re.IGNORECASE)

MIN_CHARS_FOR_LANGUAGE = 80  # fastText language id is unreliable below this


@dataclass
class CheckResult:
    keep: bool
    text: str
    reason: str | None = None  # drop reason when keep is False
    notes: tuple[str, ...] = ()  # cleanups applied (e.g. "stripped_prefix")


# ------------------------------------------------------------------ formats
def qa_pairs(text: str) -> int:
    """Question/answer pairs: tagged (``Question:`` ... ``Answer:``, ``Q1.`` ... ``A1.``) or FAQ-style
    (a line ending with ``?`` followed by a non-question line)."""
    found = sorted([(m.start(), m.group("tag")[0].upper()) for m in QA_LONG_TAG_RE.finditer(text)]
                   + [(m.start(), m.group("tag")[0].upper()) for m in QA_SHORT_TAG_RE.finditer(text)])
    tags = [t for i, (pos, t) in enumerate(found) if i == 0 or pos != found[i - 1][0]]
    tagged = sum(1 for a, b in zip(tags, tags[1:]) if a == "Q" and b == "A")
    lines = [line for line in text.split("\n") if line.strip()]
    faq = 0
    for line, nxt in zip(lines, lines[1:]):
        if QUESTION_LINE_RE.match(line) and not QUESTION_LINE_RE.match(nxt) and not TABLE_ROW_RE.match(nxt):
            faq += 1
    return max(tagged, faq)


def _table_ok(text: str) -> bool:
    sep = TABLE_SEP_RE.search(text)
    if not sep:
        return False
    before = TABLE_ROW_RE.findall(text[: sep.start()])
    after = TABLE_ROW_RE.findall(text[sep.end():])
    return bool(before) and bool(after)


def _format_ok(fmt: str, text: str) -> bool:
    if fmt == "table":
        return _table_ok(text)
    if fmt == "qa":
        return qa_pairs(text) >= 1
    if fmt == "math":
        return bool(re.search(r"\d", text)) and bool(MATH_SOLUTION_RE.search(text))
    if fmt == "list":
        return len(LIST_ITEM_RE.findall(text)) >= 2
    return True


# ------------------------------------------------------------------ cleaning
def _strip_prefix(text: str, prefix: str) -> str | None:
    """``text`` without ``prefix`` at its start (tolerating markdown emphasis/quotes around it), or None."""
    m = re.match(r"\s*(?:[*_#>\"'“]+\s*)?" + re.escape(prefix.strip()) + r"[ \t]*[*_\"'”]*", text, re.IGNORECASE)
    if not m:
        return None
    return text[m.end():].lstrip()


def clean_output(text: str, rules: dict) -> CheckResult:
    """The cleaning stage of the output rules (extract, prefixes, refusals, meta-talk, empty)."""
    notes: list[str] = []
    original = text = text or ""
    extract = rules.get("extract")
    if extract:
        start = text.find(extract["start"])
        if start < 0:
            return CheckResult(False, original.strip(), "extract_failed", tuple(notes))
        text = text[start + len(extract["start"]):]
        end_marker = extract.get("end")
        if end_marker:
            end = text.find(end_marker)
            if end >= 0:
                text = text[:end]
            else:
                notes.append("extract_unterminated")
        notes.append("extracted")
    prefixes = rules.get("strip_prefixes") or []
    matched = False
    for prefix in prefixes:
        rest = _strip_prefix(text, prefix)
        if rest is not None:
            text, matched = rest, True
            notes.append("stripped_prefix")
            break
    if rules.get("require_prefix") and prefixes and not matched:
        return CheckResult(False, text.strip(), "missing_prefix", tuple(notes))
    if rules.get("drop_refusals", True):
        if REFUSAL_RE.match(text) or (len(text.strip()) <= REFUSAL_ANYWHERE_MAX_CHARS and REFUSAL_ANYWHERE_RE.search(text)):
            return CheckResult(False, text.strip(), "refusal", tuple(notes))
        before = text.strip()
        if META_ONLY_RE.match(text):
            return CheckResult(False, before, "meta_talk", tuple(notes))
        m = META_PREFIX_RE.match(text)
        if m:
            text = text[m.end():]
            notes.append("stripped_meta_talk")
        m = META_SUFFIX_RE.search(text)
        if m:
            text = text[: m.start()]
            notes.append("stripped_meta_talk")
        if before and not text.strip():
            return CheckResult(False, before, "meta_talk", tuple(notes))
        if REFUSAL_RE.match(text):
            return CheckResult(False, text.strip(), "refusal", tuple(notes))
    text = text.strip()
    if not text:
        return CheckResult(False, text, "empty", tuple(notes))
    return CheckResult(True, text, None, tuple(dict.fromkeys(notes)))


# ------------------------------------------------------------------ all rules
def check_output(
    text: str,
    rules: dict,
    *,
    finish_reason: str | None = None,
    completion_tokens: int | None = None,
    source_text: str = "",
    source_chars: int | None = None,
    source_language: str | None = None,
    detect_language=None,
    cleaned: list[str] | tuple[str, ...] | None = None,
) -> CheckResult:
    """Apply a prompt's output rules to one generation.

    Args:
        source_chars: characters of the source the model actually saw (a truncated document);
            default ``len(source_text)``. Used by ``length_ratio``.
        cleaned: the cleaning stage already ran (chunked rewriting cleans every chunk): these are its
            notes, and only the checks run.
    """
    if cleaned is not None:
        notes = list(cleaned)
        text = (text or "").strip()
        if not text:
            return CheckResult(False, text, "empty", tuple(notes))
    else:
        first = clean_output(text, rules)
        if not first.keep:
            return first
        text, notes = first.text, list(first.notes)
    if rules.get("drop_truncated", True) and finish_reason == "length":
        return CheckResult(False, text, "truncated", tuple(notes))
    lo_hi = rules.get("length_ratio")
    n_source = source_chars if source_chars is not None else len(source_text or "")
    if lo_hi and n_source:
        ratio = len(text) / max(1, n_source)
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
    if (rules.get("same_language", True) and source_language and detect_language is not None
            and len(text) >= MIN_CHARS_FOR_LANGUAGE):
        lang = detect_language(text)
        if lang and lang != source_language:
            return CheckResult(False, text, "language_changed", tuple(notes))
    return CheckResult(True, text, None, tuple(notes))
