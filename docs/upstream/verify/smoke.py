"""Tiny end-to-end check of datatrove's own InferenceRunner against a loopback aiohttp server.

Run with the datatrove to test first on sys.path, e.g. PYTHONPATH=<copy>/src python smoke.py
It checks: a clean run (50 documents, checkpoints + request cache enabled, one document refused with a
BadRequestError and skip_bad_requests=True), then a failed run (the rollout raises on one document) followed by
a resumed run in the same checkpoint folder: every document is written exactly once.
"""
import asyncio
import glob
import json
import os
import shutil
import socket
import sys
import tempfile
import threading

from aiohttp import web

import datatrove
from datatrove.data import Document
from datatrove.pipeline.inference.run_inference import InferenceConfig, InferenceRunner
from datatrove.pipeline.writers.jsonl import JsonlWriter

N_DOCS = 50
REQUESTS = {"n": 0}


def start_server() -> int:
    async def models(request):
        return web.json_response({"data": [{"id": "fake"}]})

    async def chat(request):
        body = await request.json()
        REQUESTS["n"] += 1
        content = body["messages"][0]["content"]
        if content == "refuse me":
            return web.Response(status=400, text="bad request")
        return web.json_response({"choices": [{"message": {"content": content.upper()}, "finish_reason": "stop"}],
                                  "usage": {"prompt_tokens": 3, "completion_tokens": 2}})

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    ready = threading.Event()

    def serve():
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/v1/models", models)
        app.router.add_post("/v1/chat/completions", chat)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.SockSite(runner, sock).start())
        ready.set()
        loop.run_forever()

    threading.Thread(target=serve, daemon=True).start()
    ready.wait()
    return port


def docs():
    for i in range(N_DOCS):
        yield Document(text="refuse me" if i == 7 else f"doc {i}", id=f"d{i}")


def make_runner(port, out, ckpt, fail_on=None):
    async def rollout(doc, generate):
        if doc.id == fail_on:
            raise RuntimeError("boom")
        result = await generate({"messages": [{"role": "user", "content": doc.text}], "max_tokens": 4})
        return result.text

    config = InferenceConfig(server_type="endpoint", model_name_or_path="fake", endpoint_url=f"http://127.0.0.1:{port}",
                             max_concurrent_generations=8, metric_interval=3600)
    writer = JsonlWriter(out, output_filename="${rank}_chunk_${chunk_index}.jsonl", compression=None)
    return InferenceRunner(rollout, config, writer, checkpoints_local_dir=ckpt, records_per_chunk=20,
                           skip_bad_requests=True)


def read_output(out):
    rows = []
    for path in sorted(glob.glob(os.path.join(out, "*.jsonl"))):
        with open(path) as f:
            rows += [json.loads(line) for line in f]
    return rows


def main():
    print("datatrove from", os.path.dirname(datatrove.__file__))
    port = start_server()
    tmp = tempfile.mkdtemp()
    try:
        # 1. clean run
        out, ckpt = os.path.join(tmp, "out1"), os.path.join(tmp, "ckpt1")
        make_runner(port, out, ckpt).run(docs(), rank=0)
        rows = read_output(out)
        ids = sorted(r["id"] for r in rows)
        assert len(ids) == N_DOCS - 1 == len(set(ids)), (len(ids), len(set(ids)))  # d7 refused and skipped
        assert all(r["metadata"]["rollout_results"] == [r["text"].upper()] for r in rows)
        assert not os.path.exists(os.path.join(ckpt, "00000")), "checkpoint rank folder not cleaned up"
        print(f"clean run ok: {len(rows)} documents, {REQUESTS['n']} requests")

        # 2. failed run, then resume
        out, ckpt = os.path.join(tmp, "out2"), os.path.join(tmp, "ckpt2")
        try:
            make_runner(port, out, ckpt, fail_on="d33").run(docs(), rank=0)
        except Exception as e:  # noqa: BLE001
            print(f"failed run raised as expected: {type(e).__name__}")
        else:
            raise AssertionError("the failing run did not fail")
        print("checkpoint files after the failure:", sorted(os.path.relpath(p, ckpt) for p in glob.glob(ckpt + "/**", recursive=True)))
        before = REQUESTS["n"]
        make_runner(port, out, ckpt).run(docs(), rank=0)
        rows = read_output(out)
        ids = [r["id"] for r in rows]
        assert len(ids) == N_DOCS - 1 == len(set(ids)), (len(ids), len(set(ids)))
        print(f"resume ok: {len(rows)} documents, {REQUESTS['n'] - before} requests on resume")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("SMOKE OK")


if __name__ == "__main__":
    sys.exit(main())
