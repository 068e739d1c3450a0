"""Classifiers the papers used (issue 23): a transformers regression model the FineWeb-Edu way, scoring documents
in batches inside a run, from a local folder and from a (test) Hub repo, its scores those of transformers' own
``text-classification`` pipeline.

The model is made here (tests/tiny_classifier.py): a 2-layer BERT fine-tuned for a few steps on the demo
corpus's high- and low-quality pages, saved with ``save_pretrained``.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import run_summary, write_recipe
from hub_server import hub_repo_id, hub_server  # noqa: F401  (pytest fixtures)
from tiny_classifier import demo_pages, train_tiny_classifier

from finephrase.plan import resolve
from finephrase.quality.scorers import int_score

torch = pytest.importorskip("torch", reason="the `classifiers` extra (torch) is not installed")


@pytest.fixture(scope="session")
def edu_classifier(demo_data, tmp_path_factory) -> Path:
    torch.set_num_threads(1)  # 2 cores shared: one thread trains a model this small fastest
    return train_tiny_classifier(demo_data, tmp_path_factory.mktemp("edu") / "model")


@pytest.fixture(scope="module")
def sample(demo_data, tmp_path_factory) -> tuple[Path, list[dict]]:
    """30 real pages (15 high-quality, 15 low-quality) as a jsonl source."""
    pages = demo_pages(demo_data)
    with gzip.open(demo_data / "docs.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    hq = [d for d, (_, good) in zip(docs, pages) if good][:15]
    lq = [d for d, (_, good) in zip(docs, pages) if not good][:15]
    folder = tmp_path_factory.mktemp("sample")
    with open(folder / "docs.jsonl", "w") as out:
        out.writelines(json.dumps(d) + "\n" for d in hq + lq)
    return folder, hq + lq


def pipeline_scores(model: Path, texts: list[str]) -> list[float]:
    """transformers' own answer: the text-classification pipeline, no function applied (a regression output)."""
    from transformers import pipeline

    pipe = pipeline("text-classification", model=str(model), function_to_apply="none", device="cpu")
    return [r["score"] for r in pipe(texts, truncation=True)]


def filtered(out: Path) -> dict[str, dict]:
    rows = {}
    for f in sorted((out / ".finephrase" / "filtered").glob("*.jsonl.gz")):
        with gzip.open(f, "rt") as fh:
            rows.update({(d := json.loads(line))["id"]: d for line in fh})
    return rows


def run_filter_stage(recipe_path: Path, out: Path, tasks: int = 2):
    """The recipe's filter stage, run by datatrove's executor (what `finephrase run` starts with)."""
    from finephrase.inference.client.backends import GeneratorRuntime
    from finephrase.pipeline.build import build_stages, run_local
    from finephrase.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    stages = build_stages(resolve(recipe), str(out), GeneratorRuntime(model="none"), tasks=tasks)
    run_local([s for s in stages if s.name == "filter"], str(out), workers=1)
    return recipe


def test_a_transformers_classifier_scores_a_run_like_the_pipeline(edu_classifier, sample, tmp_path):
    folder, docs = sample
    recipe = write_recipe(tmp_path / "r.yaml", {
        "source": {"path": str(folder)}, "filters": {"min_chars": 1, "language": None,
                                                     "quality": {"model": str(edu_classifier), "threshold": 2.5,
                                                                 "batch_size": 4}},
        "dedup": None, "mix": None, "run": {"limit": -1}})
    run_filter_stage(recipe, tmp_path / "out")
    expected = dict(zip([d["id"] for d in docs], pipeline_scores(edu_classifier, [d["text"] for d in docs])))
    kept = filtered(tmp_path / "out")
    assert set(kept) == {i for i, s in expected.items() if s >= 2.5}, "kept: the documents scoring 2.5 or more"
    for doc_id, row in kept.items():
        md = row["metadata"]
        assert md["quality_score"] == pytest.approx(expected[doc_id], abs=1e-4)
        assert md["quality_int_score"] == int_score(md["quality_score"]) == int(round(max(0, min(md["quality_score"], 5))))
    # the classifier learned the pages apart: the high-quality half scores above the low-quality half
    hq = [expected[d["id"]] for d in docs[:15]]
    lq = [expected[d["id"]] for d in docs[15:]]
    print(f"mean score: high-quality {sum(hq) / 15:.2f}, low-quality {sum(lq) / 15:.2f}; kept {len(kept)} of 30")
    assert sum(hq) / 15 > sum(lq) / 15 + 1.0
    assert 0 < len(kept) < 30


