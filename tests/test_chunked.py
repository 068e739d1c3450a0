"""Chunked rewriting (Kimi K2 style): long documents become one row whose parts follow the source order.

End to end through `finephrase run` against a protocol-faithful fake OpenAI server written here
(it echoes which source paragraphs each request carried, so the order of the parts can be
checked exactly), plus unit tests of the splitter and of the failure rules. The real-model run
is tests/test_recipes.py::test_kimi_k2_rewrites_long_documents_in_chunks; the embedded server's
max_tokens limit is checked on a real server at the end.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import threading
import time
import urllib.request
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from conftest import DEMO_DATA, run_cli, run_summary
from datatrove.data import Document
from datatrove.pipeline.inference.types import InferenceError, InferenceResult

from finephrase.errors import InputTooLong
from finephrase.inference.client.tokens import TokenCounter
from finephrase.pipeline.rephrase.splitting import split_chunks
from finephrase.prompts import load_chunk_context, load_prompt

MARK_RE = re.compile(r"\[P(\d{3})\]")
POISON = "[P-FAIL]"
PROMPT_FILE = """\
name: parts
set: local
version: "1.0"
source: {title: test prompt}
description: Rewrites the text (test prompt for chunked mode).
template: |-
  Rewrite the text below.

  Document:
  {{ document }}
