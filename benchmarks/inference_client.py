"""Benchmark: is finephrase's inference client ever the bottleneck?

Measured in one run, each client in its own process pinned to CPU 0 (the server on CPU 1):

1. against an instant local server (``instant_server.py``: fixed completion, as fast as it can):
   requests/s and client CPU-µs per request for
   - ``bare``: a bare asyncio load generator (one aiohttp session, a semaphore) — the ceiling,
   - ``bare-tuned``: the same generator with finephrase's aiohttp settings (no cookie jar, URL parsed
     once, orjson, no per-request timer) and garbage-collector settings (see
     ``LeanInferenceRunner.run``): the gap to it is finephrase's own bookkeeping,
   - ``finephrase``: the ``Rephrase`` step as ``finephrase run`` uses it (``LeanInferenceRunner``, finephrase's
     own loop as a datatrove step, checkpoints + request cache, LeanJsonlWriter),
   - ``finephrase-no-checkpoints``: the same step without checkpoints and request cache (no resume),
   - ``datatrove``: datatrove's own ``InferenceRunner`` with ``server_type="endpoint"``, same settings
     (checkpoints + request cache),
   at concurrency 16, 64 and 256, each the median of ``--rounds`` interleaved runs (this 2-core VM is
   noisy: single runs move by ±15 %). Every client gets the same documents already in memory; the
   reader's own CPU per document is reported on its own line;
2. against the real embedded llama.cpp server (SmolLM2-135M, two replicas): completion tokens/s
   for finephrase vs. the bare generator with the same prompts and concurrency.

Every comparison is printed on a line containing ``ratio`` and the table is written to
``benchmarks/results/inference_client.md``. Usage::

    python benchmarks/inference_client.py [--requests 20000] [--concurrency 16 64 256] [--rounds 3] [--skip-real]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import multiprocessing as mp
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

DOC_TEXT = ("The collections module provides specialized container datatypes. " * 12).strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pin(cpu: int) -> None:
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > cpu:
        os.sched_setaffinity(0, {cpu})


def cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_input(folder: str, n: int) -> str:
    os.makedirs(folder, exist_ok=True)
    with gzip.open(os.path.join(folder, "docs.jsonl.gz"), "wt") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"doc-{i}", "text": f"{i}. {DOC_TEXT}"}) + "\n")
    return folder


def prompt():
    from finephrase.prompts import load_prompt

    return load_prompt("finephrase/faq")


# --------------------------------------------------------------------------- clients (run in subprocesses)
def client_bare(endpoints: list[str], n: int, concurrency: int, params: dict, docs: list[str], out: mp.Queue,
                tuned: bool = False):
    """The ceiling: one aiohttp session, a semaphore, the same payloads finephrase sends.

    ``tuned``: the same session settings finephrase uses (no cookie jar, URL parsed once, orjson, no
    per-request timer) and the same garbage-collector settings (heap frozen, young collections every
    10,000 allocations) — what is left between it and finephrase is finephrase's own bookkeeping."""
    pin(0)
    import gc

    import aiohttp
    import orjson
    from yarl import URL

    p = prompt()

    async def main():
        sem = asyncio.Semaphore(concurrency)
        completion_tokens = 0
        kwargs = {"connector": aiohttp.TCPConnector(limit=0)}
        if tuned:
            kwargs.update(cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=None),
                          headers={"Content-Type": "application/json"})
        urls = [URL(f"{e}/v1/chat/completions") for e in endpoints]
        async with aiohttp.ClientSession(**kwargs) as session:
            async def one(i):
                nonlocal completion_tokens
                payload = {"messages": p.render(docs[i % len(docs)]), "max_tokens": params["max_new_tokens"],
                           "model": params.get("model", "default")}
                for key in ("temperature", "top_p", "seed"):
                    if key in params:
                        payload[key] = params[key]
                async with sem:
                    if tuned:
                        async with session.post(urls[i % len(urls)], data=orjson.dumps(payload)) as r:
                            data = orjson.loads(await r.read())
                    else:
                        url = endpoints[i % len(endpoints)]
                        async with session.post(f"{url}/v1/chat/completions", json=payload) as r:
                            data = await r.json(content_type=None)
                completion_tokens += data["usage"]["completion_tokens"]

            await asyncio.gather(*(one(i) for i in range(n)))
        return completion_tokens

    t0, c0 = time.perf_counter(), cpu_seconds()
    if tuned:
        from finephrase.inference.runner.loop import LeanInferenceRunner

        gc.freeze()
        gc.set_threshold(*LeanInferenceRunner.gc_threshold)
    tokens = asyncio.run(main())
    out.put({"wall": time.perf_counter() - t0, "cpu": cpu_seconds() - c0, "requests": n, "completion_tokens": tokens})


