"""The measurement ``generator.engine: auto`` decides on: each embedded engine, measured on this machine.

:func:`calibrate` starts each engine the way a run does (``EmbeddedBackend.make_servers``) and times it until it
has generated (start-up), then sends :data:`REQUESTS` chat completions (the packaged ``finephrase/faq`` prompt over
passages of Python's own documentation, :data:`MAX_TOKENS` new tokens, temperature 0) with the pool's concurrency
and counts the servers' own completion tokens per second:

- llama.cpp: its default pool (one process per core, one thread each);
- vLLM's CPU build in the dtype this CPU executes (:mod:`finephrase.inference.servers.cpu_dtype`), its model on all cores
  and on all cores but one (the API server and the engine core's scheduler are Python processes of their own):
  the faster is the model's cores from then on.

Two vLLM start-ups (2-3 minutes each on 2 cores) and a minute or two of generation: ~6 minutes on 2 cores. The figures are cached in
``~/.cache/finephrase/calibration/<key>.json`` (``FINEPHRASE_CALIBRATION_DIR`` moves it), keyed by what they
depend on: the CPU model, its flags, the number of cores, both engines' versions and the dtype. Another machine,
or an upgraded engine, measures again.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

CALIBRATION_ENV = "FINEPHRASE_CALIBRATION_DIR"
REQUESTS = 16
MAX_TOKENS = 64
# passages to rephrase: English prose every Python carries (the calibration needs no data set)
DOC_MODULES = ("argparse", "logging", "subprocess", "threading", "asyncio", "json", "pathlib", "dataclasses",
               "inspect", "textwrap", "unittest", "collections", "functools", "itertools", "tarfile", "zipfile")


@dataclass(frozen=True)
class EngineCost:
    start_s: float
    tokens_per_s: float


@dataclass
class Calibration:
    key: dict
    llama: EngineCost
    vllm: dict[int, EngineCost]  # model threads -> cost
    dtype: str
    dtype_reason: str
    measured: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M"))

    @property
    def vllm_threads(self) -> int:
        """The model's cores that generated fastest."""
        return max(self.vllm, key=lambda t: self.vllm[t].tokens_per_s)

    @property
    def best_vllm(self) -> EngineCost:
        return self.vllm[self.vllm_threads]

    def describe(self) -> str:
        cores = ", ".join(f"{c.tokens_per_s:.1f} tokens/s on {t} core(s)" for t, c in sorted(self.vllm.items()))
        return (f"measured here {self.measured} ({self.key['cpu']}, {self.key['cores']} cores): llama.cpp "
                f"{self.llama.tokens_per_s:.1f} tokens/s, started in {self.llama.start_s:.0f} s; vLLM {self.dtype} "
                f"{cores}, started in {self.best_vllm.start_s:.0f} s")

    def to_json(self) -> dict:
        return {"key": self.key, "llama.cpp": asdict(self.llama), "dtype": self.dtype,
                "dtype_reason": self.dtype_reason, "measured": self.measured,
                "vllm": {str(t): asdict(c) for t, c in self.vllm.items()}}

    @classmethod
    def from_json(cls, data: dict) -> Calibration:
        return cls(key=data["key"], llama=EngineCost(**data["llama.cpp"]), dtype=data["dtype"],
                   dtype_reason=data["dtype_reason"], measured=data["measured"],
                   vllm={int(t): EngineCost(**c) for t, c in data["vllm"].items()})


