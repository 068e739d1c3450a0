"""Decontaminate: rows that share an n-gram with an evaluation set are dropped, or kept and flagged.

The check is datatrove's ``NGramsDecontFilter.filter`` (its normalisation, word tokenizer and hashing) against
the index that :class:`finephrase.pipeline.decont.index.EvalSetIndex` built. A contaminated row is counted per
config and eval set: dropped (``action="drop"``) as ``contaminated/<prompt>/<eval set>`` with its tokens
(``removed_prompt_tokens/<prompt>``, ``removed_completion_tokens/<prompt>``), or kept (``action="flag"``) as
``contaminated_flagged/<prompt>/<eval set>`` with ``contaminated:<eval set>`` added to its ``checks`` column.

Source documents are checked (``decontamination.check_sources``) by datatrove's ``NGramsDecontFilter`` itself,
in the filter stage: a contaminated source is dropped before it is rephrased.
"""

from __future__ import annotations

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter

from finephrase import stats as names
from finephrase.pipeline.formatters.rows import row_config, row_tokens


def add_check(doc: Document, note: str) -> None:
    """Append ``note`` to the row's ``checks`` column (comma-separated, like the output rules' notes)."""
    checks = doc.metadata.get("checks")
    doc.metadata["checks"] = f"{checks},{note}" if checks else note


class Decontaminate(PipelineStep):
    """datatrove step: drop or flag the rows that contain an n-gram of an evaluation set.

    Args:
        index_folder: the eval sets' index (``<eval set>.index.hashes``).
        config: datatrove's ``NGramsDecontConfig`` the index was built with.
        action: ``drop`` or ``flag``.
        language: the word tokenizer's language.
    """

    type = "🦠 - DECONT"
    name = "💥 decontaminate rows"

    def __init__(self, index_folder: str, config: NGramsDecontConfig | None = None, action: str = "drop",
                 language: str = "en"):
        super().__init__()
        if action not in ("drop", "flag"):
            raise ValueError("action must be 'drop' or 'flag'")
        self.action = action
        self.check = NGramsDecontFilter(index_folder, config=config or NGramsDecontConfig(), language=language)

    def run(self, data, rank: int = 0, world_size: int = 1):
        for doc in data:
            with self.track_time():
                self.stat_update(names.TOTAL)
                eval_set = self.contaminated_by(doc)
                if eval_set is None:
                    self.stat_update(names.FORWARDED)
                    yield doc
                    continue
                config = row_config(doc)
                if self.action == "flag":
                    self.stat_update(names.per_prompt(names.CONTAMINATED_FLAGGED, config, eval_set))
                    add_check(doc, f"contaminated:{eval_set}")
                    self.stat_update(names.FORWARDED)
                    yield doc
                    continue
                self.stat_update(names.DROPPED)
                self.stat_update(names.per_prompt(names.CONTAMINATED, config, eval_set))
                prompt_tokens, completion_tokens = row_tokens(doc)
                self.stat_update(names.per_prompt(names.REMOVED_PROMPT_TOKENS, config), value=prompt_tokens)
                self.stat_update(names.per_prompt(names.REMOVED_COMPLETION_TOKENS, config), value=completion_tokens)

    def contaminated_by(self, doc: Document) -> str | None:
        """The eval set one of the row's n-grams belongs to (None: clean); the row's metadata is left as it was."""
        if self.check.filter(doc) is True:
            return None
        doc.metadata.pop("contaminated_ngram", None)
        return doc.metadata.pop("contaminated_task", None) or "unknown"
