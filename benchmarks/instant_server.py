"""An instant OpenAI-compatible server for client benchmarks: answers every
``POST /v1/chat/completions`` at once with a fixed completion and usage numbers.

A bare asyncio protocol (HTTP/1.1, keep-alive and ``Connection: close`` both handled) so that
the server costs as little as possible and the client is what gets measured.
Run: ``python benchmarks/instant_server.py PORT [CPU]`` (pins itself to CPU when given).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

COMPLETION = json.dumps({
    "id": "bench", "object": "chat.completion", "created": 0, "model": "instant",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Q: What is it?\nA: An instant answer."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 100, "completion_tokens": 12, "total_tokens": 112},
}).encode()
MODELS = json.dumps({"object": "list", "data": [{"id": "instant", "object": "model"}]}).encode()


def response(body: bytes, close: bool) -> bytes:
    return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + str(len(body)).encode()
            + (b"\r\nConnection: close" if close else b"") + b"\r\n\r\n" + body)


class Instant(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
        self.buffer = b""

    def data_received(self, data):
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1")
            length = 0
            close = False
            for line in head.split("\r\n")[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection" and value.strip().lower() == "close":
                    close = True
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length:]
            body = MODELS if head.startswith("GET") else COMPLETION
            self.transport.write(response(body, close))
            if close:
                self.transport.close()
                return


def main():
    port = int(sys.argv[1])
    if len(sys.argv) > 2 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(sys.argv[2])})
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(Instant, "127.0.0.1", port, backlog=4096))
    print("READY", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


if __name__ == "__main__":
    main()
