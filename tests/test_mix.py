"""The mix (issue "Data quality"): a token ratio per prompt, a mix-in source read by a real datatrove reader,
picks spread over the source and fixed by the seed, the achieved shares measured, the recipe checked."""

from __future__ import annotations

import json
import random

import pytest
from conftest import write_recipe
from datatrove.data import Document
from datatrove.pipeline.readers import JsonlReader

from finephrase.inference.client.tokens import TokenCounter
from finephrase.pipeline.mix import Mix
from finephrase.plan import resolve


class Rows:
    """Synthetic rows as the rows stage writes them (a reader-like object: ``run`` yields documents)."""

    def __init__(self, docs):
        self.docs = docs
        self.passes = 0

    def run(self, data=None, rank=0, world_size=1):
        self.passes += 1
        yield from self.docs


def _synthetic(rng: random.Random) -> list[Document]:
    """Rows of 50-400 words; ``completion_tokens`` (the server's count, before cleaning) deliberately differs from
    the text's tokens: the mix counts the published text, with the tokenizer it counts the real text with."""
    return [Document(text=" ".join(["synthetic"] * rng.randint(50, 400)), id=f"{prompt}-{i}",
                     metadata={"completion_tokens": 7, "source_id": f"src-{i}", "prompt": prompt})
            for prompt in ("table", "math", "faq") for i in range(40)]


@pytest.fixture
def mixin_source(tmp_path):
    """A mix-in source (another corpus than the rephrased one) as a jsonl folder read by datatrove's JsonlReader."""
    rng = random.Random(1)
    folder = tmp_path / "fineweb-edu-hq"
    folder.mkdir()
    for part in range(3):
        with open(folder / f"part-{part}.jsonl", "w") as f:
            for i in range(700):
                words = " ".join(rng.choice(["data", "model", "token", "learn", "text"]) for _ in range(rng.randint(20, 200)))
                f.write(json.dumps({"id": f"edu-{part}-{i}", "text": words}) + "\n")
    return folder


def _run(mix: Mix) -> list[Document]:
    return list(mix.run())


def test_each_prompt_gets_its_share_within_two_percent(mixin_source):
    synthetic = _synthetic(random.Random(0))
    shares = {"table": 0.7, "math": 0.8}  # faq: the default 0.6
    mix = Mix([Rows(synthetic)], JsonlReader(str(mixin_source)), synthetic=0.6, per_prompt=shares, seed=3)
    out = _run(mix)
    synth = [d for d in out if d.metadata["kind"] == "synthetic"]
    real = [d for d in out if d.metadata["kind"] == "real"]
    assert {d.id for d in synth} == {d.id for d in synthetic}  # every synthetic row kept
    assert len({d.id for d in real}) == len(real) and all(d.id.startswith("edu-") for d in real)
    stats = mix.stats.stats
    for prompt in ("table", "math", "faq"):
        s = sum(d.metadata["tokens"] for d in synth if d.metadata["prompt"] == prompt)
        r = sum(d.metadata["tokens"] for d in real if d.metadata["mixed_with"] == prompt)
        target = shares.get(prompt, 0.6)
        print(f"{prompt}: target {target:.3f} achieved {s / (s + r):.4f}")
        assert abs(s / (s + r) - target) < 0.02, prompt
        # measured, not assumed: the stats are the rows
        assert stats[f"synthetic_tokens/{prompt}"].total == s and stats[f"real_tokens/{prompt}"].total == r
    assert "real_tokens_short" not in stats


def test_rows_whose_checks_failed_stay_out_unless_asked(mixin_source):
    synthetic = _synthetic(random.Random(0))
    notes = ["failed:format_qa", "contaminated:gsm8k", "stripped_prefix", "stripped_prefix,failed:too_short", None]
    for i, doc in enumerate(synthetic):
        doc.metadata["checks"] = notes[i % len(notes)]
    passed = {d.id for d in synthetic if d.metadata["checks"] in ("stripped_prefix", None)}
    mix = Mix([Rows(synthetic)], JsonlReader(str(mixin_source)), synthetic=0.7)
    out = _run(mix)
    assert {d.id for d in out if d.metadata["kind"] == "synthetic"} == passed
    assert mix.stats.stats["synthetic_failed_checks"].total == len(synthetic) - len(passed)
    counted = TokenCounter(None)
    synth = sum(counted.count(d.text) for d in synthetic if d.id in passed)
    real = sum(d.metadata["tokens"] for d in out if d.metadata["kind"] == "real")
    assert mix.stats.stats["synthetic_tokens"].total == synth and abs(synth / (synth + real) - 0.7) < 0.02
    assert all(d.metadata["tokens"] == counted.count(d.text) for d in out)  # one tokenizer for both kinds
    everything = _run(Mix([Rows(synthetic)], JsonlReader(str(mixin_source)), synthetic=0.7, include_flagged=True))
    assert {d.id for d in everything if d.metadata["kind"] == "synthetic"} == {d.id for d in synthetic}


