"""The end of a run, wherever it ran (``finephrase run`` on this machine, the finish job of ``finephrase launch``):
save the report, refuse an empty output, keep the recipe, write the card and ``report.html``.

Imports: :mod:`finephrase.report` (report, card, html) and ``finephrase.errors``.
"""

from __future__ import annotations

import os

from finephrase.errors import EmptyOutputError
from finephrase.report.build import save_report
from finephrase.report.problems import empty_output_problem
from finephrase.report.run_report import RunReport


def finish_output(output: str, recipe, prompts, report: RunReport) -> str:
    """Save ``report`` (``.finephrase/report.json``), then ``recipe.yaml``, ``README.md`` (the card) and
    ``report.html``; returns the card's path. Raises :class:`EmptyOutputError` (cause and fix) when the run
    produced nothing, before anything else is written."""
    from finephrase.report.card import redact_secrets, write_card
    from finephrase.report.html import write_html_report

    save_report(output, report)
    problem = empty_output_problem(report, output)
    if problem:
        raise EmptyOutputError(f"empty output: {problem}")
    if recipe.raw_text:  # without tokens (scrubbed as written, not only when pushed)
        with open(os.path.join(output, "recipe.yaml"), "w", encoding="utf-8") as f:
            cluster = getattr(recipe, "cluster", None)
            f.write(redact_secrets(recipe.raw_text, cluster.secret_values() if cluster else []))
    path = write_card(output, recipe=recipe, prompts=prompts, summary=report)
    write_html_report(output, recipe=recipe, prompts=prompts, report=report)  # OUTPUT/report.html
    return path

