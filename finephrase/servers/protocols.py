"""Wire protocols a ReplicaPool speaks. Each turns a finephrase payload (OpenAI chat shape:
``messages``, ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``model``) into an HTTP
request and the answer back into an OpenAI-style response dict
(``choices[0].message.content``, ``choices[0].finish_reason``, ``usage``).
"""

from __future__ import annotations

import json


class ProtocolError(Exception):
    def __init__(self, status: int, body: str):
        super().__init__(f"HTTP {status}: {body[:200]}")
        self.status = status
        self.body = body


class Protocol:
    name = "base"

    def __init__(self, config=None):
        self.config = config

    async def health(self, session, base_url: str) -> tuple[bool, dict]:
        raise NotImplementedError

    async def request(self, session, base_url: str, payload: dict) -> dict:
        raise NotImplementedError


class OpenAIChat(Protocol):
    """``POST /v1/chat/completions``; health and model info from ``GET /v1/models``.

    Spoken by vLLM, SGLang, llama.cpp's server and TGI's Messages API.
    """

    name = "openai"

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

    async def request(self, session, base_url: str, payload: dict) -> dict:
        async with session.post(f"{base_url}/v1/chat/completions", json=payload) as r:
            body = await r.read()
            if r.status != 200:
                raise ProtocolError(r.status, body.decode("utf-8", "replace"))
        return json.loads(body)


PROTOCOLS = {"openai": OpenAIChat}


def make_protocol(name: str, config=None) -> Protocol:
    try:
        return PROTOCOLS[name](config)
    except KeyError:
        raise ValueError(f"unknown protocol {name!r}; known: {sorted(PROTOCOLS)}") from None
