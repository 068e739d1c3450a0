"""Recipe parsing and validation: bad recipes fail before any work, naming the key and the file."""

from __future__ import annotations

import pytest
from conftest import DEMO_RECIPE, ROOT, run_cli

from finephrase.errors import RecipeError
from finephrase.pipeline.build import GeneratorRuntime, build_stages
from finephrase.plan import resolve
from finephrase.recipe import load_recipe


def test_demo_recipe_is_valid(demo_data, monkeypatch):
    monkeypatch.chdir(ROOT)  # the demo recipe's paths are relative to the repository (restored after the test)
    recipe = load_recipe(DEMO_RECIPE)
    assert recipe.generator.server == "embedded"
    assert [p for p in recipe.prompts] == ["finephrase/faq", "finephrase/table", "finephrase/math"]
    assert recipe.mix.synthetic == 0.5


def test_stages_chain_minhash_and_rephrase(make_recipe, demo_data, tmp_path):
    recipe = load_recipe(make_recipe())
    stages = build_stages(resolve(recipe), str(tmp_path / "out"), GeneratorRuntime(endpoints=["http://127.0.0.1:1"]))
    names = [s.name for s in stages]
    assert names == ["filter", "minhash-signatures", "minhash-buckets", "minhash-cluster", "minhash-filter",
                     "rephrase", "rows", "mix"]
    assert all(s.depends == names[i - 1] for i, s in enumerate(stages) if i)
    assert stages[names.index("minhash-buckets")].tasks == recipe.dedup.minhash.num_buckets
    assert stages[names.index("rephrase")].kind == "inference"


def test_exact_dedup_stages_remove_exact_copies(tmp_path):
    import gzip
    import json

    from finephrase.pipeline.build import run_local

    src = tmp_path / "docs.jsonl"
    texts = [f"document number {i} " * 30 for i in range(4)]
    rows = [{"id": f"d{i}", "text": t} for i, t in enumerate(texts)] + [{"id": "copy", "text": texts[2]}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = load_recipe(write_recipe_file(tmp_path, {
        "name": "exact", "source": {"kind": "jsonl", "path": str(src)}, "prompts": ["finephrase/faq"],
        "dedup": {"exact": True}, "generator": {"server": "openai", "endpoints": ["http://127.0.0.1:1"]}}))
    out = tmp_path / "out"
    stages = build_stages(resolve(recipe), str(out), GeneratorRuntime(endpoints=["http://127.0.0.1:1"]))
    names = [s.name for s in stages]
    assert names[:4] == ["filter", "exact-signatures", "exact-find", "exact-filter"]
    run_local(stages[:4], str(out))
    kept = []
    for f in sorted((out / ".finephrase" / "exact-deduped").glob("*.jsonl.gz")):
        with gzip.open(f, "rt") as fh:
            kept += [json.loads(line)["text"] for line in fh]
    assert sorted(kept) == sorted(texts), "one copy of each text, the duplicate removed"


def write_recipe_file(folder, data: dict):
    import yaml

    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "overrides, key, message",
    [
        ({"generatr": {"server": "embedded"}}, "generatr", "unknown key"),
        ({"generator": {"server": "gpu-magic"}}, "generator.server", "embedded"),
        ({"generator": {"concurrency": "lots"}}, "generator.concurrency", "integer"),
        ({"filters": {"quality": {"threshold": 3}}}, "filters.quality.threshold", "3.0 > 1: a fastText score is a probability"),
        ({"prompts": ["finephrase/faq", "finephrase/nope"]}, "prompts[1]", "unknown prompt 'finephrase/nope'"),
        ({"prompts": []}, "prompts", "at least 1"),
        ({"source": {"path": "/nonexistent/corpus"}}, "source.path", "does not exist"),
        ({"filters": {"quality": {"model": "/nonexistent/model.bin"}}}, "filters.quality.model", "not found"),
        ({"generator": {"server": "openai"}}, "generator", "endpoints"),
        ({"name": None}, "name", "required key is missing"),
    ],
)
def test_bad_recipes_name_key_and_file(make_recipe, demo_data, overrides, key, message):
    path = make_recipe(overrides)
    with pytest.raises(RecipeError) as e:
        resolve(load_recipe(path))
    text = str(e.value)
    assert text.startswith(str(path)), text
    assert f": {key}:" in text or f": {key}" in text, text
    assert message in text, text


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nprompts: [a\n")
    with pytest.raises(RecipeError, match=r"bad.yaml: invalid YAML at line"):
        load_recipe(bad)
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "missing.yaml")


def test_unreadable_source(make_recipe, tmp_path, demo_data):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl").write_text('{"text": "x"}\n')
    (src / "b.jsonl").symlink_to(tmp_path / "gone.jsonl")  # a dangling link: unreadable even for root
    with pytest.raises(RecipeError, match=r"source.path: .*b.jsonl' is not readable"):
        resolve(load_recipe(make_recipe({"source": {"path": str(src)}})))


def test_cli_reports_bad_recipe_without_traceback(make_recipe, demo_data):
    path = make_recipe({"generator": {"threads": "two"}})
    proc = run_cli("run", str(path), check=False)
    assert proc.returncode == 2
    assert "generator.threads" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
