"""The run report: every number a run reports, read once, saved once, read by everyone else.

What lives here:

* :mod:`~finephrase.stats` — the stage names and stat names the steps write and the report reads
  (imports nothing: any step may import it);
* :mod:`~finephrase.report.run_report` — the typed report (:class:`RunReport`: :class:`RunCounts` from datatrove's
  stats, :class:`ConfigFiles` from the parquet footers, the generator as it ran);
* :mod:`~finephrase.report.stats` — datatrove's ``logs/<stage>/stats.json`` -> :class:`RunCounts`;
* :mod:`~finephrase.report.files` — ``data/<config>/*.parquet`` footers -> :class:`ConfigFiles`;
* :mod:`~finephrase.report.build` — build it at the end of a run, save it (``.finephrase/report.json``), load it;
* :mod:`~finephrase.report.configs` — the dataset's ``configs`` list (``all``, prompts, ``mix``, kept configs),
  used by the card and by the push;
* :mod:`~finephrase.report.table` — the end-of-run table; :mod:`~finephrase.report.problems` — why a run
  produced nothing;
* :mod:`~finephrase.report.finish` — the end of every run (local or cluster): report, card, ``report.html``;
* :mod:`~finephrase.report.views` — the run's facts shaped for a reader (the generator, the prompts' sampling, the
  prompts' configs, numbers as printed), shared by the card and ``report.html``;
* :mod:`~finephrase.report.card` — the dataset card: renders the report through ``cards/dataset_card.md.j2``
  (the run and the push render the same card);
* :mod:`~finephrase.report.html` — ``OUTPUT/report.html``, one self-contained page (samples, funnel, distributions,
  generator and prompts as the card shows them), rendered through ``cards/report.html.j2``;
  :mod:`~finephrase.report.samples` reads a bounded sample of each config's rows and every row's small columns,
  :mod:`~finephrase.report.plots` turns them (and the counts' funnel) into Chart.js configurations.

What it may import: the standard library, pydantic, pyarrow, and from finephrase only ``finephrase.pipeline.build``
(``RunPaths``, imported inside functions: the steps that ``finephrase.pipeline.build`` imports may import
``finephrase.stats``). The report's own modules never import ``card``/``summary``/``html`` (which read the report,
and may import ``finephrase.prompts``, ``finephrase.inference`` for defaults and backends, and the row
columns of ``finephrase.pipeline.formatters.rows`` / ``finephrase.pipeline.mix``), nor
``finephrase.hub``, ``finephrase.run`` or ``finephrase.cli``.
"""

from finephrase.report.build import (
    build_report,
    load_report,
    save_report,
)
from finephrase.report.configs import ALL, MIX, config_paths, dataset_configs
from finephrase.report.problems import empty_output_problem, first_generation_error
from finephrase.report.run_report import (
    ConfigFiles,
    MixCount,
    PromptCount,
    RunCounts,
    RunReport,
)
from finephrase.report.stats import counts_from_stats, load_stage_stats
from finephrase.report.table import summary_rows

__all__ = [
    "ALL",
    "MIX",
    "ConfigFiles",
    "MixCount",
    "PromptCount",
    "RunCounts",
    "RunReport",
    "build_report",
    "config_paths",
    "counts_from_stats",
    "dataset_configs",
    "empty_output_problem",
    "first_generation_error",
    "load_report",
    "load_stage_stats",
    "save_report",
    "summary_rows",
]
