"""Data quality the way the papers do it: output dedup per config and n-gram decontamination (issue 14).

The stages after the rephrase stage run here for real (datatrove's executor, two tasks) on planted rephrased
documents: no model is needed. Planted in the generations: exact and near duplicates inside a config and across
configs, and passages of a benchmark (12-gram overlap, datatrove's default); the counts are checked in datatrove's stats, the run
report and the dataset card. The source side (``check_sources``) runs the index and filter stages on planted
source documents.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import first_demo_docs, run_summary
from format_echo_server import StubOpenAI
from hub_server import hub_repo_id, hub_server  # noqa: F401  (pytest fixtures)

from finephrase import stats as names
from finephrase.errors import RecipeError
from finephrase.inference.client.backends import GeneratorRuntime
from finephrase.pipeline.build import RunPaths, build_stages, run_local
from finephrase.pipeline.decont.decontaminate import Decontaminate
from finephrase.pipeline.decont.index import EvalSetIndex, eval_rows
from finephrase.plan import recipe_prompts, resolve
from finephrase.recipe import load_recipe
from finephrase.report import build_report, load_stage_stats, summary_rows
from finephrase.report.card import render_card
from finephrase.report.plots import funnel_steps
from finephrase.report.stats import total

PROMPT = """\
name: {name}
set: local
version: "1.0"
source: {{title: test prompt}}
description: Rewrites the text (test prompt).
template: |-
  Rewrite the text below.

  Document:
  {{{{ document }}}}
