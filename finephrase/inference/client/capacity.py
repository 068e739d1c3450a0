"""What a replica can take at once, and how full it is: read from the server, never asked of the user.

* :func:`static_capacity` — the batch size a server states: SGLang ``GET /get_server_info``
  (``max_running_requests``), TGI ``GET /info`` (``max_batch_size`` where the version states it; its
  ``max_concurrent_requests`` is the most it accepts at once, queue included: beyond it TGI answers 429 "Model is
  overloaded"); servers finephrase started itself start their windows at their launch settings' concurrency
  (``GeneratorRuntime.window`` in :mod:`finephrase.inference.client.backends`);
* :func:`read_gauges` — the server's own Prometheus gauges, polled while the run goes: sequences running and
  waiting (vLLM ``vllm:num_requests_running`` / ``vllm:num_requests_waiting``, SGLang ``sglang:num_running_reqs`` /
  ``sglang:num_queue_reqs``, TGI ``tgi_batch_current_size`` / ``tgi_queue_size``) and the generated-token counter.
  vLLM does not publish ``max_num_seqs``: its capacity is learnt from these gauges (what runs while requests
  wait, see :mod:`finephrase.inference.client.window`). A server with neither (a plain OpenAI endpoint, llama.cpp) is
  probed by the window instead (throughput against requests in flight).

Imports: the standard library and aiohttp.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import aiohttp

# metric names per server, first match wins (each summed over its label sets)
RUNNING = ("vllm:num_requests_running", "sglang:num_running_reqs", "tgi_batch_current_size")
WAITING = ("vllm:num_requests_waiting", "sglang:num_queue_reqs", "tgi_queue_size")
GENERATED = ("vllm:generation_tokens_total", "sglang:generation_tokens_total", "tgi_request_generated_tokens_sum")
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
TIMEOUT = aiohttp.ClientTimeout(total=5)


@dataclass
class Gauges:
    """One reading of a server's load: sequences in its running batch, waiting in its queue, tokens generated."""

    running: int
    waiting: int
    generated_tokens: float | None = None


@dataclass
class StaticCapacity:
    """What the server states about its batch: ``capacity`` (sequences in one batch), ``accepts`` (the most
    requests it takes at once before refusing), and where it was read."""

    capacity: int | None = None
    accepts: int | None = None
    source: str = ""


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text exposition: metric name -> value summed over its label sets (comments skipped)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        m = SAMPLE.match(line)
        if m:
            try:
                values[m.group(1)] = values.get(m.group(1), 0.0) + float(m.group(3))
            except ValueError:
                continue
    return values


def gauges_from_metrics(values: dict[str, float]) -> Gauges | None:
    """The running / waiting gauges of a ``/metrics`` page, or None when it has neither (not an inference server's)."""
    running = next((values[k] for k in RUNNING if k in values), None)
    waiting = next((values[k] for k in WAITING if k in values), None)
    if running is None or waiting is None:
        return None
    generated = next((values[k] for k in GENERATED if k in values), None)
    return Gauges(int(running), int(waiting), generated)


async def read_gauges(session: aiohttp.ClientSession, url: str) -> Gauges | None:
    """The replica's gauges from ``GET {url}/metrics``; None when it publishes none (404, not Prometheus, no gauge)."""
    try:
        async with session.get(f"{url}/metrics", timeout=TIMEOUT) as r:
            if r.status != 200:
                return None
            return gauges_from_metrics(parse_prometheus(await r.text()))
    except (aiohttp.ClientError, OSError, TimeoutError, UnicodeDecodeError):
        return None


async def _get_json(session: aiohttp.ClientSession, url: str) -> dict | None:
    try:
        async with session.get(url, timeout=TIMEOUT) as r:
            if r.status != 200:
                return None
            data = await r.json(content_type=None)
            return data if isinstance(data, dict) else None
    except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
        return None


def _positive(value) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


async def static_capacity(session: aiohttp.ClientSession, url: str) -> StaticCapacity:
    """What SGLang's ``/get_server_info`` or TGI's ``/info`` says about the batch (empty when neither answers)."""
    sglang = await _get_json(session, f"{url}/get_server_info")
    if sglang is not None and _positive(sglang.get("max_running_requests")):
        return StaticCapacity(_positive(sglang["max_running_requests"]), None, "sglang /get_server_info")
    tgi = await _get_json(session, f"{url}/info")
    if tgi is not None and ("max_concurrent_requests" in tgi or "max_batch_size" in tgi):
        return StaticCapacity(_positive(tgi.get("max_batch_size")), _positive(tgi.get("max_concurrent_requests")),
                              "tgi /info")
    return StaticCapacity()

