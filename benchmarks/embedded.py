"""Benchmark: the embedded generator's two engines on the same machine, prompts and concurrency, in one run.

- ``llama.cpp``: finephrase's default embedded servers (llama-cpp-python, one process per core, one thread each);
- ``vLLM``: vLLM's CPU build (``finephrase setup-embedded --engine vllm``), one server on every core (continuous
  batching), on the same SmolLM2-135M-Instruct GGUF converted once (``finephrase.inference.servers.gguf_convert``).

Each engine is started by finephrase itself (``EmbeddedBackend.make_servers``: the supervised pool a run uses) and
timed until it has generated (start-up); then ``--requests`` chat completions — the packaged ``finephrase/faq``
prompt over pages of the demo corpus (~550 prompt tokens), ``--max-tokens`` new tokens each, temperature 0 — are
sent with ``--concurrency`` in flight. Completion tokens are the servers' own ``usage`` counts. Printed: start-up,
completion tokens/s, the ratio vLLM / llama.cpp, and the number of completion tokens above which vLLM's longer
start-up is paid back (what ``generator.engine: auto`` decides on). The table goes to
``benchmarks/results/embedded.md``. Usage::

    python benchmarks/embedded.py [--requests 64] [--concurrency 16] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


def requests_for(n: int, max_tokens: int) -> list[dict]:
    """``n`` chat payloads: the faq prompt over the first demo pages of 1,500-3,000 characters (cycled)."""
    from finephrase.prompts.render import render_messages
    from finephrase.prompts.resolve import load_prompt

    prompt = load_prompt("finephrase/faq")
    pages = []
    with gzip.open(ROOT / "data" / "demo" / "docs.jsonl.gz", "rt") as f:
        for line in f:
            text = json.loads(line)["text"]
            if len(text) >= 1500:
                pages.append(text[:1800])
            if len(pages) >= n:
                break
    return [{"messages": render_messages(prompt, pages[i % len(pages)]), "max_tokens": max_tokens,
             "temperature": 0.0, "seed": 0} for i in range(n)]


async def _drive(endpoints: list[str], model: str, payloads: list[dict], concurrency: int) -> tuple[float, int]:
    import aiohttp

    queue: asyncio.Queue = asyncio.Queue()
    for i, p in enumerate(payloads):
        queue.put_nowait((i, p))
    tokens = 0

    async def worker(session):
        nonlocal tokens
        while not queue.empty():
            i, payload = queue.get_nowait()
            url = endpoints[i % len(endpoints)] + "/v1/chat/completions"  # requests spread evenly
            async with session.post(url, json={"model": model, **payload}) as r:
                r.raise_for_status()
                tokens += (await r.json())["usage"]["completion_tokens"]

    start = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return time.monotonic() - start, tokens


def measure(engine: str, payloads: list[dict], concurrency: int) -> dict:
    from finephrase.inference.client.backends import EmbeddedBackend

    start = time.monotonic()
    servers = EmbeddedBackend.make_servers(engine=engine, n_ctx=2048)
    with servers:
        startup = time.monotonic() - start
        asyncio.run(_drive(servers.endpoints, servers.alias, payloads[:2], 2))  # warm-up, not timed
        wall, tokens = asyncio.run(_drive(servers.endpoints, servers.alias, payloads, concurrency))
        row = {"engine": f"{servers.engine} {servers.version}", "servers": servers.replicas,
               "threads": servers.threads, "startup_s": startup, "wall_s": wall, "tokens": tokens,
               "tokens_per_s": tokens / wall}
    print(f"{row['engine']}: {row['servers']} server(s) x {row['threads']} thread(s), started in {startup:.0f} s, "
          f"{tokens} completion tokens in {wall:.1f} s = {row['tokens_per_s']:.1f} tokens/s", flush=True)
    return row


def report(rows: list[dict], args) -> str:
    llama, vllm = rows
    ratio = vllm["tokens_per_s"] / llama["tokens_per_s"]
    gap = vllm["startup_s"] - llama["startup_s"]
    break_even = gap / (1 / llama["tokens_per_s"] - 1 / vllm["tokens_per_s"]) if ratio > 1 else float("inf")
    lines = [
        "# Embedded engines: llama.cpp vs vLLM (CPU build)", "",
        f"`python benchmarks/embedded.py --requests {args.requests} --concurrency {args.concurrency} "
        f"--max-tokens {args.max_tokens}` on {platform.machine()} with {__import__('os').cpu_count()} cores, "
        f"{time.strftime('%Y-%m-%d')}: the packaged `finephrase/faq` prompt over demo pages, SmolLM2-135M-Instruct "
        "(the same GGUF; vLLM's copy converted once), temperature 0, both engines started by finephrase in the "
        "same run.", "",
        "| engine | servers x threads | start-up (s) | completion tokens | wall (s) | completion tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['engine']} | {r['servers']} x {r['threads']} | {r['startup_s']:.0f} | {r['tokens']} | "
              f"{r['wall_s']:.1f} | {r['tokens_per_s']:.1f} |" for r in rows]
    lines += ["", f"**vLLM / llama.cpp completion tokens/s: {ratio:.2f}**; vLLM starts {gap:.0f} s later, paid back "
              f"above ~{break_even:,.0f} completion tokens (~{break_even / (args.max_tokens / 2):,.0f} requests "
              f"answering half of {args.max_tokens} new tokens)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--out", default=str(HERE / "results" / "embedded.md"))
    args = ap.parse_args()
    payloads = requests_for(args.requests, args.max_tokens)
    rows = [measure(engine, payloads, args.concurrency) for engine in ("llama.cpp", "vllm")]
    text = report(rows, args)
    print(text)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
