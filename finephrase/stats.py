"""Names shared by the steps that write datatrove stats and the run report that reads them.

Stage names are the ``Stage.name`` values of :func:`finephrase.pipeline.build.build_stages` (datatrove writes each
stage's merged stats to ``OUTPUT/.finephrase/logs/<stage>/stats.json``). Stat names are the labels the steps
pass to ``stat_update``. The report never identifies a step by its display name or its position in a stage:
it takes the step that carries a stat (the reader carries ``documents``, a filter ``forwarded``/``dropped``,
the rephrase step ``inference_time``, the rows step ``generated/<prompt>``, the mix step ``synthetic_documents``).

This module imports nothing, so any step can import it.
"""

from __future__ import annotations

# --- the document's generations: where the rephrase step puts them, where the rows step and the report read them
QUALITY_SCORE = "quality_score"  # metadata[QUALITY_SCORE]: the quality filter's score (a row column, what routing reads)
ROLLOUTS = "rollout_results"  # metadata[ROLLOUTS][0]: the generation and its provenance (datatrove's key)

# --- stages (finephrase.pipeline.build.build_stages) -------------------------------------------------------------------

STAGE_FILTER = "filter"
STAGE_EXACT_FILTER = "exact-filter"
STAGE_MINHASH_FILTER = "minhash-filter"
STAGE_REPHRASE = "rephrase"
STAGE_ROWS = "rows"
STAGE_MIX = "mix"
DEDUP_STAGES = {"exact": STAGE_EXACT_FILTER, "minhash": STAGE_MINHASH_FILTER}  # report label -> stage
# after the rows stage, when the recipe has `output_dedup` or `decontamination` (the rows stage then writes
# .finephrase/rows/ and the last of these writes the parquet configs)
STAGE_DECONT_INDEX = "decont-index"  # the eval sets' n-gram index (first stage of the run)
STAGE_OUTPUT_EXACT_FILTER = "output-exact-filter"
STAGE_OUTPUT_MINHASH_FILTER = "output-minhash-filter"
STAGE_DECONTAMINATE = "decontaminate"
STAGE_OUTPUT_TOP = "output-top"  # select_outputs: the top percent of each config's rows (after output-top-cutoff)
OUTPUT_STAGES = (STAGE_OUTPUT_TOP, STAGE_OUTPUT_EXACT_FILTER, STAGE_OUTPUT_MINHASH_FILTER, STAGE_DECONTAMINATE)
STAGE_QUALITY_THRESHOLDS = "quality-thresholds"  # a quality ensemble's percentile thresholds (before the filter)
STAGE_QUALITY_TOP = "quality-top"  # filters.quality.top_percent: the top percent of the sources (after the filter)

# --- datatrove's own stats ---------------------------------------------------------------------------------------

DOCUMENTS = "documents"  # readers: documents read
INPUT_FILES = "input_files"  # readers: files opened
TOTAL = "total"  # filters and writers: documents seen
FORWARDED = "forwarded"  # filters (datatrove's BaseFilter, the dedup filters): documents kept
DROPPED = "dropped"  # filters: documents removed
INFERENCE_TIME = "inference_time"  # datatrove's InferenceRunner (finephrase.pipeline.rephrase.Rephrase): seconds

# --- finephrase.pipeline.readers.jsonl.SafeJsonlReader: input skipped or repaired ------------------------------------

SKIPPED_INPUT = ("malformed_lines", "empty_documents", "invalid_utf8_lines")
READER_STATS = (DOCUMENTS, INPUT_FILES, *SKIPPED_INPUT)

# --- finephrase.pipeline.rephrase.Rephrase: per prompt, ``<stat>/<prompt>`` ---------------------------------------

REPHRASED = "rephrased"  # generations that came back
PROMPT_TOKENS = "prompt_tokens"
COMPLETION_TOKENS = "completion_tokens"
TRUNCATED_INPUTS = "truncated_inputs"  # source documents cut to the token budget
FAILED = "failed"  # generations that failed (refused, unreachable, too long)
RETRIED_TRUNCATED = "retried_truncated"  # context: truncate: sent again, shorter, after an input-too-long refusal
CHUNKED_DOCUMENTS = "chunked_documents"  # context: chunked: documents rewritten chunk by chunk
CHUNKS = "chunks"  # context: chunked: the chunks of those documents
RESPLIT_CHUNKS = "resplit_chunks"  # context: chunked: chunks split again after an input-too-long refusal

# --- finephrase.pipeline.formatters.rows.FormatRows: per prompt, ``<stat>/<prompt>`` (``<stat>/<prompt>/<reason>``) ------

