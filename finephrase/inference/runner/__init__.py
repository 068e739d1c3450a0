"""The lean inference runner: a datatrove step that owns its loop over documents (``loop``), with ``admission``
(requests and documents in flight), ``stat_buffer`` (stats folded in batches), ``checkpoints`` (chunked checkpoints
and resume), ``request_cache`` (the sqlite request cache) and ``writer`` (the output writer); their files are
datatrove's, so a run can be resumed by either.

What it may import: datatrove's public surface, ``finephrase.errors``, ``finephrase.progress`` and
``finephrase.inference.client``. Never the pipeline or the report.
"""
