"""Render chat messages into a prompt string with the model's own chat template.

Needed for TGI's native ``/generate`` route, which takes raw ``inputs``. The template comes
from the model's tokenizer: a ``.gguf`` file (its ``tokenizer.chat_template`` metadata, read
with llama.cpp), or a tokenizer folder / Hub model id (``transformers.AutoTokenizer``; TGI's
``/info`` gives the ``model_id``). Rendering is transformers' own ``render_jinja_template``.
"""

from __future__ import annotations

import os
from functools import cached_property

from finephrase.errors import ChatTemplateError


class ChatTemplate:
    def __init__(self, spec: str):
        self.spec = spec

    def __getstate__(self):
        return {"spec": self.spec}

    def __setstate__(self, state):
        self.spec = state["spec"]

    @cached_property
    def _impl(self):
        spec = self.spec
        if spec.endswith(".gguf"):
            from llama_cpp import Llama

            llm = Llama(model_path=spec, vocab_only=True, verbose=False)
            md = llm.metadata
            template = md.get("tokenizer.chat_template")
            if not template:
                raise ChatTemplateError(f"{os.path.basename(spec)} has no tokenizer.chat_template")

            def token(key):
                tid = md.get(f"tokenizer.ggml.{key}_token_id")
                return llm.detokenize([int(tid)], special=True).decode("utf-8", "ignore") if tid is not None else ""

            return ("template", template, {"bos_token": token("bos"), "eos_token": token("eos")})
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(spec)
        except Exception as e:  # offline Hub, missing folder...
            raise ChatTemplateError(f"cannot load the tokenizer for {spec!r} ({type(e).__name__}: {e}); "
                                    "set generator.tokenizer to a local tokenizer folder or .gguf") from None
        if not getattr(tok, "chat_template", None):
            raise ChatTemplateError(f"the tokenizer of {spec!r} has no chat template")
        return ("tokenizer", tok, None)

    def render(self, messages: list[dict]) -> str:
        kind, obj, special = self._impl
        if kind == "tokenizer":
            return obj.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template([messages], chat_template=obj, add_generation_prompt=True, **special)
        return rendered[0]
