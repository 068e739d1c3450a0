"""End to end on the real embedded generator (llama.cpp serving SmolLM2-135M-Instruct).

Runs `finephrase run` on the demo recipe (few documents, short generations), checks the rows'
schema and provenance, the stats, the dataset card, that `datasets.load_dataset` reads every
config, that bad input is skipped-and-counted or truncated, and that no server process is left.
"""

from __future__ import annotations

import gzip
import json
import os
import subprocess

import pytest
from datasets import load_dataset

from conftest import FAST_GENERATOR, run_cli
from finephrase.prompts import load_prompt
from finephrase.servers.embedded import DEFAULT_ALIAS

REQUIRED_COLUMNS = {"id", "text", "source_id", "source_text", "prompt", "prompt_version", "prompt_sha256", "model",
                    "generation_params", "finish_reason", "prompt_tokens", "completion_tokens", "truncated",
                    "language", "language_score", "quality_score"}


def llama_servers() -> list[str]:
    out = subprocess.run(["pgrep", "-af", "llama_cpp.server"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory, demo_data):
    from conftest import write_recipe

    tmp = tmp_path_factory.mktemp("e2e")
    recipe = write_recipe(tmp / "demo.yaml", {"generator": FAST_GENERATOR})
    before = llama_servers()
    proc = run_cli("run", str(recipe), "--limit", "5", "--output", str(tmp / "out"))
    return {"out": tmp / "out", "proc": proc, "servers_before": before}


def test_rows_schema_and_provenance(demo_run):
    out = demo_run["out"]
    summary = json.loads((out / ".finephrase" / "run.json").read_text())["summary"]
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
    summary = json.loads((out / ".finephrase" / "run.json").read_text())["summary"]
    assert summary["documents_read"] == 5
    names = [f["name"] for f in summary["filters"]]
    assert any("Language" in n for n in names) and any("quality" in n for n in names)
    assert "minhash" in summary["dedup"]
    assert "documents read" in proc.stdout and "rephrased [faq]" in proc.stdout and "wall time" in proc.stdout


def test_mix_config(demo_run):
    out = demo_run["out"]
    ds = load_dataset("parquet", data_dir=str(out / "data" / "mix"), split="train")
    kinds = set(ds["kind"])
    assert kinds == {"real", "synthetic"}
    synth = sum(t for t, k in zip(ds["tokens"], ds["kind"]) if k == "synthetic")
    real = sum(t for t, k in zip(ds["tokens"], ds["kind"]) if k == "real")
    assert synth > 0 and real > 0


def test_card_written_and_parsable(demo_run):
    from huggingface_hub import DatasetCard

    out = demo_run["out"]
    card = DatasetCard.load(out / "README.md")
    configs = {c["config_name"] for c in card.data.configs}
    assert configs == {"all", "faq", "table", "math", "mix"}
    assert str(out) not in card.content and "/tmp/" not in card.content
    assert load_prompt("finephrase/faq").sha256 in card.content


def test_no_server_left_behind(demo_run):
    assert llama_servers() == demo_run["servers_before"]


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
    summary = json.loads((tmp_path / "out" / ".finephrase" / "run.json").read_text())["summary"]
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

    before = llama_servers()
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
    assert llama_servers() == before
