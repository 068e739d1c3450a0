"""Quality classifiers the DCLM way: train, score, and resolve a fastText model (local path or Hub repo).

What lives here:

* :mod:`.text` — the one normalisation of a document for fastText (the filter, training and scoring all use it);
* :mod:`.fasttext_model` — the one loader of a fastText model file (read where it lies, never a cached copy);
* :mod:`.inputs` — documents from JSONL / Parquet / text files or folders, read with datatrove's readers;
* :mod:`.train` — ``finephrase quality train``: supervised fastText (``__label__hq`` / ``__label__lq``), a
  held-out split with precision / recall / F1 per label, a quantised model;
* :mod:`.score` — ``finephrase quality score``: the score distribution (a terminal histogram) and what a
  threshold keeps;
* :mod:`.models` — a classifier from a local path or a Hub model repo (``org/name`` or ``hf://org/name/file``),
  downloaded and cached with ``huggingface_hub``; offline, a clear error naming ``hf download``.

What it may import: fasttext, huggingface_hub, datatrove's readers, and from finephrase only
``finephrase.errors`` and ``finephrase.hub_errors`` (Hub failures in one or two lines). The steps (``finephrase.pipeline.filters.quality``) import :mod:`.text` and :mod:`.models`.
"""

from finephrase.quality.text import fasttext_text

__all__ = ["fasttext_text"]