context: chunked
output_rules: {drop_truncated: true}
"""


class FakeOpenAI:
    """A small OpenAI-compatible server: GET /v1/models, POST /v1/chat/completions.

    The answer names the paragraph markers found in the document part of the request
    ("Rewritten [P001] [P002]."); a document part containing POISON gets HTTP 500. A request without a
    document part (the pool's 1-token health generation) gets "OK" and is not recorded.
    """

    def __init__(self):
        self.requests: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "echo", "object": "model", "owned_by": "test"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found"}})
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                user = body["messages"][-1]["content"]
                if self.headers.get("X-Finephrase-Health") or "Document:\n" not in user:  # the pool's health check
                    text, finish = "OK", "length"
                else:
                    outer.requests.append(body)
                    part = user.split("Document:\n", 1)[1]
                    if POISON in part:
                        return self._send(500, {"error": {"message": "injected failure", "type": "server_error"}})
                    marks = MARK_RE.findall(part)
                    text, finish = "Rewritten " + " ".join(f"[P{m}]" for m in marks) + ".", "stop"
                self._send(200, {
                    "id": f"chatcmpl-{len(outer.requests)}", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model", "echo"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                    "usage": {"prompt_tokens": len(user) // 4, "completion_tokens": len(text) // 4,
                              "total_tokens": (len(user) + len(text)) // 4},
                })

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


def marked_document(n_paragraphs: int, poison_at: int | None = None, tag: str = "P", skip: int = 0) -> str:
    """Real text from the demo corpus, as numbered paragraphs ``[P000] ...``."""
    lines = []
    with gzip.open(DEMO_DATA / "docs.jsonl.gz", "rt") as f:
        for line in f:
            lines += [x.strip() for x in json.loads(line)["text"].split("\n") if len(x.strip()) > 60]
            if len(lines) > skip + n_paragraphs * 2:
                break
    lines = lines[skip:]
    paras = []
    for i in range(n_paragraphs):
        mark = POISON if i == poison_at else f"[{tag}{i:03d}]"
        paras.append(f"{mark} {lines[2 * i]} {lines[2 * i + 1]}")
    return "\n\n".join(paras) + "\n"


def doc_part(request: dict) -> str:
    return request["messages"][-1]["content"].split("Document:\n", 1)[1]


@pytest.fixture
def fake_openai():
    server = FakeOpenAI()
    yield server
    server.close()


def test_chunked_end_to_end_parts_follow_source_order(tmp_path, demo_data, make_recipe, fake_openai):
    long_doc = marked_document(40)
    poisoned = marked_document(30, poison_at=17, tag="Q", skip=200)
    src = tmp_path / "src"
    src.mkdir()
    with open(src / "docs.jsonl", "w") as f:
        f.write(json.dumps({"id": "long", "text": long_doc}) + "\n")
        f.write(json.dumps({"id": "poisoned", "text": poisoned}) + "\n")
    (tmp_path / "parts.yaml").write_text(PROMPT_FILE)
    recipe = make_recipe({
        "source": {"path": str(src)},
        "filters": {"quality": None, "language": None, "min_chars": 1},
        "dedup": None, "mix": None,
        "prompts": [str(tmp_path / "parts.yaml")],
        "generator": {"server": "openai", "endpoints": [fake_openai.url], "model": "echo", "context_length": 1024,
                      "max_retries": 0, "replicas": None, "threads": 1, "n_ctx": 2048,
                      "params": {"max_new_tokens": 64, "temperature": 0.0, "top_p": None, "seed": 0}},
        "output_checks": "drop",
    })
    run_cli("run", str(recipe), "--output", str(tmp_path / "out"))

    from datasets import load_dataset

    ds = load_dataset("parquet", data_dir=str(tmp_path / "out" / "data" / "parts"), split="train")
    assert ds["source_id"] == ["long"], "the document with a failed chunk must not be written, even in part"
    row = ds[0]
    long_requests = [r for r in fake_openai.requests if MARK_RE.search(doc_part(r))]
    poisoned_requests = [r for r in fake_openai.requests if not MARK_RE.search(doc_part(r))]
    assert POISON in doc_part(poisoned_requests[-1]), "the poisoned document stopped at its failed chunk"
    assert row["chunks"] == len(long_requests) > 2
    parts = [doc_part(r) for r in long_requests]
    assert "".join(parts) == long_doc, "the chunks, in request order, are the source text in order"
    assert all(p.endswith("\n") for p in parts), "chunks end at paragraph boundaries"
    marks = [int(m) for p in parts for m in MARK_RE.findall(p)]
    assert marks == list(range(40))
    answers = ["Rewritten " + " ".join(f"[P{m}]" for m in MARK_RE.findall(p)) + "." for p in parts]
    assert row["text"] == "\n\n".join(answers)
    context = load_chunk_context("kimi_k2_chunk")
    for i, r in enumerate(long_requests):
        user = r["messages"][-1]["content"]
        assert f"part {i + 1} of {len(long_requests)}" in user
        if i:
            assert f"ended like this:\n{answers[i - 1]}" in user, "each chunk carries the previous chunk's rewrite"
            assert "The document begins like this:\n[P000]" in user
        assert r["max_tokens"] == 64 and r["model"] == "echo"
    assert context.max_chunks >= len(long_requests)
    assert row["truncated"] is False and row["finish_reason"] == "stop"
    gen = json.loads(row["generation_params"])
    assert gen["context"] == "chunked" and gen["chunk_context"].startswith("kimi_k2_chunk@")
    summary = run_summary(tmp_path / "out" / ".finephrase")
    assert summary["prompts"]["parts"]["failed"] == 1 and summary["prompts"]["parts"]["rephrased"] == 1


# ------------------------------------------------------------------ unit tests (fake generate)
def _step(context_length=1024, max_new=64):
    import tempfile

    from finephrase.pipeline.rephrase import Rephrase

    return Rephrase([load_prompt("wrap/medium")], output_folder=tempfile.mkdtemp(), context_length=context_length,
                    generation_params={"max_new_tokens": max_new})


def _run(step, prompt, text, answer):
    requests = []

    async def generate(payload):
        requests.append(payload)
        result = answer(len(requests), payload)
        if isinstance(result, Exception):
            raise result
        return InferenceResult(text=result, finish_reason="stop", usage={"prompt_tokens": 1, "completion_tokens": 1})

    entry = asyncio.run(step._rephrase_one(prompt, Document(text=text, id="d"), generate))
    return entry, requests


def test_split_chunks_paragraphs_lines_sentences():
    counter = TokenCounter(None)
    doc = marked_document(30)
    chunks = split_chunks(doc, 200, counter.count)
    assert "".join(chunks) == doc and len(chunks) > 2
    assert all(counter.count(c) <= 200 for c in chunks)
    assert all(c.endswith("\n\n") or c == chunks[-1] for c in chunks), "cut at paragraph boundaries"
    # one huge paragraph without blank lines: lines, then sentences, then a hard cut
    blob = ("A sentence that goes on. " * 400) + ("x" * 3000)
    pieces = split_chunks(blob, 100, counter.count)
    assert "".join(pieces) == blob and all(counter.count(p) <= 100 for p in pieces)


def test_short_document_is_one_plain_request():
    step = _step()
    prompt = replace(load_prompt("wrap/medium"), context="chunked")
    entry, requests = _run(step, prompt, "A short paragraph about lists.", lambda i, p: "Lists are sequences.")
    assert entry["chunks"] == 1 and len(requests) == 1
    plain = step.payload(prompt, "A short paragraph about lists.", step.params_for(prompt))
    assert requests[0]["messages"] == plain["messages"], "a document that fits is sent exactly as in truncate mode"


def test_failed_or_refused_chunk_fails_the_document():
    doc = marked_document(30)
    prompt = replace(load_prompt("wrap/medium"), context="chunked")
    step = _step()
    entry, requests = _run(step, prompt, doc, lambda i, p: InferenceError(None, "HTTP 503 gave up") if i == 3 else "ok")
    assert "error" in entry and "chunk 3/" in entry["error"] and "text" not in entry
    assert step.stats["failed/medium"].total == 1 and len(requests) == 3
    step = _step()
    entry, _ = _run(step, prompt, doc, lambda i, p: "I'm sorry, I can't help with that." if i == 2 else "ok")
    assert "error" in entry and "refusal" in entry["error"]


def test_rejected_chunk_is_split_and_retried_once():
    doc = marked_document(30)
    prompt = replace(load_prompt("wrap/medium"), context="chunked")
    step = _step()
    entry, requests = _run(step, prompt, doc, lambda i, p: InputTooLong("BadRequestError 400: too long", 400, "too long")
                           if i == 1 else f"part {i}")
    assert "error" not in entry
    parts = [r["messages"][-1]["content"].split("as in sentences on Wikipedia:\n\n", 1)[1] for r in requests]
    assert "".join(parts[1:]) == doc, "the rejected chunk was split in two, and the order kept"
    assert "".join(parts[1:]).startswith(parts[0]) and len(parts[1]) < len(parts[0])
    assert entry["chunks"] == len(requests) - 1 and step.stats["resplit_chunks/medium"].total == 1


def test_max_chunks_truncates_and_records_it(tmp_path):
    ctx = load_chunk_context("kimi_k2_chunk")
    small = tmp_path / "tiny.yaml"
    small.write_text(open(ctx.path).read().replace("name: kimi_k2_chunk", "name: tiny")
                     .replace("max_chunks: 16", "max_chunks: 2"))
    prompt_file = tmp_path / "parts.yaml"
    prompt_file.write_text(PROMPT_FILE.replace("context: chunked", "context: chunked\nchunk_context: tiny"))
    prompt = load_prompt(str(prompt_file))
    step = _step()
    entry, requests = _run(step, prompt, marked_document(60), lambda i, p: f"part {i}")
    assert entry["chunks"] == 2 == len(requests) and entry["truncated"] is True
    assert entry["source_tokens_used"] < entry["source_tokens"]


def test_template_with_its_own_chunk_variables_gets_no_extra_wording(tmp_path):
    own = PROMPT_FILE.replace("Rewrite the text below.", "{% if chunk_index %}Continue after: {{ previous_output }}{% endif %}"
                              "\n  Rewrite the text below.")
    path = tmp_path / "parts.yaml"
    path.write_text(own)
    prompt = load_prompt(str(path))
    assert prompt.uses_chunk_variables
    entry, requests = _run(_step(), prompt, marked_document(30), lambda i, p: f"answer {i}")
    assert entry["chunks"] > 1
    assert "part 2 of" not in requests[1]["messages"][-1]["content"]
    assert requests[1]["messages"][-1]["content"].startswith("Continue after: answer 1")


def test_row_tokens_are_the_answered_requests_tokens():
    """A chunked row's token counts are the sums of its requests' ``usage``, one request per chunk."""
    doc = marked_document(30)
    prompt = replace(load_prompt("wrap/medium"), context="chunked")
    step = _step()
    usages = []

    async def generate(payload):
        n = len(usages) + 1
        usages.append({"prompt_tokens": 1000 + n, "completion_tokens": n})
        return InferenceResult(text=f"part {n}", finish_reason="length" if n == 2 else "stop", usage=usages[-1])

    entry = asyncio.run(step._rephrase_one(prompt, Document(text=doc, id="d"), generate))
    assert entry["chunks"] == len(usages) > 2
    assert entry["completion_tokens"] == sum(u["completion_tokens"] for u in usages)
    assert entry["prompt_tokens"] == sum(u["prompt_tokens"] for u in usages)
    assert entry["finish_reason"] == "length", "one chunk cut at max_new_tokens makes the row a cut one"


# ------------------------------------------------------------------ the real server: max_tokens is a hard limit
# Issue 11: on a portable llama.cpp build the kimi-k2 recipe wrote a 3-chunk row with 145 completion tokens for
# max_new_tokens 48. One chunk's 48th generated token was byte 0xC2, the first half of "¶" (U+00B6: two byte-level
# tokens in SmolLM2's vocabulary, 141 and 131). llama-cpp-python 0.3.36 (Llama._create_completion) `continue`s past
# its `len(completion_tokens) >= max_tokens` check while the text ends inside a UTF-8 character, so it generated a
# 49th token (0xB6) and reported completion_tokens 49. chunked.py summed what the server reported, correctly
# (test above); the embedded server has to stop at max_tokens, as the OpenAI API (and vLLM, TGI) do.
FEW_SHOT_PILCROW = [  # SmolLM2-135M copies this pattern: "Hashable¶" = Hash, able, 0xC2, 0xB6
    {"role": "user", "content": "Say: a¶"}, {"role": "assistant", "content": "a¶"},
    {"role": "user", "content": "Say: Sized¶"}, {"role": "assistant", "content": "Sized¶"},
    {"role": "user", "content": "Say: Hashable¶"},
]
CHINESE = [{"role": "user", "content": "Write a short sentence in Chinese."}]  # characters of 2-3 tokens each


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory):
    """One real embedded llama.cpp server, as finephrase starts it."""
    from finephrase.inference.servers.embedded import EmbeddedServers

    with EmbeddedServers(replicas=1, threads=1, n_ctx=1024, log_dir=str(tmp_path_factory.mktemp("llama"))) as servers:
        yield servers


def _chat(url: str, messages: list[dict], max_tokens: int) -> dict:
    body = {"messages": messages, "max_tokens": max_tokens, "temperature": 0.0, "seed": 0}
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.loads(r.read())


def _cuts_inside_a_character(vocab, text: str) -> list[int]:
    """The token counts n after which ``text``'s first n tokens end inside a UTF-8 character."""
    ids = vocab.tokenize(text.encode(), add_bos=False, special=False)
    cuts = []
    for n in range(1, len(ids) + 1):
        try:
            vocab.detokenize(ids[:n]).decode("utf-8")
        except UnicodeDecodeError:
            cuts.append(n)
    return cuts


def test_embedded_server_stops_at_max_tokens_inside_a_character(llama_server):
    from llama_cpp import Llama

    vocab = Llama(llama_server.gguf, vocab_only=True, verbose=False)
    url = llama_server.endpoints[0]
    exercised = []
    for messages in (FEW_SHOT_PILCROW, CHINESE):
        full = _chat(url, messages, 24)["choices"][0]["message"]["content"]
        for n in _cuts_inside_a_character(vocab, full)[:3]:  # max_tokens that ends the answer inside a character
            answer = _chat(url, messages, n)
            text, generated = answer["choices"][0]["message"]["content"], answer["usage"]["completion_tokens"]
            assert generated <= n, f"max_tokens={n} but the server generated {generated} tokens: {text!r}"
            assert answer["choices"][0]["finish_reason"] == "length"
            if len(vocab.tokenize(text.encode(), add_bos=False, special=False)) < n:
                exercised.append((n, text))  # the cut character was left out of the text, not completed
    assert exercised, "no answer was cut inside a character: the case was not exercised"
