"""Wire protocols a ReplicaPool speaks. Each turns a finephrase payload (OpenAI chat shape:
``messages``, ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``model``) into an HTTP
request and the answer back into an OpenAI-style response dict
(``choices[0].message.content``, ``choices[0].finish_reason``, ``usage``).

Each protocol also adapts the sampling parameters to what its server accepts, and says what it
sends: ``Protocol.sent_params(params)`` maps finephrase's generation parameters
(``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``) to the ones the protocol puts
on the wire, in finephrase's names; ``prepare`` builds the request body through the same mapping,
so what a row records as its generation parameters is what the server received.

TGI (both routes, and an OpenAI-protocol generator that turns out to be TGI) validates more
strictly than OpenAI's API (text-generation-inference ``router/src/validation.rs``,
``Validation::validate``): ``top_p`` must be ``> 0.0 and < 1.0`` and ``temperature`` strictly
positive. So for TGI:

* ``top_p >= 1`` is not sent: TGI's own default when ``top_p`` is absent is 1.0 (``validation.rs``:
  ``top_p.map(...).unwrap_or(Ok(1.0))``) and TGI applies no model generation-config defaults, so
  omitting it is exactly "no nucleus filtering";
* ``temperature: 0`` means greedy, spelled as each route wants it: the Messages API takes
  ``temperature: 0`` and turns it into ``do_sample: false`` (``router/src/lib.rs``,
  ``ChatRequest::try_into_generate``: ``Some(0.0) => (false, None)``); ``/generate`` rejects it, so
  there it is ``do_sample: false`` with no temperature;
* with ``temperature: 0`` a ``top_p`` is not sent either: TGI samples whenever ``top_p < 1`` even with
  ``do_sample: false`` (``server/text_generation_server/utils/tokens.py``,
  ``HeterogeneousNextTokenChooser``: ``do_sample = [sample or x < 1.0 for x in top_p]``), where
  OpenAI-style servers decode greedily at temperature 0 whatever ``top_p`` says.

The plain ``openai`` protocol passes the parameters through unchanged — ``top_p: 1.0`` included:
omitting it is *not* equivalent on other servers (llama.cpp's server and llama-cpp-python default to
``top_p`` 0.95; vLLM applies the model's ``generation_config.json`` defaults, e.g. 0.9) — unless its
health check finds that the server is TGI (``GET /info`` answers with TGI's ``router`` field), in which
case it sends what ``tgi-chat`` sends.
"""

from __future__ import annotations

import os
import struct

import orjson

from finephrase.inference.client.request_builder import DEFAULT_MAX_NEW_TOKENS

# finephrase's generation parameters, in the order they are recorded
GENERATION_KEYS = ("max_new_tokens", "temperature", "top_p", "seed", "stop")
# their names in an OpenAI chat payload
CHAT_NAMES = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "seed": "seed",
              "stop": "stop"}
CHAT_PARAM_KEYS = frozenset(CHAT_NAMES.values())


def params_from_payload(payload: dict) -> dict:
    """finephrase's generation parameters carried by an OpenAI chat payload (``max_tokens`` → ``max_new_tokens``)."""
    return {key: payload[name] for key, name in CHAT_NAMES.items() if payload.get(name) is not None}


def _f32(value: float) -> float:
    """``value`` as TGI sees it: its router deserializes sampling parameters as ``f32``."""
    try:
        return struct.unpack("f", struct.pack("f", value))[0]
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")


def tgi_sent_params(params: dict) -> dict:
    """finephrase's generation parameters as finephrase sends them to TGI (either route), in finephrase's names.

    ``temperature: 0.0`` means greedy (each route spells it its own way, see the module docstring); ``top_p`` is
    left out when it is ``>= 1`` (TGI's default, and TGI rejects it) or when decoding is greedy. Anything else is
    sent as given — an invalid value (``top_p: 0``, a negative temperature) gets TGI's own 422.
    """
    out = {}
    if params.get("max_new_tokens") is not None:
        out["max_new_tokens"] = params["max_new_tokens"]
    temperature = params.get("temperature")
    greedy = temperature is not None and _f32(temperature) == 0.0
    if temperature is not None:
        out["temperature"] = 0.0 if greedy else temperature
    top_p = params.get("top_p")
    if top_p is not None and not greedy and _f32(top_p) < 1.0:
        out["top_p"] = top_p
    for key in ("seed", "stop"):
        if params.get(key) is not None:
            out[key] = params[key]
    return out


class ProtocolError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status
        self.body = body


