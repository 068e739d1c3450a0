"""Dedup of the outputs (``outputs``): datatrove's exact and MinHash stages run on the rows, each prompt config on
its own (salted per config), counting the duplicates removed per config.

What it may import: datatrove, ``finephrase.pipeline.formatters`` (the row's config and tokens),
``finephrase.stats`` and ``finephrase.errors``.
"""
