"""Validation: the checks a prompt file (and a chunk-context file) must pass, and errors that name the file and line.

The checks raise :class:`Problem` — a message and the key it is about (plus a key under it, or a
line inside its value). The models' validators (:mod:`.model`, :mod:`.context`) call them; loading
a file turns the first problem into a :class:`PromptError` ``"<file>:<line>: <problem>"``
(:func:`located`), the line found in the file's text.

Imports: :mod:`.render` only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2 import nodes
from pydantic import ValidationError

from finephrase.errors import PromptError
from finephrase.prompts.render import (
    CHUNK_VARIABLES,
    DOCUMENT_PLACEHOLDER,
    ENV,
    template_variables,
)

ALLOWED_KEYS = {"name", "set", "version", "source", "description", "suits", "system", "template", "generation",
                "context", "chunk_context", "output_rules"}
REQUIRED_KEYS = {"name", "set", "version", "source", "description", "template"}
GENERATION_KEYS = {"max_new_tokens", "temperature", "top_p"}
OUTPUT_RULE_KEYS = {"strip_prefixes", "drop_refusals", "drop_truncated", "length_ratio", "format", "min_tokens",
                    "max_tokens", "same_language", "require_prefix", "extract"}
SUITS = {"any", "high-quality", "low-quality"}
CONTEXT_MODES = {"truncate", "chunked"}
FORMATS = {None, "table", "qa", "math", "list"}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
YAML_SUFFIXES = (".yaml", ".yml")


class Problem(ValueError):
    """One check failed: ``message``, about ``key`` (a top-level key of the file), ``nested`` (a key under it)
    or ``offset`` lines below it (a line of a block value, e.g. of the template)."""

    def __init__(self, message: str, key: str | None = None, nested: str | None = None, offset: int | None = None):
        super().__init__(message)
        self.message, self.key, self.nested, self.offset = message, key, nested, offset

    def below(self, line: int | None) -> int | None:
        """The problem's line when its key is on ``line``."""
        return line if self.offset is None else ((line or 0) + self.offset) or None

    def line_in(self, text: str) -> int | None:
        if self.key is None:
            return None
        if self.nested is not None:
            return line_of_nested(text, self.key, self.nested)
        return self.below(line_of(text, self.key))


def normalize_text(text: str | None) -> str:
    """Text as hashed (prompt and chunk-context identities): LF line ends, no trailing whitespace on a line,
    no surrounding blank lines."""
    if text is None:
        return ""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.strip().split("\n"))


# ------------------------------------------------------------------------------------ file, line, error
def line_of(text: str, key: str) -> int | None:
    for i, line in enumerate(text.splitlines(), start=1):
        if re.match(rf"^{re.escape(key)}\s*:", line):
            return i
    return None


def line_of_nested(text: str, parent: str, key: str) -> int | None:
    """Line of ``key:`` indented under the top-level ``parent:`` (falls back to the parent's line)."""
    start = line_of(text, parent)
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


def fail(path: str, problem: str, line: int | None = None) -> PromptError:
    where = f"{path}:{line}" if line else path
    return PromptError(f"{where}: {problem}")


def located(error: ValidationError | Problem, path: str, text: str = "") -> PromptError:
    """The first problem of a model's validation, as ``<path>:<line>: <problem>``."""
    problem = error
    if isinstance(error, ValidationError):
        first = error.errors()[0]
        problem = (first.get("ctx") or {}).get("error")
        if not isinstance(problem, Problem):  # a pydantic check of its own (a type)
            key = str(first["loc"][0]) if first["loc"] else None
            problem = Problem(f"field {key!r}: {first['msg']}" if key else first["msg"], key)
    return fail(path, problem.message, problem.line_in(text))


