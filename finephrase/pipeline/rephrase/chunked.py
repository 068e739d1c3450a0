"""The ``chunked`` strategy: long documents rewritten chunk by chunk (Kimi K2 style, ``context: chunked``).

The Kimi K2 report rewrites long documents chunk by chunk, autoregressively: the text is split into
segments, each is rewritten in order with what was already rewritten as context, and the parts are
concatenated into one rewritten document. Here:

1. a document that fits in one request (``step.budget_for``) is sent as is — the request is
   identical to the ``truncate`` strategy's;
2. a longer one is split at paragraph boundaries (then lines, then sentences, then a hard cut for a
   single over-long paragraph) into chunks that fit the token budget minus the room the context
   takes; at most ``max_chunks`` chunks, the rest is cut and the row says ``truncated``;
3. chunk *i* is rewritten with the document's opening and the end of chunk *i-1*'s rewrite as
   context. The wording that carries the context is a data file (``prompts/_context/<name>.yaml``,
   chosen by the prompt's ``chunk_context``; default ``kimi_k2_chunk``). A prompt whose template
   uses the chunk variables itself (``previous_output``, ``document_opening``, ``chunk_index``,
   ``chunk_count``) places the context on its own and gets no extra wording;
4. every chunk's answer goes through the cleaning stage of the prompt's output rules (prefixes,
   ``extract``, refusals, meta-talk); the cleaned parts are joined (the context file's
   ``separator``) into one output with ``chunks`` = the number of requests.

A chunk that fails — the request fails after the pool's retries, the answer is empty, a refusal or
misses a required prefix / extraction marker — fails the whole document for that prompt
(``InferenceError``, counted as ``failed/<prompt>`` by ``Rephrase``): never half a document. A chunk
the server rejects as too long (400/413/422) is split in two and retried once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from datatrove.pipeline.inference.types import InferenceError

from finephrase import stats as names
from finephrase.errors import InputTooLong, RequestRejected
from finephrase.pipeline.formatters.output_checks import clean_output
from finephrase.pipeline.rephrase.splitting import split_chunks
from finephrase.prompts import ChunkContext, Prompt, chunk_context_for

if TYPE_CHECKING:  # pragma: no cover
    from finephrase.inference.client.tokens import TokenCounter
    from finephrase.pipeline.rephrase.truncate import RewriteTools

CONTEXT_MARGIN_TOKENS = 8
_CONTEXTS: dict[tuple, ChunkContext] = {}


def _head(tokens: TokenCounter, text: str, n: int) -> str:
    if n <= 0 or not text:
        return ""
    return tokens.truncate(text, n)[0]


def _tail(tokens: TokenCounter, text: str, n: int) -> str:
    if n <= 0 or not text:
        return ""
    if not tokens.exact:
        from finephrase.inference.client.tokens import CHARS_PER_TOKEN

        return text[-int(n * CHARS_PER_TOKEN):]
    ids = tokens.encode(text[-n * 12:])
    return text if len(ids) <= n and len(text) <= n * 12 else tokens.decode(ids[-n:])


def context_for(prompt: Prompt) -> ChunkContext | None:
    """The chunk-context wording for a prompt (None when its template places the context itself)."""
    key = (prompt.chunk_context, prompt.path, prompt.template)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = chunk_context_for(prompt)
    return _CONTEXTS[key]


@dataclass
class ChunkPlan:
    """How a document is cut: the chunks, the token budget of one, the context's share, what was cut off."""

    chunks: list[str]
    budget: int
    source_tokens: int
    truncated: bool
    opening_tokens: int
    previous_tokens: int


@dataclass
class Rewrite:
    """The rewritten parts so far and their counts."""

    parts: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    used_tokens: int = 0


def _kept_text(source: str, head: str) -> str:
    """The part of ``source`` kept after a cut at ``head``, ended at a paragraph (or line) boundary."""
    text = source[: len(head)]
    for sep in ("\n\n", "\n"):
        cut = text.rfind(sep)
        if cut > len(text) // 2:
            return text[: cut + len(sep)]
    return text