def test_batches_give_the_scores_of_one_document_at_a_time(edu_classifier, sample):
    from finephrase.quality.scorers import TransformersScorer

    _, docs = sample
    texts = [d["text"] for d in docs[:10]]
    one = TransformersScorer(str(edu_classifier), batch_size=1).score_batch(texts)
    batched = TransformersScorer(str(edu_classifier), batch_size=8).score_batch(texts)
    assert batched == pytest.approx(one, abs=1e-4) and len(set(one)) > 1


def test_a_transformers_classifier_from_a_hub_repo(edu_classifier, sample, hub_server, hub_repo_id, tmp_path):  # noqa: F811
    from huggingface_hub import HfApi

    from finephrase.quality.models import resolve_classifier
    from finephrase.quality.scorers import TransformersScorer

    HfApi().create_repo(hub_repo_id, repo_type="model")
    HfApi().upload_folder(folder_path=str(edu_classifier), repo_id=hub_repo_id)
    local = resolve_classifier(hub_repo_id)  # the whole repo (config.json: a transformers model) into the cache
    assert Path(local, "config.json").is_file() and Path(local) != edu_classifier
    texts = [d["text"] for d in sample[1][:6]]
    assert TransformersScorer(local).score_batch(texts) == pytest.approx(pipeline_scores(edu_classifier, texts),
                                                                           abs=1e-4)
    folder, docs = sample
    recipe = write_recipe(tmp_path / "r.yaml", {  # a run naming the Hub repo: resolved once, before anything runs
        "source": {"path": str(folder)}, "dedup": None, "mix": None, "run": {"limit": -1},
        "filters": {"min_chars": 1, "language": None, "quality": {"model": hub_repo_id, "threshold": 0.0}}})
    run_filter_stage(recipe, tmp_path / "out")
    expected = dict(zip([d["id"] for d in docs], pipeline_scores(edu_classifier, [d["text"] for d in docs])))
    kept = filtered(tmp_path / "out")
    assert set(kept) == {i for i, s in expected.items() if s >= 0.0} and kept
    assert all(row["metadata"]["quality_score"] == pytest.approx(expected[i], abs=1e-4) for i, row in kept.items())


def test_a_fasttext_threshold_above_one_is_a_recipe_error(tmp_path, demo_data):
    from finephrase.errors import RecipeError
    from finephrase.recipe import load_recipe

    with pytest.raises(RecipeError, match=r"filters.quality.threshold: 2.5 > 1: a fastText score is a probability"):
        resolve(load_recipe(write_recipe(tmp_path / "r.yaml", {"filters": {"quality": {"threshold": 2.5}}})))


# ------------------------------------------------------------------ runs on an echo server (the text is the document)
def echo_recipe(tmp_path: Path, make_recipe, docs: list[dict], prompts: list[str], **over) -> Path:
    from test_dedup_decont import EchoOpenAI

    server = EchoOpenAI()
    (tmp_path / "src").mkdir()
    with open(tmp_path / "src" / "docs.jsonl", "w") as f:
        f.writelines(json.dumps({"id": d["id"], "text": d["text"][:1500]}) + "\n" for d in docs)
    recipe = make_recipe({
        "source": {"path": str(tmp_path / "src")}, "dedup": None, "mix": None, "prompts": prompts,
        "filters": {"language": None, "min_chars": 1},
        "generator": {"server": "openai", "endpoints": [server.url], "model": "echo", "replicas": None,
                      "threads": 1, "n_ctx": 2048, "context_length": 2048, "max_retries": 0,
                      "params": {"max_new_tokens": 512, "temperature": 0.0, "top_p": None, "seed": 0}},
        "output_checks": "drop", "run": {"limit": -1, "tasks": 1}, **over})
    return recipe, server


def prompt_file(tmp_path: Path, name: str) -> str:
    from test_dedup_decont import PROMPT

    (tmp_path / f"{name}.yaml").write_text(PROMPT.format(name=name))
    return str(tmp_path / f"{name}.yaml")


