"""Source filters, each a datatrove ``BaseFilter`` with its drop reasons counted:

* :mod:`.length` — documents under ``filters.min_chars``;
* :mod:`.language` — fastText lid.176 (``LocalFastTextLID``), keeping ``filters.languages``;
* :mod:`.quality` — ``QualityFilter`` (fastText) and ``TransformersQualityFilter`` (a transformers classifier scored
  in batches): a classifier's score on the document, kept or routed;
* :mod:`.quality_ensemble` — Nemotron-CC's ensemble: percentile thresholds on a sample, the maximum bucket;
* :mod:`.select_top` — the top percent of the documents (DCLM) or of each config's rows (REWIRE), over the whole run;

What it may import: datatrove, fasttext, ``finephrase.quality`` (classifier text and scores),
``finephrase.errors``, ``finephrase.stats`` and ``finephrase.pipeline.formatters`` (``select_top``: a row's config
and tokens).
"""