def yaml_error(path: str, e: Exception) -> PromptError:
    mark, context = getattr(e, "problem_mark", None), getattr(e, "context_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    if context is not None and getattr(e, "context", None) and (mark is None or context.line != mark.line):
        problem += f" ({e.context} at line {context.line + 1})"
    return fail(path, f"invalid YAML: {problem}", mark.line + 1 if mark is not None else None)


def read_yaml(path: Path, what: str = "file") -> tuple[Any, str]:
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
        raise yaml_error(str(path), e) from None


def check_fields(data: Any, path: str, text: str, what: str, allowed: set, required: set) -> None:
    """A YAML mapping with only `allowed` fields and every `required` one; errors name file and line."""
    if not isinstance(data, dict):
        raise fail(path, f"{what} must be a YAML mapping")
    unknown = set(data) - allowed
    if unknown:
        key = sorted(unknown)[0]
        raise fail(path, f"unknown field {key!r} (allowed: {', '.join(sorted(allowed))})", line_of(text, key))
    missing = required - set(data)
    if missing:
        raise fail(path, f"missing required field(s): {', '.join(sorted(missing))}")


# ------------------------------------------------------------------------------------ field checks
def non_empty_string(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise Problem(f"field {key!r} must be a non-empty string", key)
    return value


def check_name(value: Any) -> str:
    non_empty_string(value, "name")
    if not NAME_RE.match(value):
        raise Problem(f"name {value!r} must match {NAME_RE.pattern}", "name")
    return value


def check_file_name(name: str, path: str | None) -> None:
    """A prompt (or chunk-context) file is named after its ``name``."""
    if path and path.endswith(YAML_SUFFIXES) and Path(path).stem != name:
        raise Problem(f"name {name!r} does not match the file name {Path(path).stem!r}", "name")


# ---- field validators shared by the Prompt and ChunkContext models: ``field_validator(...)(name_field)``
CHOICES = {"suits": SUITS, "context": CONTEXT_MODES, "position": {"before", "after"}}


def name_field(cls, value, info):
    return check_name(value)


def text_field(cls, value, info):
    """A required non-empty string (``description`` is stripped)."""
    value = non_empty_string(value, info.field_name)
    return value.strip() if info.field_name == "description" else value


def version_field(cls, value, info):
    if not isinstance(value, (str, int, float)):
        raise Problem("field 'version' must be a string", "version")
    return str(value)


def source_field(cls, value, info):
    if not isinstance(value or {}, dict):
        raise Problem("field 'source' must be a mapping (title, year, url, ...)", "source")
    return value or {}


def string_field(cls, value, info):
    """A string; None stays None except for ``separator``."""
    if (value is not None or info.field_name == "separator") and not isinstance(value, str):
        raise Problem(f"field {info.field_name!r} must be a string", info.field_name)
    return value


def choice_field(cls, value, info):
    """One of :data:`CHOICES` of the field."""
    key = info.field_name
    if not isinstance(value, str) or value not in CHOICES[key]:
        raise Problem(f"field {key!r} must be one of {sorted(CHOICES[key])}", key)
    return value


def check_sandboxed(template: str, allowed: set[str], require_document: bool) -> None:
    """The template parses, stays in the sandbox, uses only ``allowed`` variables and renders (first chunk and later
    chunks); with ``require_document``, it places ``{{ document }}`` exactly once."""
    try:
        ast = ENV.parse(template)
    except jinja2.TemplateSyntaxError as e:
        raise Problem(f"bad Jinja in template: {e.message}", "template", offset=e.lineno or 0) from None
    for node in ast.find_all((nodes.Getattr, nodes.Getitem)):
        name = node.attr if isinstance(node, nodes.Getattr) else getattr(node.arg, "value", None)
        if isinstance(name, str) and name.startswith("_"):
            raise Problem(f"template refused by the sandbox: access to {name!r} is not allowed", "template",
                          offset=node.lineno)
    variables = template_variables(template)
    if require_document and DOCUMENT_PLACEHOLDER not in variables:
        raise Problem("template has no {{ document }} placeholder", "template")
    extra = variables - allowed
    if extra:
        raise Problem(f"template uses unknown variable(s): {sorted(extra)} (allowed: {sorted(allowed)})", "template")
    try:
        compiled = ENV.from_string(template)
        rendered = compiled.render(**{**CHUNK_VARIABLES, DOCUMENT_PLACEHOLDER: "\x00DOC\x00"})
        # and the branches a later chunk takes
        compiled.render(**{DOCUMENT_PLACEHOLDER: "x", "previous_output": "x", "document_opening": "x",
                           "chunk_index": 1, "chunk_count": 2})
    except jinja2.exceptions.SecurityError as e:
        raise Problem(f"template refused by the sandbox: {e}", "template") from None
    except jinja2.TemplateError as e:
        raise Problem(f"template does not render: {e}", "template") from None
    if require_document and rendered.count("\x00DOC\x00") != 1:
        raise Problem("template must contain the {{ document }} placeholder exactly once", "template")


def check_prompt_template(template: str) -> None:
    check_sandboxed(template, {DOCUMENT_PLACEHOLDER, *CHUNK_VARIABLES}, require_document=True)


def validate_template(template: str, path: str = "<template>", line: int | None = None) -> None:
    """Check that a template parses, stays in the sandbox and uses the document placeholder exactly once
    (plus, optionally, the chunk variables ``previous_output``, ``document_opening``, ``chunk_index``,
    ``chunk_count``). ``line``: where the template starts in ``path``."""
    try:
        check_prompt_template(template)
    except Problem as p:
        raise fail(path, p.message, p.below(line)) from None


def _rule_problem(key: str, problem: str) -> Problem:
    return Problem(f"output_rules.{key}: {problem}", "output_rules", nested=key)


def _check_rule_types(rules: dict) -> None:
    for key in ("drop_refusals", "drop_truncated", "same_language", "require_prefix"):
        if rules.get(key) is not None and not isinstance(rules[key], bool):
            raise _rule_problem(key, "must be true or false")
    prefixes = rules.get("strip_prefixes")
    if prefixes is not None and (not isinstance(prefixes, list)
                                 or not all(isinstance(x, str) and x.strip() for x in prefixes)):
        raise _rule_problem("strip_prefixes", "must be a list of non-empty strings")
    if rules.get("require_prefix") and not prefixes:
        raise _rule_problem("require_prefix", "needs strip_prefixes (the prefixes an output must start with)")
    ratio = rules.get("length_ratio")
    if ratio is not None and (not isinstance(ratio, list) or len(ratio) != 2
                              or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in ratio)
                              or not 0 <= ratio[0] < ratio[1]):
        raise _rule_problem("length_ratio", "must be [min, max] with 0 <= min < max (output chars / source chars)")
    if rules.get("format") not in FORMATS:
        raise _rule_problem("format", f"must be one of {sorted(f for f in FORMATS if f)} or null")


def _check_rule_limits(rules: dict) -> None:
    for key in ("min_tokens", "max_tokens"):
        v = rules.get(key)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 0):
            raise _rule_problem(key, "must be a non-negative integer or null")
    if rules.get("min_tokens") is not None and rules.get("max_tokens") is not None \
            and rules["min_tokens"] > rules["max_tokens"]:
        raise _rule_problem("min_tokens", "is larger than max_tokens")
    extract = rules.get("extract")
    if extract is not None and (not isinstance(extract, dict) or set(extract) - {"start", "end"}
                                or not isinstance(extract.get("start"), str) or not extract["start"]
                                or not isinstance(extract.get("end", ""), str)):
        raise _rule_problem("extract", "must be a mapping {start: <marker>, end: <marker>} (end optional)")


def check_output_rules(rules: Any) -> dict:
    """Type-check a prompt's ``output_rules`` (schema in prompts/README.md); a copy of them."""
    if rules is None:
        return {}
    if not isinstance(rules, dict):
        raise Problem("field 'output_rules' must be a mapping", "output_rules")
    unknown = sorted(set(rules) - OUTPUT_RULE_KEYS)
    if unknown:
        raise Problem(f"unknown output rule(s) {unknown}; allowed: {sorted(OUTPUT_RULE_KEYS)}", "output_rules",
                      nested=unknown[0])
    _check_rule_types(rules)
    _check_rule_limits(rules)
    return dict(rules)


