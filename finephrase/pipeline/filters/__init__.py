"""Source filters, each a datatrove ``BaseFilter`` with its drop reasons counted:

* :mod:`.length` — documents under ``filters.min_chars``;
* :mod:`.language` — fastText lid.176 (``LocalFastTextLID``), keeping ``filters.languages``;
* :mod:`.quality` — ``QualityFilter``: a classifier's score (and bucket) on the document, kept or routed;

What it may import: datatrove, fasttext, ``finephrase.quality`` (classifier text and scores),
``finephrase.errors`` and ``finephrase.stats``.
"""
