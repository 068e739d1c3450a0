"""Readers: documents into the pipeline (``jsonl`` — ``SafeJsonlReader``, datatrove's ``JsonlReader`` that counts and
skips a malformed line instead of ending the file). Parquet and Hub datasets use datatrove's own readers.

What it may import: datatrove and the standard library; nothing of finephrase. The composition root
(``finephrase.pipeline.build``) imports it.
"""