class Protocol:
    """A wire protocol, split so that the caller (``ReplicaPool``) owns the one HTTP round trip:
    ``prepare`` gives the body bytes for ``POST {base}{path}`` (and a context), ``parse`` turns the
    answer (status 200) into the OpenAI-style dict. ``sent_params`` says which generation parameters the
    body carries."""

    name = "base"
    path = "/"

    def __init__(self, config=None):
        self.config = config

    async def health(self, session, base_url: str) -> tuple[bool, dict]:
        raise NotImplementedError

    def sent_params(self, params: dict) -> dict:
        """finephrase's generation parameters (``max_new_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``)
        as this protocol puts them on the wire, in finephrase's names: what a row should record. Parameters that
        are not sent (``None``, unknown keys, values the server's default is equal to) are left out."""
        return {key: params[key] for key in GENERATION_KEYS if params.get(key) is not None}

    def prepare(self, payload: dict) -> tuple[bytes, object]:
        """Body bytes for ``POST {base}{path}``, and a context handed to ``parse``."""
        raise NotImplementedError

    def parse(self, raw: bytes, context: object) -> dict:
        raise NotImplementedError


TGI_INFO_KEYS = ("model_id", "model_sha", "model_dtype", "max_input_tokens", "max_input_length", "max_total_tokens",
                 "max_concurrent_requests", "max_best_of", "max_stop_sequences", "version", "sha")


def is_tgi_info(data) -> bool:
    """Whether a ``GET /info`` answer is TGI's (``router/src/lib.rs``, ``Info``: ``router`` is the router crate's
    name; TGI before ``router`` existed: model id and token limits)."""
    return isinstance(data, dict) and (
        data.get("router") == "text-generation-router"
        or ("model_id" in data and "max_total_tokens" in data
            and ("max_input_tokens" in data or "max_input_length" in data)))


def tgi_info(data: dict) -> dict:
    """The serving limits and model identity from TGI's ``GET /info`` answer."""
    info = {k: data[k] for k in TGI_INFO_KEYS if data.get(k) is not None}
    if "max_input_tokens" not in info and "max_input_length" in info:  # TGI < 2.1
        info["max_input_tokens"] = info["max_input_length"]
    return info


class OpenAIChat(Protocol):
    """``POST /v1/chat/completions``; health and model info from ``GET /v1/models``.

    Spoken by vLLM, SGLang, llama.cpp's server and TGI's Messages API. The sampling parameters go through
    unchanged, unless the health check found a TGI server (then as ``tgi-chat``: see the module docstring).
    """

    name = "openai"
    path = "/v1/chat/completions"
    tgi = False  # set by health() when the server is TGI (its Messages API validates like /generate)

    async def health(self, session, base_url: str) -> tuple[bool, dict]:
        async with session.get(f"{base_url}/v1/models", timeout=5) as r:
            if r.status != 200:
                return False, {}
            data = await r.json(content_type=None)
        models = data.get("data") or []
        info = {}
        if models:
            m = models[0]
            info["model_id"] = m.get("id")
            for key in ("max_model_len", "context_length", "max_context_length"):
                if m.get(key):
                    info["max_total_tokens"] = int(m[key])
            meta = m.get("meta") or {}
            if meta.get("n_ctx_train"):
                info["n_ctx_train"] = meta["n_ctx_train"]
        if "max_total_tokens" not in info:  # vLLM says max_model_len; TGI says nothing here but has /info
            try:
                async with session.get(f"{base_url}/info", timeout=5) as r:
                    data = await r.json(content_type=None) if r.status == 200 else None
            except Exception:  # noqa: BLE001 - /info is optional: most OpenAI-compatible servers 404 or are not JSON
                data = None
            if is_tgi_info(data):
                self.tgi = True
                info = {**info, **tgi_info(data)}
        return True, info

    def sent_params(self, params: dict) -> dict:
        return tgi_sent_params(params) if self.tgi else super().sent_params(params)

    def prepare(self, payload: dict) -> tuple[bytes, object]:
        body = {k: v for k, v in payload.items() if k not in CHAT_PARAM_KEYS}
        for key, value in self.sent_params(params_from_payload(payload)).items():
            body[CHAT_NAMES[key]] = value
        return orjson.dumps(body), None

    def parse(self, raw: bytes, context: object) -> dict:
        return orjson.loads(raw)


async def tgi_health(session, base_url: str) -> tuple[bool, dict]:
    """TGI: ``GET /health`` (200 once the model is loaded) and ``GET /info``."""
    async with session.get(f"{base_url}/health", timeout=5) as r:
        if r.status != 200:
            return False, {}
    async with session.get(f"{base_url}/info", timeout=5) as r:
        if r.status != 200:
            return True, {}
        data = await r.json(content_type=None)
    return True, tgi_info(data) if isinstance(data, dict) else {}


