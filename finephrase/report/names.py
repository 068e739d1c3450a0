"""Names shared by the steps that write datatrove stats and the run report that reads them.

Stage names are the ``Stage.name`` values of :func:`finephrase.pipeline.build_stages` (datatrove writes each
stage's merged stats to ``OUTPUT/.finephrase/logs/<stage>/stats.json``). Stat names are the labels the steps
pass to ``stat_update``. The report never identifies a step by its display name or its position in a stage:
it takes the step that carries a stat (the reader carries ``documents``, a filter ``forwarded``/``dropped``,
the rephrase step ``inference_time``, the rows step ``generated/<prompt>``, the mix step ``synthetic_documents``).

This module imports nothing, so any step can import it.
"""

from __future__ import annotations

# --- stages (finephrase.pipeline.build_stages) -------------------------------------------------------------------

STAGE_FILTER = "filter"
STAGE_EXACT_FILTER = "exact-filter"
STAGE_MINHASH_FILTER = "minhash-filter"
STAGE_REPHRASE = "rephrase"
STAGE_ROWS = "rows"
STAGE_MIX = "mix"
DEDUP_STAGES = {"exact": STAGE_EXACT_FILTER, "minhash": STAGE_MINHASH_FILTER}  # report label -> stage

# --- datatrove's own stats ---------------------------------------------------------------------------------------

DOCUMENTS = "documents"  # readers: documents read
INPUT_FILES = "input_files"  # readers: files opened
TOTAL = "total"  # filters and writers: documents seen
FORWARDED = "forwarded"  # filters (datatrove's BaseFilter, the dedup filters): documents kept
DROPPED = "dropped"  # filters: documents removed
INFERENCE_TIME = "inference_time"  # datatrove's InferenceRunner (finephrase.steps.rephrase.Rephrase): seconds

# --- finephrase.steps.read_jsonl.SafeJsonlReader: input skipped or repaired ------------------------------------

SKIPPED_INPUT = ("malformed_lines", "empty_documents", "invalid_utf8_lines")
READER_STATS = (DOCUMENTS, INPUT_FILES, *SKIPPED_INPUT)

# --- finephrase.steps.format_rows.FormatRows: per prompt, ``<stat>/<prompt>`` (``<stat>/<prompt>/<reason>``) ------

GENERATED = "generated"  # generations read (failed ones included)
GENERATED_PROMPT_TOKENS = "generated_prompt_tokens"
GENERATED_COMPLETION_TOKENS = "generated_completion_tokens"
GENERATED_TRUNCATED = "generated_truncated"  # source documents truncated to the context budget
ROWS = "rows"  # rows written
ROW_PROMPT_TOKENS = "row_prompt_tokens"
ROW_COMPLETION_TOKENS = "row_completion_tokens"
ROW_DROPPED = "dropped"  # dropped/<prompt>/<reason>
ROW_FLAGGED = "flagged"  # flagged/<prompt>/<reason>
GENERATION_FAILED = "generation_failed"  # the <reason> of dropped/<prompt>/<reason> for a failed generation

# --- finephrase.steps.mix.Mix -----------------------------------------------------------------------------------

MIX_STATS = ("synthetic_documents", "synthetic_tokens", "real_documents", "real_tokens", "real_tokens_short")

# --- the card's table of every step: the counters shown (per-prompt ``<stat>/<prompt>`` counters too) ------------

SHOWN_STEP_STATS = (DOCUMENTS, TOTAL, FORWARDED, DROPPED, INPUT_FILES, "documents_processed", *SKIPPED_INPUT,
                    "synthetic_documents", "real_documents")
HIDDEN_STEP_STAT_PREFIXES = ("row_", "prompt_tokens", "completion_tokens")


def per_prompt(stat: str, prompt: str, reason: str | None = None) -> str:
    """``<stat>/<prompt>`` or ``<stat>/<prompt>/<reason>``: the label of a per-prompt counter."""
    return f"{stat}/{prompt}" if reason is None else f"{stat}/{prompt}/{reason}"
