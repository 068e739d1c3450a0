"""Rendering: a prompt's chat messages for one document, in a sandboxed Jinja2 environment.

Templates run in Jinja2's immutable sandbox with ``StrictUndefined``, so a template can neither reach
Python internals nor silently drop a variable. Each distinct template is compiled once per process.
Most templates insert the document verbatim: for those, :func:`document_frame` finds the text before
and after the document once, and :func:`render_messages` splices each document in without running
the template (the fast path; the result is the same text as the Jinja rendering).

Imports nothing from finephrase.
"""

from __future__ import annotations

import functools
from typing import Any

import jinja2
from jinja2 import meta
from jinja2.sandbox import ImmutableSandboxedEnvironment

DOCUMENT_PLACEHOLDER = "document"
# variables a template may use besides {{ document }} (filled in by chunked rewriting, see
# finephrase.pipeline.rephrase.chunked; 0-based chunk_index). Defaults = a document that fits in one request.
CHUNK_VARIABLES = {"previous_output": "", "document_opening": "", "chunk_index": 0, "chunk_count": 1}

ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
# compiling a template costs ~150 µs: compile each distinct template once per process
compile_template = functools.lru_cache(maxsize=512)(ENV.from_string)


def template_variables(template: str) -> set[str]:
    """The variables a template reads (parsed, not rendered)."""
    return meta.find_undeclared_variables(ENV.parse(template))


def uses_chunk_variables(template: str) -> bool:
    """True when the template itself places the chunk context (previous_output, ...)."""
    return bool(template_variables(template) & set(CHUNK_VARIABLES))


def render_template(template: str, **variables: Any) -> str:
    """The template rendered with the chunk variables' defaults and ``variables``."""
    return compile_template(template).render(**{**CHUNK_VARIABLES, **variables})


def document_frame(template: str) -> tuple[str, str] | None:
    """(text before, text after) the document when the template inserts it verbatim, else None.

    Checked by rendering three different probe documents (short; multi-line with surrounding
    whitespace and capitals; 20k characters); a template that transforms or inspects the document
    keeps the full Jinja rendering.
    """
    probes = ["\x00fp\x00", " \n\x00fp\nline two\n\n  Indented\x00\n ", "\x00" + "fp " * 7000 + "\x00"]
    rendered = [render_template(template, **{DOCUMENT_PLACEHOLDER: p}) for p in probes]
    if rendered[0].count(probes[0]) != 1:
        return None
    prefix, suffix = rendered[0].split(probes[0])
    if any(r != prefix + p + suffix for p, r in zip(probes, rendered)):
        return None
    return prefix, suffix


def render_messages(prompt, document: str, **context: Any) -> list[dict]:
    """Render the chat messages for one document.

    This is ``Prompt.render`` (bound there as the method itself: no extra call on the hot path);
    ``prompt`` needs ``template``, ``system`` and ``_document_frame`` (:func:`document_frame`, cached).
    """
    frame = None if context else prompt._document_frame
    if frame is not None:  # same text as the Jinja rendering, without running the template per document
        user = frame[0] + document + frame[1]
    else:
        user = compile_template(prompt.template).render(**{**CHUNK_VARIABLES, DOCUMENT_PLACEHOLDER: document,
                                                           **context})
    if prompt.system:
        return [{"role": "system", "content": prompt.system}, {"role": "user", "content": user}]
    return [{"role": "user", "content": user}]
