"""The recipe reference, generated from the schema: ``python -m finephrase.docs`` writes ``docs/recipe.md``.

Every key of :class:`finephrase.recipe.Recipe` and of its nested models, with its type, default and meaning (the
field's ``description``; a nested block's meaning may be its model's docstring). ``tests/test_docs.py`` fails when
the committed file differs from a fresh rendering, or when a key has no meaning, naming this command.

Imports: :mod:`finephrase.recipe` only.
"""

from __future__ import annotations

import inspect
import json
import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic.fields import FieldInfo

from finephrase.recipe import Recipe

COMMAND = "python -m finephrase.docs"
REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "recipe.md"

HEADER = f"""# Recipe reference

<!-- generated from finephrase/recipe.py by `{COMMAND}`; do not edit: edit the field descriptions there -->

Every key a recipe may hold, with its type, its default and what it does, generated from the schema
(`finephrase/recipe.py`). Unknown keys are errors. A recipe is checked with `load_recipe` (types, ranges) and
then against the file system (prompts, sources, models) before any work starts.
"""


def _model(annotation) -> type[BaseModel] | None:
    """The pydantic model a field holds (itself, in a list, or optional), if any."""
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model(arg)
        if found is not None:
            return found
    return None


def _type(annotation, anchor: str | None) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type(a, anchor) for a in args)
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type(a, anchor) for a in args)}]"
    if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
        return f"[mapping](#{anchor})"
    return getattr(annotation, "__name__", str(annotation))


def _default(info: FieldInfo) -> str:
    if info.is_required():
        return "**required**"
    value = info.default_factory() if info.default_factory is not None else info.default
    if isinstance(value, BaseModel):
        return "(its defaults)"
    return f"`{json.dumps(value)}`"


def _meaning(name: str, info: FieldInfo, nested: type[BaseModel] | None, where: str) -> str:
    text = info.description or (inspect.getdoc(nested).split("\n\n")[0] if nested and nested.__doc__ else "")
    if not text:
        raise ValueError(f"{where}.{name} has no description: give it Field(description=...) in finephrase/recipe.py")
    return " ".join(text.split()).replace("``", "`").replace("|", "\\|")


def _anchor(path: str) -> str:
    return "".join(c for c in path.lower() if c.isalnum() or c in "-_")


def _sections(model: type[BaseModel], path: str, out: list[str], seen: set[str]) -> None:
    title = path or "top level"
    doc = inspect.getdoc(model) if model.__doc__ and model is not Recipe else ""
    lines = [f"## `{title}`" if path else "## Top level", ""]
    lines += [" ".join(doc.split()).replace("``", "`"), ""] if doc else []
    lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
    nested_blocks = []
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        nested = _model(info.annotation)
        child = f"{path}.{name}" if path else name
        if nested is not None and typing.get_origin(info.annotation) is list:
            child += "[]"
        anchor = _anchor(f"`{child}`")
        lines.append(f"| `{name}` | {_type(info.annotation, anchor)} | {_default(info)} | "
                     f"{_meaning(name, info, nested, title)} |")
        if nested is not None:
            nested_blocks.append((nested, child))
    out.append("\n".join(lines) + "\n")
    for nested, child in nested_blocks:
        if child not in seen:
            seen.add(child)
            _sections(nested, child, out, seen)


def render() -> str:
    """The recipe reference as Markdown."""
    out = [HEADER]
    _sections(Recipe, "", out, set())
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in args:
        same = REFERENCE.is_file() and REFERENCE.read_text(encoding="utf-8") == text
        print(f"{REFERENCE} is {'up to date' if same else f'stale: run `{COMMAND}`'}")
        return 0 if same else 1
    REFERENCE.write_text(text, encoding="utf-8")
    print(f"wrote {REFERENCE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
