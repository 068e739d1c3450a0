"""The request a prompt sends for one document: sampling parameters, token budget, payload.

One builder serves the ``Rephrase`` step (every request it sends) and ``finephrase prompts render``
(``finephrase.cli.prompts.build_requests``), so the request printed is the request sent:

- :meth:`RequestBuilder.params_for`: the prompt's ``generation`` with the recipe's overrides, and
  ``max_new_tokens`` defaulting to :data:`DEFAULT_MAX_NEW_TOKENS` (the only home of that default);
- :meth:`RequestBuilder.budget_for`: the tokens of source text that fit: the context window (the
  recipe's ``context_length``, else the server's, else 4096) - ``max_new_tokens`` - the prompt's own
  tokens - a margin;
- :meth:`RequestBuilder.payload`: the OpenAI-style body (``messages``, ``max_tokens``, ``model``,
  sampling parameters) that the servers' protocols translate for the wire.

Parameters are computed once per prompt (sha256), budgets once per (prompt, ``max_new_tokens``): both
are on the per-document hot path. Imports finephrase.inference.client.tokens only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from finephrase.inference.client.tokens import TokenCounter

if TYPE_CHECKING:  # pragma: no cover
    from finephrase.prompts import Prompt

DEFAULT_MAX_NEW_TOKENS = 1024
DEFAULT_CONTEXT_LENGTH = 4096  # when neither the recipe nor the server says
PROMPT_MARGIN_TOKENS = 32
CHAT_TEMPLATE_TOKENS = 16 * 2  # the chat template's markers around the (system and user) messages
SAMPLING_KEYS = ("temperature", "top_p", "seed")


class RequestBuilder:
    """Builds the requests for a model: ``model`` (sent in every payload), ``generation_params`` (overrides of
    the prompts' defaults; None values are ignored), ``context_length`` (None: the server's) and ``tokens``
    (the token counter that sizes the budget; default: estimates)."""

    def __init__(self, model: str = "default", generation_params: dict | None = None,
                 context_length: int | None = None, tokens: TokenCounter | None = None):
        self.model = model
        self.generation_params = {k: v for k, v in (generation_params or {}).items() if v is not None}
        self.context_length = context_length
        self.tokens = tokens if tokens is not None else TokenCounter(None)
        self._params: dict[str, dict] = {}
        self._budgets: dict[str, int] = {}

    def params_for(self, prompt: Prompt) -> dict:
        """The prompt's sampling parameters with the overrides (computed once per prompt; do not mutate)."""
        params = self._params.get(prompt.sha256)
        if params is None:
            params = {**prompt.generation, **self.generation_params}
            params.setdefault("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
            self._params[prompt.sha256] = params
        return params

    def budget_for(self, prompt: Prompt, max_new_tokens: int, server=None) -> int:
        """Tokens of source text that fit: context - max_new_tokens - prompt overhead - margin (computed once per
        prompt and ``max_new_tokens``). ``server``: anything with a ``server_info`` dict (``max_total_tokens``,
        ``max_input_tokens``), read the first time."""
        key = f"{prompt.sha256}:{max_new_tokens}"
        budget = self._budgets.get(key)
        if budget is None:
            budget = self._budgets[key] = self._compute_budget(prompt, max_new_tokens, server)
        return budget

    def _compute_budget(self, prompt: Prompt, max_new_tokens: int, server) -> int:
        info = server.server_info if server is not None else {}
        context = self.context_length or info.get("max_total_tokens") or DEFAULT_CONTEXT_LENGTH
        if info.get("max_input_tokens"):
            context = min(context, info["max_input_tokens"] + max_new_tokens)
        overhead = self.tokens.count("\n".join(m["content"] for m in prompt.render(""))) + CHAT_TEMPLATE_TOKENS
        return max(64, context - max_new_tokens - overhead - PROMPT_MARGIN_TOKENS)

    def payload(self, prompt: Prompt, text: str, params: dict, **context: Any) -> dict:
        """The request body for ``text`` (``context``: the chunk variables of a chunked rewrite)."""
        payload = {"messages": prompt.render(text, **context), "max_tokens": params["max_new_tokens"],
                   "model": self.model}
        for key in SAMPLING_KEYS:
            if params.get(key) is not None:
                payload[key] = params[key]
        return payload
