"""Benchmark: does finephrase keep a fleet of batching GPU servers busy, with the recipe's defaults?

N simulated GPU servers (``tests/sim_gpu.py``: continuous batching, a step of ``a + c x running`` ms gives every
running sequence one token, at most ``max_num_seqs`` run, the rest wait; answer lengths vary per prompt) run on
loopback in one process; finephrase's real client path — the ``Rephrase`` step (``LeanInferenceRunner`` +
``ReplicaPool``, as ``finephrase run`` uses it, without checkpoints) — runs in another, fed with documents until
the scenario's end. The fleet's capacity is known: ``sum over servers of max_num_seqs * 1000 / (a + c *
max_num_seqs)`` output tokens/s (batches always full), counted only while a server is up. Utilisation is the
output tokens the servers generated during the measured window (after ``--warmup`` seconds) / (capacity x
window), read from the servers' own counters.

Printed per scenario (8 servers; 32 servers; unequal speeds: half of the servers three times slower; one server
dying and coming back):

- ``before, defaults``: finephrase before the adaptive windows (``git archive`` of ``--before``, default: where
  this branch left ``main``)
  with a recipe that does not set ``generator.concurrency`` (8 in flight);
- ``before, concurrency=X``: the same, hand-tuned over ``--sweep`` (per server: 32, 64, 128 x the servers; best
  shown, every value in the log);
- ``now, defaults``: this tree, ``generator.concurrency`` unset (each replica's window adapts);
- ``now, concurrency=X``: this tree with the bound set to the best hand-tuned value;
- ``datatrove InferenceRunner``: datatrove's own runner on the same fleet, one ``LocalPipelineExecutor`` task per
  server (``benchmarks/fleet_datatrove.py``), ``max_concurrent_generations`` per task swept over ``--sweep``, best
  shown; its runs get ``--datatrove-warmup`` seconds of warm-up (N processes start first).

``--clients`` picks the clients measured (default: all three).

The simulated step times (``--step-a-ms 10 --step-c-ms 0.05``, 64 sequences: 4,848 tokens/s per server; answers
of 128-640 tokens) keep the request rate the Python client has to sustain at about 13 requests/s per server, so
that the client is not what limits the fleet. The table goes to ``benchmarks/results/fleet.md``. Usage::

    python benchmarks/fleet.py [--duration 12] [--warmup 6] [--scenarios 8 32 unequal dying] [--sweep 32 64 128]
        [--clients before now datatrove] [--datatrove-warmup 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))

DOC_TEXT = "Continuous batching keeps a GPU busy only while its batch is full. "


NOTES = ("The simulated servers have no request timeout, so a queue of any length costs nothing here but latency: "
         "a large hand-tuned concurrency fills them too, with up to that many requests queued per server; the "
         "adaptive windows stop at the batch plus at most a quarter of it queued (final windows are printed in the "
         "log). finephrase's `run.tasks` stays 1: one task drove 32 servers here.\n\n"
         "`datatrove InferenceRunner`: datatrove's own runner (`InferenceRunner`, `InferenceConfig(server_type="
         "\"endpoint\")`) sends all of a task's requests to one `endpoint_url`, so it is spread over the fleet the "
         "way a datatrove user does it: a `LocalPipelineExecutor` with `tasks=N, workers=N` (one process per "
         "server), task r sending to server r (`benchmarks/fleet_datatrove.py`: the task's `endpoint_url` is set "
         "in the runner's `run`), the same documents (document i to task i mod N) and the same chat request per "
         "document as finephrase's (built by finephrase's `RequestBuilder`, so the answer lengths are the same), "
         "`max_concurrent_generations` per task swept over the same per-server values, best shown. Its runs get "
         "a longer warm-up (`--datatrove-warmup`, header) because N processes start first (32 had sent nothing "
         "in the first 15 s on this 2-core machine). In the dying scenario the server going down answers its "
         "in-flight requests with HTTP 500 (how the simulation's stop ends them): "
         "datatrove's runner raises `ServerError` on a 500, that task fails, and `LocalPipelineExecutor.run` "
         "raises and ends the other tasks, so the fleet idles until a relaunch (not part of the window). That row "
         "counts, as every row does, all the tokens the servers generated, and the simulated servers finish the "
         "requests of a client that has gone (vLLM's API server aborts them): its runs' utilisation after the "
         "failure is the servers working off abandoned requests (up to a batch and a queue of 64 per server at "
         "128 per task), so it is an upper bound on the tokens datatrove received.\n")

def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


# --------------------------------------------------------------------------- the fleet (its own process)
def serve_fleet(specs: list[dict], ports: list[int], die: list | None) -> None:
    """Serve the simulated servers; ``die``: [index, down_at, up_at] (absolute time.time())."""
    import sim_gpu

    async def main():
        servers = [sim_gpu.SimGPU(**spec) for spec in specs]
        for server, port in zip(servers, ports):
            await server.start(port)
        print("FLEET_READY", flush=True)
        if die:
            index, down_at, up_at = die
            await asyncio.sleep(max(0.0, down_at - time.time()))
            await servers[index].stop()
            await asyncio.sleep(max(0.0, up_at - time.time()))
            await servers[index].start(ports[index])
        await asyncio.Event().wait()

    asyncio.run(main())


# --------------------------------------------------------------------------- the client (its own process)
def run_client(endpoints: list[str], concurrency: int | None, deadline: float, work: str) -> dict:
    """finephrase's Rephrase step over documents made until ``deadline`` (imports whichever finephrase is first on
    the path)."""
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    from datatrove.data import Document

    from finephrase.prompts import load_prompt

    try:
        from finephrase.pipeline.rephrase import Rephrase
    except ImportError:  # a 'before' tree older than the finephrase.pipeline package
        from finephrase.steps.rephrase import Rephrase

    kwargs = {} if concurrency is None else {"concurrency": concurrency}
    step = Rephrase([load_prompt("finephrase/faq")], output_folder=os.path.join(work, "out"), endpoints=endpoints,
                    model="HuggingFaceTB/SmolLM2-1.7B-Instruct", generation_params={"max_new_tokens": 1024},
                    context_length=4096, checkpoints_dir=None, **kwargs)

    def documents():
        i = 0
        while time.time() < deadline:
            yield Document(text=f"{i}. {DOC_TEXT * 4}", id=f"doc-{i}")
            i += 1

    step.run(documents(), 0, 1)
    record = step.server.fleet_record() if hasattr(step.server, "fleet_record") else None
    windows = {url: r["limit"] for url, r in record["replicas"].items()} if record else None
    return {"windows": windows}


# --------------------------------------------------------------------------- measuring
async def generated(urls: list[str]) -> list[float]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async def one(url):
            try:
                async with session.get(f"{url}/_test/stats", timeout=aiohttp.ClientTimeout(total=5)) as r:
                    stats = await r.json()
                    return stats["generated_tokens"], stats["lag_s"], stats["steps"]
            except (aiohttp.ClientError, OSError, asyncio.TimeoutError):
                return None
        return await asyncio.gather(*(one(u) for u in urls))


def client_command(client: tuple, urls: list[str], deadline: float, work: str) -> tuple[list[str], dict]:
    """The client process for ``client``: ("finephrase", code, concurrency) or ("datatrove", per-task bound)."""
    if client[0] == "datatrove":
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT)])}
        return [sys.executable, __file__, "--datatrove", json.dumps([urls, client[1], deadline, work])], env
    _, code, concurrency = client
    env = {**os.environ, "PYTHONPATH": code}
    return [sys.executable, __file__, "--client", json.dumps([urls, concurrency, deadline, work])], env


def run_scenario(specs: list[dict], client: tuple, args, die_index: int | None = None) -> dict:
    import sim_gpu

    ports = free_ports(len(specs))
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    start = time.time() + 3.0  # the fleet's clock: the client starts now and takes a moment to import
    warmup = args.datatrove_warmup if client[0] == "datatrove" else args.warmup  # its N processes start first
    window = (start + warmup, start + warmup + args.duration)
    die = None
    if die_index is not None:  # down for the middle third of the measured window
        third = args.duration / 3
        die = [die_index, window[0] + third, window[0] + 2 * third]
    fleet = subprocess.Popen([sys.executable, __file__, "--serve", json.dumps([specs, ports, die])],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert fleet.stdout.readline().strip() == "FLEET_READY"
        with tempfile.TemporaryDirectory() as work:
            command, env = client_command(client, urls, window[1], work)
            log = open(os.path.join(work, "client.log"), "w")
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, env=env, text=True)
            time.sleep(max(0.0, window[0] - time.time()))
            before = asyncio.run(generated(urls))
            time.sleep(max(0.0, window[1] - time.time()))
            after = asyncio.run(generated(urls))
            out, _ = process.communicate(timeout=600)
            log.close()
            if process.returncode:
                raise SystemExit(f"the client failed ({process.returncode}):\n" + Path(log.name).read_text()[-3000:])
    finally:
        fleet.kill()
        fleet.wait()
    pairs = [(a, b) for a, b in zip(before, after) if a is not None and b is not None]
    tokens = sum(b[0] - a[0] for a, b in pairs)
    # how late the simulated servers' process ran behind their step clock: mean lateness of a step, ms
    lag = 1000 * sum(max(0.0, b[1] - a[1]) for a, b in pairs) / max(1, sum(max(0, b[2] - a[2]) for a, b in pairs))
    capacity = 0.0
    for i, spec in enumerate(specs):
        cap = sim_gpu.capacity_tokens_per_s(spec["max_num_seqs"], spec["step_a_ms"], spec["step_c_ms"])
        up = args.duration - (die[2] - die[1] if die and die[0] == i else 0.0)
        capacity += cap * up
    result = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return {"utilisation": tokens / capacity, "tokens_per_s": tokens / args.duration,
            "capacity_per_s": capacity / args.duration, "windows": result.get("windows"), "lag": lag,
            "client": result}


def specs_for(scenario: str, args) -> tuple[list[dict], int | None]:
    base = {"flavour": "vllm", "max_num_seqs": args.max_num_seqs, "step_a_ms": args.step_a_ms,
            "step_c_ms": args.step_c_ms, "min_answer": 128, "max_answer": 640}
    if scenario in ("8", "32"):
        return [dict(base) for _ in range(int(scenario))], None
    if scenario == "unequal":
        return [dict(base, step_a_ms=args.step_a_ms * (3 if i % 2 else 1)) for i in range(8)], None
    if scenario == "dying":
        return [dict(base) for _ in range(8)], 3
    raise SystemExit(f"unknown scenario {scenario}")


def best_of(values: list[int], run, label: str, sweep: list[str]) -> tuple[int, dict]:
    """``run(value)`` for every value: the best (value, result) by utilisation; each goes to the log and ``sweep``."""
    best = None
    for value in values:
        r = run(value)
        line = f"{label}={value}: {r['utilisation']:.3f}"
        print(f"   {line}" + (f" {r['client']}" if "datatrove" in label else ""), flush=True)
        sweep.append(line)
        if best is None or r["utilisation"] > best[1]["utilisation"]:
            best = (value, r)
    return best


def measure(scenario: str, args, before: str, row, sweep: list[str]) -> None:
    """One scenario's rows: before (defaults, best of the sweep), now (defaults, bounded at that best), datatrove's
    runner (one task per server, best of the sweep); ``args.clients`` picks which."""
    specs, die = specs_for(scenario, args)
    name = {"8": "8 servers", "32": "32 servers", "unequal": "8 servers, half 3x slower",
            "dying": "8 servers, one down for a third"}[scenario]
    n, best = len(specs), None
    if "before" in args.clients:
        row(name, "before, defaults", run_scenario(specs, ("finephrase", before, None), args, die))
        best = best_of([v * n for v in args.sweep], lambda c: run_scenario(specs, ("finephrase", before, c), args, die),
                       f"{name}: before, concurrency", sweep)
        row(name, f"before, best hand-tuned (concurrency={best[0]})", best[1])
    if "now" in args.clients:
        now = run_scenario(specs, ("finephrase", str(ROOT), None), args, die)
        row(name, "now, defaults", now)
        print(f"   windows: {now['windows']}", flush=True)
        if best is not None:
            row(name, f"now, concurrency={best[0]}",
                run_scenario(specs, ("finephrase", str(ROOT), best[0]), args, die))
    if "datatrove" in args.clients:
        dt = best_of(args.sweep, lambda c: run_scenario(specs, ("datatrove", c), args, die),
                     f"{name}: datatrove, max_concurrent_generations", sweep)
        failed = "; a task failed, the executor ended the others" if dt[1]["client"].get("failed") else ""
        row(name, f"datatrove InferenceRunner, {n} tasks (one per server), best "
                  f"(max_concurrent_generations={dt[0]} per task){failed}", dt[1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--client", help=argparse.SUPPRESS)
    p.add_argument("--datatrove", help=argparse.SUPPRESS)
    p.add_argument("--duration", type=float, default=12.0)
    p.add_argument("--warmup", type=float, default=6.0)
    p.add_argument("--datatrove-warmup", type=float, default=30.0,
                   help="datatrove's runs' warm-up: its executor starts one process per server first (32 had sent "
                   "nothing 15 s after launch on 2 cores)")
    p.add_argument("--scenarios", nargs="+", default=["8", "32", "unequal", "dying"])
    p.add_argument("--sweep", nargs="+", type=int, default=[32, 64, 128],
                   help="hand-tuned concurrency values, per server (x the scenario's servers; datatrove's "
                   "max_concurrent_generations per task, one task per server)")
    p.add_argument("--clients", nargs="+", default=["before", "now", "datatrove"],
                   choices=["before", "now", "datatrove"], help="which clients' rows to measure")
    p.add_argument("--max-num-seqs", type=int, default=64)
    p.add_argument("--step-a-ms", type=float, default=10.0)
    p.add_argument("--step-c-ms", type=float, default=0.05)
    p.add_argument("--before", default=None, help="the git revision measured as 'before' (default: where this "
                   "branch left main, `git merge-base HEAD main`)")
    p.add_argument("--output", default=str(HERE / "results" / "fleet.md"))
    args = p.parse_args()
    if args.serve:
        return serve_fleet(*json.loads(args.serve))
    if args.client:
        print(json.dumps(run_client(*json.loads(args.client))), flush=True)
        return
    if args.datatrove:
        from fleet_datatrove import run_datatrove

        print(json.dumps(run_datatrove(*json.loads(args.datatrove))), flush=True)
        return

    if args.before is None:
        args.before = subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], capture_output=True,
                                     text=True, check=True).stdout.strip()[:12]
    before = tempfile.mkdtemp(prefix="finephrase-before-")
    subprocess.run(f"git -C {ROOT} archive {args.before} finephrase prompts pyproject.toml | tar -x -C {before}", shell=True, check=True)
    lines = header(args)

    def row(scenario, label, r):
        line = (f"| {scenario} | {label} | {r['utilisation']:.3f} | {r['tokens_per_s']:,.0f} | "
                f"{r['capacity_per_s']:,.0f} | {r['lag']:.2f} |")
        print(line, flush=True)
        lines.append(line)

    sweep: list[str] = []
    for scenario in args.scenarios:
        measure(scenario, args, before, row, sweep)
    lines += ["", "The sweeps, in run order: " + "; ".join(sweep) + ".", "", f"Load average at the end: {load()}."]
    Path(args.output).write_text("\n".join(lines) + "\n")
    print(f"written {args.output}")


def header(args) -> list[str]:
    """The results file's lines above the table's rows."""
    return ["# Fleet utilisation: finephrase's client (and datatrove's runner) against simulated batching GPU "
            "servers\n",
            f"Command: `{' '.join(['python benchmarks/fleet.py'] + sys.argv[1:])}`  ",
            f"Machine: {platform.processor() or platform.machine()}, {cpu_model()}, {os.cpu_count()} CPUs "
            f"(shared with other jobs; load average at the start: {load()})  ",
            f"Servers: vLLM-like, max_num_seqs {args.max_num_seqs}, step {args.step_a_ms} + {args.step_c_ms} x "
            f"running ms, answers 128-640 tokens; {args.warmup:.0f} s warm-up, {args.duration:.0f} s measured. "
            f"'before' is `{args.before}` (fixed concurrency, default 8); datatrove's runs: "
            f"{args.datatrove_warmup:.0f} s warm-up.\n",
            "`step lateness`: how late the simulated servers' own process ran behind their step clock, per step (ms; "
            "late steps are caught up, so the capacity holds, but answers leave that much late).\n",
            NOTES,
            "| scenario | client | utilisation | tokens/s | capacity tokens/s | step lateness ms |",
            "|---|---|---:|---:|---:|---:|"]


def load() -> str:
    """/proc/loadavg's 1, 5 and 15 minute averages."""
    try:
        return " / ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    main()
