"""End to end on the real embedded generator (llama.cpp serving SmolLM2-135M-Instruct).

Runs `finephrase run` on the demo recipe (few documents, short generations), checks the rows'
schema and provenance, the stats (documents read, kept and dropped by each filter and by the dedup,
the mix's achieved share), the dataset card, that `datasets.load_dataset` reads every config, that
bad input is skipped-and-counted or truncated, and that no process of the run is left.
"""

from __future__ import annotations

import gzip
import json
import os

import pytest
import yaml
from datasets import load_dataset

from conftest import FAST_GENERATOR, assert_no_survivors, child_processes, run_cli, run_marker, run_summary
from finephrase.prompts import load_prompt
from finephrase.inference.servers.embedded import DEFAULT_ALIAS

REQUIRED_COLUMNS = {"id", "text", "source_id", "source_text", "prompt", "prompt_version", "prompt_sha256", "model",
                    "generation_params", "finish_reason", "prompt_tokens", "completion_tokens", "truncated",
                    "language", "language_score", "quality_score"}


N_ORIGINALS = 5
# two documents the filters must drop: too short for min_chars, and not English
TOO_SHORT = {"id": "too-short", "text": "Too short to keep."}
NOT_ENGLISH = {"id": "not-english", "text": (
    "Die Stadtbibliothek öffnet am Montag wieder ihre Türen. Nach einer umfangreichen Renovierung stehen den "
    "Besucherinnen und Besuchern neue Leseräume, ein erweitertes Angebot an Zeitschriften und mehrere "
    "Arbeitsplätze mit Internetzugang zur Verfügung. Die Öffnungszeiten bleiben unverändert.")}


def _read_jsonl_gz(folder) -> list[dict]:
    docs = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".jsonl.gz"):
            with gzip.open(os.path.join(folder, name), "rt") as f:
                docs += [json.loads(line) for line in f]
    return docs


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, demo_data):
    """The demo recipe on the first 5 pages of the demo corpus, an exact copy of each (new ids: every copy
    that passes the filters must be removed by the MinHash dedup), and two documents the filters drop."""
    from conftest import write_recipe

    tmp = tmp_path_factory.mktemp("e2e")
    from conftest import first_demo_docs

    originals = first_demo_docs(demo_data, N_ORIGINALS)
    copies = [{**d, "id": f"{d['id']}-copy"} for d in originals]
    src = tmp / "src"
    src.mkdir()
    with gzip.open(src / "docs.jsonl.gz", "wt") as f:
        for d in originals + [TOO_SHORT, NOT_ENGLISH] + copies:
            f.write(json.dumps(d) + "\n")
    recipe = write_recipe(tmp / "demo.yaml", {"generator": FAST_GENERATOR, "source": {"path": str(src)}})
    marker, env = run_marker()
    proc = run_cli("run", str(recipe), "--output", str(tmp / "out"), env=env)
    return {"out": tmp / "out", "proc": proc, "marker": marker, "originals": originals, "recipe": recipe}


def test_rows_schema_and_provenance(demo_run):
    out = demo_run["out"]
    summary = run_summary(out / ".finephrase")
    for ref in ("finephrase/faq", "finephrase/table", "finephrase/math"):
        prompt = load_prompt(ref)
        ds = load_dataset("parquet", data_dir=str(out / "data" / prompt.name), split="train")
        assert len(ds) >= 1
        assert REQUIRED_COLUMNS <= set(ds.column_names)
        for row in ds:
            assert row["text"].strip()
            assert row["source_text"].strip()
            assert row["prompt"] == prompt.name
            assert row["prompt_sha256"] == prompt.sha256
            assert row["prompt_version"] == prompt.version
            assert row["model"] == DEFAULT_ALIAS
            assert json.loads(row["generation_params"])["max_new_tokens"] == 48
            assert row["finish_reason"] in ("stop", "length")
            assert row["prompt_tokens"] > 0 and 0 < row["completion_tokens"] <= 48
            assert row["language"] == "en" and row["language_score"] > 0.65
            assert row["quality_score"] >= 0.5
            assert row["id"] == f"{row['source_id']}/{prompt.name}"
        assert len(set(ds["id"])) == len(ds)
        p = summary["prompts"][prompt.name]
        assert p["rephrased"] + p["failed"] == summary["rephrase_documents"]
        assert p["completion_tokens"] > 0


