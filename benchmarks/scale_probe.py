"""Benchmark: the two costs docs/scale.md names as what breaks first in a FinePhrase-sized run, measured here.

1. **Endpoint polling.** Every rephrase task re-reads the run's endpoints file every ``ReplicaPool.refresh_interval``
   seconds. Measured: the CPU time of one read of a 100-line endpoints file (``read_endpoints_file``, what the pool
   and ``finephrase status`` call) on this machine's local disk, and from it the reads per second and CPU of
   100 and 10,000 tasks. A shared file system adds its own metadata round trip per read, which is not measured here.
2. **``finephrase status``' scan of the rephrase output.** ``status`` counts documents and completion tokens by
   reading every line the rephrase stage wrote (``rephrased_progress``). Measured: seconds per document on
   realistic lines (a ~2 KB source text, one prompt's generation of ~360 tokens with its provenance), and from it
   the time of one ``status`` call at FinePhrase's 339M source documents.

The table goes to ``benchmarks/results/scale_probe.md``. Usage::

    python benchmarks/scale_probe.py [--documents 20000] [--files 20]
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from finephrase.cluster.status import rephrased_progress  # noqa: E402
from finephrase.inference.client.pool import ReplicaPool  # noqa: E402
from finephrase.inference.endpoints import read_endpoints_file  # noqa: E402
from finephrase.pipeline.build import RunPaths  # noqa: E402
from finephrase.stats import ROLLOUTS  # noqa: E402

FINEPHRASE_DOCUMENTS = 339e6  # source documents of FinePhrase's run (shared/ANCHORS.md)
SOURCE_TEXT = ("Continuous batching keeps a GPU busy only while its batch is full. " * 30)[:2000]
ANSWER = ("Q: What keeps a GPU busy?\nA: A full batch. " * 60)[:1500]


def cpu_seconds(fn, repeat: int) -> float:
    """CPU seconds per call of ``fn`` (the process's own CPU time, not the wall clock)."""
    start = time.process_time()
    for _ in range(repeat):
        fn()
    return (time.process_time() - start) / repeat


def polling(folder: str, servers: int = 100) -> dict:
    path = os.path.join(folder, "endpoints.txt")
    with open(path, "w") as f:
        f.writelines(f"gpu-node-{i:04d}:8000\n" for i in range(servers))
    assert len(read_endpoints_file(path)) == servers
    per_read = cpu_seconds(lambda: read_endpoints_file(path), 2000)
    interval = inspect.signature(ReplicaPool).parameters["refresh_interval"].default
    return {"servers": servers, "per_read_us": per_read * 1e6, "interval_s": interval,
            "tasks": {n: {"reads_per_s": n / interval, "cpu_cores": n / interval * per_read} for n in (100, 10_000)}}


def rephrased_lines(folder: str, documents: int, files: int) -> None:
    out = RunPaths(folder).w("rephrased")
    os.makedirs(out, exist_ok=True)
    entry = {"text": ANSWER, "model": "HuggingFaceTB/SmolLM2-1.7B-Instruct", "prompt": "faq", "prompt_tokens": 620,
             "completion_tokens": 360, "finish_reason": "stop", "generation_params": {"max_new_tokens": 512}}
    per_file = documents // files
    for i in range(files):
        with open(os.path.join(out, f"{i:05d}_chunk_0.jsonl"), "wb") as f:
            for j in range(per_file):
                doc = {"text": SOURCE_TEXT, "id": f"doc-{i}-{j}", "metadata": {ROLLOUTS: [{"faq": entry}]}}
                f.write(orjson.dumps(doc) + b"\n")


def status_scan(folder: str, documents: int, files: int) -> dict:
    rephrased_lines(folder, documents, files)
    start = time.perf_counter()
    docs, tokens = rephrased_progress(folder)
    wall = time.perf_counter() - start
    assert docs == documents // files * files and tokens == docs * 360
    size = sum(p.stat().st_size for p in Path(RunPaths(folder).w("rephrased")).iterdir())
    per_doc = wall / docs
    return {"documents": docs, "bytes_per_document": size / docs, "per_document_us": per_doc * 1e6,
            "finephrase_call_s": per_doc * FINEPHRASE_DOCUMENTS,
            "finephrase_bytes": size / docs * FINEPHRASE_DOCUMENTS}


def table(p: dict, s: dict) -> str:
    lines = ["# What breaks first at FinePhrase's size: two costs measured here", "",
             "Command: `python benchmarks/scale_probe.py`  ",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, local disk (a shared file system adds its own "
             "round trip per read, not measured)", "",
             "| cost | measured here | at FinePhrase's size |", "|---|---|---|"]
    for n, t in p["tasks"].items():
        lines.append(f"| endpoint polling, {n:,} tasks (a {p['servers']}-line file every {p['interval_s']:g} s) | "
                     f"{p['per_read_us']:.1f} µs CPU per read | {t['reads_per_s']:,.0f} reads/s of one file, "
                     f"{t['cpu_cores']:.4f} cores of client CPU in all |")
    lines.append(f"| `finephrase status`' scan of the rephrase output ({s['documents']:,} documents of "
                 f"{s['bytes_per_document']:,.0f} bytes, from the page cache) | {s['per_document_us']:.2f} µs per document | "
                 f"{s['finephrase_call_s'] / 3600:,.1f} h per `status` call over 339M documents "
                 f"of CPU alone, and {s['finephrase_bytes'] / 1e12:,.2f} TB read from the shared file system |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--documents", type=int, default=20_000)
    ap.add_argument("--files", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        p = polling(folder)
        s = status_scan(folder, args.documents, args.files)
    text = table(p, s)
    print(text)
    out = ROOT / "benchmarks" / "results" / "scale_probe.md"
    out.write_text(text)
    print(f"written: {out}")


if __name__ == "__main__":
    main()