def test_picks_are_fixed_by_the_seed_spread_over_the_source_and_interleaved(mixin_source):
    synthetic = _synthetic(random.Random(0))

    def ids(seed):
        return [d.id for d in _run(Mix([Rows(synthetic)], JsonlReader(str(mixin_source)), synthetic=0.7, seed=seed))]

    first, again, other = ids(0), ids(0), ids(1)
    assert first == again  # deterministic
    real = [i for i in first if i.startswith("edu-")]
    assert set(real) != {i for i in other if i.startswith("edu-")}
    # the picks come from every file of the source, not from its beginning
    assert {i.split("-")[1] for i in real} == {"0", "1", "2"}
    assert len(real) < 0.8 * 2100
    # interleaved: real documents appear before the last synthetic row and after the first one
    kinds = ["real" if i.startswith("edu-") else "synthetic" for i in first]
    assert kinds.index("real") < len(kinds) // 2 and kinds[-40:].count("synthetic") > 0


def test_when_the_real_data_runs_out_all_of_it_is_used_and_the_shortfall_counted(tmp_path):
    (tmp_path / "small").mkdir()
    (tmp_path / "small" / "a.jsonl").write_text("".join(json.dumps({"id": f"r{i}", "text": "word " * 30}) + "\n"
                                                        for i in range(5)))
    synthetic = _synthetic(random.Random(0))
    rows = Rows(synthetic)
    mix = Mix([rows], JsonlReader(str(tmp_path / "small")), synthetic=0.5)
    out = _run(mix)
    real = [d for d in out if d.metadata["kind"] == "real"]
    assert sorted(d.id for d in real) == [f"r{i}" for i in range(5)]
    need = sum(TokenCounter(None).count(d.text) for d in synthetic)
    assert abs(mix.stats.stats["real_tokens_short"].total - (need - sum(d.metadata["tokens"] for d in real))) <= 1
    assert rows.passes == 2  # counted once, yielded once: the synthetic rows are streamed, never listed


def test_the_recipe_checks_the_mix(tmp_path):
    from finephrase.errors import RecipeError
    from finephrase.recipe import load_recipe

    bad = write_recipe(tmp_path / "a.yaml", {"prompts": ["finephrase/faq"], "mix": {"per_prompt": {"tabel": 0.7}}})
    with pytest.raises(RecipeError, match=r"mix.per_prompt: tabel: not a prompt of this recipe"):
        resolve(load_recipe(bad))
    bad = write_recipe(tmp_path / "b.yaml", {"prompts": ["finephrase/faq"], "mix": {"per_prompt": {"faq": 1.5}}})
    with pytest.raises(RecipeError, match=r"mix.per_prompt"):
        resolve(load_recipe(bad))
    bad = write_recipe(tmp_path / "c.yaml", {"prompts": ["finephrase/faq"],
                                             "mix": {"source": {"kind": "jsonl", "path": str(tmp_path / "nope")}}})
    with pytest.raises(RecipeError, match=r"mix.source.path: .* does not exist"):
        resolve(load_recipe(bad))


def test_the_mix_stage_reads_the_mix_in_source(tmp_path, mixin_source):
    from finephrase.inference.client.backends import GeneratorRuntime
    from finephrase.pipeline.build import build_stages
    from finephrase.recipe import load_recipe

    recipe = load_recipe(write_recipe(tmp_path / "r.yaml", {
        "prompts": ["finephrase/faq", "finephrase/table"],
        "mix": {"synthetic": 0.6, "per_prompt": {"table": 0.7},
                "source": {"kind": "jsonl", "path": str(mixin_source), "name": "FineWeb-Edu-HQ sample"}}}))
    stages = build_stages(resolve(recipe), str(tmp_path / "out"), GeneratorRuntime(endpoints=["http://127.0.0.1:1"]))
    mix = stages[-1].pipeline[0]
    assert isinstance(mix, Mix) and isinstance(mix.real_reader, JsonlReader)
    assert mix.real_reader.data_folder.path == str(mixin_source)
    assert mix.shares == {"table": 0.7} and mix.synthetic == 0.6


def test_a_prompt_without_rows_is_left_out_of_the_mix_not_a_crash(mixin_source, tmp_path):
    """Every generation of a prompt failed, so its data/<config>/ folder was never written: the mix goes on with the
    other prompts (the end of the run then says which prompt produced nothing, and why)."""
    from datatrove.pipeline.readers import ParquetReader

    synthetic = [d for d in _synthetic(random.Random(0)) if d.metadata["prompt"] == "faq"]
    mix = Mix([ParquetReader(str(tmp_path / "data" / "table")), Rows(synthetic)], JsonlReader(str(mixin_source)),
              synthetic=0.6, seed=3)
    out = _run(mix)
    assert {d.id for d in out if d.metadata["kind"] == "synthetic"} == {d.id for d in synthetic}
    assert any(d.metadata["kind"] == "real" for d in out)