GENERATED = "generated"  # generations read (failed ones included)
GENERATED_PROMPT_TOKENS = "generated_prompt_tokens"
GENERATED_COMPLETION_TOKENS = "generated_completion_tokens"
GENERATED_TRUNCATED = "generated_truncated"  # source documents truncated to the context budget
ROWS = "rows"  # rows written
ROW_PROMPT_TOKENS = "row_prompt_tokens"
ROW_COMPLETION_TOKENS = "row_completion_tokens"
ROW_DROPPED = "dropped"  # dropped/<prompt>/<reason>
ROW_FLAGGED = "flagged"  # flagged/<prompt>/<reason>
ROUTED = "routed"  # routed/<bucket> (documents), routed/<bucket>/<prompt> (documents sent to the prompt)
OUTPUT_SCORED = "output_scored"  # output_scored/<prompt>: rows whose generated text the quality classifier scored
OUTPUT_QUALITY = "output_quality"  # output_quality/<prompt>: the sum of those scores
QUALITY_UPLIFT = "quality_uplift"  # quality_uplift/<prompt>: the sum of output score - source score
BELOW_SOURCE = "below_source"  # below_source/<prompt>: rows whose output scores below its source
CLEANED = "cleaned"  # cleaned/<prompt>/<note>: generations the output rules cleaned (kept)
GENERATION_FAILED = "generation_failed"  # the <reason> of dropped/<prompt>/<reason> for a failed generation

# --- the output stages (finephrase.pipeline.dedup.outputs, finephrase.pipeline.decont.decontaminate): per prompt ---------------

DUPLICATES = "duplicates"  # duplicates/<prompt>/<exact|minhash>: rows removed as duplicates of a row of their config
CONTAMINATED = "contaminated"  # contaminated/<prompt>/<eval set>: rows dropped for an n-gram of the eval set
CONTAMINATED_FLAGGED = "contaminated_flagged"  # contaminated_flagged/<prompt>/<eval set>: kept, flagged in `checks`
REMOVED_PROMPT_TOKENS = "removed_prompt_tokens"  # of the rows these stages removed (the written rows' tokens are
REMOVED_COMPLETION_TOKENS = "removed_completion_tokens"  # the rows stage's row_* counters minus these)
BELOW_TOP = "below_top"  # below_top/<prompt>: rows under the top percent of their config (select_outputs)
OUTPUT_STATS = (DUPLICATES, CONTAMINATED, CONTAMINATED_FLAGGED, BELOW_TOP, REMOVED_PROMPT_TOKENS,
                REMOVED_COMPLETION_TOKENS)

# --- finephrase.pipeline.decont.index.EvalSetIndex, and datatrove's NGramsDecontFilter on the sources --------------

EVAL_PASSAGES = "eval_passages"  # eval_passages/<eval set>: passages (rows of the eval set) read
EVAL_NGRAMS = "eval_ngrams"  # eval_ngrams/<eval set>: distinct n-grams indexed
SOURCE_CONTAMINATED_PREFIX = "contaminated_"  # datatrove's NGramsDecontFilter: contaminated_<eval set>

# --- finephrase.pipeline.mix.Mix -----------------------------------------------------------------------------------

MIX_SYNTHETIC_FAILED_CHECKS = "synthetic_failed_checks"  # rows left out of the mix: a check failed (flagged rows)
MIX_STATS = ("synthetic_documents", "synthetic_tokens", "real_documents", "real_tokens", "real_tokens_short",
             MIX_SYNTHETIC_FAILED_CHECKS)
MIX_PER_PROMPT_STATS = ("synthetic_tokens", "real_tokens")  # <stat>/<prompt>: the tokens each prompt's share counts

# --- the card's table of every step: the counters shown (per-prompt ``<stat>/<prompt>`` counters too) ------------

SHOWN_STEP_STATS = (DOCUMENTS, TOTAL, FORWARDED, DROPPED, INPUT_FILES, "documents_processed", *SKIPPED_INPUT,
                    "synthetic_documents", "real_documents")
HIDDEN_STEP_STAT_PREFIXES = ("row_", "prompt_tokens", "completion_tokens", "removed_")


def per_prompt(stat: str, prompt: str, reason: str | None = None) -> str:
    """``<stat>/<prompt>`` or ``<stat>/<prompt>/<reason>``: the label of a per-prompt counter."""
    return f"{stat}/{prompt}" if reason is None else f"{stat}/{prompt}/{reason}"
