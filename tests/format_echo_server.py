"""An OpenAI-compatible server (loopback, ``/v1/models`` and ``/v1/chat/completions``) whose answer follows the
shape the request's prompt asks for, built from the request's own document: the prefix the prompt asks to begin
with (``Begin your answer ... with "Here is a paraphrased version:"``), then a markdown table, a tagged question and
answer, a short list and a worked equation, then the document's longest paragraph (its first 1,200 characters),
between the marks the prompt names when it asks for marked output (REWIRE's ``<improved response starts>``).
So every seed recipe's output rules (formats, prefixes, token bounds) pass, and a recipe test checks what the recipe
does with its rows — the routing, the mix's shares, the selection — in seconds, on real text; usage is reported as
characters / 4, as a server reports its own tokenizer's counts.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MARKS_RE = re.compile(r"<([A-Za-z ]+) starts>")  # REWIRE: <improved response starts> ... <improved response ends>
PREFIX_RE = re.compile(r"\b(?:begin|start)\s+your\s+(?:answer|response)[^\"]{0,40}?with\s+\"([^\"]+)\"", re.IGNORECASE)


def answer(user: str) -> str:
    """The output for one request: the asked prefix, every format's marks, then the document's longest paragraph."""
    prefix = PREFIX_RE.search(user)
    document = max(re.split(r"\n\s*\n", user), key=len).strip()[:1200]
    words = document.split()
    head = " ".join(words[:3]) or "text"
    parts = [prefix.group(1)] if prefix else []
    parts += [f"| Topic | Detail |\n|---|---|\n| {head} | {' '.join(words[3:8]) or head} |",
              f"Question: What is this text about?\nAnswer: It is about {head}.",
              f"- {head}\n- {' '.join(words[3:6]) or head}",
              "Solution: 2 + 2 = 4", document]
    marks = MARKS_RE.findall(user)
    if marks:  # the reasoning first, then the response between the last marks the prompt names
        return f"Reasoning: the text is kept.\n<{marks[-1]} starts>\n" + "\n\n".join(parts) + f"\n<{marks[-1]} ends>"
    return "\n\n".join(parts)


class StubOpenAI:
    """A loopback OpenAI-compatible server (``/v1/models``, ``/v1/chat/completions``) whose answer is
    ``respond(user_message) -> (text, finish_reason)``; usage is reported as characters / 4 (of the whole prompt and
    of the answer), as a server reports its own tokenizer's counts."""

    def __init__(self, respond, model: str):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, body: dict):
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send({"object": "list", "data": [{"id": model, "object": "model", "owned_by": "test"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                text, finish = respond(body["messages"][-1]["content"])
                prompt_chars = sum(len(m["content"] or "") for m in body["messages"])
                self._send({"id": "x", "object": "chat.completion", "created": 0, "model": model,
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                         "finish_reason": finish}],
                            "usage": {"prompt_tokens": prompt_chars // 4, "completion_tokens": len(text) // 4,
                                      "total_tokens": (prompt_chars + len(text)) // 4}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


class FormatEchoOpenAI(StubOpenAI):
    """Answers in the shape the request's prompt asks for (see the module's docstring)."""

    def __init__(self):
        super().__init__(lambda user: (answer(user), "stop"), "format-echo")
