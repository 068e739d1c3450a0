"""Benchmark: is finephrase's inference client ever the bottleneck?

Measured in one run, each client in its own process pinned to CPU 0 (the server on CPU 1):

1. against an instant local server (``instant_server.py``: fixed completion, as fast as it can):
   requests/s and client CPU-µs per request for
   - ``bare``: a bare asyncio load generator (one aiohttp session, a semaphore) — the ceiling,
   - ``finephrase``: the ``Rephrase`` step as ``finephrase run`` uses it (datatrove InferenceRunner,
     checkpoints + request cache, JsonlWriter),
   - ``finephrase-no-checkpoints``: the same step without checkpoints and request cache (no resume),
   - ``datatrove``: datatrove's own ``InferenceRunner`` with ``server_type="endpoint"``, same settings
     (checkpoints + request cache),
   at concurrency 16, 64 and 256;
2. against the real embedded llama.cpp server (SmolLM2-135M, two replicas): completion tokens/s
   for finephrase vs. the bare generator with the same prompts and concurrency.

Every comparison is printed on a line containing ``ratio`` and the table is written to
``benchmarks/results/inference_client.md``. Usage::

    python benchmarks/inference_client.py [--requests 20000] [--concurrency 16 64 256] [--skip-real]
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
def client_bare(endpoints: list[str], n: int, concurrency: int, params: dict, docs: list[str], out: mp.Queue):
    """The ceiling: one aiohttp session, a semaphore, the same payloads finephrase sends."""
    pin(0)
    import aiohttp

    p = prompt()

    async def main():
        sem = asyncio.Semaphore(concurrency)
        completion_tokens = 0
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            async def one(i):
                nonlocal completion_tokens
                payload = {"messages": p.render(docs[i % len(docs)]), "max_tokens": params["max_new_tokens"],
                           "model": params.get("model", "default")}
                for key in ("temperature", "top_p", "seed"):
                    if key in params:
                        payload[key] = params[key]
                async with sem:
                    url = endpoints[i % len(endpoints)]
                    async with session.post(f"{url}/v1/chat/completions", json=payload) as r:
                        data = await r.json(content_type=None)
                completion_tokens += data["usage"]["completion_tokens"]

            await asyncio.gather(*(one(i) for i in range(n)))
        return completion_tokens

    t0, c0 = time.perf_counter(), cpu_seconds()
    tokens = asyncio.run(main())
    out.put({"wall": time.perf_counter() - t0, "cpu": cpu_seconds() - c0, "requests": n, "completion_tokens": tokens})


def _run_step(step, input_folder: str):
    from finephrase.steps.read_jsonl import SafeJsonlReader

    reader = SafeJsonlReader(input_folder, glob_pattern="*.jsonl.gz")
    t0, c0 = time.perf_counter(), cpu_seconds()
    step.run(reader.run(None, 0, 1), 0, 1)
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    return wall, cpu, step.stats.stats


def client_finephrase(endpoints, n, concurrency, params, input_folder, work, out, checkpoints=True):
    pin(0)
    from loguru import logger

    logger.remove()
    from finephrase.steps.rephrase import Rephrase

    step = Rephrase([prompt()], output_folder=os.path.join(work, "out"), endpoints=endpoints,
                    generation_params=params, concurrency=concurrency,
                    checkpoints_dir=os.path.join(work, "ckpt") if checkpoints else None,
                    records_per_chunk=6000, context_length=4096)
    wall, cpu, stats = _run_step(step, input_folder)
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
    wall, cpu, _ = _run_step(step, input_folder)
    out.put({"wall": wall, "cpu": cpu, "requests": n, "completion_tokens": 0})


def measure(target, *args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, q))
    proc.start()
    result = q.get(timeout=900)
    proc.join()
    return result


# --------------------------------------------------------------------------- runs
def instant_section(n: int, concurrencies: list[int], lines: list[str]) -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, str(HERE / "instant_server.py"), str(port), "1"], stdout=subprocess.PIPE,
                              text=True)
    assert server.stdout.readline().strip() == "READY"
    url = f"http://127.0.0.1:{port}"
    params = {"max_new_tokens": 64, "temperature": 0.0, "seed": 0}
    lines.append(f"## 1. Instant server, {n:,} requests per client (client pinned to CPU 0, server to CPU 1)\n")
    lines.append("| concurrency | client | requests/s | client CPU µs/request |")
    lines.append("|---:|---|---:|---:|")
    ratios = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            input_folder = make_input(os.path.join(tmp, "input"), n)
            docs = [f"{i}. {DOC_TEXT}" for i in range(n)]
            for c in concurrencies:
                res = {}
                res["bare"] = measure(client_bare, [url], n, c, params, docs)
                for name, fn, target in (("finephrase", client_finephrase, [url]),
                                         ("finephrase-no-checkpoints", client_finephrase_no_checkpoints, [url]),
                                         ("datatrove", client_datatrove, url)):
                    work = os.path.join(tmp, f"{name}-{c}")
                    res[name] = measure(fn, target, n, c, params, input_folder, work)
                    shutil.rmtree(work, ignore_errors=True)
                for name, r in res.items():
                    rps = r["requests"] / r["wall"]
                    r["rps"], r["us"] = rps, r["cpu"] / r["requests"] * 1e6
                    lines.append(f"| {c} | {name} | {rps:,.0f} | {r['us']:.0f} |")
                ratios.append((c, res))
    finally:
        server.kill()
    lines.append("")
    for c, res in ratios:
        for name in ("finephrase", "finephrase-no-checkpoints", "datatrove"):
            lines.append(f"- ratio {name}/bare requests/s at concurrency {c}: {res[name]['rps'] / res['bare']['rps']:.2f}"
                         f" (client CPU {res[name]['us']:.0f} µs vs {res['bare']['us']:.0f} µs per request)")
    lines.append("")


def real_section(n_docs: int, concurrency: int, lines: list[str]) -> None:
    from finephrase.servers.embedded import EmbeddedServers

    demo = ROOT / "data" / "demo" / "docs.jsonl.gz"
    docs = []
    with gzip.open(demo, "rt") as f:
        for line in f:
            docs.append(json.loads(line)["text"][:1200])
            if len(docs) == n_docs:
                break
    params = {"max_new_tokens": 64, "temperature": 0.0, "seed": 0}
    lines.append(f"## 2. Real embedded server (SmolLM2-135M on llama.cpp, 2 replicas x 1 thread), "
                 f"{n_docs} documents, concurrency {concurrency}\n")
    with tempfile.TemporaryDirectory() as tmp, EmbeddedServers(replicas=2, threads=1, n_ctx=2048) as servers:
        folder = os.path.join(tmp, "input")
        os.makedirs(folder)
        with gzip.open(os.path.join(folder, "docs.jsonl.gz"), "wt") as f:
            for i, d in enumerate(docs):
                f.write(json.dumps({"id": f"doc-{i}", "text": d}) + "\n")
        params_model = {**params, "model": servers.alias}
        # warm-up both replicas, then alternate the order to share any drift
        measure(client_bare, servers.endpoints, 2, 2, params_model, docs)
        bare = measure(client_bare, servers.endpoints, n_docs, concurrency, params_model, docs)
        fp = measure(client_finephrase, servers.endpoints, n_docs, concurrency, params, folder, os.path.join(tmp, "fp"))
    # finephrase sends `model` from its config; the bare client sends the alias: same server-side work
    for name, r in (("bare", bare), ("finephrase", fp)):
        r["tps"] = r["completion_tokens"] / r["wall"]
    lines.append("| client | completion tokens | wall s | completion tokens/s |")
    lines.append("|---|---:|---:|---:|")
    for name, r in (("bare", bare), ("finephrase", fp)):
        lines.append(f"| {name} | {r['completion_tokens']} | {r['wall']:.1f} | {r['tps']:.1f} |")
    lines.append("")
    lines.append(f"- ratio finephrase/bare completion tokens/s (real server): {fp['tps'] / bare['tps']:.2f}")
    lines.append("")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[16, 64, 256])
    ap.add_argument("--real-docs", type=int, default=24)
    ap.add_argument("--real-concurrency", type=int, default=4)
    ap.add_argument("--skip-real", action="store_true")
    args = ap.parse_args()
    lines = ["# Inference client benchmark", "",
             f"Machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.", ""]
    instant_section(args.requests, args.concurrency, lines)
    if not args.skip_real:
        real_section(args.real_docs, args.real_concurrency, lines)
    text = "\n".join(lines)
    print(text)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "inference_client.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
