"""The README and docs/ cannot drift from the code (issue 25).

- every ```yaml block is a recipe that validates against the schema (a block after ``<!-- fragment -->`` is merged
  into a minimal recipe first; after ``<!-- prompt -->`` it is a prompt file and validates as one);
- docs/recipe.md equals a fresh rendering of the schema (``python -m finephrase.docs``);
- every ``finephrase ...`` command and every ``--flag`` in a code span or a shell block exists in the CLI's parser;
- every ``hf ...`` command (huggingface_hub's CLI) and its flags exist, as ``hf ... --help`` lists them;
- every ``make`` target named is one of the Makefile's;
- every repository path and ``finephrase.*`` module named in a code span or a link exists.

Reading files, argparse and a few ``hf --help``: about two seconds.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from finephrase import docs
from finephrase.cli.main import build_parser
from finephrase.errors import PromptError, RecipeError
from finephrase.plan import _check_prompt_names, recipe_prompts
from finephrase.prompts import prompt_from_dict
from finephrase.recipe import parse_recipe

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MINIMAL = {"name": "doc", "source": {"kind": "jsonl", "path": "data.jsonl"}, "prompts": ["finephrase/faq"]}
FENCE = re.compile(r"^(?P<marker><!-- *(?P<kind>[a-z ]+?) *-->\n)?```(?P<lang>[a-z]*)\n(?P<body>.*?)^```$",
                   re.M | re.S)
SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
REPO_TOP = ("finephrase/", "tests/", "benchmarks/", "docs/", "pipelines/", "prompts/", "cards/", "launch/", ".ci/")
REPO_FILES = ("Makefile", "pyproject.toml", "README.md")
SHELL = ("bash", "sh", "console", "shell")
FILE_SUFFIXES = (".yaml", ".yml", ".md", ".py", ".json", ".html", ".txt", ".j2")


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _blocks(path: Path):
    text = path.read_text(encoding="utf-8")
    for m in FENCE.finditer(text):
        line = text[:m.start("body")].count("\n") + 1
        yield m.group("lang"), (m.group("kind") or ""), m.group("body"), f"{path.relative_to(ROOT)}:{line}"


def _prose(path: Path) -> str:
    """The file without its fenced blocks (code spans are read from this)."""
    return FENCE.sub("", path.read_text(encoding="utf-8"))


def check_yaml_block(kind: str, body: str, where: str) -> None:
    data = yaml.safe_load(body)
    if kind == "prompt":
        prompt_from_dict(data, where, body)
        return
    recipe = parse_recipe(_merge(MINIMAL, data) if kind == "fragment" else data, where)
    # the prompts it names exist, and the keys naming prompts name the recipe's (the part of plan.resolve that
    # needs no source file, model or server)
    _check_prompt_names(recipe, recipe_prompts(recipe))


YAML_BLOCKS = [(kind, body, where) for path in DOCS for lang, kind, body, where in _blocks(path) if lang == "yaml"]


@pytest.mark.parametrize("kind,body,where", YAML_BLOCKS, ids=[w for _, _, w in YAML_BLOCKS])
def test_yaml_blocks_validate(kind, body, where):
    check_yaml_block(kind, body, where)


def test_a_drifted_yaml_block_fails():
    with pytest.raises(RecipeError, match="license: unknown key"):  # the README's old example
        check_yaml_block("", "name: x\nsource: {kind: jsonl, path: a}\nprompts: [finephrase/faq]\nlicense: odc-by\n",
                         "drift")
    with pytest.raises(RecipeError, match="generator.concurency: unknown key"):
        check_yaml_block("fragment", "generator: {concurency: 8}\n", "drift")
    with pytest.raises(RecipeError, match=r"routing.buckets\[0\].prompts: faqs: not a prompt of this recipe"):
        check_yaml_block("fragment", "filters: {quality: {model: q.bin, threshold: 0}}\n"
                         "routing: {buckets: [{name: all, prompts: [faqs]}]}\n", "drift")
    with pytest.raises(PromptError):
        check_yaml_block("fragment", "prompts: [finephrase/faqs]\n", "drift")


def test_recipe_reference_is_regenerated():
    committed = docs.REFERENCE.read_text(encoding="utf-8") if docs.REFERENCE.is_file() else ""
    assert committed == docs.render(), f"docs/recipe.md is stale: run `{docs.COMMAND}` and commit it"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


def _all_flags(parser: argparse.ArgumentParser) -> set[str]:
    return _flags(parser).union(*(_all_flags(p) for p in _subparsers(parser).values()))


def check_command(words: list[str], parser: argparse.ArgumentParser) -> list[str]:
    """Problems of one ``finephrase ...`` command line (``words`` after ``finephrase``)."""
    problems, node, flags, path = [], parser, _flags(parser), ["finephrase"]
    for word in words:
        if word in ("#", "|", "&&", ";", ">", "\\") or word.startswith("#"):
            break
        subs, word = _subparsers(node), word.strip("[]")
        if word.startswith("--"):
            flag = word.split("=")[0]
            if flag not in flags:
                problems.append(f"`{' '.join(path)} {flag}`: no such flag")
        elif subs and word in subs:
            node, path = subs[word], [*path, word]
            flags |= _flags(node)
        elif subs and re.fullmatch(r"[a-z][a-z-]*", word):
            problems.append(f"`{' '.join(path)} {word}`: no such command")
            break
    return problems


def _commands(path: Path, program: str = "finephrase"):
    """``program ...`` command lines of shell blocks and code spans, and (finephrase) lone ``--flag`` spans."""
    for lang, _, body, where in _blocks(path):
        if lang in SHELL:
            for line in body.replace("\\\n", " ").splitlines():
                for part in re.split(r"&&|;|\|", line.split(" #")[0]):
                    words = part.split()
                    if words[:1] == [program]:
                        yield words[1:], where
    for span in SPAN.findall(_prose(path)):
        if span.startswith(program + " "):
            yield span.split()[1:], str(path.relative_to(ROOT))
        elif program == "finephrase" and re.fullmatch(r"--[a-z][a-z-]*(=\S+| \S+)?", span):
            yield ["--LONE", span.split("=")[0].split()[0]], str(path.relative_to(ROOT))


def test_commands_and_flags_exist():
    parser = build_parser()
    every_flag = _all_flags(parser)
    problems = []
    for path in DOCS:
        for words, where in _commands(path):
            if words[:1] == ["--LONE"]:
                if words[1] not in every_flag:
                    problems.append(f"{where}: `{words[1]}` is no flag of finephrase")
            else:
                problems += [f"{where}: {p}" for p in check_command(words, parser)]
    assert not problems, "\n".join(problems)


def test_a_drifted_command_fails():
    parser = build_parser()
    assert check_command(["run", "RECIPE", "--push-to", "x"], parser) == []
    assert check_command(["prompts", "render", "finephrase/faq", "--doc", "d.txt"], parser) == []
    assert check_command(["run", "RECIPE", "--resume"], parser) == ["`finephrase run --resume`: no such flag"]
    assert check_command(["upload", "out"], parser) == ["`finephrase upload`: no such command"]


HF = shutil.which("hf") or str(Path(sys.executable).with_name("hf"))


@functools.cache
def _hf_help(words: tuple[str, ...]) -> str | None:
    """``hf WORDS --help`` (huggingface_hub's CLI), or None when that is no command."""
    done = subprocess.run([HF, *words, "--help"], capture_output=True, text=True, timeout=60)
    return done.stdout if done.returncode == 0 else None


def check_hf_command(words: list[str]) -> list[str]:
    """Problems of one ``hf ...`` command line: its command path and its flags, as ``hf ... --help`` lists them."""
    path = []
    for word in words:
        if word.startswith("-") or not re.fullmatch(r"[a-z][a-z-]*", word) or _hf_help((*path, word)) is None:
            break
        path.append(word)
    if not path:
        return [f"`hf {' '.join(words[:1])}`: no such command"]
    flags = set(re.findall(r"--[a-z][a-z-]*", _hf_help(tuple(path))))
    return [f"`hf {' '.join(path)} {w}`: no such flag" for w in words
            if w.startswith("--") and w.split("=")[0] not in flags]


@pytest.mark.skipif(not Path(HF).exists(), reason="huggingface_hub's hf CLI is not installed")
def test_hf_commands_exist():
    problems = [f"{where}: {p}" for path in DOCS for words, where in _commands(path, "hf")
                for p in check_hf_command(words)]
    assert not problems, "\n".join(problems)
    assert check_hf_command(["download", "org/x", "--repo-type", "dataset", "--local-dir", "x"]) == []
    assert check_hf_command(["download", "org/x", "--local-folder", "x"]) == \
        ["`hf download --local-folder`: no such flag"]
    assert check_hf_command(["upload-everything", "x"]) == ["`hf upload-everything`: no such command"]


def _named_paths(path: Path):
    prose = _prose(path)
    for span in SPAN.findall(prose):
        for word in span.split():
            word = word.strip(",;:()")
            if word.startswith(REPO_TOP) or word in REPO_FILES:
                yield word, (ROOT / word)
            elif re.fullmatch(r"finephrase(\.[a-z_]+)+", word) and not word.endswith(FILE_SUFFIXES):
                yield word, None
    for target in LINK.findall(prose):
        if not re.match(r"[a-z]+:", target):
            yield target, (path.parent / target)


def check_path(word: str, where: Path | None) -> bool:
    if where is None:  # a dotted name: a module, or an attribute of one
        parts = word.split(".")
        for i in range(len(parts), 0, -1):
            name = ".".join(parts[:i])
            try:
                found = importlib.util.find_spec(name) is not None
            except ModuleNotFoundError:  # a parent is a module, not a package
                found = False
            if found:
                obj = importlib.import_module(name)
                try:
                    for attr in parts[i:]:
                        obj = getattr(obj, attr)
                except AttributeError:
                    return False
                return True
        return False
    # placeholders (<set>, {a,b}, *): the part before the first one must exist
    literal = re.split(r"[<{*]", str(where))[0]
    return Path(literal).exists() if literal != str(where) else where.exists()


def test_named_paths_exist():
    missing = [f"{path.relative_to(ROOT)}: `{word}`" for path in DOCS for word, where in _named_paths(path)
               if not check_path(word, where)]
    assert not missing, "named but missing:\n" + "\n".join(missing)


def test_a_missing_path_fails():
    assert check_path("shared/ENVIRONMENT.md", ROOT / "shared/ENVIRONMENT.md") is False
    assert check_path("finephrase/inference/engine_choice.py", ROOT / "finephrase/inference/engine_choice.py") is False
    assert check_path("finephrase.inference.servers.engine_choice", None) is True
    assert check_path("finephrase.inference.nothing", None) is False
    assert check_path("prompts/<set>/<name>.yaml", ROOT / "prompts/<set>/<name>.yaml") is True


def test_make_targets_exist():
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M))
    named = {(words[0], where) for path in DOCS for words, where in _commands(path, "make") if words}
    assert named, "the docs name no make target (the two commands belong at the top of the README)"
    missing = [f"{where}: `make {target}`" for target, where in sorted(named) if target not in targets]
    assert not missing, "no such make target:\n" + "\n".join(missing)