def cpu_identity(cpuinfo: str | None = None) -> tuple[str, str]:
    """(CPU model name, its flags) from ``/proc/cpuinfo`` (empty strings where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields = {}
    for line in cpuinfo.splitlines():
        name, _, value = line.partition(":")
        fields.setdefault(name.strip(), value.strip())
    flags = fields.get("flags") or fields.get("Features") or ""
    return fields.get("model name", ""), " ".join(sorted(flags.split()))


def machine_key(vllm_version: str, dtype: str, llama_version: str | None = None) -> dict:
    """What the figures depend on (the cache key)."""
    from importlib import metadata

    if llama_version is None:
        try:
            llama_version = metadata.version("llama-cpp-python")
        except metadata.PackageNotFoundError:
            llama_version = "none"
    cpu, flags = cpu_identity()
    return {"cpu": cpu, "flags_sha256": hashlib.sha256(flags.encode()).hexdigest()[:16],
            "cores": os.cpu_count() or 1, "llama_cpp_python": llama_version, "vllm": vllm_version, "dtype": dtype}


def cache_file(key: dict) -> Path:
    from finephrase.inference.servers.llama_setup import finephrase_cache

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return finephrase_cache("calibration", CALIBRATION_ENV) / f"{digest}.json"


def cached(key: dict) -> Calibration | None:
    try:
        return Calibration.from_json(json.loads(cache_file(key).read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(calibration: Calibration) -> Path:
    path = cache_file(calibration.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(calibration.to_json(), indent=1))
    tmp.replace(path)  # readers see a whole file or none
    return path


def payloads(n: int = REQUESTS, max_tokens: int = MAX_TOKENS, pages: list[str] | None = None) -> list[dict]:
    """``n`` chat payloads: the faq prompt over ``pages`` (default: passages of the standard library's own
    documentation), cycled."""
    from finephrase.prompts.render import render_messages
    from finephrase.prompts.resolve import load_prompt

    if pages is None:
        docs = [inspect.getdoc(__import__(m)) or "" for m in DOC_MODULES]
        pages = [d[:1800] for d in docs if len(d) >= 600] or ["Python is a programming language. " * 40]
    prompt = load_prompt("finephrase/faq")
    return [{"messages": render_messages(prompt, pages[i % len(pages)]), "max_tokens": max_tokens,
             "temperature": 0.0, "seed": 0} for i in range(n)]


async def drive(endpoints: list[str], model: str, batch: list[dict], concurrency: int) -> tuple[float, int]:
    """Send ``batch`` with ``concurrency`` in flight, spread evenly over ``endpoints``: (wall seconds, completion
    tokens the servers counted)."""
    import aiohttp

    queue: asyncio.Queue = asyncio.Queue()
    for i, p in enumerate(batch):
        queue.put_nowait((i, p))
    tokens = 0

    async def worker(session):
        nonlocal tokens
        while not queue.empty():
            i, payload = queue.get_nowait()
            async with session.post(endpoints[i % len(endpoints)] + "/v1/chat/completions",
                                    json={"model": model, **payload}) as r:
                r.raise_for_status()
                tokens += (await r.json())["usage"]["completion_tokens"]

    start = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:
        await asyncio.gather(*(worker(session) for _ in range(concurrency)))
    return time.monotonic() - start, tokens


def measure_servers(servers, batch: list[dict], concurrency: int | None = None) -> dict:
    """Start ``servers`` (timed until they generate, after what is done once per machine: vLLM's GGUF conversion),
    warm them up, send ``batch``; stop them. The row of figures."""
    servers.prepare()
    start = time.monotonic()
    with servers:
        startup = time.monotonic() - start
        asyncio.run(drive(servers.endpoints, servers.alias, batch[:2], 2))  # warm-up, not timed
        wall, tokens = asyncio.run(drive(servers.endpoints, servers.alias, batch, concurrency or servers.concurrency))
        return {"engine": f"{servers.engine} {servers.version}", "servers": servers.replicas,
                "threads": servers.threads, "startup_s": startup, "wall_s": wall, "tokens": tokens,
                "tokens_per_s": tokens / wall, **servers.facts}


def model_thread_choices(cores: int | None = None) -> list[int]:
    """The model's cores to try: all, and all but one (on a machine of more than one core)."""
    cores = cores or os.cpu_count() or 1
    return [cores, cores - 1] if cores > 1 else [1]


def calibrate(vllm_python: str, make_servers: Callable, log: Callable[[str], None] = print) -> Calibration:
    """Measure both engines here (see the module docstring) and cache the figures. ``make_servers``: the one place
    the embedded replicas are made (``EmbeddedBackend.make_servers``, passed in: the backends import this module)."""
    from finephrase.inference.servers.cpu_dtype import machine_dtype
    from finephrase.inference.servers.vllm_setup import vllm_version

    dtype = machine_dtype()
    key = machine_key(vllm_version(vllm_python), dtype.dtype)
    log(f"calibrating the embedded engines on this machine, once (~6 min on 2 cores; cached in {cache_file(key)})")
    batch = payloads()
    row = measure_servers(make_servers("llama.cpp", n_ctx=2048), batch)
    log(f"calibration: llama.cpp {row['tokens_per_s']:.1f} tokens/s, started in {row['startup_s']:.0f} s")
    llama, vllm = EngineCost(row["startup_s"], row["tokens_per_s"]), {}
    for threads in model_thread_choices():
        row = measure_servers(make_servers("vllm", n_ctx=2048, replicas=1, threads=threads, dtype=dtype), batch)
        vllm[threads] = EngineCost(row["startup_s"], row["tokens_per_s"])
        log(f"calibration: vLLM {dtype.dtype} on {threads} core(s) {row['tokens_per_s']:.1f} tokens/s, started in "
            f"{row['startup_s']:.0f} s")
    calibration = Calibration(key=key, llama=llama, vllm=vllm, dtype=dtype.dtype, dtype_reason=dtype.reason)
    save(calibration)
    return calibration


def machine_calibration(vllm_python: str, make_servers: Callable | None = None,
                        log: Callable[[str], None] | None = None) -> Calibration | None:
    """This machine's figures: cached, else measured now with ``make_servers`` (see :func:`calibrate`), else
    ``None``."""
    from loguru import logger

    from finephrase.inference.servers.cpu_dtype import machine_dtype
    from finephrase.inference.servers.vllm_setup import vllm_version

    found = cached(machine_key(vllm_version(vllm_python), machine_dtype().dtype))
    if found is not None or make_servers is None:
        return found
    return calibrate(vllm_python, make_servers, log or logger.info)
