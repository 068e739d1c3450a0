"""Decontamination against eval sets:

* :mod:`.index` — ``EvalSetIndex``: the eval sets' n-grams (files or Hub datasets) as datatrove's decont index;
* :mod:`.decontaminate` — ``Decontaminate``: datatrove's ``NGramsDecontFilter`` check on the rows (dropped or flagged).

What it may import: datatrove, ``datasets``, ``finephrase.pipeline.formatters`` (row columns),
``finephrase.stats`` and ``finephrase.errors``.
"""
