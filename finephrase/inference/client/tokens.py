"""Token counting and truncation with the generator's own tokenizer.

A tokenizer spec is a ``.gguf`` file (tokenized by llama.cpp with ``vocab_only``), a
``tokenizer.json`` file or a folder holding one (Hugging Face ``tokenizers``), or ``None``:
then counts are estimated at ``CHARS_PER_TOKEN`` characters per token and marked as estimates.
"""

from __future__ import annotations

import os
from functools import cached_property

CHARS_PER_TOKEN = 3.0  # conservative: English prose is ~4 chars/token for BPE tokenizers


class TokenCounter:
    def __init__(self, spec: str | None = None):
        self.spec = spec

    @property
    def exact(self) -> bool:
        return self.spec is not None

    @cached_property
    def _impl(self):
        spec = self.spec
        if spec is None:
            return None
        if spec.endswith(".gguf"):
            from llama_cpp import Llama

            llm = Llama(model_path=spec, vocab_only=True, verbose=False)
            return ("gguf", llm)
        from tokenizers import Tokenizer

        path = os.path.join(spec, "tokenizer.json") if os.path.isdir(spec) else spec
        return ("hf", Tokenizer.from_file(path))

    def __getstate__(self):  # picklable for datatrove workers: the tokenizer is loaded lazily
        return {"spec": self.spec}

    def __setstate__(self, state):
        self.spec = state["spec"]

    def encode(self, text: str) -> list[int]:
        kind, tok = self._impl
        if kind == "gguf":
            return tok.tokenize(text.encode("utf-8", "replace"), add_bos=False, special=False)
        return tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        kind, tok = self._impl
        if kind == "gguf":
            return tok.detokenize(ids).decode("utf-8", "ignore")
        return tok.decode(ids)

    def count(self, text: str) -> int:
        if self._impl is None:
            return int(len(text) / CHARS_PER_TOKEN) + 1
        return len(self.encode(text))

    def truncate(self, text: str, max_tokens: int) -> tuple[str, int, bool]:
        """Cut ``text`` to at most ``max_tokens`` tokens. Returns (text, original token count, truncated).

        Very long texts (a 10 MB document) are first cut by characters so the tokenizer only sees
        a bounded prefix; the original count is then an estimate from the characters.
        """
        max_tokens = max(1, max_tokens)
        char_cap = max_tokens * 12
        if self._impl is None:
            n = self.count(text)
            if n <= max_tokens:
                return text, n, False
            return text[: int(max_tokens * CHARS_PER_TOKEN)], n, True
        prefix = text[:char_cap]
        ids = self.encode(prefix)
        n = len(ids) if len(text) <= char_cap else int(len(text) / max(1.0, len(prefix) / max(1, len(ids))))
        if len(ids) <= max_tokens and len(text) <= char_cap:
            return text, n, False
        return self.decode(ids[:max_tokens]), n, True
