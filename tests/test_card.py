"""The dataset card: metadata (license, configs matching the files written, sizes, tags), the body (loading,
pipeline stats, generator, prompts verbatim, token counts, limitations, recipe, citations), scrubbing, and
validation by huggingface_hub and the test Hub's /api/validate-yaml.

``make_output`` builds a small output folder without running the model (parquet rows with ROW_SCHEMA, the
demo recipe, a ``.finephrase/report.json`` as a run saves it); ``test_hub_push.py`` uses it too.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hub_server import hub_repo_id, hub_server  # noqa: F401  (pytest fixtures)

from conftest import ROOT, write_recipe
from finephrase.plan import Plan, recipe_prompts, save_plan
from finephrase.recipe import load_recipe

DEMO_PROMPTS = ("finephrase/faq", "finephrase/table", "finephrase/math")
MIX_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("kind", pa.string()), ("source_id", pa.string()),
                        ("prompt", pa.string()), ("tokens", pa.int64())])
MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


def make_output(folder: Path, prompts=DEMO_PROMPTS, files_per_config: int = 1, rows_per_file: int = 3,
                mix: bool = True, tag: str = "run1", recipe_overrides: dict | None = None) -> Path:
    """A finished-looking output folder: data/<config>/000_0000N.parquet, data/mix, recipe.yaml, .finephrase/."""
    from finephrase.prompts import load_prompt
    from finephrase.pipeline.formatters.rows import ROW_SCHEMA

    folder.mkdir(parents=True, exist_ok=True)
    overrides = {"prompts": list(prompts), "mix": {"synthetic": 0.5} if mix else None,
                 "output": {"folder": str(folder)}, **(recipe_overrides or {})}
    write_recipe(folder / "recipe.yaml", overrides)
    recipe = load_recipe(folder / "recipe.yaml")
    save_plan(Plan(recipe, recipe_prompts(recipe)), str(folder))  # as a run saves it
    summary_prompts = {}
    for ref in prompts:
        p = load_prompt(ref)
        rows_all = []
        for j in range(files_per_config):
            rows = []
            for i in range(rows_per_file):
                sid = f"{tag}-doc-{j}-{i}"
                rows.append({
                    "id": f"{sid}/{p.name}", "text": f"[{tag}] {p.name} rewrite of document {j}.{i}\n\nQ: why?\nA: because.",
                    "source_id": sid, "source_text": f"Original document {j}.{i} of {tag}.", "prompt": p.name,
                    "prompt_set": p.set, "prompt_version": p.version, "prompt_sha256": p.sha256, "model": MODEL,
                    "model_revision": "0123abcd", "generation_params": json.dumps({"max_new_tokens": 320, "temperature": 0.7}),
                    "finish_reason": "length" if i == 2 else "stop", "prompt_tokens": 100 + i, "completion_tokens": 20 + i,
                    "truncated": i == 0, "source_tokens": 2000 if i == 0 else 300, "source_tokens_used": 700 if i == 0 else 300,
                    "chunks": 1, "language": "en", "language_score": 0.93, "quality_score": 0.81,
                    "source_url": None, "checks": f"failed:format_{p.name}" if i == 1 else None,
                })
            out = folder / "data" / p.name / f"000_{j:05d}.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(rows, schema=ROW_SCHEMA), out)
            rows_all += rows
        n = len(rows_all)
        summary_prompts[p.name] = {
            "rephrased": n, "failed": 1, "truncated_inputs": files_per_config, "rows": n,
            "prompt_tokens": sum(r["prompt_tokens"] for r in rows_all),
            "completion_tokens": sum(r["completion_tokens"] for r in rows_all),
            "dropped": {"refusal": 2}, "flagged": {f"format_{p.name}": files_per_config},
        }
    summary = {
        "documents_read": 40, "skipped_input": {"malformed_lines": 1},
        "filters": [{"name": "🌍 Language ID", "in": 40, "kept": 30, "dropped": 10}],
        "dedup": {"minhash": {"in": 30, "kept": 29, "dropped": 1}},
        "prompts": summary_prompts, "rephrase_documents": files_per_config * rows_per_file + 1,
        "inference_time_s": 12.5, "wall_time_s": 20.0,
        "steps": [{"stage": "filter", "step": "📖 - READER: 🐿 Jsonl (safe)", "stats": {"documents": 40}}],
        "generator": {"server": "openai", "api": "chat", "endpoints": 2, "model": MODEL},
    }
    if mix:
        rows = [{"id": f"{tag}-mix-{k}", "text": f"[{tag}] mixed {k}", "kind": "real" if k % 2 else "synthetic",
                 "source_id": f"{tag}-doc-0-{k}", "prompt": None if k % 2 else "faq", "tokens": 10 + k} for k in range(4)]
        (folder / "data" / "mix").mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows, schema=MIX_SCHEMA), folder / "data" / "mix" / "000_00000.parquet")
        summary["mix"] = {"synthetic_documents": 2, "synthetic_tokens": 22, "real_documents": 2, "real_tokens": 24,
                          "real_tokens_short": 3}
    work = folder / ".finephrase"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    from finephrase.report import RunCounts, RunReport, save_report

    generator, wall_time_s = summary.pop("generator"), summary.pop("wall_time_s")
    save_report(str(folder), RunReport(counts=RunCounts.model_validate(summary), generator=generator,
                                       wall_time_s=wall_time_s, tasks=1))  # as a run saves it
    (work / "logs" / "stage.log").write_text(f"work file of {tag}: never published\n")
    return folder


def local_rows(output: Path, config: str) -> list[dict]:
    files = sorted((output / "data" / config).glob("*.parquet"))
    return sorted((r for f in files for r in pq.read_table(f).to_pylist()), key=lambda r: r["id"])


def _card(output: Path, repo_id: str | None = "test-org/demo", **kw):
    """The card of ``output`` as the run renders it."""
    from finephrase.recipe import load_recipe
    from finephrase.report import load_report
    from finephrase.report.card import render_card

    recipe = load_recipe(output / "recipe.yaml")
    prompts = recipe_prompts(recipe)
    return render_card(load_report(str(output), prompts), recipe, prompts, repo_id=repo_id, **kw), recipe


# --- scrub / license -------------------------------------------------------------------------------------------


def test_scrub_removes_tokens_and_local_paths(monkeypatch):
    from finephrase.report.card import scrub

    monkeypatch.setenv("HF_TOKEN", "my-weird-secret-value")
    text = ("token hf_abcdefghijklmnopqrstuvwxyz123456 and sk-abcdefghijklmnopqrstuvwx and my-weird-secret-value\n"
            "path: /home/alice/corpus/docs.jsonl.gz\n`/tmp/pytest-1/out/data/faq`\n"
            "model: C:\\Users\\bob\\models\\edu.bin and file:///srv/data/x.parquet\n"
            "keep https://huggingface.co/datasets/org/name, data/faq/*.parquet, 50% real / 50%, hf_hub_download")
    out = scrub(text, secrets=["p4ssw0rd-xyz"])
    for leaked in ("hf_abcdefghij", "sk-abcdef", "my-weird-secret-value", "/home/alice", "/tmp/pytest", "C:\\Users",
                   "file://", "/srv/data", "alice", "bob"):
        assert leaked not in out, leaked
    assert "<local>/docs.jsonl.gz" in out and "<local>/faq" in out and "<local>/edu.bin" in out
    assert "<local>/x.parquet" in out
    for kept in ("https://huggingface.co/datasets/org/name", "data/faq/*.parquet", "50% real / 50%", "hf_hub_download"):
        assert kept in out, kept
    assert scrub("password p4ssw0rd-xyz", secrets=["p4ssw0rd-xyz"]) == "password <redacted>"


@pytest.mark.parametrize("given, expected", [
    ("Apache-2.0", {"license": "apache-2.0"}),
    ("odc-by", {"license": "odc-by"}),
    ("CC-BY-4.0", {"license": "cc-by-4.0"}),
    (None, {"license": "unknown"}),
    ("PSF-2.0", {"license": "other", "license_name": "psf-2.0", "license_link": "https://docs.python.org/3/license.html"}),
    ("BlueOak-1.0.0", {"license": "other", "license_name": "blueoak-1.0.0",
                       "license_link": "https://spdx.org/licenses/BlueOak-1.0.0.html"}),
    ("https://example.org/licenses/my-terms.html", {"license": "other", "license_name": "my-terms",
                                                    "license_link": "https://example.org/licenses/my-terms.html"}),
])
def test_license_metadata(given, expected):
    from finephrase.report.card import license_metadata

    assert license_metadata(given) == expected


# --- the card --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def output(tmp_path_factory) -> Path:
    return make_output(tmp_path_factory.mktemp("card") / "out", files_per_config=2)


def test_card_metadata_matches_the_files(output):
    from huggingface_hub import DatasetCard

    from finephrase.report.card import write_card
    from finephrase.recipe import load_recipe

    recipe = load_recipe(output / "recipe.yaml")
    path = write_card(str(output), recipe, recipe_prompts(recipe), repo_id="test-org/demo")
    card = DatasetCard.load(path)  # huggingface_hub parses the metadata
    data = card.data.to_dict()
    assert data["license"] == "other" and data["license_name"] == "psf-2.0" and data["license_link"]
    assert data["language"] == ["en"] and data["task_categories"] == ["text-generation"]
    assert data["size_categories"] == ["n<1K"]
    assert data["pretty_name"] == "finephrase demo (Python docs)"
    assert data["tags"][:3] == ["synthetic", "rephrased", "finephrase"] and len(set(data["tags"])) == len(data["tags"])
    configs = {c["config_name"]: c for c in data["configs"]}
    assert list(configs) == ["all", "faq", "table", "math", "mix"]
    assert [c["config_name"] for c in data["configs"] if c.get("default")] == ["all"]
    written = sorted(p.relative_to(output).as_posix() for p in (output / "data").rglob("*.parquet"))
    assert "data/faq/000_00001.parquet" in written
    from finephrase.report.card import config_paths

    for name, c in configs.items():
        matched = {f for pat in config_paths(c) for f in written if fnmatch.fnmatchcase(f, pat)}
        expected = {f for f in written if f.split("/")[1] == name} if name != "all" else \
            {f for f in written if not f.startswith("data/mix/")}
        assert matched == expected, name
    # the card's configs load locally, with the rows written
    from datasets import load_dataset

    ds = load_dataset(str(output), "faq", split="train")
    assert sorted(ds["id"]) == [r["id"] for r in local_rows(output, "faq")]
    assert len(load_dataset(str(output), "all", split="train")) == 18


def test_card_body(output):
    from finephrase.prompts import load_prompt

    card, recipe = _card(output)
    text = str(card)
    assert 'load_dataset("test-org/demo", "faq", split="train")' in text
    assert "hf download test-org/demo --repo-type dataset" in text
    # pipeline as it ran
    assert "| filter: 🌍 Language ID | 40 | 30 | dropped 10 |" in text
    assert "| minhash dedup | 30 | 29 | duplicates 1 |" in text
    assert "| 40 | skipped malformed lines: 1 |" in text
    assert "dropped refusal: 2; flagged format_faq: 2 |" in text
    # generator
    assert f"`{MODEL}`" in text and "| revision | 0123abcd |" in text and "| server | openai |" in text
    assert "| context budget (prompt + document + answer) | 1,024 tokens |" in text
    assert '"temperature": 0.7' in text
    # token counts per config and throughput: 6 rows per prompt, completion 2*(20+21+22)=126
    assert "| `faq` | 2 | 6 | 606 | 126 |" in text
    assert "| `all` | 6 | 18 | 1,818 | 378 |" in text
    assert f"{378 / 12.5:.1f} generated tokens/s" in text
    assert "GPU-hours | not recorded" in text
    # every prompt verbatim with its identity
    for ref in DEMO_PROMPTS:
        p = load_prompt(ref)
        assert p.template in text and p.sha256 in text and p.source["url"] in text
        assert f"prompts/{p.set}/{p.name}.yaml" in text
    assert text.count("<details>") >= 3
    # mix and limitations
    assert "50% real / 50% synthetic" in text and "47.8% synthetic" in text
    assert "2 source documents were longer than the context budget" in text
    assert "2 outputs dropped by the output rules (refusal)" in text
    assert "flagged in the `checks` column" in text
    assert "generations failed after retries" in text and "3 real tokens short" in text
    # reproduce + citations
    assert "finephrase run recipe.yaml" in text and "name: finephrase-demo" in text
    for key in ("maini2024rephrasing", "su2024nemotroncc", "niklaus2026finephrase", "python311docdebian"):
        assert key in text
    # never a local absolute path or a token
    assert str(output) not in text and str(ROOT) not in text and "/tmp/" not in text
    assert "<local>/docs.jsonl.gz" in text


def test_card_validates_on_the_test_hub(output, hub_server):  # noqa: F811
    card, _ = _card(output)
    card.validate(repo_type="dataset")  # POST /api/validate-yaml; raises ValueError on errors
    broken = str(card).replace("config_name: mix", "config_name: faq")
    from huggingface_hub import DatasetCard

    with pytest.raises(ValueError):
        DatasetCard(broken).validate(repo_type="dataset")


def test_card_with_kept_configs_and_no_summary(output, hub_server):  # noqa: F811
    from finephrase.recipe import load_recipe
    from finephrase.report import load_report
    from finephrase.report.card import render_card

    (output / ".finephrase" / "report.json").unlink()  # no counts: the configs from the files alone
    recipe = load_recipe(output / "recipe.yaml")
    kept = [{"config_name": "all", "data_files": "data/*/*.parquet", "default": True},
            {"config_name": "faq", "data_files": [{"split": "train", "path": "data/faq/old-*.parquet"}]},
            {"config_name": "wiki", "data_files": [{"split": "train", "path": "data/wiki/*.parquet"}], "default": True}]
    prompts = recipe_prompts(recipe)[:1]
    card = render_card(load_report(str(output), prompts), recipe, prompts, repo_id="test-org/demo", kept_configs=kept)
    configs = card.data.to_dict()["configs"]
    assert [c["config_name"] for c in configs] == ["all", "faq", "wiki", "mix"]
    assert configs[0]["data_files"][0]["path"] == ["data/faq/*.parquet", "data/wiki/*.parquet"]
    assert configs[1]["data_files"][0]["path"] == "data/faq/*.parquet"
    assert [c["config_name"] for c in configs if c.get("default")] == ["all"]
    assert "kept from an earlier push" in card.content
    assert "were not available when this card was written" in card.content
    card.validate(repo_type="dataset")


def test_card_for_a_hub_source_defaults_to_its_license(tmp_path):
    from finephrase.recipe import parse_recipe
    from finephrase.report import load_report
    from finephrase.report.card import render_card

    out = make_output(tmp_path / "out", prompts=("finephrase/faq",), mix=False)
    (out / ".finephrase" / "report.json").unlink()
    recipe = parse_recipe({"name": "edu-faq", "source": {"kind": "hub", "dataset": "HuggingFaceFW/fineweb-edu",
                                                        "license": "ODC-By"},
                           "prompts": ["finephrase/faq", "wrap/qa"], "generator": {"server": "tgi",
                           "endpoints": ["http://gpu:8080"], "model": MODEL}}, raw_text="name: edu-faq\n")
    prompts = recipe_prompts(recipe)
    card = render_card(load_report(str(out), prompts), recipe, prompts, repo_id=None)
    data = card.data.to_dict()
    assert data["license"] == "odc-by" and "license_name" not in data
    assert data["source_datasets"] == ["HuggingFaceFW/fineweb-edu"]
    assert "wrap" in data["tags"] and "finephrase" in data["tags"]
    assert [c["config_name"] for c in data["configs"]] == ["all", "faq"]  # wrap/qa wrote no rows
    assert 'load_dataset("your-org/edu-faq", "faq"' in card.content
    assert "https://huggingface.co/datasets/HuggingFaceFW/fineweb-edu" in card.content
    # no run summary: limitations are counted from the rows (3 rows: 1 truncated, 1 flagged)
    assert "`faq`: 1 row(s) come from truncated source documents" in card.content
    assert "`faq`: 1 row(s) are flagged in the `checks` column" in card.content
