"""The pipeline: finephrase's datatrove steps, laid out as datatrove lays out its own, and the composition root.

What lives here (one step per module, each a plain datatrove ``PipelineStep``):

* :mod:`.readers` — ``SafeJsonlReader`` (a malformed line is counted and skipped, not the end of a file);
* :mod:`.filters` — the source filters: length, language (fastText lid.176) and quality (a classifier);
* :mod:`.rephrase` — ``Rephrase``, the inference step, with its two strategies (truncate, chunked) and routing;
* :mod:`.formatters` — ``FormatRows``: one row per generation, with the output rules of ``output_checks``;
* :mod:`.dedup` — datatrove's exact and MinHash dedup on the rows, each prompt config on its own;
* :mod:`.decont` — ``EvalSetIndex`` (eval sets' n-grams as datatrove's decont index) and ``Decontaminate``;
* :mod:`.mix` — ``Mix``: real and synthetic rows at a token ratio;
* :mod:`.build` — the composition root: a recipe -> datatrove stages that any executor runs (local, Slurm, Ray).

What it may import: datatrove, and from finephrase ``finephrase.inference`` (the request path),
``finephrase.prompts``, ``finephrase.quality``, ``finephrase.errors``, ``finephrase.stats`` (stat names),
``finephrase.recipe`` and ``finephrase.lifetime`` (``build`` only). Never ``finephrase.report``,
``finephrase.run``, ``finephrase.hub``, ``finephrase.cluster`` or ``finephrase.cli``: those use the pipeline.
"""
