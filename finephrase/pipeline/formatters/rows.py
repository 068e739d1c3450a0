"""FormatRows: turn rephrased documents into one output row per prompt, with provenance.

Reads what ``Rephrase`` wrote (a source document plus one entry per prompt), applies each
prompt's output rules (``output_checks``), and yields one ``Document`` per kept generation
whose metadata holds the provenance columns of ``ROW_SCHEMA``. ``metadata["config"]`` is the
prompt name, so a ``ParquetWriter`` with ``output_filename="${config}/${rank}.parquet"``
writes one folder per dataset config. Every drop is counted (``dropped/<prompt>/<reason>``). With ``on_fail="flag"`` a generation that
breaks a rule is kept and its reason written to the ``checks`` column (``failed:<reason>``,
counted as ``flagged/<prompt>/<reason>``); empty outputs and failed requests are always dropped.
"""

from __future__ import annotations

import json

import pyarrow as pa
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from loguru import logger

from finephrase.prompts import Prompt
from finephrase.pipeline.formatters.output_checks import check_output
from finephrase import stats as names
from finephrase.quality.scorers import load_scorer

ROW_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.string()),
        ("source_id", pa.string()),
        ("source_text", pa.string()),
        ("prompt", pa.string()),
        ("prompt_set", pa.string()),
        ("prompt_version", pa.string()),
        ("prompt_sha256", pa.string()),
        ("model", pa.string()),
        ("model_revision", pa.string()),
        ("generation_params", pa.string()),
        ("finish_reason", pa.string()),
        ("prompt_tokens", pa.int64()),
        ("completion_tokens", pa.int64()),
        ("truncated", pa.bool_()),
        ("source_tokens", pa.int64()),
        ("source_tokens_used", pa.int64()),
        ("chunks", pa.int64()),
        ("language", pa.string()),
        ("language_score", pa.float64()),
        (names.QUALITY_SCORE, pa.float64()),
        ("output_quality_score", pa.float64()),
        ("quality_uplift", pa.float64()),
        ("bucket", pa.string()),
        ("source_url", pa.string()),
        ("checks", pa.string()),
    ]
)
ROW_COLUMNS = [f.name for f in ROW_SCHEMA]
CONFIG_KEY = "config"  # a row's prompt config, in its metadata (the ParquetWriter's ${config})


def row_config(doc: Document) -> str:
    """A row's prompt config (the steps after the rows stage count per config)."""
    return str(doc.metadata.get(CONFIG_KEY) or "")


def row_tokens(doc: Document) -> tuple[int, int]:
    """A row's (prompt, completion) tokens."""
    md = doc.metadata
    return int(md.get("prompt_tokens") or 0), int(md.get("completion_tokens") or 0)


def row_adapter(self, document: Document) -> dict:
    """ParquetWriter adapter: a row of ROW_SCHEMA from a row Document."""
    row = {name: document.metadata.get(name) for name in ROW_COLUMNS}
    row["id"] = document.id
    row["text"] = document.text
    return row


def _source_chars_seen(text: str, entry: dict) -> int:
    """Characters of the source the model saw: all of it, or the used share of a truncated document."""
    total, used = entry.get("source_tokens"), entry.get("source_tokens_used")
    if entry.get("truncated") and total and used is not None:
        return int(len(text) * min(1.0, used / total))
    return len(text)