def client_bare_tuned(endpoints, n, concurrency, params, docs, out):
    client_bare(endpoints, n, concurrency, params, docs, out, tuned=True)


def _load_documents(input_folder: str) -> list:
    """The input documents, read before timing: reading is the reader's step, measured on its own."""
    from finephrase.pipeline.readers.jsonl import SafeJsonlReader

    return list(SafeJsonlReader(input_folder, glob_pattern="*.jsonl.gz").run(None, 0, 1))


def _drain(docs: list):
    """Yield the documents and drop them: like a reader's stream, a processed document is not kept alive."""
    docs.reverse()
    while docs:
        yield docs.pop()


def _run_step(step, input_folder: str, n: int):
    docs = _load_documents(input_folder)[:n]
    t0, c0 = time.perf_counter(), cpu_seconds()
    step.run(_drain(docs), 0, 1)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return wall, cpu, step.stats.stats


def client_reader(input_folder: str, out: mp.Queue):
    """The reader alone (SafeJsonlReader over the gzipped JSONL input): CPU per document."""
    pin(0)
    from loguru import logger

    logger.remove()
    from finephrase.pipeline.readers.jsonl import SafeJsonlReader

    reader = SafeJsonlReader(input_folder, glob_pattern="*.jsonl.gz")
    t0, c0 = time.perf_counter(), cpu_seconds()
    count = sum(1 for _ in reader.run(None, 0, 1))
    out.put({"wall": time.perf_counter() - t0, "cpu": cpu_seconds() - c0, "requests": count, "completion_tokens": 0})


def client_finephrase(endpoints, n, concurrency, params, input_folder, work, out, checkpoints=True):
    pin(0)
    from loguru import logger

    logger.remove()
    from finephrase.pipeline.rephrase import Rephrase

    step = Rephrase([prompt()], output_folder=os.path.join(work, "out"), endpoints=endpoints,
                    generation_params=params, concurrency=concurrency,
                    checkpoints_dir=os.path.join(work, "ckpt") if checkpoints else None,
                    records_per_chunk=6000, context_length=4096)
    wall, cpu, stats = _run_step(step, input_folder, n)
    tokens = int(sum(v.total for k, v in stats.items() if k.startswith("completion_tokens/")))
    out.put({"wall": wall, "cpu": cpu, "requests": n, "completion_tokens": tokens})


def client_finephrase_no_checkpoints(endpoints, n, concurrency, params, input_folder, work, out):
    """The same step without checkpoints / request cache (no resume): what resumability costs."""
    client_finephrase(endpoints, n, concurrency, params, input_folder, work, out, checkpoints=False)


