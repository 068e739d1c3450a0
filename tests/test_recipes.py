"""The seed recipes (pipelines/*.yaml, one per published system) run end to end on the embedded
generator, on a few real documents of the demo corpus, with short generations."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
from conftest import DEMO_DATA, FAST_GENERATOR, ROOT, run_cli, run_summary, write_recipe
from datasets import load_dataset
from hub_server import hub_repo_id, hub_server  # noqa: F401  (pytest fixtures)

from finephrase.errors import RecipeError
from finephrase.plan import recipe_prompts, resolve
from finephrase.recipe import load_recipe

RECIPES = ["wrap", "nemotron-cc", "finephrase", "rewire", "beyondweb", "kimi-k2"]


def header(name: str) -> str:
    lines = (ROOT / "pipelines" / f"{name}.yaml").read_text().splitlines()
    return "\n".join(line for line in lines[: next(i for i, line in enumerate(lines) if not line.startswith("#"))])


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_is_valid_and_documented(name, demo_data):
    recipe = load_recipe(ROOT / "pipelines" / f"{name}.yaml")
    assert recipe_prompts(recipe)
    text = header(name)
    assert re.search(r"https://arxiv\.org/abs/\d{4}\.\d{5}", text), "the header cites the paper"
    assert "Reproduces" in text and "Cannot reproduce" in text


def run_recipe_fast(tmp_path: Path, name: str, limit: int, overrides: dict | None = None,
                    push_to: str | None = None, env: dict | None = None) -> tuple[Path, dict]:
    over = {"generator": FAST_GENERATOR, "run": {"limit": limit}, **(overrides or {})}
    recipe = write_recipe(tmp_path / f"{name}.yaml", over, base=ROOT / "pipelines" / f"{name}.yaml")
    out = tmp_path / "out"
    run_cli("run", str(recipe), "--output", str(out), *(["--push-to", push_to] if push_to else []), env=env,
            timeout=900)
    return out, run_summary(out / ".finephrase")


def rows(out: Path, config: str):
    return load_dataset("parquet", data_dir=str(out / "data" / config), split="train")


def check_common(out: Path, summary: dict, configs: list[str], mix: bool):
    for config in configs:
        ds = rows(out, config)
        assert len(ds) >= 1
        for row in ds:
            assert row["text"].strip() and row["prompt"] == config and row["prompt_sha256"]
            assert json.loads(row["generation_params"])["max_new_tokens"] == 48
        assert summary["prompts"][config]["rephrased"] >= 1
    assert (out / "README.md").exists()
    assert (out / "data" / "mix").exists() == mix


# 48-token test generations are cut (flagged `truncated`): the mix takes them too, to be checked at all
MIX_FLAGGED = {"mix": {"include_flagged": True}}


def test_wrap(tmp_path, demo_data):
    out, summary = run_recipe_fast(tmp_path, "wrap", 2, MIX_FLAGGED)
    check_common(out, summary, ["easy", "medium", "hard", "qa"], mix=True)
    mix = rows(out, "mix")
    assert set(mix["kind"]) == {"real", "synthetic"}


def format_echo_run(tmp_path: Path, name: str, docs: list[dict], overrides: dict) -> tuple[Path, dict]:
    """A seed recipe as it is, on the format-echo server (tests/format_echo_server.py), its eval set a local file."""
    from format_echo_server import FormatEchoOpenAI
    from test_dedup_decont import BENCH

    (tmp_path / "src").mkdir()
    with open(tmp_path / "src" / "docs.jsonl", "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    with open(tmp_path / "bench.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in BENCH)
    server = FormatEchoOpenAI()
    gen = {"server": "openai", "endpoints": [server.url], "model": "format-echo", "replicas": None, "threads": 1,
           "context_length": 2048, "max_retries": 0, "concurrency": 4}
    over = {"source": {"path": str(tmp_path / "src")}, "generator": gen, "run": {"limit": -1},
            "decontamination": {"eval_sets": [{"path": str(tmp_path / "bench.jsonl"), "name": "gsm8k",
                                               "text_key": ["question", "answer"]}]}, **overrides}
    recipe = write_recipe(tmp_path / f"{name}.yaml", over, base=ROOT / "pipelines" / f"{name}.yaml")
    try:
        run_cli("run", str(recipe), "--output", str(tmp_path / "out"))
    finally:
        server.close()
    out = tmp_path / "out"
    return out, run_summary(out / ".finephrase")


def demo_docs(n: int, skip: int = 0) -> list[dict]:
    with gzip.open(DEMO_DATA / "docs.jsonl.gz", "rt") as f:
        docs = [json.loads(line) for line in f]
    return [{"id": d["id"], "text": d["text"][:3000]} for d in docs if len(d["text"]) > 400][skip:skip + n]


def filtered_docs(out: Path) -> dict[str, dict]:
    found = {}
    for f in sorted((out / ".finephrase" / "filtered").glob("*.jsonl.gz")):
        with gzip.open(f, "rt") as fh:
            found.update({(d := json.loads(line))["id"]: d for line in fh})
    return found


def test_nemotron_cc_routes_by_ensemble_level_and_keeps_the_middle(tmp_path, demo_data):
    from finephrase.quality.ensemble import bucket_of
    from finephrase.quality.scorers import FastTextScorer

    out, summary = format_echo_run(tmp_path, "nemotron-cc", demo_docs(40), {})
    thresholds = json.loads((out / ".finephrase" / "quality-ensemble" / "thresholds.json").read_text())
    assert thresholds["buckets"] == 20 and len(thresholds["thresholds"]["fasttext"]) == 19
    scorer = FastTextScorer(str(DEMO_DATA / "quality.ftz"))
    level_of = {}
    for doc_id, doc in filtered_docs(out).items():  # each document's bucket: its score by the sample's percentiles
        bucket = bucket_of(scorer.score_batch([doc["text"]])[0], thresholds["thresholds"]["fasttext"])
        assert doc["metadata"]["quality_score"] == bucket
        level_of[doc_id] = ("high" if bucket >= 16 else "medium-high" if bucket >= 12 else "medium" if bucket >= 8
                            else "medium-low" if bucket >= 4 else "low")
    assert set(level_of.values()) == {"low", "medium-low", "medium", "medium-high", "high"}, level_of

    def of(*levels):
        return {i for i, lv in level_of.items() if lv in levels}

    assert set(rows(out, "wikipedia")["source_id"]) == of("low", "medium-low")
    for config in ("diverse_qa", "distill", "extract_knowledge", "knowledge_list"):
        assert set(rows(out, config)["source_id"]) == of("medium-high", "high")
    mix = rows(out, "mix")
    real = [r for r in mix if r["kind"] == "real"]
    assert real and {r["id"] for r in real} <= of("medium"), "the real text is the middle level, kept as it is"
    docs = filtered_docs(out)
    assert all(r["text"] == docs[r["id"]]["text"] for r in real)
    synth = sum(r["tokens"] for r in mix if r["kind"] == "synthetic")
    real_tokens = sum(r["tokens"] for r in real)
    assert abs(synth / (synth + real_tokens) - 0.3) < 0.02 or summary["mix"]["real_tokens_short"]
    # only rows that passed their checks are mixed in; the flagged ones are counted
    flagged = {r["id"] for c in ("wikipedia", "diverse_qa", "distill", "extract_knowledge", "knowledge_list")
               for r in rows(out, c) if "failed:" in (r["checks"] or "")}
    assert not flagged & {r["id"] for r in mix if r["kind"] == "synthetic"}
    assert summary["mix"]["synthetic_failed_checks"] == len(flagged)
    counts = {lv: summary["routing"][lv]["documents"] for lv in summary["routing"]}
    assert counts == {lv: len(of(lv)) for lv in set(level_of.values())}
    card = (out / "README.md").read_text()
    assert f"| `medium` | ≥ 8.0, < 12.0 | {len(of('medium'))} | kept as it is (real text of the mix) |" in card


def test_finephrase_mixes_each_format_at_its_share(tmp_path, demo_data):
    """The four formats, each mixed with the mix-in source (here a local file of short passages standing in for
    FineWeb-Edu) at the playbook's share, within 2 %; only rows that passed their checks are mixed in."""
    sentences = [s.strip() for d in demo_docs(200, skip=40) for s in d["text"].split(". ") if 40 < len(s.strip()) < 160]
    (tmp_path / "fineweb-edu").mkdir()
    with open(tmp_path / "fineweb-edu" / "part.jsonl", "w") as f:
        f.writelines(json.dumps({"id": f"edu-{i}", "text": s}) + "\n" for i, s in enumerate(sentences[:3000]))
    mixin = {"kind": "jsonl", "path": str(tmp_path / "fineweb-edu"), "name": "FineWeb-Edu (local sample)",
             "glob": None}
    out, summary = format_echo_run(tmp_path, "finephrase", demo_docs(8), {"mix": {"source": mixin}})
    targets = load_recipe(ROOT / "pipelines" / "finephrase.yaml").mix.per_prompt
    assert targets == {"table": 0.7, "math": 0.8, "faq": 0.6, "tutorial": 0.6}
    card = (out / "README.md").read_text()
    for prompt, target in targets.items():
        part = summary["mix"]["per_prompt"][prompt]
        achieved = part["synthetic_tokens"] / (part["synthetic_tokens"] + part["real_tokens"])
        print(f"{prompt}: target {target:.2f}, achieved {achieved:.4f}")
        assert abs(achieved - target) < 0.02, prompt
        assert f"| {target * 100:.1f}% | {achieved * 100:.1f}% |" in card
    mix = rows(out, "mix")
    assert {r["id"] for r in mix if r["kind"] == "real"} <= {f"edu-{i}" for i in range(3000)}
    assert summary["mix"]["synthetic_documents"] == sum(summary["prompts"][p]["rows"] for p in targets)
    assert "from the mix-in source `FineWeb-Edu (local sample)`" in card
    assert (out / ".finephrase" / "logs" / "output-exact-filter").exists(), "output dedup is on"
    assert summary["decontamination"]["ngrams"]["gsm8k"] > 0


