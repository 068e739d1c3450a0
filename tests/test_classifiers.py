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
from conftest import write_recipe
from hub_server import hub_repo_id, hub_server  # noqa: F401  (pytest fixtures)
from tiny_classifier import demo_pages, train_tiny_classifier

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
    from finephrase.inference.backends import GeneratorRuntime
    from finephrase.pipeline import build_stages, run_local
    from finephrase.recipe import load_recipe

    recipe = load_recipe(recipe_path)
    stages = build_stages(recipe, recipe.resolved_prompts(), str(out), GeneratorRuntime(model="none"), tasks=tasks)
    run_local([s for s in stages if s.name == "filter"], str(out), workers=1)
    return recipe


def test_a_transformers_classifier_scores_a_run_like_the_pipeline(edu_classifier, sample, tmp_path):
    folder, docs = sample
    recipe = write_recipe(tmp_path / "r.yaml", {
        "source": {"path": str(folder)}, "filters": {"min_chars": 1, "language": None,
                                                     "quality": {"model": str(edu_classifier), "threshold": 2.5,
                                                                 "batch_size": 4}},
        "dedup": None, "mix": None})
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
    _, docs = sample
    texts = [d["text"] for d in docs[:6]]
    assert TransformersScorer(local).score_batch(texts) == pytest.approx(pipeline_scores(edu_classifier, texts),
                                                                           abs=1e-4)
    recipe = write_recipe(tmp_path / "r.yaml", {"filters": {"quality": {"model": hub_repo_id, "threshold": 2.5}}})
    from finephrase.recipe import load_recipe

    load_recipe(recipe)  # resolved and checked before anything runs


def test_a_fasttext_threshold_above_one_is_a_recipe_error(tmp_path, demo_data):
    from finephrase.recipe import RecipeError, load_recipe

    with pytest.raises(RecipeError, match=r"filters.quality.threshold: 2.5 > 1: a fastText score is a probability"):
        load_recipe(write_recipe(tmp_path / "r.yaml", {"filters": {"quality": {"threshold": 2.5}}}))
