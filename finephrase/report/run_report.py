"""The run report: what a run did, as typed data.

A :class:`RunReport` holds

* ``counts`` (:class:`RunCounts`): datatrove's stats of every stage (``logs/<stage>/stats.json``), read once by
  :func:`finephrase.report.stats.counts_from_stats` — documents read, kept by each filter and by the dedup,
  per prompt generations, failures, output-rule drops and flags, output duplicates and contaminated rows,
  tokens, the mix, the decontamination's eval sets; ``None`` when unknown (an
  output whose ``.finephrase/`` was pruned);
* ``configs`` (:class:`ConfigFiles`): each config's parquet files, from their footers
  (:func:`finephrase.report.files.config_files_report`);
* what the run was given: the generator as it ran, the wall time, ``--limit`` and ``--tasks``.

It is saved as ``OUTPUT/.finephrase/report.json`` (:func:`finephrase.report.build.save_report`); the summary
table, the dataset card and the push read it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

REPORT_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class FilterCount(_Model):
    """One filter of the filter stage (``name``: the step's display name, a label only)."""

    name: str
    documents_in: int = Field(0, alias="in")
    kept: int = 0
    dropped: int = 0


class DedupCount(_Model):
    documents_in: int = Field(0, alias="in")
    kept: int = 0
    dropped: int = 0


class PromptCount(_Model):
    """One prompt, from the rows stage (which reads every generation, also those of a resumed rephrase stage)."""

    rephrased: int = 0  # generations that succeeded
    failed: int = 0  # generations that failed after retries
    truncated_inputs: int = 0  # source documents truncated to the context budget
    prompt_tokens: int = 0  # of every generation read
    completion_tokens: int = 0
    rows: int = 0  # rows written (after the output rules)
    row_prompt_tokens: int | None = None  # of the rows written (None: a summary that did not record them)
    row_completion_tokens: int | None = None
    dropped: dict[str, int] = {}  # output rule (or generation_failed) -> generations dropped
    flagged: dict[str, int] = {}  # output rule -> rows kept with a flag in `checks`
    # after the output rules (the output stages, finephrase.pipeline.dedup.outputs / decontaminate)
    duplicates: dict[str, int] = {}  # "exact" / "minhash" -> rows removed as duplicates of a row of this config
    contaminated: dict[str, int] = {}  # eval set -> rows dropped for sharing an n-gram with it
    contaminated_flagged: dict[str, int] = {}  # eval set -> rows kept, flagged `contaminated:<set>` in `checks`
    below_top: int = 0  # rows under the top percent of this config (select_outputs)
    # scored outputs (a quality classifier in the recipe): the generated text scored like the source
    output_scored: int = 0  # rows scored
    output_quality: float = 0.0  # sum of their scores
    quality_uplift: float = 0.0  # sum of (output score - source score)
    below_source: int = 0  # rows scoring below their source
    removed_prompt_tokens: int = 0  # of the rows removed after the output rules (duplicates, contaminated)
    removed_completion_tokens: int = 0

    def scores(self) -> dict | None:
        """Mean output score, mean uplift and the share of outputs scoring below their source (None: unscored)."""
        n = self.output_scored
        if not n:
            return None
        return {"rows": n, "mean_output": self.output_quality / n, "mean_uplift": self.quality_uplift / n,
                "below_source": self.below_source / n}

    @property
    def written(self) -> int:
        """Rows written: kept by the output rules, minus the rows under the top percent, the duplicates and the
        contaminated rows dropped."""
        return self.rows - self.below_top - sum(self.duplicates.values()) - sum(self.contaminated.values())


class MixCount(_Model):
    synthetic_documents: int = 0
    synthetic_tokens: int = 0
    real_documents: int = 0
    real_tokens: int = 0
    real_tokens_short: int = 0  # real tokens missing to reach the target share (the real data ran out)
    synthetic_failed_checks: int = 0  # flagged rows left out of the mix (mix.include_flagged: false)
    per_prompt: dict[str, dict[str, int]] = {}  # prompt -> synthetic_tokens, real_tokens (its share's tokens)

    def achieved(self, prompt: str | None = None) -> float | None:
        """The synthetic share of tokens, measured (of one prompt's part, or of the whole mix)."""
        part = self.per_prompt.get(prompt, {}) if prompt else {"synthetic_tokens": self.synthetic_tokens,
                                                                 "real_tokens": self.real_tokens}
        s, r = part.get("synthetic_tokens", 0), part.get("real_tokens", 0)
        return s / (s + r) if s + r else None


class DecontCount(_Model):
    """Decontamination: each eval set's index (stage ``decont-index``) and the source documents it dropped."""

    passages: dict[str, int] = {}  # eval set -> rows (passages) read
    ngrams: dict[str, int] = {}  # eval set -> distinct n-grams indexed
    sources_dropped: dict[str, int] = {}  # eval set -> source documents dropped (decontamination.check_sources)


class RoutedCount(_Model):
    """One routing bucket: the documents that fell in it, and how many went to each prompt."""

    documents: int = 0
    prompts: dict[str, int] = {}


class StepCount(_Model):
    """One datatrove step as it ran: its stage, display name and counters (totals)."""

    stage: str
    step: str
    stats: dict[str, Any] = {}


class RunCounts(_Model):
    """Datatrove's stats of a run, every number read once."""

    documents_read: int | None = None
    skipped_input: dict[str, int] = {}  # malformed_lines, empty_documents, invalid_utf8_lines
    filters: list[FilterCount] = []
    dedup: dict[str, DedupCount] = {}  # "exact" / "minhash"
    prompts: dict[str, PromptCount] = {}
    steps: list[StepCount] = []
    rephrase_documents: int | None = None  # documents the rephrase stage got
    inference_time_s: int | float | None = None  # seconds, summed over tasks
    mix: MixCount | None = None
    decontamination: DecontCount | None = None  # None: the recipe had no `decontamination`
    routing: dict[str, RoutedCount] = {}  # bucket -> documents, and documents per prompt (a recipe with routing)

    def row_tokens(self, prompt: str) -> tuple[int, int] | None:
        """(prompt, completion) tokens of ``prompt``'s rows, if the run recorded them."""
        p = self.prompts.get(prompt)
        if p is None or p.row_prompt_tokens is None or p.row_completion_tokens is None:
            return None
        return p.row_prompt_tokens - p.removed_prompt_tokens, p.row_completion_tokens - p.removed_completion_tokens


class KindCount(_Model):
    rows: int = 0
    tokens: int = 0


class ConfigFiles(_Model):
    """One config's parquet files (``data/<name>/*.parquet``).

    ``files``, ``bytes``, ``rows``, ``flagged_rows`` (rows whose ``checks`` is set: not null), the model revisions
    and the generation parameters come from the footers. Tokens come from the run's counts (the rows step's
    ``row_*`` counters, the mix step's tokens); only for an output whose counts are gone are they, the truncated
    rows and the mix's kinds counted from the rows' small columns (``counted_from: rows``).
    """

    name: str
    files: int = 0
    bytes: int = 0
    rows: int = 0
    flagged_rows: int | None = None  # None: a footer without statistics
    model_revisions: list[str] = []  # the lowest and highest non-null model_revision (one value: every row's)
    generation_params: str | None = None  # every row's, when they are all the same (footer min == max)
    prompt_tokens: int = 0
    completion_tokens: int = 0  # the mix: text tokens, real + synthetic
    counted_from: Literal["stats", "rows"] = "stats"
    truncated_rows: int | None = None  # counted from the rows only
    kinds: dict[str, KindCount] = {}  # the mix, counted from the rows only


class RunReport(_Model):
    version: int = REPORT_VERSION
    counts: RunCounts | None = None
    configs: list[ConfigFiles] = []  # the prompts' configs with files, in recipe order, then `mix`
    generator: dict[str, Any] = {}  # as it ran: server, model, gguf / replicas / api / endpoints, ...
    wall_time_s: float | None = None
    limit: int | None = None
    tasks: int | None = None

    def config(self, name: str) -> ConfigFiles | None:
        return next((c for c in self.configs if c.name == name), None)