def jsonl_rows(folder: Path) -> list[dict]:
    out = []
    for f in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(f, "rt") as fh:
            out += [json.loads(line) for line in fh]
    return out


def test_the_top_ten_percent_of_outputs_over_four_tasks(tmp_path, demo_data, make_recipe):
    """REWIRE's selection: every document rewritten, the top 10 % of the outputs by the classifier's score kept,
    ranked over the whole run (4 tasks), exactly as a sort of all the scores says."""
    from conftest import first_demo_docs, run_cli
    from test_dedup_decont import rows_of

    from finephrase.pipeline.filters.select_top import kept_count

    docs = [d for d in first_demo_docs(demo_data, 200) if len(d["text"]) > 300][:60]
    recipe, server = echo_recipe(tmp_path, make_recipe, docs, [prompt_file(tmp_path, "alpha")],
                                 filters={"language": None, "min_chars": 1, "quality": {
                                     "model": str(demo_data / "quality.ftz"), "threshold": 0.0}},
                                 select_outputs={"top_percent": 10}, run={"limit": -1, "tasks": 4, "workers": 2})
    try:
        run_cli("run", str(recipe), "--output", str(tmp_path / "out"))
    finally:
        server.httpd.shutdown()
    out = tmp_path / "out"
    every = jsonl_rows(out / ".finephrase" / "rows")  # every output, scored, before the selection
    assert len(list((out / ".finephrase" / "rows").glob("*.jsonl.gz"))) == 4 and len(every) == len(docs)
    ranked = sorted(((r["metadata"]["output_quality_score"], r["id"]) for r in every), reverse=True)
    k = kept_count(len(every), 10)
    assert k == 6
    kept = rows_of(out, "alpha")
    assert sorted(r["id"] for r in kept) == sorted(i for _, i in ranked[:k])
    assert min(r["output_quality_score"] for r in kept) >= ranked[k - 1][0]
    # per task, a top 10 % would have kept other rows: the ranking is the run's
    summary = run_summary(out / ".finephrase")
    assert summary["prompts"]["alpha"]["below_top"] == len(every) - k
    assert "Only the top 10% of each config's rows by `output_quality_score`" in (out / "README.md").read_text()


def test_the_top_percent_of_sources_over_the_run(tmp_path, demo_data, make_recipe):
    """DCLM's selection: the top 25 % of the source documents by quality score, over 3 tasks, are rephrased."""
    from conftest import first_demo_docs, run_cli
    from test_dedup_decont import rows_of

    from finephrase.pipeline.filters.select_top import kept_count
    from finephrase.quality.scorers import FastTextScorer

    docs = [d for d in first_demo_docs(demo_data, 200) if len(d["text"]) > 300][:24]
    recipe, server = echo_recipe(tmp_path, make_recipe, docs, [prompt_file(tmp_path, "alpha")],
                                 filters={"language": None, "min_chars": 1, "quality": {
                                     "model": str(demo_data / "quality.ftz"), "threshold": 0.0, "top_percent": 25}},
                                 run={"limit": -1, "tasks": 3})
    try:
        run_cli("run", str(recipe), "--output", str(tmp_path / "out"))
    finally:
        server.httpd.shutdown()
    scores = FastTextScorer(str(demo_data / "quality.ftz")).score_batch([d["text"][:1500] for d in docs])
    ranked = sorted(((round(s, 6), d["id"]) for s, d in zip(scores, docs)), reverse=True)
    k = kept_count(len(docs), 25)
    assert {r["source_id"] for r in rows_of(tmp_path / "out", "alpha")} == {i for _, i in ranked[:k]}
    summary = run_summary(tmp_path / "out" / ".finephrase")
    top = [f for f in summary["filters"] if "top" in f["name"]]
    assert top and top[0]["kept"] == k and top[0]["dropped"] == len(docs) - k