def test_stats_and_summary_table(demo_run):
    out, proc = demo_run["out"], demo_run["proc"]
    work = out / ".finephrase"
    summary = run_summary(work)
    assert summary["documents_read"] == 2 * N_ORIGINALS + 2
    names = [f["name"] for f in summary["filters"]]
    assert len(names) == 3 and "min chars" in names[0] and "Language" in names[1] and "quality" in names[2], names
    # every filter: in = kept + dropped; each one reads what the previous one kept
    n_in = summary["documents_read"]
    for f in summary["filters"]:
        assert f["in"] == n_in and f["kept"] + f["dropped"] == f["in"], summary["filters"]
        n_in = f["kept"]
    min_chars, language, _ = summary["filters"]
    assert min_chars["dropped"] >= 1 and language["dropped"] >= 1, summary["filters"]
    filtered = _read_jsonl_gz(work / "filtered")
    assert len(filtered) == n_in
    assert not {TOO_SHORT["id"], NOT_ENGLISH["id"]} & {d["id"] for d in filtered}
    # what the filters keep, they keep for a page and for its exact copy alike
    kept_ids = {d["id"] for d in filtered}
    originals = {d["id"] for d in demo_run["originals"]}
    assert kept_ids == (kept_ids & originals) | {f"{i}-copy" for i in kept_ids & originals}
    n_unique = len(kept_ids & originals)
    assert n_unique >= 2, "too few pages pass the demo filters for the checks below"
    # MinHash dedup: reads what the filters kept, removes exactly one page of each pair
    dedup = summary["dedup"]["minhash"]
    assert dedup == {"in": 2 * n_unique, "kept": n_unique, "dropped": n_unique}
    deduped = [d["id"] for d in _read_jsonl_gz(work / "deduped")]
    assert len(deduped) == n_unique and {i.removesuffix("-copy") for i in deduped} == kept_ids & originals
    # the rephrase stage got every deduplicated page
    assert summary["rephrase_documents"] == n_unique
    for line in ("documents read", "kept by", "kept by minhash dedup", "rephrased [faq]", "mix", "wall time"):
        assert line in proc.stdout, line


def test_mix_config(demo_run):
    out = demo_run["out"]
    summary = run_summary(out / ".finephrase")
    share = yaml.safe_load(demo_run["recipe"].read_text())["mix"]["synthetic"]
    ds = load_dataset("parquet", data_dir=str(out / "data" / "mix"), split="train")
    assert set(ds["kind"]) == {"real", "synthetic"}
    synth = [t for t, k in zip(ds["tokens"], ds["kind"]) if k == "synthetic"]
    real = [t for t, k in zip(ds["tokens"], ds["kind"]) if k == "real"]
    # the mix's stats are the mix's rows
    m = summary["mix"]
    assert (m["synthetic_documents"], m["synthetic_tokens"]) == (len(synth), sum(synth))
    assert (m["real_documents"], m["real_tokens"]) == (len(real), sum(real))
    # every generated row is in the mix (the demo mixes flagged rows in too: mix.include_flagged), its tokens those
    # of its text by the generator's tokenizer, which counts the real pages too (the card says which)
    from finephrase.inference.servers.embedded import default_gguf_path
    from finephrase.inference.client.tokens import TokenCounter

    rows = {p: load_dataset("parquet", data_dir=str(out / "data" / p), split="train") for p in summary["prompts"]}
    all_rows = [r for ds_p in rows.values() for r in ds_p]
    assert len(synth) == len(all_rows) == sum(p["rows"] for p in summary["prompts"].values())
    assert m["synthetic_failed_checks"] == 0
    counter = TokenCounter(default_gguf_path())
    assert sum(synth) == sum(counter.count(r["text"]) for r in all_rows)
    assert "counted by the same tokenizer: the generator's, `SmolLM2-135M-Instruct" in (out / "README.md").read_text()
    # real pages are added until the real share of tokens reaches 1 - synthetic: the achieved synthetic
    # share is the recipe's, up to the last real page added (or the real pages ran out, and all are used)
    target_real = sum(synth) * (1 - share) / share
    real_ids = [i for i, k in zip(ds["id"], ds["kind"]) if k == "real"]
    deduped = {d["id"] for d in _read_jsonl_gz(out / ".finephrase" / "deduped")}
    assert len(set(real_ids)) == len(real_ids) and set(real_ids) <= deduped
    if m.get("real_tokens_short"):
        assert len(real) == summary["dedup"]["minhash"]["kept"], "real pages left unused while short of the target"
        assert abs(m["real_tokens_short"] - (target_real - sum(real))) <= 1
    else:
        assert sum(real) >= target_real > sum(real) - max(real)
        achieved = sum(synth) / (sum(synth) + sum(real))
        assert abs(achieved - share) <= max(real) / (sum(synth) + sum(real)), (achieved, share)


