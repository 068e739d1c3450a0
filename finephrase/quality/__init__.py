"""Quality classifiers the papers used: fastText the DCLM way (train, score), transformers models the FineWeb-Edu
way, ensembles the Nemotron-CC way; resolved from a local path or a Hub repo.

What lives here:

* :mod:`.text` — the one normalisation of a document for fastText (the filter, training and scoring all use it);
* :mod:`.fasttext_model` — the one loader of a fastText model file (read where it lies, never a cached copy);
* :mod:`.inputs` — documents from JSONL / Parquet / text files or folders, read with datatrove's readers;
* :mod:`.train` — ``finephrase quality train``: supervised fastText (``__label__hq`` / ``__label__lq``), a
  held-out split with precision / recall / F1 per label, a quantised model;
* :mod:`.score` — ``finephrase quality score``: the score distribution (a terminal histogram) and what a
  threshold keeps;
* :mod:`.models` — a classifier from a local path or a Hub model repo (``org/name`` or ``hf://org/name/file``; a
  repo with ``config.json`` is a transformers model, downloaded whole), cached with ``huggingface_hub``; offline, a
  clear error naming ``hf download``;
* :mod:`.scorers` — one ``score_batch(texts)`` over a fastText file or a transformers sequence-classification /
  regression folder (batched, on a configurable device), and the FineWeb-Edu card's ``int_score``;
* :mod:`.ensemble` — Nemotron-CC's percentile buckets (thresholds on a sample, a score's bucket, the thresholds
  file).

What it may import: fasttext, torch and transformers (lazily, only when a transformers model is loaded: the
``classifiers`` extra), numpy, huggingface_hub, datatrove's readers, and from finephrase only ``finephrase.errors``
(its errors, and Hub failures in one or two lines: ``describe_hub_error``). The steps (``finephrase.pipeline.filters.quality``,
``.quality_ensemble``, ``.format_rows``) import :mod:`.text`, :mod:`.models`, :mod:`.scorers` and :mod:`.ensemble`.
"""

from finephrase.quality.text import fasttext_text

__all__ = ["fasttext_text"]
