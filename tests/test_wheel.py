"""A real wheel: the project is built with ``pip wheel`` (not an editable install), installed in a
fresh virtual environment outside the repository, and run from a folder outside the repository:
``finephrase prompts list``, ``finephrase prompts show`` and a tiny ``finephrase run`` against the
TGI test server on loopback. The published prompt sets (``prompts/``) and the card template
(``cards/``) must come from the wheel's own package data, not from the repository.

The fresh venv gets finephrase from the wheel only (``--no-deps``); its third-party dependencies
are borrowed from the venv running the tests through a ``.pth`` file that adds that venv's
site-packages folder *after* the fresh venv's own. A ``.pth`` line that names a folder only appends
it to ``sys.path`` (the ``.pth`` files inside that folder are not run), so the editable install's
``__editable__`` finder of the test venv never loads there — asserted below.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import tgi_server
from conftest import ROOT, write_recipe
from finephrase.prompts import load_prompt

TEST_SITE_PACKAGES = Path(sysconfig.get_paths()["purelib"])  # the venv running pytest: dependencies only
SOURCE_ITEMS = ["pyproject.toml", "README.md", "finephrase", "prompts", "cards", "launch"]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")

DOCS = [
    "The Python standard library ships a module for reading and writing CSV files. A reader object iterates "
    "over the lines of a file and returns each row as a list of strings, while a writer object turns sequences "
    "into delimited lines. Dialects describe the delimiter, the quoting rules and the line terminator, so files "
    "written by spreadsheets can be read without guessing. The DictReader class maps each row to a dictionary "
    "whose keys come from the first line of the file.",
    "A virtual environment is a directory that holds its own Python interpreter link and its own site-packages "
    "folder. Packages installed there do not affect the system installation or other projects. The venv module "
    "creates such a directory, and activating it puts its scripts folder first on the PATH. Deleting the folder "
    "removes the environment completely, which makes it easy to start again from a clean state when "
    "dependencies conflict.",
    "Generators produce values lazily: a function that contains a yield statement returns a generator object "
    "instead of running to completion. Each call to next resumes the function where it stopped and runs until "
    "the following yield. Because only one value exists at a time, generators can process streams that would "
    "not fit in memory, such as the lines of a very large log file or an endless sequence of numbers.",
]


def _run(cmd: list[str], *, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
                             f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}")
    return proc


def _is_under(path: str | Path, folder: Path) -> bool:
    return Path(path).resolve().is_relative_to(folder.resolve())


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Build the wheel from a copy of the source tree, install it in a fresh venv; yields a dict of paths."""
    tmp = tmp_path_factory.mktemp("wheel")
    assert not _is_under(tmp, ROOT)
    # a copy of what the build reads: the build writes build/ and *.egg-info next to the sources,
    # which must not happen in the shared working tree (and the copy proves nothing else is needed)
    src = tmp / "src"
    src.mkdir()
    for item in SOURCE_ITEMS:
        if (ROOT / item).is_dir():
            shutil.copytree(ROOT / item, src / item, ignore=IGNORE)
        else:
            shutil.copy2(ROOT / item, src / item)
    dist = tmp / "dist"
    # build isolation, as `pip install .` does: pyproject's build-system.requires decide the setuptools
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(src)], cwd=tmp)
    wheels = list(dist.glob("finephrase-*.whl"))
    assert len(wheels) == 1, wheels

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          str(wheels[0])], cwd=tmp)
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     cwd=tmp).stdout.strip())
    assert site.is_dir() and _is_under(site, venv)
    # dependencies from the test venv, after the fresh venv's own site-packages (the .pth is read at start-up)
    (site / "zz_test_venv_dependencies.pth").write_text(f"{TEST_SITE_PACKAGES}\n")

    work = tmp / "work"  # the working directory of every command: outside the repository
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}", COLUMNS="240", HF_HUB_OFFLINE="1",
               PYTHONNOUSERSITE="1")
    yield {"src": src, "wheel": wheels[0], "venv": venv, "python": python, "site": site, "work": work, "env": env,
           "finephrase": venv / "bin" / "finephrase"}


def test_wheel_carries_code_prompts_and_card_template(installed):
    src = installed["src"]
    with zipfile.ZipFile(installed["wheel"]) as zf:
        names = set(zf.namelist())
    expected = {f"finephrase/{p.relative_to(src / 'finephrase').as_posix()}"
                for p in (src / "finephrase").rglob("*.py")}
    expected |= {f"finephrase/_packaged/prompts/{p.relative_to(src / 'prompts').as_posix()}"
                 for p in (src / "prompts").rglob("*") if p.suffix in (".yaml", ".yml", ".md")}
    expected |= {f"finephrase/_packaged/cards/{p.relative_to(src / 'cards').as_posix()}"
                 for p in (src / "cards").rglob("*") if p.is_file()}
    expected |= {f"finephrase/_packaged/launch/{p.relative_to(src / 'launch').as_posix()}"
                 for p in (src / "launch").rglob("*.j2")}
    assert "finephrase/_packaged/launch/servers/tgi.sh.j2" in expected
    assert "finephrase/_packaged/prompts/finephrase/faq.yaml" in expected
    assert "finephrase/_packaged/prompts/_context/kimi_k2_chunk.yaml" in expected
    assert "finephrase/_packaged/cards/dataset_card.md.j2" in expected
    missing = sorted(expected - names)
    assert not missing, f"missing from the wheel: {missing}"
    # nothing but the package and its metadata at the top of the wheel (no stray prompts/, cards/, tests/)
    assert {n.split("/")[0] for n in names} == {"finephrase", installed["wheel"].name.split("-py")[0] + ".dist-info"}


