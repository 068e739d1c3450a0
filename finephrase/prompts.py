"""Prompt files: load, validate, hash and render.

A prompt is a YAML data file (``prompts/<set>/<name>.yaml``, schema in
``prompts/README.md``). Templates are rendered with a sandboxed Jinja2 environment and
``StrictUndefined``, so a template can neither reach Python internals nor silently drop a
variable. A prompt's identity is the sha256 of its normalized content (system + template +
generation parameters).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

from finephrase.errors import FinephraseError
from finephrase.resources import prompts_dir

PACKAGED_PROMPTS_DIR = prompts_dir()  # the wheel's package data, or prompts/ of a source checkout
DOCUMENT_PLACEHOLDER = "document"
ALLOWED_KEYS = {
    "name",
    "set",
    "version",
    "source",
    "description",
    "suits",
    "system",
    "template",
    "generation",
    "context",
    "chunk_context",
    "output_rules",
}
REQUIRED_KEYS = {"name", "set", "version", "source", "description", "template"}
GENERATION_KEYS = {"max_new_tokens", "temperature", "top_p"}
OUTPUT_RULE_KEYS = {
    "strip_prefixes",
    "drop_refusals",
    "drop_truncated",
    "length_ratio",
    "format",
    "min_tokens",
    "max_tokens",
    "same_language",
    "require_prefix",
    "extract",
}
SUITS = {"any", "high-quality", "low-quality"}
CONTEXT_MODES = {"truncate", "chunked"}
FORMATS = {None, "table", "qa", "math", "list"}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
# variables a template may use besides {{ document }} (filled in by chunked rewriting, see
# finephrase.steps.chunked; 0-based chunk_index). Defaults = a document that fits in one request.
CHUNK_VARIABLES = {"previous_output": "", "document_opening": "", "chunk_index": 0, "chunk_count": 1}
CONTEXT_DIR = "_context"  # prompts/_context/<name>.yaml: chunk-context wordings (not prompts)
DEFAULT_CHUNK_CONTEXT = "kimi_k2_chunk"

_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)
# compiling a template costs ~150 µs: compile each distinct template once per process
_compile = functools.lru_cache(maxsize=512)(_ENV.from_string)


class PromptError(FinephraseError, ValueError):
    """A prompt file is missing, malformed or fails validation. The message names the file."""


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
        """(text before, text after) the document when the template inserts it verbatim, else None.

        Checked by rendering three different probe documents (short; multi-line with surrounding
        whitespace and capitals; 20k characters);
        a template that transforms or inspects the document keeps the full Jinja rendering.
        """
        probes = ["\x00fp\x00", " \n\x00fp\nline two\n\n  Indented\x00\n ", "\x00" + "fp " * 7000 + "\x00"]
        rendered = [_compile(self.template).render(**{**CHUNK_VARIABLES, DOCUMENT_PLACEHOLDER: p}) for p in probes]
        if rendered[0].count(probes[0]) != 1:
            return None
        prefix, suffix = rendered[0].split(probes[0])
        if any(r != prefix + p + suffix for p, r in zip(probes, rendered)):
            return None
        return prefix, suffix

    def render(self, document: str, **context: Any) -> list[dict]:
        """Render the chat messages for one document."""
        frame = None if context else self._document_frame
        if frame is not None:  # same text as the Jinja rendering, without running the template per document
            user = frame[0] + document + frame[1]
        else:
            user = _compile(self.template).render(**{**CHUNK_VARIABLES, DOCUMENT_PLACEHOLDER: document, **context})
        messages = []
        if self.system:
            messages.append({"role": "system", "content": self.system})
        messages.append({"role": "user", "content": user})
        return messages

    def overhead_chars(self) -> int:
        """Characters the prompt adds around the document (system + template without the document)."""
        return sum(len(m["content"]) for m in self.render(""))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "set": self.set,
            "version": self.version,
            "source": self.source,
            "description": self.description,
            "suits": self.suits,
            "system": self.system,
            "template": self.template,
            "generation": self.generation,
            "context": self.context,
            "chunk_context": self.chunk_context,
            "output_rules": self.output_rules,
            "sha256": self.sha256,
            "origin": self.origin,
            "revision": self.revision,
        }

    @property
    def uses_chunk_variables(self) -> bool:
        """True when the template itself places the chunk context (previous_output, ...)."""
        from jinja2 import meta

        return bool(meta.find_undeclared_variables(_ENV.parse(self.template)) & set(CHUNK_VARIABLES))


def _normalize_text(text: str | None) -> str:
    if text is None:
        return ""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.strip().split("\n"))


def prompt_sha256(system: str | None, template: str, generation: dict | None) -> str:
    """sha256 of the normalized prompt content: system + template + generation parameters."""
    canonical = json.dumps(
        {
            "system": _normalize_text(system),
            "template": _normalize_text(template),
            "generation": {k: (generation or {})[k] for k in sorted(generation or {})},
        },
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _line_of(text: str, key: str) -> int | None:
    for i, line in enumerate(text.splitlines(), start=1):
        if re.match(rf"^{re.escape(key)}\s*:", line):
            return i
    return None


def _fail(path: str, problem: str, line: int | None = None) -> PromptError:
    where = f"{path}:{line}" if line else path
    return PromptError(f"{where}: {problem}")


def _check_sandboxed(template: str, path: str, line: int | None, allowed: set[str], require_document: bool) -> None:
    from jinja2 import meta

    try:
        ast = _ENV.parse(template)
    except jinja2.TemplateSyntaxError as e:
        tline = (line or 0) + (e.lineno or 0)
        raise _fail(path, f"bad Jinja in template: {e.message}", tline or None) from None
    from jinja2 import nodes

    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        name = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(name, str) and name.startswith("_"):
            raise _fail(path, f"template refused by the sandbox: access to {name!r} is not allowed",
                        (line or 0) + node.lineno or None)
    variables = meta.find_undeclared_variables(ast)
    if require_document and DOCUMENT_PLACEHOLDER not in variables:
        raise _fail(path, "template has no {{ document }} placeholder", line)
    extra = variables - allowed
    if extra:
        raise _fail(path, f"template uses unknown variable(s): {sorted(extra)} (allowed: {sorted(allowed)})", line)
    try:
        compiled = _ENV.from_string(template)
        rendered = compiled.render(**{**CHUNK_VARIABLES, DOCUMENT_PLACEHOLDER: "\x00DOC\x00"})
        # and the branches a later chunk takes
        compiled.render(**{DOCUMENT_PLACEHOLDER: "x", "previous_output": "x", "document_opening": "x",
                           "chunk_index": 1, "chunk_count": 2})
    except jinja2.exceptions.SecurityError as e:
        raise _fail(path, f"template refused by the sandbox: {e}", line) from None
    except jinja2.TemplateError as e:
        raise _fail(path, f"template does not render: {e}", line) from None
    if require_document and rendered.count("\x00DOC\x00") != 1:
        raise _fail(path, "template must contain the {{ document }} placeholder exactly once", line)


def _yaml_error(path: str, e: Exception) -> PromptError:
    mark, context = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    if context is not None and getattr(e, "context", None) and (mark is None or context.line != mark.line):
        problem += f" ({e.context} at line {context.line + 1})"
    return _fail(path, f"invalid YAML: {problem}", mark.line + 1 if mark is not None else None)


def validate_template(template: str, path: str = "<template>", line: int | None = None) -> None:
    """Check that a template parses, stays in the sandbox and uses the document placeholder exactly once
    (plus, optionally, the chunk variables ``previous_output``, ``document_opening``, ``chunk_index``,
    ``chunk_count``)."""
    _check_sandboxed(template, path, line, {DOCUMENT_PLACEHOLDER, *CHUNK_VARIABLES}, require_document=True)


def _line_of_nested(text: str, parent: str, key: str) -> int | None:
    """Line of ``key:`` indented under the top-level ``parent:`` (falls back to the parent's line)."""
    start = _line_of(text, parent)
    if start is None:
        return None
    lines = text.splitlines()
    for i in range(start, len(lines)):
        line = lines[i]
        if line and not line[0].isspace() and not line.startswith("#"):
            break
        if re.match(rf"^\s+{re.escape(key)}\s*:", line):
            return i + 1
    return start


def validate_output_rules(rules: Any, path: str, text: str = "") -> dict:
    """Type-check a prompt's ``output_rules`` (schema in prompts/README.md)."""
    if rules is None:
        return {}
    if not isinstance(rules, dict):
        raise _fail(path, "field 'output_rules' must be a mapping", _line_of(text, "output_rules"))
    unknown = sorted(set(rules) - OUTPUT_RULE_KEYS)
    if unknown:
        raise _fail(path, f"unknown output rule(s) {unknown}; allowed: {sorted(OUTPUT_RULE_KEYS)}",
                    _line_of_nested(text, "output_rules", unknown[0]))

    def bad(key: str, problem: str) -> PromptError:
        return _fail(path, f"output_rules.{key}: {problem}", _line_of_nested(text, "output_rules", key))

    for key in ("drop_refusals", "drop_truncated", "same_language", "require_prefix"):
        if rules.get(key) is not None and not isinstance(rules[key], bool):
            raise bad(key, "must be true or false")
    prefixes = rules.get("strip_prefixes")
    if prefixes is not None and (not isinstance(prefixes, list)
                                 or not all(isinstance(x, str) and x.strip() for x in prefixes)):
        raise bad("strip_prefixes", "must be a list of non-empty strings")
    if rules.get("require_prefix") and not prefixes:
        raise bad("require_prefix", "needs strip_prefixes (the prefixes an output must start with)")
    ratio = rules.get("length_ratio")
    if ratio is not None:
        if (not isinstance(ratio, list) or len(ratio) != 2
                or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in ratio)
                or not 0 <= ratio[0] < ratio[1]):
            raise bad("length_ratio", "must be [min, max] with 0 <= min < max (output chars / source chars)")
    if rules.get("format") not in FORMATS:
        raise bad("format", f"must be one of {sorted(f for f in FORMATS if f)} or null")
    for key in ("min_tokens", "max_tokens"):
        v = rules.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise bad(key, "must be a non-negative integer or null")
    if rules.get("min_tokens") is not None and rules.get("max_tokens") is not None \
            and rules["min_tokens"] > rules["max_tokens"]:
        raise bad("min_tokens", "is larger than max_tokens")
    extract = rules.get("extract")
    if extract is not None:
        if (not isinstance(extract, dict) or set(extract) - {"start", "end"} or not isinstance(extract.get("start"), str)
                or not extract["start"] or not isinstance(extract.get("end", ""), str)):
            raise bad("extract", "must be a mapping {start: <marker>, end: <marker>} (end optional)")
    return dict(rules)


