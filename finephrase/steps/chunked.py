"""Chunked rewriting of long documents (Kimi K2 style, ``context: chunked``).

The Kimi K2 report rewrites long documents chunk by chunk, autoregressively: the text is split into
segments, each is rewritten in order with what was already rewritten as context, and the parts are
concatenated into one rewritten document. Here:

1. a document that fits in one request (``Rephrase.budget_for``) is sent as is — the request is
   identical to ``context: truncate``;
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

import re
from collections import deque
from typing import TYPE_CHECKING

from datatrove.pipeline.inference.types import InferenceError

from finephrase.prompts import ChunkContext, Prompt, chunk_context_for
from finephrase.inference.pool import InputTooLong, RequestRejected
from finephrase.steps.output_checks import clean_output

if TYPE_CHECKING:  # pragma: no cover
    from finephrase.steps.rephrase import Rephrase
    from finephrase.inference.tokens import TokenCounter

PARAGRAPH_RE = re.compile(r"(\n[ \t]*\n\s*)")
LINE_RE = re.compile(r"(\n)")
SENTENCE_RE = re.compile(r"(?<=[.!?;:])(\s+)")
PACKING_SLACK = 0.95  # pieces are counted one by one; keep a little room for merges at the joins
CONTEXT_MARGIN_TOKENS = 8
_CONTEXTS: dict[tuple, ChunkContext] = {}


def _units(text: str, pattern: re.Pattern) -> list[str]:
    """Split ``text`` after each separator; ``"".join(result) == text``."""
    parts = pattern.split(text)
    out = []
    for i in range(0, len(parts), 2):
        piece = parts[i] + (parts[i + 1] if i + 1 < len(parts) else "")
        if piece:
            out.append(piece)
    return out


def _hard_cut(piece: str, budget: int, count) -> list[str]:
    """Cut a piece with no usable boundary into parts of at most ``budget`` tokens (at whitespace if any)."""
    out = []
    while piece:
        n = count(piece)
        if n <= budget:
            out.append(piece)
            break
        cut = max(1, int(len(piece) * budget / n * PACKING_SLACK))
        space = piece.rfind(" ", cut // 2, cut)
        if space > 0:
            cut = space + 1
        while cut > 1 and count(piece[:cut]) > budget:
            cut = int(cut * 0.8)
        out.append(piece[:cut])
        piece = piece[cut:]
    return out


def split_chunks(text: str, budget: int, count) -> list[str]:
    """Split ``text`` at paragraph boundaries into chunks of at most ``budget`` tokens (by ``count``).

    Paragraphs are packed greedily in order; a paragraph longer than the budget is split at line
    breaks, then sentences, then cut. ``"".join(chunks) == text``.
    """
    budget = max(1, budget)
    limit = max(1, int(budget * PACKING_SLACK))
    pieces: list[tuple[str, int]] = []
    splitters = (LINE_RE, SENTENCE_RE)

    def add(piece: str, level: int) -> None:
        n = count(piece)
        if n <= limit:
            pieces.append((piece, n))
            return
        while level < len(splitters):
            sub = _units(piece, splitters[level])
            level += 1
            if len(sub) > 1:
                for s in sub:
                    add(s, level)
                return
        for part in _hard_cut(piece, limit, count):
            pieces.append((part, count(part)))

    for para in _units(text, PARAGRAPH_RE):
        add(para, 0)
    chunks: list[str] = []
    current, current_tokens = "", 0
    for piece, n in pieces:
        if current and current_tokens + n > limit:
            chunks.append(current)
            current, current_tokens = "", 0
        current += piece
        current_tokens += n
    if current:
        chunks.append(current)
    return chunks


def _head(tokens: "TokenCounter", text: str, n: int) -> str:
    if n <= 0 or not text:
        return ""
    return tokens.truncate(text, n)[0]


def _tail(tokens: "TokenCounter", text: str, n: int) -> str:
    if n <= 0 or not text:
        return ""
    if not tokens.exact:
        from finephrase.inference.tokens import CHARS_PER_TOKEN

        return text[-int(n * CHARS_PER_TOKEN):]
    ids = tokens.encode(text[-n * 12:])
    return text if len(ids) <= n and len(text) <= n * 12 else tokens.decode(ids[-n:])


def context_for(prompt: Prompt) -> ChunkContext | None:
    """The chunk-context wording for a prompt (None when its template places the context itself)."""
    key = (prompt.chunk_context, prompt.path, prompt.template)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = chunk_context_for(prompt)
    return _CONTEXTS[key]


def _payload(step: "Rephrase", prompt: Prompt, ctx: ChunkContext, own_context: bool, chunk: str, params: dict,
             variables: dict) -> dict:
    payload = step._payload(prompt, chunk, params, **variables)
    if not own_context and variables["chunk_count"] > 1:
        wording = ctx.render(**variables)
        if wording:
            message = payload["messages"][-1]
            if ctx.position == "before":
                message["content"] = f"{wording}\n\n{message['content']}"
            else:
                message["content"] = f"{message['content']}\n\n{wording}"
    return payload


async def rephrase_chunked(step: "Rephrase", prompt: Prompt, source: str, params: dict, generate) -> dict:
    """Rewrite ``source`` chunk by chunk; returns the entry fields of ``Rephrase`` (text, tokens, chunks, ...)."""
    tokens = step.tokens
    ctx = context_for(prompt)
    own_context = prompt.uses_chunk_variables
    max_new = params["max_new_tokens"]
    full_budget = step.budget_for(prompt, max_new)
    _, source_tokens, too_long = tokens.truncate(source, full_budget)
    provenance = {**step.sent_params(params), "context": "chunked",
                  "chunk_context": None if own_context else f"{ctx.name}@{ctx.version}:{ctx.sha256[:12]}"}

    opening_tokens, previous_tokens = ctx.opening_tokens, ctx.previous_tokens
    if not too_long:
        chunks = [source]
        truncated = False
        budget = full_budget
    else:
        wording = CONTEXT_MARGIN_TOKENS
        if not own_context:
            wording += tokens.count(ctx.render(chunk_index=ctx.max_chunks - 1, chunk_count=ctx.max_chunks,
                                               previous_output="", document_opening=""))
        # the opening and the previous rewrite take at most half of what is left: in a small context
        # window they shrink (in proportion) rather than leave room for only a few words per chunk
        wanted = ctx.opening_tokens + ctx.previous_tokens
        room = min(wanted, max(0, full_budget - wording) // 2)
        opening_tokens = ctx.opening_tokens * room // wanted if wanted else 0
        previous_tokens = room - opening_tokens
        budget = max(64, full_budget - wording - room)
        # never tokenize more than max_chunks chunks' worth of a huge document
        head, source_tokens, truncated = tokens.truncate(source, budget * ctx.max_chunks)
        text = source
        if truncated:
            text = source[: len(head)]
            for sep in ("\n\n", "\n"):  # end the kept part at a paragraph (or line) boundary
                cut = text.rfind(sep)
                if cut > len(text) // 2:
                    text = text[: cut + len(sep)]
                    break
        chunks = split_chunks(text, budget, tokens.count)
        if len(chunks) > ctx.max_chunks:
            chunks, truncated = chunks[: ctx.max_chunks], True

    opening = _head(tokens, source, opening_tokens) if len(chunks) > 1 else ""
    queue = deque((chunk, False) for chunk in chunks)  # (text, already split after a rejection)
    parts: list[str] = []
    notes: list[str] = []
    used_tokens = prompt_tokens = completion_tokens = 0
    finish_reasons: list[str] = []
    while queue:
        chunk, was_resplit = queue.popleft()
        index, count = len(parts), len(parts) + 1 + len(queue)
        variables = {
            "previous_output": _tail(tokens, parts[-1], previous_tokens) if parts else "",
            "document_opening": opening,
            "chunk_index": index,
            "chunk_count": count,
        }
        try:
            result = await generate(_payload(step, prompt, ctx, own_context, chunk, params, variables))
        except InputTooLong as e:
            if not was_resplit:
                halves = split_chunks(chunk, max(32, budget // 2), tokens.count)
                if len(halves) > 1:
                    step.stat_update(f"resplit_chunks/{prompt.name}")
                    queue.extendleft((half, True) for half in reversed(halves))
                    continue
            raise InferenceError(None, f"chunk {index + 1}/{count} failed: {e.error}") from None
        except RequestRejected:
            raise  # a configuration problem, not this chunk's: the step counts it and may stop the run
        except InferenceError as e:
            raise InferenceError(None, f"chunk {index + 1}/{count} failed: {e.error}") from None
        cleaned = clean_output(result.text, prompt.output_rules)
        if not cleaned.keep:
            raise InferenceError(None, f"chunk {index + 1}/{count}: {cleaned.reason}")
        parts.append(cleaned.text)
        notes.extend(n for n in cleaned.notes if n not in notes)
        usage = result.usage or {}
        prompt_tokens += int(usage.get("prompt_tokens", 0))
        completion_tokens += int(usage.get("completion_tokens", 0))
        finish_reasons.append(result.finish_reason)
        used_tokens += tokens.count(chunk) if len(chunks) > 1 or truncated else source_tokens
    if len(parts) > 1:
        step.stat_update(f"chunked_documents/{prompt.name}")
    step.stat_update(f"chunks/{prompt.name}", value=len(parts))
    return {
        "text": ctx.separator.join(parts),
        # one chunk cut at max_new_tokens makes the document a cut one
        "finish_reason": "length" if "length" in finish_reasons else finish_reasons[-1],
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "truncated": bool(truncated),
        "source_tokens": source_tokens,
        "source_tokens_used": used_tokens,
        "tokens_estimated": not tokens.exact,
        "chunks": len(parts),
        "cleaned": notes,
        "generation_params": provenance,
    }