def test_rewire_rewrites_everything_and_keeps_the_top_tenth(tmp_path, demo_data):
    out, summary = format_echo_run(tmp_path, "rewire", demo_docs(40), {"run": {"limit": -1, "tasks": 4}})
    every = []
    for f in sorted((out / ".finephrase" / "rows").glob("*.jsonl.gz")):
        with gzip.open(f, "rt") as fh:
            every += [json.loads(line) for line in fh]
    assert len(every) == len(filtered_docs(out)), "every document was rewritten"
    assert all("<improved response" not in r["text"] for r in every), "the improved response, extracted"
    ranked = sorted(((r["metadata"]["output_quality_score"], r["id"]) for r in every), reverse=True)
    k = max(1, int(len(every) * 0.1 + 0.5))
    kept, top = rows(out, "guided_rewrite"), {i for _, i in ranked[:k]}
    # the rows' dedup runs after the selection (pipeline/build.py): a top row repeating a kept row's text goes there
    # (the format echo gives several pages the same rewrite), counted under `duplicates`
    text = {r["id"]: r["text"] for r in every}
    removed = top - set(kept["id"])
    assert set(kept["id"]) <= top and all(text[i] in {text[j] for j in kept["id"]} for i in removed)
    assert len(removed) == sum(summary["prompts"]["guided_rewrite"]["duplicates"].values())
    assert summary["prompts"]["guided_rewrite"]["below_top"] == len(every) - k


