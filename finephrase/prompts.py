"""Prompt files: load, validate, hash and render.

A prompt is a YAML data file (``prompts/<set>/<name>.yaml``, schema in
``prompts/README.md``). Templates are rendered with a sandboxed Jinja2 environment and
``StrictUndefined``, so a template can neither reach Python internals nor silently drop a
variable. A prompt's identity is the sha256 of its normalized content (system + template +
generation parameters).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2.sandbox import ImmutableSandboxedEnvironment

PACKAGED_PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
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
}
SUITS = {"any", "high-quality", "low-quality"}
CONTEXT_MODES = {"truncate", "chunked"}
FORMATS = {None, "table", "qa", "math", "list"}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False, autoescape=False)


class PromptError(ValueError):
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
    path: str | None = None  # where it was loaded from (never written to cards as an absolute path)
    origin: str | None = None  # how the recipe named it: set/name, a path, or an hf:// reference

    @property
    def ref(self) -> str:
        return f"{self.set}/{self.name}"

    @property
    def config_name(self) -> str:
        """The dataset config this prompt's rows are published under."""
        return self.name

    @property
    def sha256(self) -> str:
        return prompt_sha256(self.system, self.template, self.generation)

    def render(self, document: str, **context: Any) -> list[dict]:
        """Render the chat messages for one document."""
        user = _ENV.from_string(self.template).render(**{DOCUMENT_PLACEHOLDER: document, **context})
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
            "output_rules": self.output_rules,
            "sha256": self.sha256,
        }


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


def validate_template(template: str, path: str = "<template>", line: int | None = None) -> None:
    """Check that a template parses and uses exactly the document placeholder."""
    from jinja2 import meta

    try:
        ast = _ENV.parse(template)
    except jinja2.TemplateSyntaxError as e:
        tline = (line or 0) + (e.lineno or 0)
        raise _fail(path, f"bad Jinja in template: {e.message}", tline or None) from None
    variables = meta.find_undeclared_variables(ast)
    if DOCUMENT_PLACEHOLDER not in variables:
        raise _fail(path, "template has no {{ document }} placeholder", line)
    extra = variables - {DOCUMENT_PLACEHOLDER, "previous_output", "document_opening", "chunk_index", "chunk_count"}
    if extra:
        raise _fail(path, f"template uses unknown variable(s): {sorted(extra)}", line)
    try:
        rendered = _ENV.from_string(template).render(
            document="\x00DOC\x00", previous_output="", document_opening="", chunk_index=0, chunk_count=1
        )
    except jinja2.exceptions.SecurityError as e:
        raise _fail(path, f"template refused by the sandbox: {e}", line) from None
    except jinja2.TemplateError as e:
        raise _fail(path, f"template does not render: {e}", line) from None
    if rendered.count("\x00DOC\x00") != 1:
        raise _fail(path, "template must contain the {{ document }} placeholder exactly once", line)


def prompt_from_dict(data: Any, path: str, text: str = "", origin: str | None = None, check_location: bool = True) -> Prompt:
    if not isinstance(data, dict):
        raise _fail(path, "a prompt file must be a YAML mapping")
    unknown = set(data) - ALLOWED_KEYS
    if unknown:
        key = sorted(unknown)[0]
        raise _fail(path, f"unknown field {key!r} (allowed: {', '.join(sorted(ALLOWED_KEYS))})", _line_of(text, key))
    missing = REQUIRED_KEYS - set(data)
    if missing:
        raise _fail(path, f"missing required field(s): {', '.join(sorted(missing))}")
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
    rules = data.get("output_rules") or {}
    if not isinstance(rules, dict) or set(rules) - OUTPUT_RULE_KEYS:
        bad = sorted(set(rules) - OUTPUT_RULE_KEYS) if isinstance(rules, dict) else rules
        raise _fail(path, f"unknown output rule(s) {bad}; allowed: {sorted(OUTPUT_RULE_KEYS)}", _line_of(text, "output_rules"))
    if rules.get("format") not in FORMATS:
        raise _fail(path, f"output_rules.format must be one of {sorted(f for f in FORMATS if f)} or null")
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
        output_rules=dict(rules),
        path=path,
        origin=origin,
    )


def load_prompt_file(path: str | Path, origin: str | None = None) -> Prompt:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptError(f"{path}: prompt file not found") from None
    except UnicodeDecodeError:
        raise PromptError(f"{path}: prompt file is not UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        line = getattr(getattr(e, "problem_mark", None), "line", None)
        raise _fail(str(path), f"invalid YAML: {getattr(e, 'problem', e)}", line + 1 if line is not None else None) from None
    prompt = prompt_from_dict(data, str(path), text, origin=origin)
    if path.parent.name != prompt.set and path.parent.resolve().parent == PACKAGED_PROMPTS_DIR:
        raise _fail(str(path), f"set {prompt.set!r} does not match its folder {path.parent.name!r}")
    return prompt


def list_packaged_prompts(set_name: str | None = None) -> list[Prompt]:
    prompts = []
    for p in sorted(PACKAGED_PROMPTS_DIR.glob("*/*.yaml")):
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
    if len(parts) == 2:
        p = PACKAGED_PROMPTS_DIR / parts[0] / f"{parts[1]}.yaml"
        if p.is_file():
            return load_prompt_file(p, origin=ref)
    known = ", ".join(pr.ref for pr in list_packaged_prompts())
    raise PromptError(f"unknown prompt {ref!r}; packaged prompts: {known}")