def test_an_ensemble_routes_levels_and_keeps_the_middle(tmp_path, demo_data, make_recipe, edu_classifier):
    """Nemotron-CC's ensemble: two classifiers (the demo's fastText, the transformers one), each score mapped to a
    bucket 0-19 by percentiles of the sample, the maximum routes the document: low -> gamma, high -> alpha and beta,
    the middle kept as it is and mixed in as the real text."""
    from conftest import first_demo_docs, run_cli
    from test_dedup_decont import rows_of

    from finephrase.quality.ensemble import bucket_of, percentile_thresholds
    from finephrase.quality.scorers import FastTextScorer, TransformersScorer

    docs = [d for d in first_demo_docs(demo_data, 200) if len(d["text"]) > 300][:40]
    levels = [{"name": "low", "min": 0, "prompts": ["gamma"]}, {"name": "medium", "min": 14, "keep": True},
              {"name": "high", "min": 18, "prompts": ["alpha", "beta"]}]
    recipe, server = echo_recipe(
        tmp_path, make_recipe, docs, [prompt_file(tmp_path, n) for n in ("alpha", "beta", "gamma")],
        filters={"language": None, "min_chars": 1, "quality": {"model": None, "threshold": 0, "sample": 40, "batch_size": 8,
                 "ensemble": [{"model": str(demo_data / "quality.ftz"), "name": "dclm"},
                              {"model": str(edu_classifier), "name": "edu"}]}},
        routing={"buckets": levels}, mix={"synthetic": 0.5}, run={"limit": -1, "tasks": 2})
    try:
        run_cli("run", str(recipe), "--output", str(tmp_path / "out"))
    finally:
        server.httpd.shutdown()
    out = tmp_path / "out"
    texts = [d["text"][:1500] for d in docs]
    raw = {"dclm": FastTextScorer(str(demo_data / "quality.ftz")).score_batch(texts),
           "edu": TransformersScorer(str(edu_classifier)).score_batch(texts)}
    saved = json.loads((out / ".finephrase" / "quality-ensemble" / "thresholds.json").read_text())
    assert saved["sample"] == 40 and saved["buckets"] == 20
    for name, scores in raw.items():
        assert saved["thresholds"][name] == pytest.approx(percentile_thresholds(scores, 20), abs=1e-4)
    best = {d["id"]: max(bucket_of(raw[n][i], saved["thresholds"][n]) for n in raw) for i, d in enumerate(docs)}
    level = {i: "high" if b >= 18 else "medium" if b >= 14 else "low" for i, b in best.items()}
    assert set(level.values()) == {"low", "medium", "high"}, best
    for config, wanted in (("alpha", "high"), ("beta", "high"), ("gamma", "low")):
        rows = rows_of(out, config)
        assert {r["source_id"] for r in rows} == {i for i, lv in level.items() if lv == wanted}
        assert all(r["quality_score"] == best[r["source_id"]] for r in rows)
    mix = rows_of(out, "mix")
    real = {r["id"] for r in mix if r["kind"] == "real"}
    assert real and real <= {i for i, lv in level.items() if lv == "medium"}, "the real text is the middle, verbatim"
    assert all(r["text"] == next(t for d, t in zip(docs, texts) if d["id"] == r["id"]) for r in mix
               if r["kind"] == "real")
    summary = run_summary(out / ".finephrase")
    assert {b: summary["routing"][b]["documents"] for b in ("low", "medium", "high")} == \
        {lv: sum(1 for x in level.values() if x == lv) for lv in ("low", "medium", "high")}
    card = (out / "README.md").read_text()
    assert "scored by an ensemble, as in Nemotron-CC" in card and "kept as it is (real text of the mix)" in card


def test_quality_score_shows_a_transformers_model_on_its_scale(edu_classifier, sample):
    from conftest import run_cli

    folder, docs = sample
    proc = run_cli("quality", "score", str(edu_classifier), str(folder), "--threshold", "2.5")
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{len(docs)} documents scored for {edu_classifier} (regression, 0-5)"
    bars = [line for line in lines if " | " in line]
    assert len(bars) == 10 and bars[0].startswith("  0.0-0.5") and bars[-1].startswith("  4.5-5.0")
    assert sum(int(b.rsplit(" ", 1)[1]) for b in bars) == len(docs)
    scores = pipeline_scores(edu_classifier, [d["text"] for d in docs])
    kept = sum(1 for s in scores if s >= 2.5)
    assert f"threshold 2.5: keeps {kept} of {len(docs)}" in proc.stdout