def test_mix_reaches_the_recipe_share():
    """The Mix step on many small documents: the achieved synthetic share of tokens is the requested one,
    up to one real document; when real documents run out, all are used and the shortfall is counted."""
    import random

    from datatrove.data import Document

    from finephrase.inference.client.tokens import TokenCounter
    from finephrase.pipeline.mix import Mix

    class Docs:
        def __init__(self, docs):
            self.docs = docs

        def run(self, data=None, rank=0, world_size=1):
            yield from self.docs

    rng = random.Random(0)
    synthetic = [Document(text="synthetic " * rng.randint(20, 400), id=f"s{i}",
                          metadata={"source_id": f"r{i}", "prompt": "faq"}) for i in range(60)]
    real = [Document(text="word " * rng.randint(5, 150), id=f"r{i}") for i in range(400)]
    for share in (0.5, 0.7, 0.9):
        step = Mix([Docs(synthetic)], Docs(real), synthetic=share)
        out = list(step.run())
        synth = sum(d.metadata["tokens"] for d in out if d.metadata["kind"] == "synthetic")
        real_tokens = [d.metadata["tokens"] for d in out if d.metadata["kind"] == "real"]
        assert synth == sum(TokenCounter(None).count(d.text) for d in synthetic)  # the real text's counter
        target = synth * (1 - share) / share
        assert sum(real_tokens) >= target > sum(real_tokens) - real_tokens[-1]
        achieved = synth / (synth + sum(real_tokens))
        assert abs(achieved - share) <= max(real_tokens) / (synth + sum(real_tokens)) < 0.02, (share, achieved)
        stats = step.stats.stats  # {name: MetricStats} (datatrove's Stats has no __contains__)
        assert stats["real_tokens"].total == sum(real_tokens) and "real_tokens_short" not in stats
    # not enough real text for 10 % synthetic: every real document is used, the shortfall is counted
    step = Mix([Docs(synthetic)], Docs(real[:20]), synthetic=0.1)
    out = list(step.run())
    real_out = [d for d in out if d.metadata["kind"] == "real"]
    assert len(real_out) == 20
    synth = sum(TokenCounter(None).count(d.text) for d in synthetic)
    short = synth * (1 - 0.1) / 0.1 - sum(d.metadata["tokens"] for d in real_out)
    assert abs(step.stats.stats["real_tokens_short"].total - short) <= 1


def test_card_written_and_parsable(demo_run):
    from huggingface_hub import DatasetCard

    out = demo_run["out"]
    card = DatasetCard.load(out / "README.md")
    configs = {c["config_name"] for c in card.data.configs}
    assert configs == {"all", "faq", "table", "math", "mix"}
    assert str(out) not in card.content and "/tmp/" not in card.content
    assert load_prompt("finephrase/faq").sha256 in card.content


