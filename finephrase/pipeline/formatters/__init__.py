"""From generations to dataset rows:

* :mod:`.rows` — ``FormatRows``: one row per (document, prompt) generation, its columns (``ROW_SCHEMA``), scores;
* :mod:`.output_checks` — the prompt's output rules (format checks and cleaning), as ``flag`` or ``drop``.

What it may import: datatrove, ``finephrase.prompts``, ``finephrase.quality`` (output scores),
``finephrase.stats`` and ``finephrase.errors``. The rephrase strategies import ``output_checks``.
"""
