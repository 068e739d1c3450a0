"""Shared fixtures: the demo data, recipes derived from pipelines/demo.yaml, CLI runner."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DEMO_RECIPE = ROOT / "pipelines" / "demo.yaml"
DEMO_DATA = ROOT / "data" / "demo"
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        elif v is None and k in out:
            del out[k]
        else:
            out[k] = v
    return out


@pytest.fixture(scope="session")
def demo_data() -> Path:
    """The demo corpus and quality model (built by `finephrase demo-data` if missing)."""
    if not (DEMO_DATA / "info.json").exists():
        from finephrase.demo_data import build_demo_data

        build_demo_data(str(DEMO_DATA))
    return DEMO_DATA


def write_recipe(path: Path, overrides: dict | None = None, base: Path = DEMO_RECIPE) -> Path:
    """A recipe derived from `base` with `overrides` merged in (None deletes a key); absolute data paths."""
    data = yaml.safe_load(base.read_text())
    data = _merge(data, overrides or {})
    src = data.get("source", {})
    if src.get("path") and not os.path.isabs(src["path"]):
        src["path"] = str(ROOT / src["path"])
    q = (data.get("filters") or {}).get("quality")
    if q and not os.path.isabs(q["model"]):
        q["model"] = str(ROOT / q["model"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def make_recipe(tmp_path):
    def make(overrides: dict | None = None, name: str = "recipe.yaml", base: Path = DEMO_RECIPE) -> Path:
        return write_recipe(tmp_path / name, overrides, base)

    return make


def run_cli(*args: str, timeout: float = 900, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "finephrase.cli", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


# a fast generation setting for tests that run the real embedded model
FAST_GENERATOR = {"params": {"max_new_tokens": 48, "temperature": 0.0, "seed": 0}, "context_length": 768}
