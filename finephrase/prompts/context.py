"""Chunk-context wordings (``prompts/_context/<name>.yaml``): how a chunk's request carries the document's
opening and the previous chunk's rewrite (Kimi K2-style chunked rewriting, finephrase.pipeline.rephrase.chunked).

The :class:`ChunkContext` model (pydantic, validated on construction) and its loading: a packaged name
(``kimi_k2_chunk``), a file next to the prompt that names it, or a path. Also home of
``PACKAGED_PROMPTS_DIR``, the published prompt sets (the wheel's package data, or ``prompts/`` of a
source checkout).

Imports: :mod:`.validate`, :mod:`.render`, finephrase.resources.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import field
from pathlib import Path
from typing import Any

from pydantic import ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass

from finephrase.errors import PromptError
from finephrase.prompts.render import CHUNK_VARIABLES, render_template
from finephrase.prompts.validate import (
    YAML_SUFFIXES,
    Problem,
    check_fields,
    check_file_name,
    check_sandboxed,
    choice_field,
    located,
    name_field,
    normalize_text,
    read_yaml,
    source_field,
    string_field,
    text_field,
    version_field,
)
from finephrase.resources import prompts_dir

PACKAGED_PROMPTS_DIR = prompts_dir()  # the wheel's package data, or prompts/ of a source checkout
CONTEXT_DIR = "_context"  # prompts/_context/<name>.yaml: chunk-context wordings (not prompts)
DEFAULT_CHUNK_CONTEXT = "kimi_k2_chunk"
CONTEXT_KEYS = {"kind", "name", "version", "source", "description", "template", "position", "separator",
                "opening_tokens", "previous_tokens", "max_chunks"}
CONTEXT_REQUIRED = {"kind", "name", "version", "source", "description", "template"}
CONTEXT_KIND = "chunk_context"
_TOKEN_FIELDS = {"opening_tokens": 0, "previous_tokens": 0, "max_chunks": 1}  # field -> smallest value


@dataclass(frozen=True)
class ChunkContext:
    """The wording that gives a chunk's request its context (see prompts/README.md)."""

    name: str
    version: str
    template: str
    description: str = ""
    source: dict = field(default_factory=dict)
    position: str = "before"  # the rendered context goes before (or after) the prompt's user message
    separator: str = "\n\n"  # between the rewritten parts of a document
    opening_tokens: int = 128  # document_opening: the document's first tokens
    previous_tokens: int = 256  # previous_output: the last tokens of the previous chunk's rewrite
    max_chunks: int = 16  # longer documents are cut after this many chunks (recorded as truncated)
    path: str | None = None

    @property
    def sha256(self) -> str:
        canonical = json.dumps({"template": normalize_text(self.template), "position": self.position,
                                "separator": self.separator, "opening_tokens": self.opening_tokens,
                                "previous_tokens": self.previous_tokens, "max_chunks": self.max_chunks},
                               sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def render(self, **variables: Any) -> str:
        return render_template(self.template, **variables).strip()

    # -------------------------------------------------------------------- validation (in the file's order)
    _name = field_validator("name", mode="before")(name_field)
    _version = field_validator("version", mode="before")(version_field)
    _text = field_validator("template", "description", mode="before")(text_field)
    _source = field_validator("source", mode="before")(source_field)
    _position = field_validator("position", mode="before")(choice_field)
    _separator = field_validator("separator", mode="before")(string_field)

    @field_validator(*_TOKEN_FIELDS, mode="before")
    @classmethod
    def _tokens(cls, value, info):
        key, lowest = info.field_name, _TOKEN_FIELDS[info.field_name]
        if value is None:  # `key: null` in a file: the default
            return cls.__dataclass_fields__[key].default
        if not isinstance(value, int) or isinstance(value, bool) or value < lowest:
            raise Problem(f"field {key!r} must be an integer >= {lowest}", key)
        return value

    @model_validator(mode="after")
    def _whole(self):
        check_file_name(self.name, self.path)
        check_sandboxed(self.template, set(CHUNK_VARIABLES), require_document=False)
        return self


def chunk_context_from_dict(data: Any, path: str, text: str = "") -> ChunkContext:
    """A chunk-context file's content as a ChunkContext; PromptError ``<path>:<line>: <problem>`` otherwise."""
    check_fields(data, path, text, "a chunk-context file", CONTEXT_KEYS, CONTEXT_REQUIRED)
    if data["kind"] != CONTEXT_KIND:
        raise located(Problem(f"field 'kind' must be {CONTEXT_KIND!r}", "kind"), path, text)
    try:
        return ChunkContext(**{k: v for k, v in data.items() if k != "kind"}, path=path)
    except ValidationError as e:
        raise located(e, path, text) from None


def load_chunk_context_file(path: str | Path) -> ChunkContext:
    data, text = read_yaml(Path(path))
    return chunk_context_from_dict(data, str(path), text)


def load_chunk_context(ref: str | None = None, base_dir: str | Path | None = None) -> ChunkContext:
    """A chunk-context wording: a packaged name (``kimi_k2_chunk`` = prompts/_context/kimi_k2_chunk.yaml)
    or a path (relative to ``base_dir``, e.g. the prompt file's folder)."""
    ref = ref or DEFAULT_CHUNK_CONTEXT
    candidates = []
    if ref.endswith(YAML_SUFFIXES) or "/" in ref:
        p = Path(ref)
        if not p.is_absolute() and base_dir is not None:
            candidates.append(Path(base_dir) / p)
        candidates.append(p)
    else:
        if base_dir is not None:
            candidates.append(Path(base_dir) / f"{ref}.yaml")
        candidates.append(PACKAGED_PROMPTS_DIR / CONTEXT_DIR / f"{ref}.yaml")
    for c in candidates:
        if c.is_file():
            return load_chunk_context_file(c)
    known = ", ".join(sorted(p.stem for p in (PACKAGED_PROMPTS_DIR / CONTEXT_DIR).glob("*.yaml")))
    raise PromptError(f"chunk-context file {ref!r} not found (packaged: {known})")


def is_packaged_context(ref: str) -> bool:
    """True when ``ref`` names a packaged chunk-context wording (prompts/_context/<ref>.yaml)."""
    return (PACKAGED_PROMPTS_DIR / CONTEXT_DIR / f"{ref}.yaml").is_file()


def chunk_context_for(prompt) -> ChunkContext:
    """The wording a ``context: chunked`` Prompt uses: its ``chunk_context``, looked up next to its file (``path``)
    first. (Typed loosely: the Prompt model imports this module, not the other way round.)"""
    return load_chunk_context(prompt.chunk_context, base_dir=Path(prompt.path).parent if prompt.path else None)