class FormatRows(PipelineStep):
    """datatrove step: explode rephrased documents into per-prompt rows and apply output rules.

    Args:
        prompts: the prompts of the run (their output rules are applied).
        model: model id recorded in provenance.
        model_revision: model revision (e.g. TGI's model_sha), when known.
    """

    name = "🧾 Rows + output checks"
    type = "Formatter"

    def __init__(self, prompts: list[Prompt], model: str, model_revision: str | None = None,
                 lid_model_path: str | None = None, on_fail: str = "drop", quality_model: str | None = None,
                 quality_label: str = "hq"):
        super().__init__()
        self.quality_model, self.quality_label, self._quality = quality_model, quality_label, None
        if on_fail not in ("drop", "flag"):
            raise ValueError("on_fail must be 'drop' or 'flag'")
        self.on_fail = on_fail
        self.prompts = {p.name: p for p in prompts}
        self.model = model
        self.model_revision = model_revision
        self.lid_model_path = lid_model_path
        self._lid = None

    def _detect_language(self, text: str) -> str | None:
        if self._lid is None:
            from finephrase.pipeline.filters.language import (
                LocalFastTextLID,
                default_lid_model,
            )

            self._lid = LocalFastTextLID(self.lid_model_path or default_lid_model())
        (lang, _score), _ = self._lid.predict(Document(text=text[:4000], id=""))
        return lang

    def _score(self, text: str) -> float:
        """The quality classifier's score of a generated text (the same model and label as the quality filter)."""
        if self._quality is None:
            self._quality = load_scorer(self.quality_model, self.quality_label)
        return round(self._quality.score_batch([text])[0], 6)

    def _count_scores(self, name: str, metadata: dict) -> None:
        """Scored outputs: the output's score, its uplift over the source's, and whether it scores below it."""
        self.stat_update(names.per_prompt(names.OUTPUT_SCORED, name))
        self.stat_update(names.per_prompt(names.OUTPUT_QUALITY, name), value=metadata["output_quality_score"])
        uplift = metadata.get("quality_uplift")
        if uplift is not None:
            self.stat_update(names.per_prompt(names.QUALITY_UPLIFT, name), value=uplift)
            if uplift < 0:
                self.stat_update(names.per_prompt(names.BELOW_SOURCE, name))

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in data:
            with self.track_time():
                results = (doc.metadata.get(names.ROLLOUTS) or [{}])[0] or {}
                bucket = doc.metadata.get("bucket")
                if bucket is not None:  # routed: documents per bucket, and per bucket and prompt
                    self.stat_update(names.per_prompt(names.ROUTED, bucket))
                    for name in results:
                        self.stat_update(names.per_prompt(names.ROUTED, bucket, name))
                for name, entry in results.items():
                    prompt = self.prompts.get(name)
                    if prompt is None:
                        continue
                    row = self._row_for(doc, prompt, entry)
                    if row is not None:
                        yield row

    def _row_for(self, doc: Document, prompt, entry: dict) -> Document | None:
        """One generation as a row, after the output rules; None when it is dropped (counted)."""
        name = prompt.name
        self.stat_update(names.per_prompt(names.GENERATED, name))
        if entry.get("error"):
            self.stat_update(names.per_prompt(names.ROW_DROPPED, name, names.GENERATION_FAILED))
            return None
        # counted here, over every rephrased document, because the rephrase stage's own stats
        # only cover what its last (possibly resumed) run processed
        self.stat_update(names.per_prompt(names.GENERATED_PROMPT_TOKENS, name), value=entry.get("prompt_tokens") or 0)
        self.stat_update(names.per_prompt(names.GENERATED_COMPLETION_TOKENS, name), value=entry.get("completion_tokens") or 0)
        if entry.get("truncated"):
            self.stat_update(names.per_prompt(names.GENERATED_TRUNCATED, name))
        check = check_output(
            entry.get("text", ""), prompt.output_rules, finish_reason=entry.get("finish_reason"),
            completion_tokens=entry.get("completion_tokens"), source_text=doc.text,
            source_chars=_source_chars_seen(doc.text, entry), source_language=doc.metadata.get("language"),
            detect_language=self._detect_language,
            cleaned=entry.get("cleaned"),  # chunked rewriting cleaned each chunk already
        )
        for note in check.notes:
            self.stat_update(names.per_prompt(names.CLEANED, name, note))
        notes = list(check.notes)
        if not check.keep:
            if self.on_fail == "drop" or check.reason == "empty":
                self.stat_update(names.per_prompt(names.ROW_DROPPED, name, check.reason))
                logger.debug(f"dropped {doc.id} [{name}]: {check.reason}")
                return None
            self.stat_update(names.per_prompt(names.ROW_FLAGGED, name, check.reason))
            notes.append(f"failed:{check.reason}")
        self.stat_update(names.per_prompt(names.ROWS, name))
        self.stat_update(names.per_prompt(names.ROW_COMPLETION_TOKENS, name), value=entry.get("completion_tokens", 0))
        self.stat_update(names.per_prompt(names.ROW_PROMPT_TOKENS, name), value=entry.get("prompt_tokens", 0))
        metadata = self._row_metadata(doc, prompt, entry, notes)
        if self.quality_model:
            metadata["output_quality_score"] = self._score(check.text)
            source = metadata.get("quality_score")
            metadata["quality_uplift"] = None if source is None else round(metadata["output_quality_score"] - source, 6)
            self._count_scores(name, metadata)
        return Document(text=check.text, id=f"{doc.id}/{name}", metadata=metadata)

    def _row_metadata(self, doc: Document, prompt, entry: dict, notes: list[str]) -> dict:
        """The row's columns besides ``text`` and ``id`` (ROW_SCHEMA)."""
        md, name = doc.metadata, prompt.name
        return {
            CONFIG_KEY: name,
            "source_id": str(doc.id),
            "source_text": doc.text,
            "prompt": name,
            "prompt_set": entry.get("prompt_set", prompt.set),
            "prompt_version": entry.get("prompt_version", prompt.version),
            "prompt_sha256": entry.get("prompt_sha256", prompt.sha256),
            "model": entry.get("model") or self.model,
            "model_revision": entry.get("model_revision") or self.model_revision,
            "generation_params": json.dumps(entry.get("generation_params", {}), sort_keys=True),
            "finish_reason": entry.get("finish_reason"),
            "prompt_tokens": entry.get("prompt_tokens"),
            "completion_tokens": entry.get("completion_tokens"),
            "truncated": bool(entry.get("truncated")),
            "source_tokens": entry.get("source_tokens"),
            "source_tokens_used": entry.get("source_tokens_used"),
            "chunks": entry.get("chunks", 1),
            "language": md.get("language"),
            "language_score": md.get("language_score"),
            "quality_score": md.get("quality_score"),
            "bucket": md.get("bucket"),
            "source_url": md.get("url") or md.get("source_url"),
            "checks": ",".join(notes) or None,
        }