PROBE = """
import json, sys
import finephrase, finephrase.report.card, finephrase.prompts
from finephrase.prompts import load_chunk_context, load_prompt
faq = load_prompt("finephrase/faq")
print(json.dumps({
    "finephrase": finephrase.__file__,
    "prompts_dir": str(finephrase.prompts.PACKAGED_PROMPTS_DIR),
    "card_template": str(finephrase.report.card.CARD_TEMPLATE),
    "faq": str(faq.path), "faq_sha256": faq.sha256,
    "chunk_context": load_chunk_context().name,
    "editable": sorted(m for m in sys.modules if "editable" in m.lower())
                + [repr(f) for f in sys.meta_path if "editable" in repr(f).lower()],
}))
"""


def test_installed_wheel_reads_its_own_package_data(installed):
    site, env, work = installed["site"], installed["env"], installed["work"]
    info = json.loads(_run([str(installed["python"]), "-c", PROBE], cwd=work, env=env).stdout)
    package = site / "finephrase"
    assert not info["editable"], f"the test venv's editable finder leaked in: {info['editable']}"
    assert Path(info["finephrase"]) == package / "__init__.py"
    assert Path(info["prompts_dir"]) == (package / "_packaged" / "prompts").resolve()
    assert Path(info["card_template"]) == (package / "_packaged" / "cards" / "dataset_card.md.j2").resolve()
    assert Path(info["card_template"]).is_file()
    assert Path(info["faq"]) == (package / "_packaged" / "prompts" / "finephrase" / "faq.yaml").resolve()
    for key in ("finephrase", "prompts_dir", "card_template", "faq"):
        assert not _is_under(info[key], ROOT), f"{key} read from the repository: {info[key]}"
    assert info["faq_sha256"] == load_prompt("finephrase/faq").sha256  # the same bytes as prompts/finephrase/faq.yaml
    assert info["chunk_context"] == "kimi_k2_chunk"  # prompts/_context/ shipped too


def test_installed_cli_lists_and_shows_prompts(installed):
    exe, env, work = str(installed["finephrase"]), installed["env"], installed["work"]
    # the console script is the wheel's, bound to the fresh venv's interpreter (checked above)
    assert Path(exe).read_text().splitlines()[0] == f"#!{installed['python']}"
    listing = _run([exe, "prompts", "list"], cwd=work, env=env).stdout
    published = sorted(f"{p.parent.name}/{p.stem}" for p in (ROOT / "prompts").glob("*/*.yaml")
                       if not p.parent.name.startswith("_"))
    assert len(published) >= 20
    for ref in published:
        assert ref in listing, f"{ref} missing from `finephrase prompts list`:\n{listing}"
    shown = _run([exe, "prompts", "show", "finephrase/faq"], cwd=work, env=env).stdout
    assert "prompt:       finephrase/faq" in shown
    assert f"sha256:       {load_prompt('finephrase/faq').sha256}" in shown
    assert "--- template" in shown


def test_installed_cli_runs_a_recipe_against_tgi(installed, tmp_path):
    exe, env, work = str(installed["finephrase"]), installed["env"], installed["work"]
    docs = work / "docs.jsonl"
    docs.write_text("".join(json.dumps({"id": f"doc-{i}", "text": t}) + "\n" for i, t in enumerate(DOCS)))
    proc, url = tgi_server.start(log_path=str(tmp_path / "tgi.log"), max_input_tokens=512, max_total_tokens=768)
    try:
        out = work / "out"
        recipe = write_recipe(work / "recipe.yaml", {
            "name": "wheel-smoke",
            "source": {"kind": "jsonl", "path": str(docs), "name": "three test paragraphs", "license": "CC0-1.0"},
            "filters": {"quality": None, "language": None, "min_chars": 200},
            "dedup": None,
            "mix": None,
            "prompts": ["finephrase/faq"],
            "output_checks": "flag",
            "generator": {"server": "tgi", "api": "generate", "endpoints": [url],
                          "tokenizer": tgi_server.default_gguf(), "model": None, "replicas": None, "threads": None,
                          "n_ctx": None, "context_length": None,
                          "params": {"max_new_tokens": 16, "temperature": 0.0, "seed": 0, "top_p": None},
                          "concurrency": 2},
            "output": {"folder": str(out)},
            "run": {"limit": None},
        })
        _run([exe, "run", recipe.name], cwd=work, env=env, timeout=300)
    finally:
        proc.kill()
        proc.wait()
    rows = pq.read_table(out / "data" / "faq").to_pylist()
    assert sorted(r["source_id"] for r in rows) == [f"doc-{i}" for i in range(len(DOCS))]
    faq = load_prompt("finephrase/faq")
    for r in rows:
        assert r["text"].strip()
        assert r["prompt"] == "faq" and r["prompt_sha256"] == faq.sha256
        assert 0 < r["completion_tokens"] <= 16
    card = (out / "README.md").read_text()
    assert "finephrase/faq" in card and faq.sha256[:12] in card  # rendered from the wheel's card template
