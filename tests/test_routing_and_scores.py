"""Routing by score buckets (Nemotron-CC) and scored outputs (issue "Data quality"): each document goes to its
bucket's prompts, the buckets are counted per prompt, every generated text is scored by the same classifier and
rows carry source score, output score and uplift; the card reports both."""

from __future__ import annotations

import json

import pytest
from conftest import first_demo_docs, run_cli, run_summary
from test_dedup_decont import PROMPT, EchoOpenAI, rows_of

from finephrase.errors import RecipeError
from finephrase.pipeline.rephrase.routing import BELOW_BUCKETS, UNSCORED, Router
from finephrase.plan import resolve
from finephrase.prompts import load_prompt
from finephrase.recipe import load_recipe

BUCKETS = [{"name": "high", "min": 0.7, "prompts": ["alpha", "beta"]},
           {"name": "mid", "min": 0.3, "prompts": ["beta"]},
           {"name": "low", "min": 0.0, "prompts": ["gamma"]}]


@pytest.fixture
def prompt_files(tmp_path):
    paths = []
    for name in ("alpha", "beta", "gamma"):
        (tmp_path / f"{name}.yaml").write_text(PROMPT.format(name=name))
        paths.append(str(tmp_path / f"{name}.yaml"))
    return paths


def test_a_score_goes_to_the_highest_bucket_it_reaches(prompt_files):
    prompts = [load_prompt(p) for p in prompt_files]
    router = Router({"buckets": BUCKETS[:2], "unscored": ["gamma"]}, prompts)

    def names(metadata):
        bucket, chosen = router.route(metadata)
        return bucket, [p.name for p in chosen]

    assert names({"quality_score": 0.95}) == ("high", ["alpha", "beta"])
    assert names({"quality_score": 0.7}) == ("high", ["alpha", "beta"])
    assert names({"quality_score": 0.5}) == ("mid", ["beta"])
    assert names({"quality_score": 0.1}) == (BELOW_BUCKETS, [])
    assert names({}) == (UNSCORED, ["gamma"])
    assert [(b["name"], b["min"], b["max"]) for b in router.describe()] == [("high", 0.7, None), ("mid", 0.3, 0.7)]


def test_the_threshold_form_routes_by_the_prompts_suits():
    prompts = [load_prompt(r) for r in ("nemotron-cc/wikipedia", "nemotron-cc/distill", "finephrase/faq")]
    router = Router({"threshold": 0.6}, prompts)
    assert [p.name for p in router.route({"quality_score": 0.6})[1]] == ["distill", "faq"]
    assert [p.name for p in router.route({"quality_score": 0.2})[1]] == ["wikipedia", "faq"]
    assert [p.name for p in router.route({})[1]] == ["faq"]


@pytest.mark.parametrize("routing, filters, match", [
    ({"buckets": [{"name": "a", "prompts": ["delta"]}]}, None, r"routing.buckets\[0\].prompts: delta: not a prompt"),
    ({"buckets": BUCKETS, "unscored": ["zeta"]}, None, r"routing.unscored: zeta"),
    ({"buckets": BUCKETS, "threshold": 0.5}, None, "not both"),
    ({"buckets": [BUCKETS[0], {**BUCKETS[0], "min": 0.2}]}, None, "bucket names must be unique"),
    ({"buckets": BUCKETS[:2]}, 0.5, r"drops them first: set it to 0.3"),
])
def test_the_recipe_checks_the_buckets(make_recipe, prompt_files, demo_data, routing, filters, match):
    quality = {"model": str(demo_data / "quality.ftz"), "label": "hq", "threshold": filters or 0.0}
    with pytest.raises(RecipeError, match=match):
        resolve(load_recipe(make_recipe({"prompts": prompt_files, "routing": routing,
                                         "filters": {"quality": quality}, "mix": None})))


def _fasttext_score(model, text: str) -> float:
    from finephrase.quality.scorers import label_score

    return label_score(model, text, "hq")


