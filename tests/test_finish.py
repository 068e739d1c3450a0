"""The end of every run (finephrase.report.finish): an output without rows is an error, and then nothing is
published (no card, no report.html), while the report that says why is kept."""

from __future__ import annotations

import json

import pytest

from finephrase.errors import EmptyOutputError
from finephrase.recipe import load_recipe
from finephrase.report import PromptCount, RunCounts, RunReport
from finephrase.report.finish import finish_output
from finephrase.plan import resolve


def _report(**faq) -> RunReport:
    return RunReport(counts=RunCounts(documents_read=5, rephrase_documents=5, prompts={"faq": PromptCount(**faq)}))


def test_no_rows_is_an_error_and_nothing_is_published(tmp_path, make_recipe):
    recipe = load_recipe(make_recipe({"prompts": ["finephrase/faq"], "mix": None}))
    out = tmp_path / "out"
    report = _report(rephrased=5, rows=0, dropped={"refusal": 5})
    with pytest.raises(EmptyOutputError, match="the output checks dropped all 5 generations .refusal 5.") as e:
        finish_output(str(out), resolve(recipe), report)
    assert e.value.exit_code == 4
    assert json.loads((out / ".finephrase" / "report.json").read_text())["counts"]["prompts"]["faq"]["rows"] == 0
    assert not (out / "README.md").exists() and not (out / "report.html").exists()
    assert not (out / "recipe.yaml").exists()


def test_nothing_read_says_where_to_look(tmp_path, make_recipe):
    recipe = load_recipe(make_recipe({"prompts": ["finephrase/faq"], "mix": None}))
    with pytest.raises(EmptyOutputError, match="the source gave no documents: check source.path"):
        finish_output(str(tmp_path / "out"), resolve(recipe), RunReport(counts=RunCounts(documents_read=0)))
