"""Quality classifiers (issue "Data quality the way the papers do it"): train, score, resolve from the Hub.

Real text only: the positives are the prose of the Python documentation pages (trafilatura's extraction, the demo
corpus), the negatives the navigation bars, sidebars and footers of the same real pages and the link lists of
its index pages (lxml, from the Debian package the demo corpus comes from). Pages are split by name into a
training half and an unseen half; the classifier must separate the unseen half.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
from conftest import run_cli
from hub_server import hub_repo_id, hub_server  # noqa: F401  (pytest fixtures)

from finephrase.errors import InputError
from finephrase.plan import resolve
from finephrase.quality.inputs import input_files, read_texts
from finephrase.quality.text import fasttext_text

HTML = "usr/share/doc/python3.11/html"
BOILERPLATE = ['//div[@class="related"]', '//div[@class="sphinxsidebar"]', '//div[@class="footer"]']


def _half(name: str) -> str:
    return "train" if int(hashlib.sha256(name.encode()).hexdigest(), 16) % 2 == 0 else "unseen"


def _boilerplate(path: str) -> str:
    import lxml.html

    root = lxml.html.parse(path).getroot()
    return " \n".join(" ".join(e.text_content().split()) for xp in BOILERPLATE for e in root.xpath(xp))


def _write_jsonl(path: Path, texts: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for i, text in enumerate(texts):
            f.write(json.dumps({"id": str(i), "text": text}) + "\n")
    return path


@pytest.fixture(scope="module")
def corpus(demo_data, tmp_path_factory) -> dict[str, Path]:
    """{train,unseen}-{hq,lq}.jsonl.gz from the real pages."""
    tmp = tmp_path_factory.mktemp("quality")
    deb = sorted(glob.glob(str(demo_data / "deb" / "*.deb")))
    assert deb, f"the demo corpus's Debian package is missing under {demo_data / 'deb'}"
    subprocess.run(["dpkg-deb", "-x", deb[0], str(tmp / "deb")], check=True)
    html = tmp / "deb" / HTML
    texts: dict[str, list[str]] = {f"{h}-{q}": [] for h in ("train", "unseen") for q in ("hq", "lq")}
    with gzip.open(demo_data / "docs.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            rel = doc["id"].split("/", 1)[1]
            if rel.startswith(("library/", "tutorial/", "howto/", "reference/")) and len(doc["text"]) > 1500:
                texts[f"{_half(rel)}-hq"].append(doc["text"])
    for page in sorted(glob.glob(str(html / "**" / "*.html"), recursive=True)):
        rel = str(Path(page).relative_to(html))
        text = _boilerplate(page)
        if rel.startswith("genindex"):  # the index pages: long lists of links
            text = " ".join(_text_of(page).split())[:4000]
        if len(text) > 200:
            texts[f"{_half(rel)}-lq"].append(text)
    assert all(len(v) >= 40 for v in texts.values()), {k: len(v) for k, v in texts.items()}
    return {name: _write_jsonl(tmp / f"{name}.jsonl.gz", values) for name, values in texts.items()}


def _text_of(path: str) -> str:
    import lxml.html

    return lxml.html.parse(path).getroot().text_content()


@pytest.fixture(scope="module")
def classifier(corpus, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("model")
    model, metrics = out / "quality.ftz", out / "metrics.json"
    proc = run_cli("quality", "train", "--positive", str(corpus["train-hq"]), "--negative", str(corpus["train-lq"]),
                   "--output", str(model), "--json", str(metrics), timeout=600)
    print(proc.stdout)
    return model, json.loads(metrics.read_text())


def test_a_classifier_trained_on_real_pages_separates_unseen_pages(classifier, corpus, tmp_path):
    model, metrics = classifier
    assert model.is_file() and metrics["held_out"] >= 10
    for label in ("hq", "lq"):  # ~40 held-out documents: one mistake moves a label's precision by up to ~0.07
        assert metrics["labels"][label]["precision"] >= 0.85, metrics
        assert metrics["labels"][label]["recall"] >= 0.85, metrics
    import fasttext

    from finephrase.quality.scorers import label_score

    m = fasttext.load_model(str(model))
    for name, want_high in (("unseen-hq", True), ("unseen-lq", False)):
        scores = [label_score(m, t, "hq") for t in read_texts(str(corpus[name]))]
        right = sum(1 for s in scores if (s >= 0.5) == want_high) / len(scores)
        print(f"{name}: {len(scores)} unseen pages, {right:.3f} on the right side of 0.5")
        assert right >= 0.9


def test_quality_score_prints_the_distribution_and_what_a_threshold_keeps(classifier, corpus):
    model, _ = classifier
    proc = run_cli("quality", "score", str(model), str(corpus["unseen-hq"]), "--threshold", "0.5", "0.9")
    lines = proc.stdout.splitlines()
    n = sum(1 for _ in read_texts(str(corpus["unseen-hq"])))
    assert lines[0] == f"{n} documents scored for __label__hq"
    bars = [line for line in lines if " | " in line]
    assert len(bars) == 10 and sum(int(b.rsplit(" ", 1)[1]) for b in bars) == n
    assert bars[-1].count("#") > 0  # prose scores high
    keeps = [line for line in lines if line.startswith("threshold")]
    kept_05, kept_09 = (int(line.split("keeps ")[1].split(" ")[0]) for line in keeps)
    assert n >= kept_05 >= kept_09 > 0 and kept_05 >= 0.9 * n


def test_the_filter_scores_the_text_training_saw(classifier):
    from datatrove.data import Document

    from finephrase.pipeline.filters.quality import QualityFilter

    model, _ = classifier
    step = QualityFilter(str(model), "hq", 0.5)
    doc = Document(text="Navigation\nindex\nmodules |\tnext | previous | Python » 3.11.2 Documentation »", id="nav")
    assert step.filter(doc) == (False, "low_quality")
    assert 0 <= doc.metadata["quality_score"] < 0.5
    assert fasttext_text("a\nb\r\n\tc ") == "a b c"


def test_a_model_replaced_at_the_same_path_is_the_one_used(classifier, demo_data, tmp_path):
    """datatrove copies a model path into its asset cache once, keyed by the path: a classifier retrained in place
    (as `make demo` does on a fresh checkout) was scored with the stale copy. The filters read local files."""
    import shutil

    import fasttext
    from datatrove.data import Document

    from finephrase.pipeline.filters.language import LanguageFilter, default_lid_model
    from finephrase.pipeline.filters.quality import QualityFilter
    from finephrase.quality.scorers import label_score

    model, _ = classifier
    text = "Navigation index modules | next | previous | The tutorial explains how lists and dictionaries work."
    path = tmp_path / "quality.ftz"
    scores = []
    for source in (model, demo_data / "quality.ftz"):  # two different classifiers, one after the other at `path`
        shutil.copyfile(source, path)
        doc = Document(text=text, id="x")
        QualityFilter(str(path), "hq", 0.0).filter(doc)
        assert doc.metadata["quality_score"] == round(label_score(fasttext.load_model(str(source)), text, "hq"), 6)
        scores.append(doc.metadata["quality_score"])
    assert scores[0] != scores[1]
    with pytest.raises(ValueError, match="is not a label of"):
        QualityFilter(str(path), "nope", 0.5).filter(Document(text=text, id="y"))
    lid = tmp_path / "lid.ftz"
    shutil.copyfile(default_lid_model(), lid)
    assert LanguageFilter(["en"], model_path=str(lid)).filter(Document(text="This is an English sentence.", id="e"))
    from huggingface_hub import cached_assets_path

    for namespace, subfolder, local in (("filters", "fasttext", path), ("lid", "local", lid)):  # no copy was made
        cache = cached_assets_path(library_name="datatrove", namespace=namespace, subfolder=subfolder)
        assert not (cache / str(local).replace("/", "_")).exists()


def test_a_recipe_takes_its_classifier_from_a_hub_model_repo(classifier, hub_server, hub_repo_id,  # noqa: F811
                                                              make_recipe, monkeypatch):
    from huggingface_hub import HfApi

    from finephrase.errors import ClassifierNotFound, RecipeError
    from finephrase.quality.models import resolve_classifier
    from finephrase.recipe import load_recipe

    model, _ = classifier
    HfApi().create_repo(hub_repo_id, repo_type="model")
    HfApi().upload_file(path_or_fileobj=str(model), path_in_repo="quality.ftz", repo_id=hub_repo_id)
    local = resolve_classifier(hub_repo_id)  # the repo's one .ftz, into huggingface_hub's cache
    assert Path(local).read_bytes() == model.read_bytes()
    assert resolve_classifier(f"hf://{hub_repo_id}/quality.ftz") == local
    recipe = load_recipe(make_recipe({"filters": {"quality": {"model": hub_repo_id, "threshold": 0.3}}}))
    resolve(recipe).prompts
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # cached: a second run needs no network
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    assert resolve_classifier(f"{hub_repo_id}/quality.ftz") == local
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    missing = make_recipe({"filters": {"quality": {"model": f"{hub_repo_id}-nope"}}}, name="missing.yaml")
    with pytest.raises(RecipeError, match=r"(?s)filters\.quality\.model: cannot get the classifier.*fix: `hf download"):
        resolve(load_recipe(missing)).prompts
    with pytest.raises(ClassifierNotFound, match="not found"):
        resolve_classifier("models/absent.ftz")


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        input_files(str(tmp_path / "absent"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(InputError, match="not a .jsonl"):
        input_files(str(tmp_path / "x.csv"))
    few = _write_jsonl(tmp_path / "few.jsonl.gz", ["one real sentence about lists and tuples."] * 3)
    proc = run_cli("quality", "train", "--positive", str(few), "--negative", str(few),
                   "--output", str(tmp_path / "m.ftz"), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert "too few documents" in proc.stderr and "fix:" in proc.stderr
