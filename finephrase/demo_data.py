"""Set-up for the offline demo: a real corpus and a small quality model, built on this machine.

Corpus: the HTML pages of Debian's ``python3.11-doc`` package (the Python documentation,
written by the Python community — not by this project), fetched with ``apt-get download``
(no root needed), unpacked with ``dpkg-deb`` and extracted to text with trafilatura, as
datatrove's ``Trafilatura`` extractor does for web pages. Written as ``docs.jsonl.gz``.

Quality model: a fastText classifier trained here, at set-up time, by the code of ``finephrase quality
train`` (:func:`finephrase.quality.train.train_classifier`): whole pages, normalised as the quality filter
scores them. Positive (``hq``) documents are the prose pages (tutorial, howto, library and language
reference); negative (``lq``) documents are the index-like pages (module index, general index, changelogs,
"what's new" lists: :data:`LOW_QUALITY_PARTS`). It is a toy separating explanatory prose from lists of
names — a stand-in until a real quality classifier is trained — and the README ("Quick start") says so.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict

from loguru import logger

from finephrase.errors import DemoDataError, TrainingError
from finephrase.quality.train import TrainSettings, train_classifier

DEB_PACKAGE = "python3.11-doc"
HTML_ROOT = "usr/share/doc/python3.11/html"
LOW_QUALITY_PARTS = ("genindex", "py-modindex", "whatsnew/changelog", "whatsnew/", "glossary", "bugs", "copyright",
                     "license", "about", "contents", "search")
TRAINER = "finephrase quality train"  # info.json's quality.trainer; a model trained otherwise (before) is retrained


def fetch_package(deb_dir: str, package: str = DEB_PACKAGE) -> str:
    """Download and unpack a Debian package into deb_dir; returns the unpack root."""
    root = os.path.join(deb_dir, "root")
    if os.path.isdir(os.path.join(root, HTML_ROOT)):
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise DemoDataError("the demo corpus is built from a Debian package: apt-get and dpkg-deb are needed")
    os.makedirs(deb_dir, exist_ok=True)
    debs = glob.glob(os.path.join(deb_dir, f"{package}_*.deb"))
    if not debs:
        r = subprocess.run(["apt-get", "download", package], cwd=deb_dir, capture_output=True, text=True)
        if r.returncode != 0:
            raise DemoDataError(f"apt-get download {package} failed: {r.stderr.strip()[-500:]} "
                                "(run `apt-get update` first if the package lists are empty)")
        debs = glob.glob(os.path.join(deb_dir, f"{package}_*.deb"))
    subprocess.run(["dpkg-deb", "-x", debs[0], root], check=True)
    return root


def extract_documents(html_root: str) -> list[dict]:
    import multiprocessing

    paths = sorted(glob.glob(os.path.join(html_root, "**", "*.html"), recursive=True))
    with multiprocessing.get_context("spawn").Pool(os.cpu_count() or 1) as pool:
        texts = pool.map(_extract_one, paths, chunksize=8)
    docs = []
    for path, text in zip(paths, texts):
        if not text or len(text) < 200:
            continue
        rel = os.path.relpath(path, html_root)
        docs.append({"id": f"python-docs/{rel}", "text": text,
                     "metadata": {"url": f"https://docs.python.org/3.11/{rel}", "source": DEB_PACKAGE}})
    return docs


def _extract_one(path: str) -> str | None:
    import trafilatura

    with open(path, "rb") as f:
        html = f.read().decode("utf-8", "replace")
    return trafilatura.extract(html, favor_precision=True, include_comments=False, deduplicate=True)


def _is_low_quality(doc_id: str) -> bool:
    rel = doc_id.split("/", 1)[1]
    return any(rel.startswith(p) or f"/{p}" in rel for p in LOW_QUALITY_PARTS)


def write_training_inputs(docs: list[dict], folder: str) -> tuple[str, str]:
    """The demo's two inputs of ``finephrase quality train``, whole pages: ``hq.jsonl.gz`` (the prose pages) and
    ``lq.jsonl.gz`` (the index-like pages, :data:`LOW_QUALITY_PARTS`) under ``folder``; returns their paths."""
    paths = {label: os.path.join(folder, f"{label}.jsonl.gz") for label in ("hq", "lq")}
    for label, path in paths.items():
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.writelines(json.dumps({"id": d["id"], "text": d["text"]}, ensure_ascii=False) + "\n" for d in docs
                         if _is_low_quality(d["id"]) == (label == "lq"))
    return paths["hq"], paths["lq"]


def train_quality_model(docs: list[dict], model_path: str, seed: int = 0) -> dict:
    """Train the demo's model with :func:`finephrase.quality.train.train_classifier` (what ``finephrase quality
    train`` runs: the text normalised as the filter scores it, a seeded held-out split, one fastText thread) and
    return what it reports, with the trainer and its settings. The model replaces ``model_path`` once written."""
    settings = TrainSettings(seed=seed)
    partial = f"{model_path}.{os.getpid()}.partial"  # two processes building the demo at once do not collide
    os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        positive, negative = write_training_inputs(docs, tmp)
        try:
            result = train_classifier(positive, negative, partial, settings)
        except TrainingError as e:
            cause = str(e).split("; fix:")[0]  # its fix is for `quality train`'s flags: the demo's corpus is at fault
            raise DemoDataError(f"the demo quality model could not be trained: {cause}; "
                                "fix: rebuild the corpus with `finephrase demo-data --force`") from None
    os.replace(partial, model_path)
    return {**result.to_dict(), "model": model_path, "trainer": TRAINER, "settings": asdict(settings),
            "positive": "every other page", "negative": "index-like pages: " + ", ".join(LOW_QUALITY_PARTS)}


def build_demo_data(folder: str = "data/demo", force: bool = False) -> dict:
    """Build ``docs.jsonl.gz`` and ``quality.ftz`` under ``folder`` (idempotent). A folder whose model was not
    trained by :data:`TRAINER` (an older demo's) keeps its corpus and gets its model retrained."""
    corpus = os.path.join(folder, "docs.jsonl.gz")
    model_path = os.path.join(folder, "quality.ftz")
    info_path = os.path.join(folder, "info.json")
    info = None
    if not force and os.path.exists(corpus) and os.path.exists(model_path) and os.path.exists(info_path):
        with open(info_path) as f:
            info = json.load(f)
        if info.get("quality", {}).get("trainer") == TRAINER:
            return info
        logger.info(f"{model_path} was trained by an older demo: retraining it with `{TRAINER}`'s code")
    docs = _read_corpus(corpus) if info else _build_corpus(folder, corpus)
    quality = train_quality_model(docs, model_path)
    info = {"documents": len(docs), "source": DEB_PACKAGE, "corpus": corpus, "quality_model": model_path,
            "quality": quality}
    with open(info_path, "w") as f:
        json.dump(info, f, indent=2)
    return info


def _build_corpus(folder: str, corpus: str) -> list[dict]:
    """Download the package, extract its pages, write ``corpus``; the unpacked package is removed, the .deb kept."""
    os.makedirs(folder, exist_ok=True)
    root = fetch_package(os.path.join(folder, "deb"))
    logger.info("extracting text from the HTML pages with trafilatura ...")
    docs = extract_documents(os.path.join(root, HTML_ROOT))
    # a stable, mixed order: reference + tutorial pages interleaved, so a small --limit sees variety
    docs.sort(key=lambda d: hashlib.md5(d["id"].encode()).hexdigest())
    with gzip.open(corpus, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    shutil.rmtree(os.path.join(folder, "deb", "root"), ignore_errors=True)
    return docs


def _read_corpus(corpus: str) -> list[dict]:
    with gzip.open(corpus, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]