def test_beyondweb(tmp_path, demo_data):
    out, summary = run_recipe_fast(tmp_path, "beyondweb", 2, MIX_FLAGGED)
    check_common(out, summary, ["summarize", "continue"], mix=True)


def test_kimi_k2_rewrites_long_documents_in_chunks(tmp_path, demo_data, hub_server, hub_repo_id):  # noqa: F811
    """The real-model chunked run: long pages become one row each, rewritten in several requests. Pushed with the
    run (`--push-to`), the card on the Hub is the local card: both read the run's plan, where the recipe-level
    `context: chunked` overrides each prompt's `truncate`."""
    # a 1536-token budget: a ~2300-token page becomes a few chunks (768 would make a dozen, and take longer)
    gen = {**FAST_GENERATOR, "context_length": 1536}
    env = hub_server.client_env(hf_home=tmp_path / "hf-home")
    out, summary = run_recipe_fast(tmp_path, "kimi-k2", 2, {"generator": gen}, push_to=hub_repo_id, env=env)
    from huggingface_hub import hf_hub_download

    from finephrase.report.card import scrub

    local = scrub((out / "README.md").read_text())
    pushed = Path(hf_hub_download(hub_repo_id, "README.md", repo_type="dataset")).read_text()
    assert pushed == local and "chunked" in pushed
    check_common(out, summary, ["medium", "explanation"], mix=False)
    for config in ("medium", "explanation"):
        for row in rows(out, config):
            assert row["chunks"] > 1 and len(row["source_text"]) >= 6000
            assert json.loads(row["generation_params"])["context"] == "chunked"
            assert 0 < row["source_tokens_used"] <= row["source_tokens"] + row["chunks"] * 4
            assert row["completion_tokens"] <= 48 * row["chunks"]
            assert row["prompt_tokens"] > 700  # several requests, each with its context


def test_routing_needs_a_quality_score_that_keeps_low_documents(tmp_path, demo_data):
    base = ROOT / "pipelines" / "nemotron-cc.yaml"
    with pytest.raises(RecipeError, match="routing needs filters.quality"):
        resolve(load_recipe(write_recipe(tmp_path / "a.yaml", {"filters": {"quality": None}}, base=base)))
    with pytest.raises(RecipeError, match="drops them first"):
        resolve(load_recipe(write_recipe(tmp_path / "b.yaml", {"filters": {"quality": {"threshold": 6}}}, base=base)))
    with pytest.raises(RecipeError, match="context"):
        resolve(load_recipe(write_recipe(tmp_path / "c.yaml", {"context": "paragraphs"}, base=base)))
