#!/usr/bin/env python
"""SIMULATED BATCHING GPU SERVER — for tests and benchmarks only; no model runs here.

A continuous-batching inference engine (vLLM / TGI / SGLang style) with simulated time per step, behind the HTTP
routes those servers expose, so that a client's ability to keep a fleet's batches full can be measured against a
known capacity on a machine without GPUs.

The engine: a queue of waiting sequences and a running batch of at most ``--max-num-seqs``. Each engine step takes
``a + c * running`` milliseconds (``--step-a-ms``, ``--step-c-ms``) and gives every running sequence one token;
between steps, finished sequences leave and waiting ones join (first come, first served). The step clock is the
"GPU's": when the Python process is late waking up, the steps that should have happened in the meantime are
applied at once, so the server's throughput is the model's, not its host CPU's (the server reports how late it ran,
``sim_gpu_lag_seconds_total``). The capacity of one server, batch full, is therefore
``max_num_seqs * 1000 / (a + c * max_num_seqs)`` output tokens/s (``capacity_tokens_per_s``).

An answer's length is a deterministic function of the prompt (sha256 of the prompt text) between
``--min-answer`` and ``--max-answer`` tokens, cut at the request's ``max_tokens``/``max_new_tokens`` (then its
finish reason is ``length``, else ``stop``). Prompt tokens are counted as ceil(utf-8 bytes / 4), at least 1.

Requests in the system (running + waiting) beyond ``--max-concurrent-requests`` are refused at once with TGI's
429 ``{"error": "Model is overloaded", "error_type": "overloaded"}`` (text-generation-inference
``router/src/infer/mod.rs``: a semaphore of ``max_concurrent_requests`` permits, ``try_acquire_owned`` or
``InferError::Overloaded``; TGI's default is 128). vLLM and SGLang queue without limit, so for those flavours the
default is no limit (0); the OpenAI flavour answers 429 with OpenAI's error body.

Routes, every flavour: ``GET /health``, ``GET /v1/models`` (``max_model_len`` as vLLM lists it),
``POST /v1/chat/completions`` and ``POST /v1/completions`` (non-streaming, with ``usage``), ``GET /metrics``
(Prometheus text, vLLM's names: ``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
``vllm:generation_tokens_total``, ``vllm:prompt_tokens_total``, ``vllm:request_success_total``; flavour ``tgi``
adds ``tgi_batch_current_size``, ``tgi_queue_size``; flavour ``sglang`` adds ``sglang:num_running_reqs``,
``sglang:num_queue_reqs``; ``openai`` serves no ``/metrics`` at all (404), like a hosted API).
Flavour ``tgi``: ``GET /info`` (TGI's ``Info``: ``max_concurrent_requests``, ``max_input_tokens``,
``max_total_tokens``, ``model_id``, ``router`` ... plus ``max_batch_total_tokens``/``max_batch_size`` as TGI 1.x-2.x
stated them) and ``POST /generate``; ``/v1/chat/completions`` is TGI's Messages API. Request bodies on the TGI
routes are read and validated by ``tests/tgi_server.py`` (the strict TGI test server: axum/serde reading, every
check of ``Validation::validate`` in its order and with its messages) — the same code, not a copy.
Flavour ``sglang``: ``GET /get_server_info`` (``max_running_requests``, ``max_total_num_tokens``,
``context_length``, ``model_path``, ``served_model_name`` ...). Flavours ``vllm``/``sglang``/``openai`` validate
as vLLM's OpenAI server does where finephrase could send it: JSON body (400), ``messages``/``prompt`` present
(400), the model name served (404 "The model `x` does not exist."), ``max_tokens`` >= 1, ``temperature`` >= 0,
``0 < top_p <= 1``, ``n`` == 1, prompt + ``max_tokens`` <= ``--max-model-len`` (400 "This model's maximum context
length is N tokens. However, you requested M tokens ..."); streaming and tools are refused with 501, never ignored.

``--api-key K``: every route but ``/health`` and ``/metrics`` needs ``Authorization: Bearer K`` (401 otherwise,
as vLLM's ``--api-key``).

Test-only routes: ``GET /_test/stats`` (counters: requests per status, tokens, the largest batch and queue seen),
``POST /_test/faults`` (``{"status": 503, "count": 2}``: the next ``count`` generation requests answer ``status``).

Command line (kept stable: stand-in server executables are built on it)::

    python tests/sim_gpu.py --port P [--host 127.0.0.1] [--flavour vllm|tgi|sglang|openai] [--max-num-seqs 64]
        [--step-a-ms 10] [--step-c-ms 0.05] [--api-key K] [--model NAME] [--max-model-len 4096]
        [--max-concurrent-requests N] [--min-answer 32] [--max-answer 512]

It prints ``SIM_GPU_READY http://HOST:P`` once it serves. In-process: ``SimGPU(**options)`` with
``await server.start(port)`` / ``await server.stop()`` (or :func:`serve_forever`); :func:`start` runs the command
line as a subprocess and returns ``(process, url)``; :func:`capacity_tokens_per_s` is one server's capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import math
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent))
import tgi_server  # noqa: E402 - the strict TGI request reading and validation, reused

FLAVOURS = ("vllm", "tgi", "sglang", "openai")
DEFAULT_MODEL = "HuggingFaceTB/SmolLM2-1.7B-Instruct"
WORDS = ("the", "model", "rewrites", "text", "into", "clear", "questions", "and", "answers", "for", "pretraining")


def capacity_tokens_per_s(max_num_seqs: int, step_a_ms: float, step_c_ms: float) -> float:
    """Output tokens/s of one server whose batch is always full."""
    return max_num_seqs * 1000.0 / (step_a_ms + step_c_ms * max_num_seqs)


def count_tokens(text: str) -> int:
    return max(1, math.ceil(len(text.encode("utf-8")) / 4))


def answer_text(n: int, seed: int) -> str:
    return " ".join(WORDS[(seed + i) % len(WORDS)] for i in range(n))


@dataclass
class Sequence:
    target: int  # tokens it will generate
    prompt_tokens: int
    done: asyncio.Future
    generated: int = 0


class Engine:
    """Continuous batching with a simulated step time (see the module docstring)."""

    def __init__(self, max_num_seqs: int, step_a_ms: float, step_c_ms: float):
        self.max_num_seqs = max_num_seqs
        self.a, self.c = step_a_ms / 1000.0, step_c_ms / 1000.0
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.running: list[Sequence] = []
        self.wake = asyncio.Event()
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.finished = 0
        self.lag = 0.0  # seconds the host ran late behind the simulated clock (summed over steps)
        self.max_running_seen = 0
        self.max_waiting_seen = 0
        self.task: asyncio.Task | None = None

    async def generate(self, prompt_tokens: int, target: int) -> int:
        seq = Sequence(target, prompt_tokens, asyncio.get_running_loop().create_future())
        self.waiting.append(seq)
        self.max_waiting_seen = max(self.max_waiting_seen, len(self.waiting))
        self.wake.set()
        try:
            return await seq.done
        except asyncio.CancelledError:  # the client went away: the sequence is aborted (vLLM aborts it too)
            if seq in self.waiting:
                self.waiting.remove(seq)
            seq.target = 0
            raise

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting.popleft()
            if seq.target > 0:
                self.prompt_tokens += seq.prompt_tokens
                self.running.append(seq)
        self.max_running_seen = max(self.max_running_seen, len(self.running))

    def _step(self) -> None:
        keep = []
        for seq in self.running:
            if seq.target <= 0:  # aborted
                continue
            seq.generated += 1
            self.generated_tokens += 1
            if seq.generated >= seq.target:
                self.finished += 1
                if not seq.done.done():
                    seq.done.set_result(seq.generated)
            else:
                keep.append(seq)
        self.running = keep

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        clock = loop.time()
        while True:
            self._admit()
            if not self.running:
                self.wake.clear()
                await self.wake.wait()
                clock = loop.time()
                continue
            clock += self.a + self.c * len(self.running)
            delay = clock - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                self.lag -= delay
                if delay < -0.5:  # far behind (host suspended): restart the clock rather than burst
                    clock = loop.time()
            self._step()


class SimTGIValidation(tgi_server.TGITestServer):
    """tgi_server.TGITestServer's request reading and validation, with this file's token count instead of a model."""

    def __init__(self, max_input_tokens: int, max_total_tokens: int, max_concurrent_requests: int):  # noqa: D107
        # no super().__init__: it loads a llama.cpp model; only what validation reads is set
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self.max_concurrent_requests = max_concurrent_requests
        self.advertised_max_input_tokens = None

    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [0] * count_tokens(text)

    def render_chat(self, messages: list[dict]) -> str:
        return "".join(f"<|{m['role']}|>\n{m['content']}\n" for m in messages) + "<|assistant|>\n"


class Refused(Exception):
    def __init__(self, status: int, message: str, kind: str = "BadRequestError"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind

    def response(self) -> web.Response:
        # vLLM's ErrorResponse (entrypoints/openai/protocol.py): {"object": "error", "message", "type", "code"}
        return web.json_response({"object": "error", "message": self.message, "type": self.kind,
                                  "param": None, "code": self.status}, status=self.status)


@dataclass
class SimGPU:
    """One simulated server (see the module docstring); ``await start(port)`` serves it on loopback."""

    flavour: str = "vllm"
    max_num_seqs: int = 64
    step_a_ms: float = 10.0
    step_c_ms: float = 0.05
    api_key: str | None = None
    model: str = DEFAULT_MODEL
    max_model_len: int = 4096
    max_concurrent_requests: int | None = None  # None: the flavour's default (TGI 128, others unbounded)
    min_answer: int = 32
    max_answer: int = 512
    stats: Counter = field(default_factory=Counter)

    def __post_init__(self):
        if self.flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {FLAVOURS}")
        if self.max_concurrent_requests is None:
            self.max_concurrent_requests = 128 if self.flavour == "tgi" else 0
        self.engine: Engine | None = None
        self.runner: web.AppRunner | None = None
        self.faults: list[dict] = []
        self.tgi = SimTGIValidation(self.max_model_len - 1, self.max_model_len,
                                    self.max_concurrent_requests or 2**31)
        self.url = ""
        self.generated_before = 0  # tokens generated before the last restart (``stop`` then ``start``)

    @property
    def capacity(self) -> float:
        return capacity_tokens_per_s(self.max_num_seqs, self.step_a_ms, self.step_c_ms)

    # ------------------------------------------------------------------ lifetime
    async def start(self, port: int, host: str = "127.0.0.1") -> str:
        self.engine = Engine(self.max_num_seqs, self.step_a_ms, self.step_c_ms)
        self.engine.task = asyncio.get_running_loop().create_task(self.engine.run())
        self.runner = web.AppRunner(self.app(), access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, host, port, reuse_address=True).start()
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        """Stop serving (a dying server: open connections are dropped, running sequences lost)."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.engine is not None and self.engine.task is not None:
            self.generated_before += self.engine.generated_tokens
            self.engine.task.cancel()
            for seq in list(self.engine.running) + list(self.engine.waiting):
                if not seq.done.done():
                    seq.done.cancel()

    # ------------------------------------------------------------------ helpers
    def in_system(self) -> int:
        return len(self.engine.running) + len(self.engine.waiting)

    def answer_length(self, prompt: str, max_tokens: int | None) -> tuple[int, str]:
        h = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big")
        n = self.min_answer + h % (self.max_answer - self.min_answer + 1)
        if max_tokens is not None and max_tokens < n:
            return max_tokens, "length"
        return n, "stop"

    def _authorized(self, request: web.Request) -> bool:
        return not self.api_key or request.headers.get("Authorization") == f"Bearer {self.api_key}"

    def _unauthorized(self) -> web.Response:
        return web.json_response({"error": "Unauthorized"}, status=401)

    def _overloaded(self) -> web.Response:
        self.stats["overloaded"] += 1
        if self.flavour == "tgi":
            return tgi_server.tgi_error(429, "Model is overloaded", "overloaded")
        return Refused(429, "Too many requests: the server is overloaded", "RateLimitError").response()

    def _fault(self) -> web.Response | None:
        for fault in self.faults:
            if fault["count"] > 0:
                fault["count"] -= 1
                status = fault.get("status", 503)
                return web.json_response({"error": fault.get("message") or f"injected {status}"}, status=status)
        return None

    async def _generate(self, prompt: str, max_tokens: int | None) -> tuple[int, int, str]:
        """(prompt tokens, completion tokens, finish reason) once the engine has generated the answer."""
        n, finish = self.answer_length(prompt, max_tokens)
        prompt_tokens = count_tokens(prompt)
        await self.engine.generate(prompt_tokens, n)
        return prompt_tokens, n, finish

    async def _guarded(self, request: web.Request, handler) -> web.Response:
        """Auth, injected faults, the concurrency limit (429), then the route; every answer counted by status."""
        if not self._authorized(request):
            response = self._unauthorized()
        else:
            response = self._fault()
            if response is None and self.max_concurrent_requests and self.in_system() >= self.max_concurrent_requests:
                response = self._overloaded()
            if response is None:
                try:
                    response = await handler(request)
                except Refused as e:
                    response = e.response()
                except tgi_server.Refused as e:
                    response = e.response()
        self.stats[f"status:{response.status}"] += 1
        return response

    # ------------------------------------------------------------------ OpenAI-style validation (vLLM's)
    async def _openai_body(self, request: web.Request, required: str) -> dict:
        try:
            body = json.loads(await request.read())
        except ValueError as e:
            raise Refused(400, f"JSON decode error: {e}") from None
        if not isinstance(body, dict) or required not in body:
            raise Refused(400, f"[{{'type': 'missing', 'loc': ('body', '{required}'), 'msg': 'Field required'}}]")
        if body.get("model") not in (None, self.model):
            raise Refused(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        if body.get("stream"):
            raise Refused(501, "sim_gpu.py does not implement streaming", "NotImplementedError")
        if body.get("tools"):
            raise Refused(501, "sim_gpu.py does not implement tools", "NotImplementedError")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise Refused(400, f"max_tokens must be at least 1, got {max_tokens}.")
        temperature = body.get("temperature")
        if temperature is not None and (not isinstance(temperature, (int, float)) or temperature < 0):
            raise Refused(400, f"temperature must be non-negative, got {temperature}.")
        top_p = body.get("top_p")
        if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
            raise Refused(400, f"top_p must be in (0, 1], got {top_p}.")
        if body.get("n", 1) != 1:
            raise Refused(501, "sim_gpu.py generates one choice (n=1)", "NotImplementedError")
        return body

    def _check_length(self, prompt: str, max_tokens: int | None) -> None:
        prompt_tokens = count_tokens(prompt)
        wanted = prompt_tokens + (max_tokens or 0)
        if wanted > self.max_model_len:
            raise Refused(400, f"This model's maximum context length is {self.max_model_len} tokens. However, you "
                               f"requested {wanted} tokens ({prompt_tokens} in the messages, {max_tokens or 0} in "
                               "the completion). Please reduce the length of the messages or completion.")

    def _usage(self, prompt_tokens: int, completion: int) -> dict:
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                "total_tokens": prompt_tokens + completion}

    # ------------------------------------------------------------------ generation routes
    async def chat(self, request):
        return await self._guarded(request, self.tgi_chat if self.flavour == "tgi" else self.openai_chat)

    async def openai_chat(self, request):
        body = await self._openai_body(request, "messages")
        messages = body["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise Refused(400, "messages must be a list of {role, content} objects")
        prompt = self.tgi.render_chat([{"role": m["role"], "content": str(m.get("content") or "")} for m in messages])
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        self._check_length(prompt, max_tokens)
        prompt_tokens, n, finish = await self._generate(prompt, max_tokens)
        return web.json_response({
            "id": f"chatcmpl-{self.stats['completions']}", "object": "chat.completion", "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer_text(n, prompt_tokens)},
                         "logprobs": None, "finish_reason": finish}],
            "usage": self._usage(prompt_tokens, n)})

    async def completions(self, request):
        return await self._guarded(request, self.openai_completion)

    async def openai_completion(self, request):
        body = await self._openai_body(request, "prompt")
        prompt = body["prompt"]
        if not isinstance(prompt, str):
            raise Refused(400, "prompt must be a string (sim_gpu.py takes one prompt per request)")
        max_tokens = body.get("max_tokens", 16)  # the OpenAI completions default
        self._check_length(prompt, max_tokens)
        prompt_tokens, n, finish = await self._generate(prompt, max_tokens)
        return web.json_response({
            "id": f"cmpl-{self.stats['completions']}", "object": "text_completion", "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "text": answer_text(n, prompt_tokens), "logprobs": None, "finish_reason": finish}],
            "usage": self._usage(prompt_tokens, n)})

    async def tgi_chat(self, request):
        """TGI's Messages API, read and validated by tgi_server (``ChatRequest::try_into_generate``)."""
        chat = tgi_server.read_json(request, await request.read(), "ChatRequest", tgi_server.CHAT_REQUEST,
                                    tgi_server.CHAT_ALIASES)
        inputs, params = self.tgi._chat_to_generate(chat)
        if chat["stream"]:
            raise tgi_server.not_implemented("`stream: true`")
        if chat["logprobs"]:
            raise tgi_server.not_implemented("`logprobs: true`")
        v = self.tgi.validate(inputs, params, add_special_tokens=False)
        self.tgi._refuse_unimplemented(params)
        prompt_tokens, n, finish = await self._generate(inputs, v["max_total_new_tokens"])
        return web.json_response({
            "object": "chat.completion", "id": "", "created": int(time.time()),
            "model": chat["model"] if chat["model"] not in (None, "tgi") else self.model,
            "system_fingerprint": f"{tgi_server.VERSION}-native",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": answer_text(n, prompt_tokens)},
                         "logprobs": None, "finish_reason": finish}],
            "usage": self._usage(v["input_length"], n)})

    async def generate(self, request):
        return await self._guarded(request, self.tgi_generate)

    async def tgi_generate(self, request):
        """TGI's ``/generate``, read and validated by tgi_server."""
        req = tgi_server.read_json(request, await request.read(), "GenerateRequest", tgi_server.GENERATE_REQUEST)
        params = req["parameters"]
        if params["best_of"] is not None and params["best_of"] > 1:
            self.tgi.validate_best_of(params["best_of"])
        v = self.tgi.validate(req["inputs"], params, add_special_tokens=True)
        self.tgi._refuse_unimplemented(params)
        _, n, finish = await self._generate(req["inputs"], v["max_total_new_tokens"])
        text = answer_text(n, v["input_length"])
        response = {"generated_text": req["inputs"] + text if params["return_full_text"] else text}
        if params["details"]:
            response["details"] = {"finish_reason": "length" if finish == "length" else "eos_token",
                                   "generated_tokens": n, "seed": v["seed"] if v["do_sample"] else None,
                                   "prefill": [], "tokens": []}
        return web.json_response(response)

    # ------------------------------------------------------------------ information routes
    async def health(self, request):
        return web.Response(status=200)

    async def models(self, request):
        if not self._authorized(request):
            return self._unauthorized()
        return web.json_response({"object": "list", "data": [{
            "id": self.model, "object": "model", "created": 0, "owned_by": "vllm" if self.flavour == "vllm" else
            self.flavour, "root": self.model, "max_model_len": self.max_model_len}]})

    async def info(self, request):
        if not self._authorized(request):
            return self._unauthorized()
        return web.json_response({
            "model_id": self.model, "model_sha": None, "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": self.max_concurrent_requests, "max_best_of": tgi_server.MAX_BEST_OF,
            "max_stop_sequences": tgi_server.MAX_STOP_SEQUENCES, "max_input_tokens": self.max_model_len - 1,
            "max_total_tokens": self.max_model_len, "validation_workers": 2, "max_client_batch_size": 4,
            "max_batch_total_tokens": self.max_num_seqs * self.max_model_len, "max_batch_size": self.max_num_seqs,
            "router": "text-generation-router", "version": tgi_server.VERSION, "sha": None, "docker_label": None})

    async def server_info(self, request):
        if not self._authorized(request):
            return self._unauthorized()
        return web.json_response({
            "model_path": self.model, "served_model_name": self.model, "context_length": self.max_model_len,
            "max_running_requests": self.max_num_seqs, "max_total_num_tokens": self.max_num_seqs * self.max_model_len,
            "max_req_input_len": self.max_model_len - 1, "version": "0.4.6-sim"})

    async def metrics(self, request):
        e = self.engine
        running, waiting = len(e.running), len(e.waiting)
        lines = [
            "# TYPE vllm:num_requests_running gauge", f'vllm:num_requests_running{{model_name="{self.model}"}} {running}',
            "# TYPE vllm:num_requests_waiting gauge", f'vllm:num_requests_waiting{{model_name="{self.model}"}} {waiting}',
            "# TYPE vllm:generation_tokens_total counter",
            f'vllm:generation_tokens_total{{model_name="{self.model}"}} {e.generated_tokens}',
            "# TYPE vllm:prompt_tokens_total counter",
            f'vllm:prompt_tokens_total{{model_name="{self.model}"}} {e.prompt_tokens}',
            "# TYPE vllm:request_success_total counter",
            f'vllm:request_success_total{{model_name="{self.model}",finished_reason="stop"}} {e.finished}',
            f"sim_gpu_lag_seconds_total {e.lag:.6f}",
        ]
        if self.flavour == "tgi":
            lines += [f"tgi_batch_current_size {running}", f"tgi_queue_size {waiting}",
                      f"tgi_batch_current_max_tokens {running * self.max_model_len}"]
        elif self.flavour == "sglang":
            lines += [f'sglang:num_running_reqs{{model_name="{self.model}"}} {running}',
                      f'sglang:num_queue_reqs{{model_name="{self.model}"}} {waiting}',
                      f'sglang:generation_tokens_total{{model_name="{self.model}"}} {e.generated_tokens}']
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def test_stats(self, request):
        e = self.engine
        return web.json_response({**self.stats, "generated_tokens": self.generated_before + e.generated_tokens,
                                  "finished": e.finished,
                                  "max_running_seen": e.max_running_seen, "max_waiting_seen": e.max_waiting_seen,
                                  "lag_s": e.lag, "running": len(e.running), "waiting": len(e.waiting)})

    async def test_faults(self, request):
        fault = await request.json()
        fault.setdefault("count", 1)
        self.faults.append(fault)
        return web.json_response({"faults": self.faults})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        routes = [web.get("/health", self.health), web.get("/v1/models", self.models),
                  web.post("/v1/chat/completions", self.chat), web.post("/v1/completions", self.completions),
                  web.get("/_test/stats", self.test_stats), web.post("/_test/faults", self.test_faults)]
        if self.flavour != "openai":
            routes.append(web.get("/metrics", self.metrics))
        if self.flavour == "tgi":
            routes += [web.get("/info", self.info), web.post("/generate", self.generate)]
        if self.flavour == "sglang":
            routes.append(web.get("/get_server_info", self.server_info))
        app.add_routes(routes)
        return app