def plan_chunks(tools: RewriteTools, prompt: Prompt, ctx: ChunkContext, source: str, max_new: int) -> ChunkPlan:
    """Cut ``source`` into chunks that fit with the context (one chunk: the whole document when it fits)."""
    tokens, full_budget = tools.tokens, tools.budget_for(prompt, max_new)
    _, source_tokens, too_long = tokens.truncate(source, full_budget)
    if not too_long:
        return ChunkPlan([source], full_budget, source_tokens, False, ctx.opening_tokens, ctx.previous_tokens)
    wording = CONTEXT_MARGIN_TOKENS
    if not prompt.uses_chunk_variables:
        wording += tokens.count(ctx.render(chunk_index=ctx.max_chunks - 1, chunk_count=ctx.max_chunks,
                                           previous_output="", document_opening=""))
    # the opening and the previous rewrite take at most half of what is left: in a small context
    # window they shrink (in proportion) rather than leave room for only a few words per chunk
    wanted = ctx.opening_tokens + ctx.previous_tokens
    room = min(wanted, max(0, full_budget - wording) // 2)
    opening_tokens = ctx.opening_tokens * room // wanted if wanted else 0
    budget = max(64, full_budget - wording - room)
    # never tokenize more than max_chunks chunks' worth of a huge document
    head, source_tokens, truncated = tokens.truncate(source, budget * ctx.max_chunks)
    chunks = split_chunks(_kept_text(source, head) if truncated else source, budget, tokens.count)
    if len(chunks) > ctx.max_chunks:
        chunks, truncated = chunks[: ctx.max_chunks], True
    return ChunkPlan(chunks, budget, source_tokens, truncated, opening_tokens, room - opening_tokens)


def chunk_payload(tools: RewriteTools, prompt: Prompt, ctx: ChunkContext, chunk: str, params: dict,
                  variables: dict) -> dict:
    """The request for one chunk: the prompt's own, with the context wording added (unless the template places it)."""
    payload = tools.payload(prompt, chunk, params, **variables)
    if not prompt.uses_chunk_variables and variables["chunk_count"] > 1:
        wording = ctx.render(**variables)
        if wording:
            message = payload["messages"][-1]
            if ctx.position == "before":
                message["content"] = f"{wording}\n\n{message['content']}"
            else:
                message["content"] = f"{message['content']}\n\n{wording}"
    return payload


async def _send_chunk(tools: RewriteTools, prompt: Prompt, payload: dict, where: str, generate):
    try:
        return await generate(payload)
    except (InputTooLong, RequestRejected):
        raise  # too long: the caller re-splits; a rejection is a configuration problem the step counts
    except InferenceError as e:
        raise InferenceError(None, f"chunk {where} failed: {e.error}") from None


async def _rewrite(tools: RewriteTools, prompt: Prompt, ctx: ChunkContext, plan: ChunkPlan, source: str,
                   params: dict, generate) -> Rewrite:
    """Send the chunks in order, each with the opening and the end of the previous rewrite; a chunk the
    server finds too long is split in two once."""
    tokens, done = tools.tokens, Rewrite()
    opening = _head(tokens, source, plan.opening_tokens) if len(plan.chunks) > 1 else ""
    queue = deque((chunk, False) for chunk in plan.chunks)  # (text, already split after a rejection)
    while queue:
        chunk, was_resplit = queue.popleft()
        index, count = len(done.parts), len(done.parts) + 1 + len(queue)
        variables = {"previous_output": _tail(tokens, done.parts[-1], plan.previous_tokens) if done.parts else "",
                     "document_opening": opening, "chunk_index": index, "chunk_count": count}
        payload = chunk_payload(tools, prompt, ctx, chunk, params, variables)
        try:
            result = await _send_chunk(tools, prompt, payload, f"{index + 1}/{count}", generate)
        except InputTooLong as e:
            halves = [] if was_resplit else split_chunks(chunk, max(32, plan.budget // 2), tokens.count)
            if len(halves) < 2:
                raise InferenceError(None, f"chunk {index + 1}/{count} failed: {e.error}") from None
            tools.stat_update(names.per_prompt(names.RESPLIT_CHUNKS, prompt.name))
            queue.extendleft((half, True) for half in reversed(halves))
            continue
        _take(done, result, prompt, f"{index + 1}/{count}")
        done.used_tokens += (tokens.count(chunk) if len(plan.chunks) > 1 or plan.truncated
                             else plan.source_tokens)
    return done


def _take(done: Rewrite, result, prompt: Prompt, where: str) -> None:
    """Clean one chunk's answer with the prompt's output rules and add it (a dropped answer fails the document)."""
    cleaned = clean_output(result.text, prompt.output_rules)
    if not cleaned.keep:
        raise InferenceError(None, f"chunk {where}: {cleaned.reason}")
    done.parts.append(cleaned.text)
    done.notes.extend(n for n in cleaned.notes if n not in done.notes)
    usage = result.usage or {}
    done.prompt_tokens += int(usage.get("prompt_tokens", 0))
    done.completion_tokens += int(usage.get("completion_tokens", 0))
    done.finish_reasons.append(result.finish_reason)


async def rewrite_chunked(tools: RewriteTools, prompt: Prompt, source: str, params: dict, generate) -> dict:
    """The ``chunked`` strategy: the entry fields of a row (text, tokens, chunks, ...) for ``source``."""
    ctx = context_for(prompt)
    plan = plan_chunks(tools, prompt, ctx, source, params["max_new_tokens"])
    done = await _rewrite(tools, prompt, ctx, plan, source, params, generate)
    if len(done.parts) > 1:
        tools.stat_update(names.per_prompt(names.CHUNKED_DOCUMENTS, prompt.name))
    tools.stat_update(names.per_prompt(names.CHUNKS, prompt.name), value=len(done.parts))
    own = prompt.uses_chunk_variables
    return {
        "text": ctx.separator.join(done.parts),
        # one chunk cut at max_new_tokens makes the document a cut one
        "finish_reason": "length" if "length" in done.finish_reasons else done.finish_reasons[-1],
        "prompt_tokens": done.prompt_tokens, "completion_tokens": done.completion_tokens,
        "truncated": bool(plan.truncated), "source_tokens": plan.source_tokens,
        "source_tokens_used": done.used_tokens, "tokens_estimated": not tools.tokens.exact,
        "chunks": len(done.parts), "cleaned": done.notes,
        "generation_params": {**tools.sent_params(params), "context": "chunked",
                              "chunk_context": None if own else f"{ctx.name}@{ctx.version}:{ctx.sha256[:12]}"},
    }