output_rules: {{drop_refusals: false}}
"""
# a benchmark: questions long enough to have 12-grams (datatrove's default n)
BENCH = [
    {"question": "A train leaves the station at nine in the morning travelling at sixty miles per hour towards "
                 "a city that is one hundred and eighty miles away; at what time does it arrive?",
     "answer": "It arrives at twelve noon."},
    {"question": "Which planet of the solar system has the largest number of confirmed moons according to the "
                 "latest survey published by the international astronomical union?",
     "answer": "Saturn."},
]
PLANTED = BENCH[0]["question"]
NEAR_MISS = " ".join(BENCH[1]["question"].split()[:11])  # 11 words of a question: no 12-gram in common


def _shingles(text: str) -> set:
    words = text.lower().split()
    return {tuple(words[i:i + 5]) for i in range(len(words) - 4)}


def texts(demo_data, n: int) -> list[str]:
    """``n`` real texts of about 120 words (the demo corpus), no two of them alike (5-word shingles)."""
    out: list[str] = []
    for doc in first_demo_docs(demo_data, 6 * n):
        words = doc["text"].split()
        text = " ".join(words[20:140])
        s = _shingles(text)
        if len(words) >= 160 and all(len(s & _shingles(t)) < 0.2 * len(s) for t in out):
            out.append(text)
    assert len(out) >= n
    return out[:n]


def near(text: str) -> str:
    """A near duplicate: one word changed, the spacing of the end changed."""
    words = text.split()
    words[60] = "zebra"
    return " ".join(words[:-5]) + "  " + " ".join(words[-5:]) + "\n"


def planted_generations(demo_data) -> tuple[list[dict], dict]:
    """Rephrased documents (as the rephrase stage writes them) and what the output stages must find."""
    t = texts(demo_data, 12)
    alpha = [t[0], t[1], t[2], t[3], t[1], near(t[2]), t[4] + " " + PLANTED, t[5] + " " + NEAR_MISS]
    beta = [t[1], t[2], t[6], t[7], t[8], t[7], t[9] + " " + BENCH[1]["question"], t[10]]
    docs = []
    for i, (a, b) in enumerate(zip(alpha, beta)):
        results = {name: {"text": text, "finish_reason": "stop", "prompt_tokens": 100 + i, "completion_tokens": 10 + i}
                   for name, text in (("alpha", a), ("beta", b))}
        docs.append({"id": f"d{i}", "text": f"source document {i} " + t[11], "metadata": {"rollout_results": [results]}})
    expected = {"alpha": {"duplicates": {"exact": 1, "minhash": 1}, "contaminated": {"bench": 1}},
                "beta": {"duplicates": {"exact": 1}, "contaminated": {"bench": 1}}}
    return docs, expected


def write_inputs(tmp_path: Path, docs: list[dict]) -> None:
    (tmp_path / "src").mkdir(exist_ok=True)
    with open(tmp_path / "src" / "docs.jsonl", "w") as f:
        f.writelines(json.dumps({"id": d["id"], "text": d["text"]}) + "\n" for d in docs)
    for name in ("alpha", "beta"):
        (tmp_path / f"{name}.yaml").write_text(PROMPT.format(name=name))
    with open(tmp_path / "bench.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in BENCH)


def recipe_for(tmp_path: Path, make_recipe, decont: dict | None = None, output_dedup: dict | None = None,
               tasks: int = 2):
    decont = {"eval_sets": [{"path": str(tmp_path / "bench.jsonl"), "dataset": "org/bench",
                             "text_key": ["question", "answer"]}], **(decont or {})}
    return load_recipe(make_recipe({
        "source": {"path": str(tmp_path / "src")},
        "filters": {"quality": None, "language": None, "min_chars": 1},
        "dedup": None, "mix": None,
        "prompts": [str(tmp_path / "alpha.yaml"), str(tmp_path / "beta.yaml")],
        "generator": {"server": "openai", "endpoints": ["http://127.0.0.1:9"], "model": "echo", "replicas": None,
                      "threads": 1, "n_ctx": 2048},
        "output_checks": "drop",
        "output_dedup": output_dedup if output_dedup is not None else {"exact": True, "minhash": {}},
        "decontamination": decont,
        "run": {"tasks": tasks},
    }))


def run_after_rephrase(recipe, out: Path, docs: list[dict], tasks: int = 2) -> list:
    """The index stage, then every stage after the rephrase stage, on planted rephrased documents."""
    stages = build_stages(resolve(recipe), str(out), GeneratorRuntime(model="echo"), tasks=tasks)
    rephrased = Path(RunPaths(str(out)).w("rephrased"))
    rephrased.mkdir(parents=True)
    for rank in range(tasks):  # a file per rephrase task, duplicates spread over them
        with open(rephrased / f"{rank:05d}.jsonl", "w") as f:
            f.writelines(json.dumps(d) + "\n" for d in docs[rank::tasks])
    names_ = [s.name for s in stages]
    after = [s for s in stages if names_.index(s.name) > names_.index(names.STAGE_REPHRASE)]
    for stage in [stages[0], *after] if stages[0].name == names.STAGE_DECONT_INDEX else after:
        run_local([stage], str(out))
    return stages


def rows_of(out: Path, config: str) -> list[dict]:
    return [r for f in sorted((out / "data" / config).glob("*.parquet")) for r in pq.read_table(f).to_pylist()]


@pytest.fixture
def planted(tmp_path, demo_data):
    docs, expected = planted_generations(demo_data)
    write_inputs(tmp_path, docs)
    return docs, expected


def test_output_dedup_and_decontamination_per_config(tmp_path, make_recipe, planted):
    docs, expected = planted
    recipe = recipe_for(tmp_path, make_recipe)
    out = tmp_path / "out"
    stages = run_after_rephrase(recipe, out, docs)
    assert [s.name for s in stages] == [
        "decont-index", "filter", "rephrase", "rows", "output-exact-signatures", "output-exact-find",
        "output-exact-filter", "output-minhash-signatures", "output-minhash-buckets", "output-minhash-cluster",
        "output-minhash-filter", "decontaminate"]

    alpha, beta = rows_of(out, "alpha"), rows_of(out, "beta")
    assert len(alpha) == 8 - 3 and len(beta) == 8 - 2
    assert not any(PLANTED in r["text"] for r in alpha), "the planted benchmark passage is caught"
    assert any(NEAR_MISS in r["text"] for r in alpha), "11 words in common are not a 12-gram"
    assert len({r["text"] for r in alpha}) == len(alpha) and len({r["text"] for r in beta}) == len(beta)
    assert {r["text"] for r in alpha} & {r["text"] for r in beta}, "the same text in two configs is kept in both"
    t2 = docs[2]["metadata"]["rollout_results"][0]["alpha"]["text"]
    assert sum(r["text"].split()[:50] == t2.split()[:50] for r in alpha) == 1, "a near duplicate: one of the two"

    # stats -> report -> card
    stats = {k: total(v) for step in load_stage_stats(str(out), names.STAGE_OUTPUT_EXACT_FILTER)
             for k, v in step["stats"].items()}
    assert stats["duplicates/alpha/exact"] == 1 and stats["duplicates/beta/exact"] == 1
    prompts = recipe_prompts(recipe)
    report = build_report(str(out), [s.name for s in stages], prompts)
    for name, want in expected.items():
        p = report.counts.prompts[name]
        assert p.duplicates == want["duplicates"] and p.contaminated == want["contaminated"]
        assert p.written == len(rows_of(out, name)) == report.config(name).rows
        kept = rows_of(out, name)
        assert report.config(name).completion_tokens == sum(r["completion_tokens"] for r in kept)
    d = report.counts.decontamination
    assert d.passages == {"bench": 2} and d.ngrams["bench"] > 20 and d.sources_dropped == {}
    assert report.counts.decontamination.ngrams == d.ngrams

    table = dict(summary_rows(report))
    assert table["  duplicates [alpha]"] == "exact 1, minhash 1" and table["  contaminated [beta]"] == "bench 1"
    funnel = {f["step"]: f for f in funnel_steps(report.counts)}
    assert funnel["alpha: output dedup"]["dropped"] == 2 and funnel["alpha: decontamination"]["kept"] == 5

    card = str(render_card(report, recipe, prompts))
    assert "| output dedup `alpha` | 8 | 6 | exact duplicates 1, near duplicates (MinHash) 1 |" in card
    assert "| decontamination `alpha` (drop) | 6 | 5 | bench 1 |" in card
    assert "12-grams" in card and "`bench`" in card and "[`org/bench`](https://huggingface.co/datasets/org/bench)" \
        in card and "question, answer" in card


def test_flagged_contamination_and_exact_only(tmp_path, make_recipe, planted):
    docs, _ = planted
    recipe = recipe_for(tmp_path, make_recipe, decont={"action": "flag"}, output_dedup={"exact": True}, tasks=1)
    out = tmp_path / "out"
    stages = run_after_rephrase(recipe, out, docs, tasks=1)
    assert "output-minhash-filter" not in [s.name for s in stages]
    alpha = rows_of(out, "alpha")
    assert len(alpha) == 7, "exact only: the near duplicate stays"
    flagged = [r for r in alpha if r["checks"]]
    assert [r["checks"] for r in flagged] == ["contaminated:bench"] and PLANTED in flagged[0]["text"]
    report = build_report(str(out), [s.name for s in stages], recipe_prompts(recipe))
    p = report.counts.prompts["alpha"]
    assert p.contaminated == {} and p.contaminated_flagged == {"bench": 1} and p.written == 7
    card = str(render_card(report, recipe, recipe_prompts(recipe)))
    assert "flagged `contaminated:bench` in the `checks` column" in card


def test_sources_are_checked_when_asked(tmp_path, make_recipe, planted):
    docs, _ = planted
    docs[3]["text"] = "An exam-like page. " + PLANTED.upper() + " The end."  # normalised: case does not matter
    write_inputs(tmp_path, docs)
    recipe = recipe_for(tmp_path, make_recipe, decont={"check_sources": True}, tasks=1)
    out = tmp_path / "out"
    stages = build_stages(resolve(recipe), str(out), GeneratorRuntime(model="echo"), tasks=1)
    run_local(stages[:2], str(out))  # the index, the filter stage
    kept = [json.loads(line)["id"] for f in Path(RunPaths(str(out)).w("filtered")).glob("*.jsonl.gz")
            for line in __import__("gzip").open(f, "rt")]
    assert kept == [d["id"] for d in docs if d["id"] != "d3"]
    report = build_report(str(out), [s.name for s in stages[:2]], recipe_prompts(recipe))
    assert report.counts.decontamination.sources_dropped == {"bench": 1}
    assert [f.dropped for f in report.counts.filters] == [1]
    card = str(render_card(report, recipe, recipe_prompts(recipe)))
    assert "source documents dropped" in card


def test_eval_sets_from_parquet_folders_and_flag_step(tmp_path):
    import pyarrow as pa

    folder = tmp_path / "bench"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(BENCH), folder / "data" / "test-00000.parquet")
    pq.write_table(pa.Table.from_pylist([{"question": "unrelated train question", "answer": "x"}]),
                   folder / "data" / "train-00000.parquet")
    eval_set = {"name": "bench", "path": str(folder), "split": "test", "text_key": ["question"]}
    assert [r["question"] for r in eval_rows(eval_set)] == [b["question"] for b in BENCH], "the split's files"
    index = tmp_path / "index"
    EvalSetIndex(str(index), [eval_set]).run()
    assert (index / "bench.index.hashes").stat().st_size > 0
    from datatrove.data import Document

    step = Decontaminate(str(index), action="flag")
    docs = [Document(text="Intro. " + PLANTED, id="a", metadata={"config": "x", "checks": "failed:format_qa"}),
            Document(text="clean text " * 20, id="b", metadata={"config": "x"})]
    kept = list(step.run(iter(docs)))
    assert [d.metadata.get("checks") for d in kept] == ["failed:format_qa,contaminated:bench", None]
    assert "contaminated_task" not in kept[0].metadata


def test_hub_eval_sets_go_through_datasets(tmp_path, hub_server, hub_repo_id):  # noqa: F811
    """An eval set named by its Hub dataset id is loaded by ``datasets.load_dataset`` from the (offline, test)
    Hub, by config and split; a dataset the Hub does not have says how to use a local copy instead."""
    import pyarrow as pa
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(hub_repo_id, repo_type="dataset")
    card = "---\nconfigs:\n"
    for config, split, rows in (("main", "test", BENCH), ("main", "train", [{"question": "main train", "answer": "-"}]),
                                ("socratic", "test", [{"question": "socratic test", "answer": "-"}])):
        local = tmp_path / f"{config}-{split}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), local)
        api.upload_file(path_or_fileobj=str(local), path_in_repo=f"{config}/{split}-00000-of-00001.parquet",
                        repo_id=hub_repo_id, repo_type="dataset")
    for config in ("main", "socratic"):
        card += f"- config_name: {config}\n  data_files:\n"
        card += "".join(f"  - split: {split}\n    path: {config}/{split}-*.parquet\n"
                        for split in (("test", "train") if config == "main" else ("test",)))
    api.upload_file(path_or_fileobj=(card + "---\n").encode(), path_in_repo="README.md", repo_id=hub_repo_id,
                    repo_type="dataset")

    rows = list(eval_rows({"name": "gsm8k", "dataset": hub_repo_id, "config": "main", "split": "test"}))
    assert rows == BENCH
    with pytest.raises(RuntimeError, match="set the eval set's `path` to DIR"):
        list(eval_rows({"name": "x", "dataset": f"{hub_repo_id}-missing", "split": "test"}))


def test_a_local_copy_of_a_hub_dataset_is_read_by_config_and_split(tmp_path):
    import pyarrow as pa

    for config, split, question in (("main", "test", "main test"), ("main", "train", "main train"),
                                    ("socratic", "test", "socratic test")):
        (tmp_path / config).mkdir(exist_ok=True)
        pq.write_table(pa.Table.from_pylist([{"question": question}]), tmp_path / config / f"{split}-00000.parquet")
    rows = eval_rows({"name": "g", "path": str(tmp_path), "config": "main", "split": "test"})
    assert [r["question"] for r in rows] == ["main test"]


@pytest.mark.parametrize("decont, key", [
    ({"eval_sets": []}, "decontamination.eval_sets"),
    ({"eval_sets": [{"split": "test"}]}, "decontamination.eval_sets[0]"),
    ({"eval_sets": [{"path": "MISSING.jsonl"}]}, "decontamination.eval_sets[0].path"),
    ({"eval_sets": [{"dataset": "a/x"}, {"dataset": "b/x"}]}, "decontamination.eval_sets"),
    ({"eval_sets": [{"dataset": "a/x"}], "action": "delete"}, "decontamination.action"),
])
def test_recipe_errors_name_the_key(make_recipe, decont, key):
    with pytest.raises(RecipeError, match=key.replace("[", r"\[").replace("]", r"\]")):
        resolve(load_recipe(make_recipe({"decontamination": decont})))


def test_eval_set_names_and_output_dedup_default(make_recipe):
    recipe = load_recipe(make_recipe({"decontamination": {"eval_sets": [
        {"dataset": "openai/gsm8k", "config": "main"}, {"path": "data/demo/docs.jsonl.gz", "name": "demo"}]}}))
    assert [e.name for e in recipe.decontamination.eval_sets] == ["gsm8k", "demo"]
    from datatrove.pipeline.decont import NGramsDecontConfig

    assert recipe.decontamination.n_grams == NGramsDecontConfig().n_grams == 12
    assert recipe.decontamination.action == "drop"
    assert not recipe.output_dedup.enabled


@pytest.mark.parametrize("eval_set, n, message", [
    ({"text_key": "problem"}, 12, r"^eval set 'bench': no row has text_key problem \(its fields: answer, question\); "
                                  r"fix: set the eval set's text_key$"),
    ({"text_key": "answer"}, 12, r"^eval set 'bench': only 0 of 2 passages of text_key answer have 12 words or more "),
    ({"text_key": ["question"]}, 40, r"only 0 of 2 passages of text_key question have 40 words or more"),
])
def test_an_index_that_checks_nothing_is_an_error(tmp_path, eval_set, n, message):
    from datatrove.pipeline.decont import NGramsDecontConfig

    from finephrase.errors import DecontaminationError

    with open(tmp_path / "bench.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in BENCH)
    step = EvalSetIndex(str(tmp_path / "index"), [{"name": "bench", "path": str(tmp_path / "bench.jsonl"), **eval_set}],
                        NGramsDecontConfig(n_grams=n))
    with pytest.raises(DecontaminationError, match=message) as e:
        step.run()
    assert "\n" not in str(e.value)
    assert not (tmp_path / "index" / "bench.index.hashes").exists()


def test_a_run_with_a_wrong_text_key_stops_with_one_line(tmp_path, make_recipe, planted):
    from conftest import run_cli

    recipe = recipe_for(tmp_path, make_recipe, {"eval_sets": [{"path": str(tmp_path / "bench.jsonl"),
                                                               "text_key": "prompt"}]})
    proc = run_cli("run", recipe.path, "--output", str(tmp_path / "out"), check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stdout + proc.stderr
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "no row has text_key prompt" in line]
    assert lines and "eval set 'bench'" in lines[-1] and "fix: set the eval set's text_key" in lines[-1], \
        proc.stderr[-2000:]
    assert not (tmp_path / "out" / "data").exists()


# ------------------------------------------------------------------ end to end: `finephrase run`, an echo server
class EchoOpenAI(StubOpenAI):
    """An OpenAI-compatible server whose answer is the request's document, verbatim: planted sources become planted
    generations."""

    def __init__(self):
        super().__init__(_echo_document, "echo")


def _echo_document(user: str) -> tuple[str, str]:
    if "Document:\n" in user:
        return user.split("Document:\n", 1)[1], "stop"
    return "OK", "length"


def test_finephrase_run_dedups_and_decontaminates_its_outputs(tmp_path, demo_data, make_recipe):
    from conftest import run_cli

    server = EchoOpenAI()
    t = texts(demo_data, 6)
    sources = [t[0], t[1], t[2], t[3], t[1], near(t[2]), t[4] + " " + PLANTED, t[5]]
    (tmp_path / "src").mkdir()
    with open(tmp_path / "src" / "docs.jsonl", "w") as f:
        f.writelines(json.dumps({"id": f"s{i}", "text": text}) + "\n" for i, text in enumerate(sources))
    (tmp_path / "alpha.yaml").write_text(PROMPT.format(name="alpha"))
    with open(tmp_path / "bench.jsonl", "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in BENCH)
    recipe = make_recipe({
        "source": {"path": str(tmp_path / "src")},
        "filters": {"quality": None, "language": None, "min_chars": 1},
        "dedup": None, "mix": None,
        "prompts": [str(tmp_path / "alpha.yaml")],
        "generator": {"server": "openai", "endpoints": [server.url], "model": "echo", "replicas": None,
                      "threads": 1, "n_ctx": 2048, "context_length": 2048, "max_retries": 0,
                      "params": {"max_new_tokens": 512, "temperature": 0.0, "top_p": None, "seed": 0}},
        "output_checks": "drop",
        "output_dedup": {"exact": True, "minhash": {}},
        "decontamination": {"eval_sets": [{"path": str(tmp_path / "bench.jsonl"), "text_key": "question"}]},
    })
    try:
        run_cli("run", str(recipe), "--output", str(tmp_path / "out"))
    finally:
        server.httpd.shutdown()
    out = tmp_path / "out"
    kept = {r["source_id"] for r in rows_of(out, "alpha")}
    # one row of each duplicate pair stays (which one follows the order the rows were written in: the order the
    # generations completed in), the contaminated one goes
    assert len(kept) == 5 and {"s0", "s3", "s7"} <= kept and "s6" not in kept, kept
    assert len(kept & {"s1", "s4"}) == 1 and len(kept & {"s2", "s5"}) == 1, kept
    summary = run_summary(out / ".finephrase")
    p = summary["prompts"]["alpha"]
    assert p["rows"] == 8 and p["duplicates"] == {"exact": 1, "minhash": 1} and p["contaminated"] == {"bench": 1}
    card = (out / "README.md").read_text()
    assert "| decontamination `alpha` (drop) | 6 | 5 | bench 1 |" in card and "| `bench` | local file `bench.jsonl`" \
        in card


def test_rows_all_removed_after_the_output_rules_is_an_empty_output():
    from finephrase.report import (
        PromptCount,
        RunCounts,
        RunReport,
        empty_output_problem,
    )

    report = RunReport(counts=RunCounts(documents_read=3, rephrase_documents=3, prompts={
        "faq": PromptCount(rephrased=3, rows=3, duplicates={"exact": 2}, contaminated={"bench": 1})}))
    assert empty_output_problem(report, "/nonexistent") == (
        "prompt faq: the output dedup and decontamination removed all 3 rows (exact duplicates 2, contaminated by "
        "bench 1); check the generations (.finephrase/rows/) and the eval sets")
