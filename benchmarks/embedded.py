"""Benchmark: the embedded generator's two engines on the same machine, prompts and concurrency, in one run, with
the settings ``generator.engine: auto`` chose here, and what ``auto`` decides for the demo.

1. this machine's calibration (:mod:`finephrase.inference.servers.calibration`: cached, else measured now; ``--recalibrate``
   measures again): vLLM's dtype (:mod:`finephrase.inference.servers.cpu_dtype`) and the model's cores come from it;
2. ``llama.cpp``: finephrase's default embedded servers (one process per core, one thread each);
3. ``vLLM``: vLLM's CPU build, one server, in the dtype and on the cores auto chose (``--float32`` adds a float32
   row on the same cores), on the same SmolLM2-135M-Instruct GGUF converted once;
4. ``auto``'s decision for ``pipelines/demo.yaml`` (its expected completion tokens) from the calibration.

Each engine is started by finephrase itself (``EmbeddedBackend.make_servers``) and timed until it has generated
(start-up); then ``--requests`` chat completions — the packaged ``finephrase/faq`` prompt over pages of the demo
corpus (~550 prompt tokens), ``--max-tokens`` new tokens each, temperature 0 — are sent with ``--concurrency`` in
flight. Completion tokens are the servers' own ``usage`` counts. The table goes to
``benchmarks/results/embedded.md``. Usage::

    python benchmarks/embedded.py [--requests 48] [--concurrency 16] [--max-tokens 128] [--float32] [--recalibrate]
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def demo_pages(n: int) -> list[str]:
    """The first ``n`` demo pages of 1,500 characters or more, cut at 1,800."""
    pages = []
    with gzip.open(ROOT / "data" / "demo" / "docs.jsonl.gz", "rt") as f:
        for line in f:
            text = json.loads(line)["text"]
            if len(text) >= 1500:
                pages.append(text[:1800])
            if len(pages) >= n:
                break
    return pages


def measure(engine: str, payloads: list[dict], concurrency: int, **settings) -> dict:
    from finephrase.inference.client.backends import EmbeddedBackend
    from finephrase.inference.servers.calibration import measure_servers

    row = measure_servers(EmbeddedBackend.make_servers(engine=engine, n_ctx=2048, **settings), payloads, concurrency)
    print(f"{row['engine']} ({row.get('dtype') or 'GGUF Q4_1'}): {row['servers']} server(s) x {row['threads']} "
          f"thread(s), started in {row['startup_s']:.0f} s, {row['tokens']} completion tokens in {row['wall_s']:.1f} "
          f"s = {row['tokens_per_s']:.1f} tokens/s", flush=True)
    return row


def demo_decision(calibration) -> tuple[float, str]:
    from finephrase.inference.servers.engine_choice import choose_engine
    from finephrase.recipe import load_recipe
    from finephrase.run_size import expected_completion_tokens

    tokens = expected_completion_tokens(load_recipe(str(ROOT / "pipelines" / "demo.yaml")))
    choice = choose_engine("auto", True, tokens, calibration)
    return tokens, f"{choice.engine} — {choice.reason}"


def report(rows: list[dict], calibration, demo: tuple[float, str], args, load: str) -> str:
    llama, vllm = rows[0], rows[1]
    from finephrase.inference.servers.calibration import EngineCost
    from finephrase.inference.servers.engine_choice import break_even_tokens

    ratio = vllm["tokens_per_s"] / llama["tokens_per_s"]
    limit = break_even_tokens(EngineCost(llama["startup_s"], llama["tokens_per_s"]),
                              EngineCost(vllm["startup_s"], vllm["tokens_per_s"]))
    lines = [
        "# Embedded engines: llama.cpp vs vLLM (CPU build)", "",
        f"`python benchmarks/embedded.py --requests {args.requests} --concurrency {args.concurrency} "
        f"--max-tokens {args.max_tokens}{' --float32' if args.float32 else ''}` on {calibration.key['cpu']} "
        f"({platform.machine()}, {os.cpu_count()} cores), {time.strftime('%Y-%m-%d')}: the packaged `finephrase/faq` "
        "prompt over demo pages, SmolLM2-135M-Instruct (the same GGUF; vLLM's copy converted once), temperature 0, "
        f"all engines started by finephrase in the same run, back to back. Load: {load}.", "",
        "| engine | dtype | servers x threads | start-up (s) | completion tokens | wall (s) | completion tokens/s |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['engine']} | {(r.get('dtype') or 'GGUF Q4_1').split(':')[0]} | {r['servers']} x {r['threads']} | "
              f"{r['startup_s']:.0f} | {r['tokens']} | {r['wall_s']:.1f} | {r['tokens_per_s']:.1f} |" for r in rows]
    lines += ["", f"**vLLM ({vllm.get('dtype', '').split(':')[0]}) / llama.cpp completion tokens/s: {ratio:.2f}**; "
              f"vLLM starts {vllm['startup_s'] - llama['startup_s']:.0f} s later, paid back above ~{limit:,.0f} "
              "completion tokens (these figures).", "",
              f"- vLLM dtype: {vllm.get('dtype')}", f"- vLLM cores: {vllm.get('threads_choice')}",
              f"- calibration (what `auto` decides on, {calibration.key}): {calibration.describe()}",
              f"- `auto` for `pipelines/demo.yaml` (~{demo[0]:,.0f} completion tokens expected): **{demo[1]}**"]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--float32", action="store_true", help="add a vLLM float32 row on the same cores")
    ap.add_argument("--recalibrate", action="store_true", help="measure this machine's calibration again")
    ap.add_argument("--out", default=str(HERE / "results" / "embedded.md"))
    args = ap.parse_args()
    from finephrase.inference.client.backends import EmbeddedBackend
    from finephrase.inference.servers.calibration import calibrate, machine_calibration, payloads
    from finephrase.inference.servers.cpu_dtype import DtypeChoice, machine_dtype
    from finephrase.inference.servers.vllm_setup import require_vllm_python

    load = f"load average {os.getloadavg()[0]:.1f} at the start"
    python = require_vllm_python()
    make_servers = EmbeddedBackend.make_servers
    calibration = (calibrate(python, make_servers) if args.recalibrate
                   else machine_calibration(python, make_servers, log=print))
    print(calibration.describe(), flush=True)
    batch = payloads(args.requests, args.max_tokens, demo_pages(args.requests))
    rows = [measure("llama.cpp", batch, args.concurrency),
            measure("vllm", batch, args.concurrency, dtype=machine_dtype())]
    if args.float32:
        rows.append(measure("vllm", batch, args.concurrency, replicas=1, threads=rows[1]["threads"],
                            dtype=DtypeChoice("float32", "float32: asked for (--float32)")))
    load += f", {os.getloadavg()[0]:.1f} at the end (2 cores shared with other work)"
    demo = demo_decision(calibration)
    text = report(rows, calibration, demo, args, load)
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
