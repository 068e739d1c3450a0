"""The Prompt model: one prompt file's content (schema in ``prompts/README.md``), validated on construction.

``Prompt`` is a frozen pydantic dataclass: every way of making one (a file, ``dataclasses.replace``)
runs the same checks (:mod:`.validate`), and :func:`prompt_from_dict` reports the first problem as
``<file>:<line>: <problem>``. A prompt's identity is the sha256 of its normalized content (system +
template + generation parameters, :func:`prompt_sha256`).

Imports: :mod:`.validate`, :mod:`.render`, :mod:`.context` (a ``chunk_context`` must name a wording that exists).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import field
from pathlib import Path
from typing import Any

from pydantic import ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass

from finephrase.errors import PromptError
from finephrase.prompts.context import load_chunk_context
from finephrase.prompts.render import (
    document_frame,
    render_messages,
    uses_chunk_variables,
)
from finephrase.prompts.validate import (
    ALLOWED_KEYS,
    GENERATION_KEYS,
    REQUIRED_KEYS,
    YAML_SUFFIXES,
    Problem,
    check_fields,
    check_file_name,
    check_output_rules,
    check_prompt_template,
    choice_field,
    located,
    name_field,
    normalize_text,
    source_field,
    string_field,
    text_field,
    version_field,
)


def prompt_sha256(system: str | None, template: str, generation: dict | None) -> str:
    """sha256 of the normalized prompt content: system + template + generation parameters."""
    canonical = json.dumps(
        {
            "system": normalize_text(system),
            "template": normalize_text(template),
            "generation": {k: (generation or {})[k] for k in sorted(generation or {})},
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Prompt:
    name: str
    set: str
    version: str
    template: str
    description: str = ""
    source: dict = field(default_factory=dict)
    system: str | None = None
    suits: str = "any"
    generation: dict = field(default_factory=dict)
    context: str = "truncate"
    output_rules: dict = field(default_factory=dict)
    chunk_context: str | None = None  # context: chunked — the chunk-context wording file (default kimi_k2_chunk)
    path: str | None = None  # where it was loaded from (never written to cards as an absolute path)
    origin: str | None = None  # how the recipe named it: set/name, a path, or an hf:// reference
    revision: str | None = None  # hf:// prompts: the resolved commit sha of the prompt-set repository

    @property
    def ref(self) -> str:
        return f"{self.set}/{self.name}"

    @property
    def config_name(self) -> str:
        """The dataset config this prompt's rows are published under."""
        return self.name

    @functools.cached_property  # content is frozen: hash once
    def sha256(self) -> str:
        return prompt_sha256(self.system, self.template, self.generation)

    @functools.cached_property
    def _document_frame(self) -> tuple[str, str] | None:
        """(text before, text after) the document when the template inserts it verbatim (render.document_frame)."""
        return document_frame(self.template)

    # the chat messages for one document, ``render(document, **chunk_variables)`` (the fast splice path when the
    # template inserts the document verbatim): render.render_messages itself, no extra call per document
    render = render_messages

    def to_dict(self) -> dict:
        keys = ("name", "set", "version", "source", "description", "suits", "system", "template", "generation",
                "context", "chunk_context", "output_rules", "sha256", "origin", "revision")
        return {key: getattr(self, key) for key in keys}

    @property
    def uses_chunk_variables(self) -> bool:
        """True when the template itself places the chunk context (previous_output, ...)."""
        return uses_chunk_variables(self.template)

    # -------------------------------------------------------------------- validation (errors: validate.Problem)
    _name = field_validator("name", mode="before")(name_field)
    _text = field_validator("set", "template", "description", mode="before")(text_field)
    _version = field_validator("version", mode="before")(version_field)
    _source = field_validator("source", mode="before")(source_field)
    _system = field_validator("system", mode="before")(string_field)
    _choice = field_validator("suits", "context", mode="before")(choice_field)

    @field_validator("generation", mode="before")
    @classmethod
    def _generation(cls, value):
        value = value or {}
        if not isinstance(value, dict) or set(value) - GENERATION_KEYS:
            raise Problem(f"field 'generation' takes only {sorted(GENERATION_KEYS)}", "generation")
        return dict(value)

    @field_validator("output_rules", mode="before")
    @classmethod
    def _output_rules(cls, value):
        return check_output_rules(value)

    @field_validator("chunk_context", mode="before")
    @classmethod
    def _chunk_context(cls, value):
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise Problem("field 'chunk_context' must name a chunk-context file (e.g. kimi_k2_chunk)", "chunk_context")
        return value

    @field_validator("path", mode="before")
    @classmethod
    def _path(cls, value):
        return os.fspath(value) if isinstance(value, os.PathLike) else value

    @model_validator(mode="after")
    def _whole(self):
        check_file_name(self.name, self.path)
        if self.chunk_context is not None:
            folder = Path(self.path).parent if self.path and self.path.endswith(YAML_SUFFIXES) else None
            try:
                load_chunk_context(self.chunk_context, base_dir=folder)
            except PromptError as e:
                raise Problem(f"chunk_context: {e}", "chunk_context") from None
        check_prompt_template(self.template)
        return self


def prompt_from_dict(data: Any, path: str, text: str = "", origin: str | None = None) -> Prompt:
    """A prompt file's content as a Prompt; PromptError ``<path>:<line>: <problem>`` otherwise."""
    check_fields(data, path, text, "a prompt file", ALLOWED_KEYS, REQUIRED_KEYS)
    try:
        return Prompt(**data, path=path, origin=origin)
    except ValidationError as e:
        raise located(e, path, text) from None