def test_a_run_routes_by_bucket_and_scores_its_outputs(tmp_path, demo_data, make_recipe, prompt_files):
    import fasttext

    server = EchoOpenAI()
    docs = [d for d in first_demo_docs(demo_data, 60) if len(d["text"]) > 300][:24]
    (tmp_path / "src").mkdir()
    with open(tmp_path / "src" / "docs.jsonl", "w") as f:
        f.writelines(json.dumps({"id": f"s{i}", "text": d["text"][:1500]}) + "\n" for i, d in enumerate(docs))
    recipe = make_recipe({
        "source": {"path": str(tmp_path / "src")}, "dedup": None, "mix": None, "prompts": prompt_files,
        "filters": {"language": None, "min_chars": 1,
                    "quality": {"model": str(demo_data / "quality.ftz"), "label": "hq", "threshold": 0.0}},
        "routing": {"buckets": RUN_BUCKETS},
        "generator": {"server": "openai", "endpoints": [server.url], "model": "echo", "replicas": None,
                      "threads": 1, "n_ctx": 2048, "context_length": 2048, "max_retries": 0,
                      "params": {"max_new_tokens": 512, "temperature": 0.0, "top_p": None, "seed": 0}},
        "output_checks": "flag", "run": {"limit": -1, "tasks": 1},
    })
    try:
        run_cli("run", str(recipe), "--output", str(tmp_path / "out"))
    finally:
        server.httpd.shutdown()
    out = tmp_path / "out"
    model = fasttext.load_model(str(demo_data / "quality.ftz"))
    source_score = {f"s{i}": _fasttext_score(model, d["text"][:1500]) for i, d in enumerate(docs)}
    expected = {"high": set(), "mid": set(), "low": set()}
    for sid, score in source_score.items():
        expected["high" if score >= 0.96 else "mid" if score >= 0.3 else "low"].add(sid)
    assert all(expected.values()), f"the demo pages should fall in every bucket: {source_score}"
    rows = {name: rows_of(out, name) for name in ("alpha", "beta", "gamma")}
    # each document went to its bucket's prompts, and only to them
    assert {r["source_id"] for r in rows["alpha"]} == expected["high"]
    assert {r["source_id"] for r in rows["beta"]} == expected["high"] | expected["mid"]
    assert {r["source_id"] for r in rows["gamma"]} == expected["low"]
    for name, config_rows in rows.items():
        for r in config_rows:
            assert r["bucket"] in BUCKETS_OF[name]
            assert r["quality_score"] == pytest.approx(source_score[r["source_id"]], abs=1e-5)
            # scored outputs: the generated text by the same classifier, and the difference
            assert r["output_quality_score"] == pytest.approx(_fasttext_score(model, r["text"]), abs=1e-5)
            assert r["quality_uplift"] == pytest.approx(r["output_quality_score"] - r["quality_score"], abs=2e-6)
    summary = run_summary(out / ".finephrase")
    routing = summary["routing"]
    assert {b: routing[b]["documents"] for b in expected} == {b: len(v) for b, v in expected.items()}
    assert routing["high"]["prompts"] == {"alpha": len(expected["high"]), "beta": len(expected["high"])}
    for name, config_rows in rows.items():
        p = summary["prompts"][name]
        assert p["output_scored"] == len(config_rows)
        assert p["quality_uplift"] == pytest.approx(sum(r["quality_uplift"] for r in config_rows), abs=1e-4)
        assert p["below_source"] == sum(r["quality_uplift"] < 0 for r in config_rows)
    card = (out / "README.md").read_text()
    assert "## Quality" in card
    assert f"| `high` | ≥ 0.96 | {len(expected['high'])} | `alpha` {len(expected['high'])}, `beta` " \
           f"{len(expected['high'])} |" in card
    assert f"| `mid` | ≥ 0.3, < 0.96 | {len(expected['mid'])} | `beta` {len(expected['mid'])} |" in card
    a = rows["alpha"]
    mean_uplift = sum(r["quality_uplift"] for r in a) / len(a)
    assert f"| `alpha` | {len(a)} | " in card and f"{mean_uplift:+.3f}" in card
    page = (out / "report.html").read_text()
    assert "Quality uplift (generated score - source score)" in page and "Quality score of the generated text" in page


# the demo classifier scores pages near 0 or near 1: these bounds give every bucket some of the first pages
RUN_BUCKETS = [{**BUCKETS[0], "min": 0.96}, BUCKETS[1], BUCKETS[2]]
BUCKETS_OF = {"alpha": {"high"}, "beta": {"high", "mid"}, "gamma": {"low"}}