def client_datatrove(endpoint, n, concurrency, params, input_folder, work, out):
    pin(0)
    from datatrove.pipeline.inference.run_inference import InferenceConfig, InferenceRunner
    from datatrove.pipeline.writers.jsonl import JsonlWriter
    from loguru import logger

    logger.remove()
    p = prompt()

    async def rollout(document, generate):
        payload = {"messages": p.render(document.text), "max_tokens": params["max_new_tokens"]}
        result = await generate(payload)
        return result.text

    config = InferenceConfig(server_type="endpoint", model_name_or_path="default", endpoint_url=endpoint,
                             max_concurrent_generations=concurrency, metric_interval=3600,
                             default_generation_params={k: v for k, v in params.items() if k != "max_new_tokens"})
    writer = JsonlWriter(os.path.join(work, "out"), output_filename="${rank}_chunk_${chunk_index}.jsonl.gz")
    step = InferenceRunner(rollout, config, writer, checkpoints_local_dir=os.path.join(work, "ckpt"),
                           records_per_chunk=6000)
    wall, cpu, _ = _run_step(step, input_folder, n)
    out.put({"wall": wall, "cpu": cpu, "requests": n, "completion_tokens": 0})


def measure(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, q))
    proc.start()
    result = q.get(timeout=900)
    proc.join()
    return result


def median(values: list[float]) -> float:
    values = sorted(values)
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


# --------------------------------------------------------------------------- runs
CLIENTS = ("bare", "bare-tuned", "finephrase", "finephrase-no-checkpoints", "datatrove")


def instant_section(n: int, concurrencies: list[int], rounds: int, datatrove_requests: int, lines: list[str]) -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, str(HERE / "instant_server.py"), str(port), "1"], stdout=subprocess.PIPE,
                              text=True)
    assert server.stdout.readline().strip() == "READY"
    url = f"http://127.0.0.1:{port}"
    params = {"max_new_tokens": 64, "temperature": 0.0, "seed": 0}
    lines.append(f"## 1. Instant server, {n:,} requests per run, median of {rounds} interleaved rounds "
                 f"(client pinned to CPU 0, server to CPU 1)\n")
    lines.append("All clients get the same documents already in memory (reading the input is the reader's step: "
                 "its cost is on its own line below). `datatrove` runs once per concurrency with "
                 f"{datatrove_requests:,} requests: it is far from the ceiling.\n")
    lines.append("| concurrency | client | requests/s | client CPU µs/request | runs (requests/s) |")
    lines.append("|---:|---|---:|---:|---|")
    ratios = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            input_folder = make_input(os.path.join(tmp, "input"), n)
            docs = [f"{i}. {DOC_TEXT}" for i in range(n)]
            reader = measure(client_reader, input_folder)
            for c in concurrencies:
                runs: dict[str, list[dict]] = {name: [] for name in CLIENTS}
                for rnd in range(rounds):
                    runs["bare"].append(measure(client_bare, [url], n, c, params, docs))
                    runs["bare-tuned"].append(measure(client_bare_tuned, [url], n, c, params, docs))
                    for name, fn in (("finephrase", client_finephrase),
                                     ("finephrase-no-checkpoints", client_finephrase_no_checkpoints)):
                        work = os.path.join(tmp, f"{name}-{c}-{rnd}")
                        runs[name].append(measure(fn, [url], n, c, params, input_folder, work))
                        shutil.rmtree(work, ignore_errors=True)
                work = os.path.join(tmp, f"datatrove-{c}")
                runs["datatrove"].append(measure(client_datatrove, url, datatrove_requests, c, params, input_folder,
                                                 work))
                shutil.rmtree(work, ignore_errors=True)
                res = {}
                for name, rs in runs.items():
                    rps = [r["requests"] / r["wall"] for r in rs]
                    us = [r["cpu"] / r["requests"] * 1e6 for r in rs]
                    res[name] = {"rps": median(rps), "us": median(us)}
                    lines.append(f"| {c} | {name} | {res[name]['rps']:,.0f} | {res[name]['us']:.0f} | "
                                 f"{', '.join(f'{x:,.0f}' for x in rps)} |")
                ratios.append((c, res))
    finally:
        server.kill()
    lines.append("")
    lines.append(f"Reading the input (SafeJsonlReader, gzipped JSONL, {reader['requests']:,} documents): "
                 f"{reader['cpu'] / reader['requests'] * 1e6:.1f} µs CPU per document.")
    lines.append("")
    for c, res in ratios:
        for name in ("finephrase", "finephrase-no-checkpoints", "datatrove"):
            lines.append(f"- ratio {name}/bare requests/s at concurrency {c}: {res[name]['rps'] / res['bare']['rps']:.2f}"
                         f" (client CPU {res[name]['us']:.0f} µs vs {res['bare']['us']:.0f} µs per request)")
        lines.append(f"- ratio finephrase/bare-tuned requests/s at concurrency {c}: "
                     f"{res['finephrase']['rps'] / res['bare-tuned']['rps']:.2f} (client CPU "
                     f"{res['finephrase']['us']:.0f} µs vs {res['bare-tuned']['us']:.0f} µs per request)")
    lines.append("")