class TGIChat(OpenAIChat):
    """TGI's Messages API (``/v1/chat/completions``), with TGI's ``/health`` and ``/info``.

    ``temperature: 0`` is sent as is (TGI's greedy), ``top_p >= 1`` is not sent (see the module docstring)."""

    name = "tgi-chat"
    tgi = True

    async def health(self, session, base_url: str) -> tuple[bool, dict]:
        return await tgi_health(session, base_url)


FINISH_REASONS = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


class TGIGenerate(Protocol):
    """TGI's native ``POST /generate``.

    The chat messages are rendered with the model's chat template (``ChatTemplate``: from the
    recipe's tokenizer, else from ``/info``'s ``model_id``); ``details: true`` returns the
    finish reason and the generated token count; the prompt's token count is counted with the
    same tokenizer on the client.

    Sampling: a temperature > 0 is sent with ``do_sample: true``; ``temperature: 0`` as ``do_sample: false``
    without temperature or ``top_p`` (TGI's greedy); no temperature at all sends no ``do_sample`` either, which
    is TGI's own default for ``/generate`` (``do_sample`` false: greedy unless a ``top_p`` < 1 is given).
    """

    name = "tgi"
    path = "/generate"

    def __init__(self, config=None, tokenizer: str | None = None):
        super().__init__(config)
        self.tokenizer = tokenizer
        self._template = None
        self._counter = None

    async def health(self, session, base_url: str) -> tuple[bool, dict]:
        ok, info = await tgi_health(session, base_url)
        if ok and self.tokenizer is None and info.get("model_id"):
            self.tokenizer = info["model_id"]
        return ok, info

    def template(self):
        if self._template is None:
            from finephrase.errors import ChatTemplateError
            from finephrase.inference.client.chat_template import ChatTemplate

            if not self.tokenizer:
                raise ChatTemplateError("TGI /generate needs the model's chat template: set generator.tokenizer")
            self._template = ChatTemplate(self.tokenizer)
        return self._template

    def sent_params(self, params: dict) -> dict:
        sent = tgi_sent_params(params)
        sent.setdefault("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        return {key: sent[key] for key in GENERATION_KEYS if key in sent}

    def to_request(self, payload: dict) -> dict:
        sent = self.sent_params(params_from_payload(payload))
        params = {"max_new_tokens": sent["max_new_tokens"], "details": True}
        temperature = sent.get("temperature")
        if temperature is not None:
            if temperature == 0.0:
                # greedy: /generate has no temperature 0 (router/src/validation.rs, Validation::validate:
                # "`temperature` must be strictly positive"); do_sample false and no warper is TGI's greedy
                params["do_sample"] = False
            else:
                params["temperature"] = temperature
                params["do_sample"] = True
        for key in ("top_p", "seed", "stop"):
            if key in sent:
                params[key] = sent[key]
        if payload.get("truncate") is not None:
            params["truncate"] = payload["truncate"]
        return {"inputs": self.template().render(payload["messages"]), "parameters": params}

    def prompt_tokens(self, inputs: str) -> int:
        if self._counter is None:
            from finephrase.inference.client.tokens import TokenCounter

            spec = self.tokenizer if self.tokenizer and self.tokenizer.endswith(".gguf") else None
            if spec is None and self.tokenizer and os.path.exists(self.tokenizer):
                spec = self.tokenizer
            self._counter = TokenCounter(spec)
        return self._counter.count(inputs)

    def prepare(self, payload: dict) -> tuple[bytes, object]:
        body = self.to_request(payload)
        return orjson.dumps(body), body["inputs"]

    def parse(self, raw: bytes, context: object) -> dict:
        data = orjson.loads(raw)
        if isinstance(data, list):  # TGI answers a list when `inputs` was a list
            data = data[0]
        details = data.get("details") or {}
        completion = int(details.get("generated_tokens") or 0)
        prompt = self.prompt_tokens(context)
        return {
            "choices": [{"message": {"content": data.get("generated_text", "")},
                         "finish_reason": FINISH_REASONS.get(details.get("finish_reason"), details.get("finish_reason"))}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }


PROTOCOLS = {"openai": OpenAIChat, "tgi-chat": TGIChat, "tgi": TGIGenerate}


def make_protocol(name: str, config=None, tokenizer: str | None = None) -> Protocol:
    if name == "tgi":
        return TGIGenerate(config, tokenizer=tokenizer)
    try:
        return PROTOCOLS[name](config)
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS)}") from None
