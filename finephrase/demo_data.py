"""Set-up for the offline demo: a real corpus and a small quality model, built on this machine.

Corpus: the HTML pages of Debian's ``python3.11-doc`` package (the Python documentation,
written by the Python community — not by this project), fetched with ``apt-get download``
(no root needed), unpacked with ``dpkg-deb`` and extracted to text with trafilatura, as
datatrove's ``Trafilatura`` extractor does for web pages. Written as ``docs.jsonl.gz``.

Quality model: a fastText classifier trained here, at set-up time. Positive (``hq``) examples
are prose paragraphs of the tutorial / howto / reference pages; negative (``lq``) examples
are the index-like pages (module index, general index, changelogs, "what's new" lists). It is
a toy separating explanatory prose from lists of names — a stand-in until a real quality
classifier is trained — and the README ("Quick start") says so.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import random
import shutil
import subprocess
import tempfile

from loguru import logger

from finephrase.errors import DemoDataError

DEB_PACKAGE = "python3.11-doc"
HTML_ROOT = "usr/share/doc/python3.11/html"
LOW_QUALITY_PARTS = ("genindex", "py-modindex", "whatsnew/changelog", "whatsnew/", "glossary", "bugs", "copyright",
                     "license", "about", "contents", "search")


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


def train_quality_model(docs: list[dict], model_path: str, seed: int = 0) -> dict:
    rng = random.Random(seed)
    lines = []
    for doc in docs:
        label = "lq" if _is_low_quality(doc["id"]) else "hq"
        paragraphs = [p.strip() for p in doc["text"].split("\n") if len(p.strip()) > 40]
        if label == "hq":
            paragraphs = [p for p in paragraphs if p.count(" ") > 8][:20]
        for p in paragraphs[:40]:
            lines.append(f"__label__{label} " + p.replace("\n", " "))
    rng.shuffle(lines)
    counts = {lab: sum(1 for x in lines if x.startswith(f"__label__{lab}")) for lab in ("hq", "lq")}
    if min(counts.values()) == 0:
        raise DemoDataError(f"cannot train the quality model: label counts {counts}")
    split = int(len(lines) * 0.9)
    with tempfile.TemporaryDirectory() as tmp:
        train, valid = os.path.join(tmp, "train.txt"), os.path.join(tmp, "valid.txt")
        with open(train, "w") as f:
            f.write("\n".join(lines[:split]) + "\n")
        with open(valid, "w") as f:
            f.write("\n".join(lines[split:]) + "\n")
        # fastText sometimes diverges (NaN) when trained in a process that already did other work
        # (seen here after trafilatura): train in a fresh process, retrying with a lower learning rate
        import multiprocessing

        result = None
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            for lr in (0.05, 0.02, 0.01):
                result = pool.apply(_train, (train, valid, model_path, lr, seed))
                if result is not None:
                    break
                logger.warning(f"fastText training with lr={lr} diverged; retrying with a lower rate")
    if result is None:
        raise DemoDataError("fastText training of the demo quality model did not converge")
    n, precision = result
    return {"examples": counts, "validation_examples": n, "precision_at_1": round(precision, 4)}


def _train(train: str, valid: str, model_path: str, lr: float, seed: int):
    import fasttext

    try:
        model = fasttext.train_supervised(train, lr=lr, epoch=10, wordNgrams=2, bucket=20000, dim=32, seed=seed,
                                          verbose=0, thread=1)
    except RuntimeError:
        return None
    n, precision, _recall = model.test(valid)
    model.quantize(input=train, retrain=False, qnorm=True, cutoff=20000)
    os.makedirs(os.path.dirname(os.path.abspath(model_path)), exist_ok=True)
    model.save_model(model_path)
    return n, precision


def build_demo_data(folder: str = "data/demo", force: bool = False) -> dict:
    """Build ``docs.jsonl.gz`` and ``quality.ftz`` under ``folder`` (idempotent)."""
    corpus = os.path.join(folder, "docs.jsonl.gz")
    model_path = os.path.join(folder, "quality.ftz")
    info_path = os.path.join(folder, "info.json")
    if not force and os.path.exists(corpus) and os.path.exists(model_path) and os.path.exists(info_path):
        with open(info_path) as f:
            return json.load(f)
    os.makedirs(folder, exist_ok=True)
    root = fetch_package(os.path.join(folder, "deb"))
    logger.info("extracting text from the HTML pages with trafilatura ...")
    docs = extract_documents(os.path.join(root, HTML_ROOT))
    # a stable, mixed order: reference + tutorial pages interleaved, so a small --limit sees variety
    docs.sort(key=lambda d: hashlib.md5(d["id"].encode()).hexdigest())
    with gzip.open(corpus, "wt", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d, ensure_ascii=False) + "\n")
    quality = train_quality_model(docs, model_path)
    info = {"documents": len(docs), "source": DEB_PACKAGE, "corpus": corpus, "quality_model": model_path, "quality": quality}
    with open(info_path, "w") as f:
        json.dump(info, f, indent=2)
    shutil.rmtree(os.path.join(folder, "deb", "root"), ignore_errors=True)
    return info
