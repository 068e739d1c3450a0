"""finephrase's datatrove pipeline steps, one per module, each a plain datatrove ``PipelineStep``.

What lives here:

* :mod:`.read_jsonl` — ``SafeJsonlReader`` (a malformed line is counted and skipped, not the end of a file);
* :mod:`.length_filter`, :mod:`.language_filter`, :mod:`.quality_filter` — the source filters (fastText models; a
  transformers classifier scored in batches);
* :mod:`.quality_ensemble` — Nemotron-CC's ensemble: percentile thresholds on a sample, the maximum bucket per
  document;
* :mod:`.select_top` — the top percent of the documents (DCLM) or of each config's rows (REWIRE) over the whole run;
* :mod:`.rephrase` — ``Rephrase``, the inference step, with its two strategies (truncate, chunked);
* :mod:`.format_rows` — ``FormatRows``: one row per generation, with the output rules of :mod:`.output_checks`;
* :mod:`.output_dedup` — datatrove's exact and MinHash dedup on the rows, each prompt config on its own, counting
  the duplicates removed per config;
* :mod:`.decont_index`, :mod:`.decontaminate` — ``EvalSetIndex`` (the eval sets' n-grams as datatrove's decont
  index) and ``Decontaminate`` (datatrove's ``NGramsDecontFilter`` check: rows dropped or flagged, counted);
* :mod:`.mix` — ``Mix``: real and synthetic rows at a token ratio (only rows that passed their checks, unless asked).

What it may import: datatrove, and from finephrase ``finephrase.inference`` (the request path),
``finephrase.prompts``, ``finephrase.quality`` (classifier text and scores), ``finephrase.errors`` and
``finephrase.report.names`` (stat names). Never
``finephrase.pipeline``, ``finephrase.run``, ``finephrase.report`` beyond ``names``, or ``finephrase.cli``:
those use the steps.
"""