async def serve_forever(servers: list[tuple[SimGPU, int]], host: str = "127.0.0.1", ready=print) -> None:
    """Serve ``(server, port)`` pairs on this event loop until cancelled."""
    for server, port in servers:
        ready(f"SIM_GPU_READY {await server.start(port, host)}")
    try:
        await asyncio.Event().wait()
    finally:
        for server, _ in servers:
            await server.stop()


def start(port: int | None = None, timeout: float = 30, **options):
    """Start a simulated server subprocess on loopback; returns (process, base_url)."""
    import socket
    import subprocess

    if port is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    cmd = [sys.executable, __file__, "--port", str(port)]
    for key, value in options.items():
        if value is not None:
            cmd += [f"--{key.replace('_', '-')}", str(value)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("SIM_GPU_READY"):
            return proc, line.split()[1]
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"simulated GPU server did not start (exit code {proc.poll()})")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--flavour", choices=FLAVOURS, default="vllm")
    p.add_argument("--max-num-seqs", type=int, default=64, help="the most sequences in the running batch")
    p.add_argument("--step-a-ms", type=float, default=10.0, help="fixed time of one engine step (ms)")
    p.add_argument("--step-c-ms", type=float, default=0.05, help="time per running sequence of one step (ms)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--max-concurrent-requests", type=int, default=None,
                   help="429 beyond this many requests in the system (default: TGI 128, others no limit)")
    p.add_argument("--min-answer", type=int, default=32)
    p.add_argument("--max-answer", type=int, default=512)
    return p


def main(argv=None):
    args = vars(parser().parse_args(argv))
    port, host = args.pop("port"), args.pop("host")
    server = SimGPU(**args)

    def ready(line):
        print(line, flush=True)

    try:
        asyncio.run(serve_forever([(server, port)], host, ready))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
