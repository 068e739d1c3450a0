"""The ``truncate`` strategy (``context: truncate``, the default): the document cut to the token budget, one request.

The budget is the server's context window minus ``max_new_tokens``, the prompt's own tokens and a margin
(:class:`~finephrase.inference.client.request_builder.RequestBuilder`). When the server still answers "input too long"
(:class:`~finephrase.errors.InputTooLong`: 413, or a 400/422 saying so) the document is cut to half the
budget and sent once more; a second refusal fails this prompt for this document (the step counts it).

A strategy is ``async (tools, prompt, source, params, generate) -> entry fields``; ``tools`` is the step, seen
through :class:`RewriteTools` (what a strategy may use of it). ``finephrase prompts render`` passes its own.
"""

from __future__ import annotations

from typing import Any, Protocol

from finephrase import stats as names
from finephrase.errors import InputTooLong
from finephrase.inference.client.tokens import TokenCounter
from finephrase.prompts import Prompt


class RewriteTools(Protocol):
    """What a strategy uses of the rephrase step."""

    tokens: TokenCounter

    def budget_for(self, prompt: Prompt, max_new_tokens: int) -> int: ...

    def payload(self, prompt: Prompt, text: str, params: dict, **context: Any) -> dict: ...

    def sent_params(self, params: dict) -> dict: ...

    def stat_update(self, *labels: str, value: int = 1, unit: str | None = None) -> None: ...


async def rewrite_truncated(tools: RewriteTools, prompt: Prompt, source: str, params: dict, generate) -> dict:
    """The entry fields of a row (text, tokens, truncation) for ``source`` cut to the budget."""
    tokens = tools.tokens
    budget = tools.budget_for(prompt, params["max_new_tokens"])
    text, source_tokens, truncated = tokens.truncate(source, budget)
    try:
        result = await generate(tools.payload(prompt, text, params))
    except InputTooLong:
        text, source_tokens, truncated = tokens.truncate(source, budget // 2)
        tools.stat_update(names.per_prompt(names.RETRIED_TRUNCATED, prompt.name))
        result = await generate(tools.payload(prompt, text, params))
    usage = result.usage or {}
    return {
        "text": result.text, "finish_reason": result.finish_reason,
        "prompt_tokens": int(usage.get("prompt_tokens", 0)), "completion_tokens": int(usage.get("completion_tokens", 0)),
        "truncated": truncated, "source_tokens": source_tokens,
        "source_tokens_used": tokens.count(text) if truncated else source_tokens,
        "tokens_estimated": not tokens.exact, "chunks": 1,
    }