def test_no_server_left_behind(demo_run):
    """Nothing the run started (llama.cpp servers, datatrove's managers) is left once it has ended."""
    assert_no_survivors(demo_run["marker"], timeout=5)


def test_bad_input_is_counted_or_truncated(tmp_path, demo_data, make_recipe):
    """Empty docs, invalid UTF-8, a malformed line, a 10 MB document, a document beyond the context."""
    real = []
    with gzip.open(demo_data / "docs.jsonl.gz", "rt") as f:
        for line in f:
            real.append(json.loads(line))
            if len(real) == 3:
                break
    src = tmp_path / "src"
    src.mkdir()
    big = (real[0]["text"] + "\n") * (10_000_000 // len(real[0]["text"]) + 1)
    with open(src / "docs.jsonl", "wb") as f:
        for d in real:
            f.write(json.dumps(d).encode() + b"\n")
        f.write(b'{"id": "empty", "text": ""}\n')
        f.write(b'{"id": "latin1", "text": "caf\xe9 ' + json.dumps(real[1]["text"][:2000])[1:-1].encode() + b'"}\n')
        f.write(b'{"id": "broken", "text": "no closing quote}\n')
        f.write(json.dumps({"id": "ten-mb", "text": big}).encode() + b"\n")
    assert (src / "docs.jsonl").stat().st_size > 10_000_000
    recipe = make_recipe({
        "source": {"path": str(src)},
        "filters": {"quality": None, "language": None, "min_chars": 1},
        "dedup": None,
        "prompts": ["finephrase/faq"],
        "mix": None,
        "generator": FAST_GENERATOR,
    })
    run_cli("run", str(recipe), "--output", str(tmp_path / "out"))
    summary = run_summary(tmp_path / "out" / ".finephrase")
    assert summary["skipped_input"] == {"malformed_lines": 1, "empty_documents": 1, "invalid_utf8_lines": 1}
    assert summary["documents_read"] == 5
    ds = load_dataset("parquet", data_dir=str(tmp_path / "out" / "data" / "faq"), split="train")
    by_source = {r["source_id"]: r for r in ds}
    assert set(by_source) == {real[0]["id"], real[1]["id"], real[2]["id"], "latin1", "ten-mb"}
    assert "\ufffd" in by_source["latin1"]["source_text"]
    huge = by_source["ten-mb"]
    assert huge["truncated"] is True
    assert huge["source_tokens"] > 1_000_000 and huge["source_tokens_used"] < 768
    assert summary["prompts"]["faq"]["truncated_inputs"] >= 1


def test_rephrase_step_in_a_plain_datatrove_pipeline(tmp_path, demo_data):
    """A datatrove user drops `Rephrase` into their own pipeline; with `embedded=` it starts and stops
    its own llama.cpp server for the task."""
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader

    from finephrase import Rephrase

    assert not child_processes("llama_cpp.server")
    LocalPipelineExecutor([
        JsonlReader(str(demo_data), glob_pattern="docs.jsonl.gz", limit=2),
        Rephrase(["finephrase/faq"], output_folder=str(tmp_path / "rephrased"), checkpoints_dir=str(tmp_path / "ckpt"),
                 generation_params={"max_new_tokens": 16, "temperature": 0.0}, context_length=768,
                 embedded={"replicas": 1, "threads": 2, "n_ctx": 1024}),
    ], tasks=1, logging_dir=str(tmp_path / "logs")).run()
    rows = [json.loads(line) for f in sorted((tmp_path / "rephrased").glob("*.jsonl")) for line in f.open()]
    assert len(rows) == 2
    for row in rows:
        entry = row["metadata"]["rollout_results"][0]["faq"]
        assert entry["text"].strip() and entry["model"] == DEFAULT_ALIAS and 0 < entry["completion_tokens"] <= 16
    # the step stopped the server it started (this test's own child processes, not the machine's)
    assert not child_processes("llama_cpp.server")
