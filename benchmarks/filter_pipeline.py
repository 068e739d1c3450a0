"""Benchmark: what finephrase's recipe layer costs over datatrove on the CPU side of a run.

The same steps on the same 20,000 documents, in one run, each pipeline run by datatrove's
``LocalPipelineExecutor`` (same tasks, workers, start method):

- ``datatrove``: written by hand from datatrove's own classes — ``JsonlReader`` -> ``LambdaFilter``
  (minimum characters) -> ``LanguageFilter`` (lid.176, the model given as a local file, since this
  machine has no internet) -> ``FastTextClassifierFilter`` (the demo quality model, whole documents, line breaks
  as spaces: the text finephrase's filter and its training see; datatrove's default joins lines with no space,
  which changes the words and the scores) -> ``JsonlWriter``,
  then the four MinHash stages (signatures, buckets, cluster, filter);
- ``finephrase``: the stages ``finephrase.pipeline.build.build_stages`` makes from a recipe with the same
  filters and MinHash settings (up to the MinHash filter: no rephrase), run by
  ``finephrase.pipeline.build.run_local``.

The documents are windows of lines of the demo corpus (the Python docs), cycled (0.9 x as many
distinct windows as documents), so the last tenth are exact duplicates for MinHash to find. Both pipelines must keep the same documents (checked).
Rounds are interleaved; the median wall time of each is compared and printed as a ratio, and the table goes to
``benchmarks/results/filter_pipeline.md``. Usage::

    python benchmarks/filter_pipeline.py [--documents 20000] [--rounds 3] [--tasks 2]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from finephrase.plan import resolve

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

MIN_CHARS, LID_THRESHOLD, QUALITY_THRESHOLD = 200, 0.5, 0.2
MINHASH = {"n_grams": 5, "num_buckets": 14, "hashes_per_bucket": 8}


def make_documents(demo: Path, n: int, out: Path) -> None:
    """``n`` documents: windows of consecutive lines (300 to ~1,500 characters) of the demo pages, cycled."""
    windows = []
    with gzip.open(demo / "docs.jsonl.gz", "rt") as f:
        for line in f:
            lines, current = json.loads(line)["text"].split("\n"), []
            for text in lines:
                current.append(text)
                if sum(map(len, current)) >= 300:
                    windows.append("\n".join(current)[:1500])
                    current = []
    windows = windows[:int(n * 0.9)]  # the last 10 % repeat earlier documents: duplicates for MinHash
    out.mkdir(parents=True)
    with gzip.open(out / "docs.jsonl.gz", "wt") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"d{i}", "text": windows[i % len(windows)]}) + "\n")
    print(f"{n:,} documents from {len(windows):,} distinct windows of the demo corpus")


def datatrove_stages(src: Path, work: Path, tasks: int) -> list[tuple[str, list, int]]:
    from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, \
        MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig
    from datatrove.pipeline.filters import FastTextClassifierFilter, LambdaFilter, LanguageFilter
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    from finephrase.pipeline.filters.language import default_lid_model

    lid = LanguageFilter(languages=["en"], language_threshold=LID_THRESHOLD)
    lid.model.MODEL_URL = default_lid_model()  # datatrove's FastTextLID downloads from this URL; a local file here
    cfg = MinhashConfig(**MINHASH)
    w = str(work)
    return [
        ("filter", [JsonlReader(str(src)), LambdaFilter(lambda d: len(d.text) >= MIN_CHARS), lid,
                    FastTextClassifierFilter(str(ROOT / "data/demo/quality.ftz"), keep_labels=[("hq", QUALITY_THRESHOLD)],
                                             filter_mode="DOCUMENT", newline_replacement=" "),
                    JsonlWriter(f"{w}/filtered")], tasks),
        ("sigs", [JsonlReader(f"{w}/filtered"), MinhashDedupSignature(f"{w}/sigs", cfg)], tasks),
        ("buckets", [MinhashDedupBuckets(f"{w}/sigs", f"{w}/buckets", config=cfg)], MINHASH["num_buckets"]),
        ("cluster", [MinhashDedupCluster(f"{w}/buckets", f"{w}/clusters", config=cfg)], 1),
        ("dedup", [JsonlReader(f"{w}/filtered"), MinhashDedupFilter(f"{w}/clusters"), JsonlWriter(f"{w}/deduped")],
         tasks),
    ]


def run_datatrove(src: Path, work: Path, tasks: int) -> Path:
    from datatrove.executor import LocalPipelineExecutor

    previous = None
    for name, pipeline, n in datatrove_stages(src, work, tasks):
        previous = LocalPipelineExecutor(pipeline=pipeline, tasks=n, workers=min(tasks, n),
                                         logging_dir=str(work / "logs" / name), depends=previous,
                                         skip_completed=True, start_method="forkserver")
    previous.run()
    return work / "deduped"


def run_finephrase(src: Path, work: Path, tasks: int) -> Path:
    from finephrase.inference.client.backends import GeneratorRuntime
    from finephrase.pipeline.build import build_stages, run_local
    from finephrase.recipe import parse_recipe
    from finephrase import stats as names

    recipe = parse_recipe({
        "name": "bench", "source": {"kind": "jsonl", "path": str(src)},
        "filters": {"min_chars": MIN_CHARS, "language": {"languages": ["en"], "threshold": LID_THRESHOLD},
                    "quality": {"model": str(ROOT / "data/demo/quality.ftz"), "threshold": QUALITY_THRESHOLD}},
        "dedup": {"minhash": MINHASH}, "prompts": ["finephrase/faq"],
        "generator": {"server": "openai", "endpoints": ["http://127.0.0.1:9"]}, "run": {"tasks": tasks}})
    stages = build_stages(resolve(recipe), str(work), GeneratorRuntime(), tasks=tasks)
    last = next(i for i, s in enumerate(stages) if s.name == names.STAGE_MINHASH_FILTER)
    run_local(stages[:last + 1], str(work), workers=tasks)
    return work / ".finephrase" / "deduped"


def kept_ids(folder: Path) -> list[str]:
    ids = []
    for f in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(f, "rt") as fh:
            ids += [json.loads(line)["id"] for line in fh]
    return sorted(ids)


def timed(run, src: Path, tmp: Path, tasks: int) -> tuple[float, list[str]]:
    work = Path(tempfile.mkdtemp(dir=tmp))
    start = time.perf_counter()
    out = run(src, work, tasks)
    elapsed = time.perf_counter() - start
    ids = kept_ids(out)
    shutil.rmtree(work)
    return elapsed, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--documents", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tasks", type=int, default=2)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fp-filter-bench-"))
    try:
        src = tmp / "src"
        make_documents(ROOT / "data" / "demo", args.documents, src)
        times: dict[str, list[float]] = {"datatrove": [], "finephrase": []}
        kept: dict[str, list[str]] = {}
        for r in range(args.rounds):
            for name, run in (("datatrove", run_datatrove), ("finephrase", run_finephrase)):
                elapsed, kept[name] = timed(run, src, tmp, args.tasks)
                times[name].append(elapsed)
                print(f"round {r + 1} {name}: {elapsed:.1f} s, {len(kept[name]):,} documents kept", flush=True)
        if kept["datatrove"] != kept["finephrase"]:
            raise SystemExit("the two pipelines kept different documents: not the same steps")
        report(times, args, len(kept["datatrove"]))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(times: dict[str, list[float]], args, kept: int) -> None:
    base, ours = statistics.median(times["datatrove"]), statistics.median(times["finephrase"])
    ratio = ours / base
    line = f"ratio finephrase/datatrove wall time: {ratio:.3f} (median {ours:.1f} s vs {base:.1f} s; overhead " \
           f"{(ratio - 1) * 100:+.1f} %)"
    print(line)
    rows = "\n".join(f"| {name} | {statistics.median(t):.1f} | {', '.join(f'{x:.1f}' for x in t)} |"
                     for name, t in times.items())
    text = f"""# Filter + MinHash pipeline: finephrase's recipe vs datatrove by hand

Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.
{args.documents:,} documents, {args.tasks} tasks, {args.rounds} interleaved rounds; both kept the same {kept:,} documents.
Command: `python benchmarks/filter_pipeline.py --documents {args.documents} --rounds {args.rounds} --tasks {args.tasks}`

| pipeline | median wall time (s) | runs (s) |
|---|---:|---|
{rows}

- {line}
"""
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "filter_pipeline.md").write_text(text)


if __name__ == "__main__":
    main()
