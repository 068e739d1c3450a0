"""Wire protocols a ReplicaPool speaks. Each turns a finephrase payload (OpenAI chat shape:
``messages``, ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``model``) into an HTTP
request and the answer back into an OpenAI-style response dict
(``choices[0].message.content``, ``choices[0].finish_reason``, ``usage``).
"""

from __future__ import annotations

import os

import orjson



class ProtocolError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status
        self.body = body


class Protocol:
    """A wire protocol, split so that the caller (``ReplicaPool``) owns the one HTTP round trip:
    ``prepare`` gives the body bytes for ``POST {base}{path}`` (and a context), ``parse`` turns the
    answer (status 200) into the OpenAI-style dict."""

    name = "base"
    path = "/"

    def __init__(self, config=None):
        self.config = config

    async def health(self, session, base_url: str) -> tuple[bool, dict]:
        raise NotImplementedError

    def prepare(self, payload: dict) -> tuple[bytes, object]:
        """Body bytes for ``POST {base}{path}``, and a context handed to ``parse``."""
        raise NotImplementedError

    def parse(self, raw: bytes, context: object) -> dict:
        raise NotImplementedError


class OpenAIChat(Protocol):
    """``POST /v1/chat/completions``; health and model info from ``GET /v1/models``.

    Spoken by vLLM, SGLang, llama.cpp's server and TGI's Messages API.
    """

    name = "openai"
    path = "/v1/chat/completions"

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
        return True, info

    def prepare(self, payload: dict) -> tuple[bytes, object]:
        return orjson.dumps(payload), None

    def parse(self, raw: bytes, context: object) -> dict:
        return orjson.loads(raw)


TGI_INFO_KEYS = ("model_id", "model_sha", "model_dtype", "max_input_tokens", "max_input_length", "max_total_tokens",
                 "max_concurrent_requests", "max_best_of", "max_stop_sequences", "version", "sha")


async def tgi_health(session, base_url: str) -> tuple[bool, dict]:
    """TGI: ``GET /health`` (200 once the model is loaded) and ``GET /info``."""
    async with session.get(f"{base_url}/health", timeout=5) as r:
        if r.status != 200:
            return False, {}
    async with session.get(f"{base_url}/info", timeout=5) as r:
        if r.status != 200:
            return True, {}
        data = await r.json(content_type=None)
    info = {k: data[k] for k in TGI_INFO_KEYS if data.get(k) is not None}
    if "max_input_tokens" not in info and "max_input_length" in info:  # TGI < 2.1
        info["max_input_tokens"] = info["max_input_length"]
    return True, info


class TGIChat(OpenAIChat):
    """TGI's Messages API (``/v1/chat/completions``), with TGI's ``/health`` and ``/info``."""

    name = "tgi-chat"

    async def health(self, session, base_url: str) -> tuple[bool, dict]:
        return await tgi_health(session, base_url)


FINISH_REASONS = {"eos_token": "stop", "stop_sequence": "stop", "length": "length"}


class TGIGenerate(Protocol):
    """TGI's native ``POST /generate``.

    The chat messages are rendered with the model's chat template (``ChatTemplate``: from the
    recipe's tokenizer, else from ``/info``'s ``model_id``); ``details: true`` returns the
    finish reason and the generated token count; the prompt's token count is counted with the
    same tokenizer on the client.
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
            from finephrase.chat_template import ChatTemplate, ChatTemplateError

            if not self.tokenizer:
                raise ChatTemplateError("TGI /generate needs the model's chat template: set generator.tokenizer")
            self._template = ChatTemplate(self.tokenizer)
        return self._template

    def to_request(self, payload: dict) -> dict:
        params = {"max_new_tokens": payload.get("max_tokens", 1024), "details": True}
        temperature = payload.get("temperature")
        if temperature is not None and temperature > 0:
            params["temperature"] = temperature
            params["do_sample"] = True
        top_p = payload.get("top_p")
        if top_p is not None and 0 < top_p < 1:  # TGI requires 0 < top_p < 1
            params["top_p"] = top_p
        for key in ("seed", "stop", "truncate"):
            if payload.get(key) is not None:
                params[key] = payload[key]
        return {"inputs": self.template().render(payload["messages"]), "parameters": params}

    def prompt_tokens(self, inputs: str) -> int:
        if self._counter is None:
            from finephrase.tokens import TokenCounter

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
