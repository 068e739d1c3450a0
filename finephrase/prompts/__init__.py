"""Prompts: the prompt files of ``prompts/<set>/<name>.yaml`` (schema in ``prompts/README.md``) as validated,
hashed, renderable :class:`Prompt` objects.

What lives where (each module's docstring says what it may import; the arrows never go back up)::

    render.py    rendering in the sandboxed Jinja2 environment, the fast splice path   (no finephrase import)
    validate.py  the checks, PromptError, errors naming file and line                  -> render
    context.py   the ChunkContext model and chunk-context loading, PACKAGED_PROMPTS_DIR -> validate, render
    model.py     the Prompt model (pydantic), its sha256                               -> context, validate, render
    resolve.py   the one resolver: set/name, a local file, hf:// (the Hub fetch)      -> model, context, validate
    hub.py       push / pull a prompt set, its README card (cards/prompt_set_card.md.j2) -> resolve and below

This file only re-exports the public names (``from finephrase.prompts import Prompt, load_prompt``);
no submodule imports it. ``finephrase.prompts.hub`` is not imported here: import it to publish.
"""

from __future__ import annotations

from finephrase.errors import PromptError
from finephrase.prompts.context import (
    CONTEXT_DIR,
    CONTEXT_KIND,
    DEFAULT_CHUNK_CONTEXT,
    PACKAGED_PROMPTS_DIR,
    ChunkContext,
    chunk_context_for,
    chunk_context_from_dict,
    load_chunk_context,
    load_chunk_context_file,
)
from finephrase.prompts.model import Prompt, prompt_from_dict, prompt_sha256
from finephrase.prompts.render import CHUNK_VARIABLES, DOCUMENT_PLACEHOLDER
from finephrase.prompts.resolve import (
    list_packaged_prompts,
    load_any_file,
    load_prompt,
    load_prompt_file,
    resolve_prompts,
)
from finephrase.prompts.validate import validate_template

__all__ = [
    "CHUNK_VARIABLES",
    "CONTEXT_DIR",
    "CONTEXT_KIND",
    "DEFAULT_CHUNK_CONTEXT",
    "DOCUMENT_PLACEHOLDER",
    "PACKAGED_PROMPTS_DIR",
    "ChunkContext",
    "Prompt",
    "PromptError",
    "chunk_context_for",
    "chunk_context_from_dict",
    "list_packaged_prompts",
    "load_any_file",
    "load_chunk_context",
    "load_chunk_context_file",
    "load_prompt",
    "load_prompt_file",
    "prompt_from_dict",
    "prompt_sha256",
    "resolve_prompts",
    "validate_template",
]