def _check_fields(data: Any, path: str, text: str, what: str, allowed: set, required: set) -> None:
    """A YAML mapping with only `allowed` fields and every `required` one; errors name file and line."""
    if not isinstance(data, dict):
        raise _fail(path, f"{what} must be a YAML mapping")
    unknown = set(data) - allowed
    if unknown:
        key = sorted(unknown)[0]
        raise _fail(path, f"unknown field {key!r} (allowed: {', '.join(sorted(allowed))})", _line_of(text, key))
    missing = required - set(data)
    if missing:
        raise _fail(path, f"missing required field(s): {', '.join(sorted(missing))}")


def prompt_from_dict(data: Any, path: str, text: str = "", origin: str | None = None, check_location: bool = True) -> Prompt:
    _check_fields(data, path, text, "a prompt file", ALLOWED_KEYS, REQUIRED_KEYS)
    for key in ("name", "set", "template", "description"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise _fail(path, f"field {key!r} must be a non-empty string", _line_of(text, key))
    if not NAME_RE.match(data["name"]):
        raise _fail(path, f"name {data['name']!r} must match {NAME_RE.pattern}", _line_of(text, "name"))
    if check_location and path.endswith((".yaml", ".yml")):
        p = Path(path)
        if p.stem != data["name"]:
            raise _fail(path, f"name {data['name']!r} does not match the file name {p.stem!r}", _line_of(text, "name"))
    version = data["version"]
    if not isinstance(version, (str, int, float)):
        raise _fail(path, "field 'version' must be a string", _line_of(text, "version"))
    source = data.get("source") or {}
    if not isinstance(source, dict):
        raise _fail(path, "field 'source' must be a mapping (title, year, url, ...)", _line_of(text, "source"))
    system = data.get("system")
    if system is not None and not isinstance(system, str):
        raise _fail(path, "field 'system' must be a string", _line_of(text, "system"))
    suits = data.get("suits", "any")
    if suits not in SUITS:
        raise _fail(path, f"field 'suits' must be one of {sorted(SUITS)}", _line_of(text, "suits"))
    context = data.get("context", "truncate")
    if context not in CONTEXT_MODES:
        raise _fail(path, f"field 'context' must be one of {sorted(CONTEXT_MODES)}", _line_of(text, "context"))
    generation = data.get("generation") or {}
    if not isinstance(generation, dict) or set(generation) - GENERATION_KEYS:
        raise _fail(path, f"field 'generation' takes only {sorted(GENERATION_KEYS)}", _line_of(text, "generation"))
    rules = validate_output_rules(data.get("output_rules"), path, text)
    chunk_context = data.get("chunk_context")
    if chunk_context is not None:
        if not isinstance(chunk_context, str) or not chunk_context.strip():
            raise _fail(path, "field 'chunk_context' must name a chunk-context file (e.g. kimi_k2_chunk)",
                        _line_of(text, "chunk_context"))
        try:
            load_chunk_context(chunk_context, base_dir=Path(path).parent if path.endswith((".yaml", ".yml")) else None)
        except PromptError as e:
            raise _fail(path, f"chunk_context: {e}", _line_of(text, "chunk_context")) from None
    validate_template(data["template"], path, _line_of(text, "template"))
    return Prompt(
        name=data["name"],
        set=data["set"],
        version=str(version),
        template=data["template"],
        description=data["description"].strip(),
        source=source,
        system=system,
        suits=suits,
        generation=dict(generation),
        context=context,
        chunk_context=chunk_context,
        output_rules=rules,
        path=path,
        origin=origin,
    )


def load_prompt_file(path: str | Path, origin: str | None = None) -> Prompt:
    path = Path(path)
    data, text = _read_yaml(path, what="prompt file")
    prompt = prompt_from_dict(data, str(path), text, origin=origin)
    if path.parent.name != prompt.set and path.parent.resolve().parent == PACKAGED_PROMPTS_DIR:
        raise _fail(str(path), f"set {prompt.set!r} does not match its folder {path.parent.name!r}")
    return prompt


def list_packaged_prompts(set_name: str | None = None) -> list[Prompt]:
    prompts = []
    for p in sorted(PACKAGED_PROMPTS_DIR.glob("*/*.yaml")):
        if p.parent.name.startswith("_"):  # _context/: chunk-context wordings, not prompts
            continue
        if set_name and p.parent.name != set_name:
            continue
        prompts.append(load_prompt_file(p, origin=f"{p.parent.name}/{p.stem}"))
    return prompts


def load_prompt(ref: str, base_dir: str | Path | None = None) -> Prompt:
    """Resolve a prompt reference: ``set/name`` (packaged), a local path, or ``hf://datasets/...``."""
    if ref.startswith("hf://"):
        from finephrase.prompt_hub import load_hub_prompt

        return load_hub_prompt(ref)
    candidates = []
    if ref.endswith((".yaml", ".yml")) or "/" in ref and Path(ref).suffix:
        p = Path(ref)
        if not p.is_absolute() and base_dir is not None:
            candidates.append(Path(base_dir) / p)
        candidates.append(p)
        for c in candidates:
            if c.is_file():
                return load_prompt_file(c, origin=ref)
        raise PromptError(f"prompt file {ref!r} not found")
    parts = ref.split("/")
    if len(parts) == 2 and not parts[0].startswith("_"):
        p = PACKAGED_PROMPTS_DIR / parts[0] / f"{parts[1]}.yaml"
        if p.is_file():
            return load_prompt_file(p, origin=ref)
    known = ", ".join(pr.ref for pr in list_packaged_prompts())
    raise PromptError(f"unknown prompt {ref!r}; packaged prompts: {known}")


# ---------------------------------------------------------------------------------------------------------
# chunk-context wordings (prompts/_context/<name>.yaml): how a chunk's request carries the document's
# opening and the previous chunk's rewrite (Kimi K2-style chunked rewriting, finephrase.steps.chunked)

CONTEXT_KEYS = {"kind", "name", "version", "source", "description", "template", "position", "separator",
                "opening_tokens", "previous_tokens", "max_chunks"}
CONTEXT_REQUIRED = {"kind", "name", "version", "source", "description", "template"}
CONTEXT_KIND = "chunk_context"


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
        canonical = json.dumps({"template": _normalize_text(self.template), "position": self.position,
                                "separator": self.separator, "opening_tokens": self.opening_tokens,
                                "previous_tokens": self.previous_tokens, "max_chunks": self.max_chunks},
                               sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def render(self, **variables: Any) -> str:
        return _compile(self.template).render(**{**CHUNK_VARIABLES, **variables}).strip()


def chunk_context_from_dict(data: Any, path: str, text: str = "") -> ChunkContext:
    _check_fields(data, path, text, "a chunk-context file", CONTEXT_KEYS, CONTEXT_REQUIRED)
    if data["kind"] != CONTEXT_KIND:
        raise _fail(path, f"field 'kind' must be {CONTEXT_KIND!r}", _line_of(text, "kind"))
    for key in ("name", "template", "description"):
        if not isinstance(data[key], str) or not data[key].strip():
            raise _fail(path, f"field {key!r} must be a non-empty string", _line_of(text, key))
    if not NAME_RE.match(data["name"]):
        raise _fail(path, f"name {data['name']!r} must match {NAME_RE.pattern}", _line_of(text, "name"))
    if path.endswith((".yaml", ".yml")) and Path(path).stem != data["name"]:
        raise _fail(path, f"name {data['name']!r} does not match the file name {Path(path).stem!r}", _line_of(text, "name"))
    if not isinstance(data.get("source"), dict):
        raise _fail(path, "field 'source' must be a mapping (title, year, url, ...)", _line_of(text, "source"))
    if data.get("position", "before") not in ("before", "after"):
        raise _fail(path, "field 'position' must be 'before' or 'after'", _line_of(text, "position"))
    if not isinstance(data.get("separator", "\n\n"), str):
        raise _fail(path, "field 'separator' must be a string", _line_of(text, "separator"))
    for key, lo in (("opening_tokens", 0), ("previous_tokens", 0), ("max_chunks", 1)):
        v = data.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < lo):
            raise _fail(path, f"field {key!r} must be an integer >= {lo}", _line_of(text, key))
    _check_sandboxed(data["template"], path, _line_of(text, "template"), set(CHUNK_VARIABLES), require_document=False)
    defaults = ChunkContext(name="", version="", template="")
    return ChunkContext(
        name=data["name"], version=str(data["version"]), template=data["template"],
        description=data["description"].strip(), source=data["source"],
        position=data.get("position", "before"), separator=data.get("separator", defaults.separator),
        opening_tokens=data.get("opening_tokens", defaults.opening_tokens),
        previous_tokens=data.get("previous_tokens", defaults.previous_tokens),
        max_chunks=data.get("max_chunks", defaults.max_chunks), path=path,
    )


def _read_yaml(path: Path, what: str = "file") -> tuple[Any, str]:
    """(parsed YAML, raw text) of a UTF-8 file; PromptError naming the file (and line) otherwise."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptError(f"{path}: {what} not found") from None
    except UnicodeDecodeError:
        raise PromptError(f"{path}: {what} is not UTF-8") from None
    try:
        return yaml.safe_load(text), text
    except yaml.YAMLError as e:
        raise _yaml_error(str(path), e) from None


def load_chunk_context_file(path: str | Path) -> ChunkContext:
    data, text = _read_yaml(Path(path))
    return chunk_context_from_dict(data, str(path), text)


def load_chunk_context(ref: str | None = None, base_dir: str | Path | None = None) -> ChunkContext:
    """A chunk-context wording: a packaged name (``kimi_k2_chunk`` = prompts/_context/kimi_k2_chunk.yaml)
    or a path (relative to ``base_dir``, e.g. the prompt file's folder)."""
    ref = ref or DEFAULT_CHUNK_CONTEXT
    candidates = []
    if ref.endswith((".yaml", ".yml")) or "/" in ref:
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


def chunk_context_for(prompt: Prompt) -> ChunkContext:
    base = Path(prompt.path).parent if prompt.path else None
    return load_chunk_context(prompt.chunk_context, base_dir=base)


def load_any_file(path: str | Path) -> Prompt | ChunkContext:
    """Validate-and-load a prompt file or a chunk-context file (``kind: chunk_context``)."""
    path = Path(path)
    data, text = _read_yaml(path)
    if isinstance(data, dict) and data.get("kind") == CONTEXT_KIND:
        return chunk_context_from_dict(data, str(path), text)
    return load_prompt_file(path)
