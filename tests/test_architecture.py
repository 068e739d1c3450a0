"""The shape of the code (issue "One straight path"): short functions, no import cycles, none of datatrove's
private parts touched (finephrase owns its inference loop and uses datatrove's public surface only).

These read the source with ``ast``; they need no server and run in about a second.
"""

from __future__ import annotations

import ast
from pathlib import Path

import datatrove
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "finephrase"
MAX_FUNCTION_LINES = 60  # body lines, docstring excluded

def _modules() -> dict[str, Path]:
    out = {}
    for f in PACKAGE.rglob("*.py"):
        parts = f.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _function_lengths(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            first = body[0]
            docstring = isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                and isinstance(first.value.value, str)
            start = (body[1].lineno if len(body) > 1 else first.end_lineno) if docstring else first.lineno
            yield node, node.end_lineno - start + 1


def test_no_function_is_longer_than_sixty_lines():
    long = [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {node.name} ({n} lines)"
            for path in _modules().values() for node, n in _function_lengths(ast.parse(path.read_text()))
            if n > MAX_FUNCTION_LINES]
    assert not long, "functions over ~60 lines:\n" + "\n".join(long)


def _runtime_imports(tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    """finephrase modules imported (anywhere in the file, lazily too), except under ``if TYPE_CHECKING``."""
    typing_only = {id(n) for node in ast.walk(tree)
                   if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    found = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
            # ``from package import submodule`` imports the submodule (the package's __init__ runs anyway)
            targets = subs if len(subs) == len(node.names) else [node.module, *subs]
        else:
            continue
        found |= {owner(t) for t in targets if t.split(".")[0] == "finephrase"} - {None}
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_one_that_imports_it_back():
    modules = _modules()
    graph = {name: _runtime_imports(ast.parse(path.read_text()), modules) - {name} for name, path in modules.items()}
    assert not _cycles(graph)


def _package(module: str) -> str:
    """The part of finephrase a module belongs to: its top-level package (``finephrase.report``), or itself for a
    top-level module (``finephrase.hub``)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_package_imports_one_that_imports_it_back():
    """Between the parts of the tree (function-level imports included): a package that uses another is never used
    by it, so each part can be read, tested and replaced on its own."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = {_package(m) for m in _runtime_imports(ast.parse(path.read_text()), modules)}
        graph.setdefault(_package(name), set()).update(deps - {_package(name)})
    for deps in graph.values():
        deps.discard("finephrase")  # the root __init__ only re-exports
    graph.pop("finephrase", None)
    for v in list(graph):
        graph[v] &= set(graph)
    assert not _cycles(graph), f"packages importing each other: {_cycles(graph)}"


def test_the_cycle_check_sees_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def _datatrove_private_names() -> set[str]:
    names = set()
    for f in Path(datatrove.__file__).parent.rglob("*.py"):  # all of datatrove
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.add(node.name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def _private_uses(tree: ast.AST, private: set[str]):
    """Attribute reads/writes of datatrove's private names, methods overriding them, ``__dict__["_x"]``."""
    methods = {id(f) for c in ast.walk(tree) if isinstance(c, ast.ClassDef) for f in c.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in private:
            yield node.lineno, node.attr
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and id(node) in methods \
                and node.name in private:
            yield node.lineno, f"def {node.name}"
        elif isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value in private:
            yield node.lineno, f"[{node.slice.value!r}]"


def test_no_datatrove_private_part_is_touched():
    """Not even a name of finephrase's own that collides with one of datatrove's (the scan cannot tell them apart)."""
    private = _datatrove_private_names()
    assert {"_init_server", "_handle_record", "_get_output_filename", "_model"} <= private  # all of datatrove
    uses = [f"{path.relative_to(PACKAGE)}:{line} {what}"
            for path in sorted(PACKAGE.rglob("*.py"))
            for line, what in _private_uses(ast.parse(path.read_text()), private)]
    assert not uses, "datatrove private parts used:\n" + "\n".join(uses)


@pytest.mark.parametrize("source, expected", [
    ("class R(X):\n    def _init_server(self):\n        return self._server_ready\n",
     [(2, "def _init_server"), (3, "_server_ready")]),
    ("def _init_server():\n    pass\n", []),  # a module-level function of the same name is finephrase's own
    ("x = step.__dict__['_stats']\n", [(1, "['_stats']")]),
])
def test_the_private_scan_sees_overrides_reads_and_dict_access(source, expected):
    private = {"_init_server", "_server_ready", "_stats"}
    assert sorted(_private_uses(ast.parse(source), private)) == expected


def test_every_package_says_what_lives_there_and_what_it_may_import():
    for init in sorted(PACKAGE.rglob("__init__.py")):
        if "_packaged" in init.parts:
            continue
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc.lower() and len(doc) > 200, f"{init.relative_to(PACKAGE.parent)}: docstring"