def real_section(n_docs: int, concurrency: int, rounds: int, lines: list[str]) -> None:
    from finephrase.inference.servers.embedded import EmbeddedServers

    demo = ROOT / "data" / "demo" / "docs.jsonl.gz"
    docs = []
    with gzip.open(demo, "rt") as f:
        for line in f:
            docs.append(json.loads(line)["text"][:1200])
            if len(docs) == n_docs:
                break
    params = {"max_new_tokens": 64, "temperature": 0.0, "seed": 0}
    lines.append(f"## 2. Real embedded server (SmolLM2-135M on llama.cpp, 2 replicas x 1 thread), "
                 f"{n_docs} documents, concurrency {concurrency}, median of {rounds} alternating rounds\n")
    with tempfile.TemporaryDirectory() as tmp, EmbeddedServers(replicas=2, threads=1, n_ctx=2048) as servers:
        folder = os.path.join(tmp, "input")
        os.makedirs(folder)
        with gzip.open(os.path.join(folder, "docs.jsonl.gz"), "wt") as f:
            for i, d in enumerate(docs):
                f.write(json.dumps({"id": f"doc-{i}", "text": d}) + "\n")
        params_model = {**params, "model": servers.alias}
        # warm-up both replicas, then alternate the order (bare first, then finephrase first) to share any drift
        measure(client_bare, servers.endpoints, 2, 2, params_model, docs)
        runs: dict[str, list[dict]] = {"bare": [], "finephrase": []}
        for rnd in range(rounds):
            order = ("bare", "finephrase") if rnd % 2 == 0 else ("finephrase", "bare")
            for name in order:
                if name == "bare":
                    runs[name].append(measure(client_bare, servers.endpoints, n_docs, concurrency, params_model, docs))
                else:
                    runs[name].append(measure(client_finephrase, servers.endpoints, n_docs, concurrency, params, folder,
                                              os.path.join(tmp, f"fp{rnd}")))
    # finephrase sends `model` from its config; the bare client sends the alias: same server-side work
    lines.append("| client | completion tokens per run | wall s per run | completion tokens/s (median) |")
    lines.append("|---|---:|---|---:|")
    tps = {}
    for name, rs in runs.items():
        tps[name] = median([r["completion_tokens"] / r["wall"] for r in rs])
        walls = ", ".join(f"{r['wall']:.1f}" for r in rs)
        lines.append(f"| {name} | {rs[0]['completion_tokens']} | {walls} | {tps[name]:.1f} |")
    lines.append("")
    lines.append(f"- ratio finephrase/bare completion tokens/s (real server): {tps['finephrase'] / tps['bare']:.2f}")
    lines.append("")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved runs per client; the median is reported")
    ap.add_argument("--datatrove-requests", type=int, default=5000)
    ap.add_argument("--real-docs", type=int, default=24)
    ap.add_argument("--real-concurrency", type=int, default=4)
    ap.add_argument("--real-rounds", type=int, default=2)
    ap.add_argument("--skip-real", action="store_true")
    args = ap.parse_args()
    lines = ["# Inference client benchmark", "",
             f"Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", ""]
    instant_section(args.requests, args.concurrency, args.rounds, args.datatrove_requests, lines)
    if not args.skip_real:
        real_section(args.real_docs, args.real_concurrency, args.real_rounds, lines)
    text = "\n".join(lines)
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "inference_client.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
