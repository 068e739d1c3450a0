#!/usr/bin/env python
"""A FAULT-INJECTING OpenAI-compatible server — for tests only.

It answers ``GET /v1/models`` and the first ``--crash-after`` chat completions (with a fixed text),
then kills itself with a real signal (``--signal``, SIGSEGV by default) while answering the next
one: what a llama.cpp build with CPU instructions the machine will not run does on its first
generation (``--crash-after 0``). Used as ``generator.command`` of an embedded recipe.

Run: ``python tests/crashing_server.py --port P [--crash-after N] [--signal SIGSEGV]``.
"""

from __future__ import annotations

import argparse
import os
import signal
import time

from aiohttp import web


def make_app(crash_after: int, sig: int) -> web.Application:
    answered = 0

    async def models(request):
        return web.json_response({"object": "list", "data": [{"id": "crashing", "object": "model"}]})

    async def chat(request):
        nonlocal answered
        body = await request.json()
        if answered >= crash_after:
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the signal is on its way
        answered += 1
        return web.json_response({
            "id": f"c{answered}", "object": "chat.completion", "created": int(time.time()), "model": "crashing",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "OK"}, "finish_reason": "length"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
        }) if body.get("messages") else web.json_response({"error": "messages required"}, status=400)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/chat/completions", chat)
    return app


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--crash-after", type=int, default=0)
    p.add_argument("--signal", default="SIGSEGV")
    args = p.parse_args()
    web.run_app(make_app(args.crash_after, signal.Signals[args.signal]), host=args.host, port=args.port,
                print=None)


if __name__ == "__main__":
    main()
