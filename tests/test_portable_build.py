"""The embedded generator's llama.cpp build is portable (issue 11: a native build crashed on a VM).

Unit tests of the CMake flags and the wheel cache key, and checks of the *installed* build:
it is the wheel ``finephrase setup-embedded`` built for this machine's portable flags, and its
shared libraries (``llama_cpp/lib/*.so``, ``libggml-cpu.so`` above all) hold no AMX and no
AVX-512 instruction (``objdump -d``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from finephrase.inference.servers import llama_setup as es

ROOT = Path(__file__).resolve().parent.parent

HASWELL = set("fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt avx avx2 fma f16c bmi1 bmi2 movbe".split())
SANDY_BRIDGE = set("fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt avx".split())  # AVX, no AVX2/FMA/F16C/BMI2
NEHALEM = set("fpu sse sse2 ssse3 sse4_1 sse4_2 popcnt".split())  # no AVX at all
SAPPHIRE_RAPIDS = HASWELL | set("avx512f avx512bw avx512vl avx512_vnni amx_tile amx_int8 amx_bf16".split())

# AMX: tile configuration/loads/stores and the tile dot products; AVX-512: zmm registers, the
# registers only EVEX can encode (xmm16-31, ymm16-31) and the opmask registers k0-k7.
AMX = re.compile(r"\b(ldtilecfg|sttilecfg|tileloadd\w*|tilestored|tilerelease|tilezero|tdpb\w+|tdpfp16ps|tcmmimfp16ps|tcmmrlfp16ps)\b")
AVX512 = re.compile(r"%(zmm\d+|[xy]mm(1[6-9]|2\d|3[01])|k[0-7])\b")


# --- the CMake flags ---------------------------------------------------------------------------

def test_flags_x86_with_avx2_are_ggml_portable_baseline():
    assert es.cmake_flags("x86_64", HASWELL, env={}) == "-DGGML_NATIVE=OFF"


def test_flags_never_enable_avx512_or_amx_even_when_the_cpu_reports_them():
    flags = es.cmake_flags("x86_64", SAPPHIRE_RAPIDS, env={})
    assert flags == "-DGGML_NATIVE=OFF"
    assert "AVX512" not in flags and "AMX" not in flags


def test_flags_x86_without_avx2_turn_the_missing_baseline_off():
    flags = es.cmake_flags("x86_64", SANDY_BRIDGE, env={}).split()
    assert flags[0] == "-DGGML_NATIVE=OFF"
    assert {"-DGGML_AVX2=OFF", "-DGGML_FMA=OFF", "-DGGML_F16C=OFF", "-DGGML_BMI2=OFF"} <= set(flags)
    assert "-DGGML_AVX=OFF" not in flags and "-DGGML_SSE42=OFF" not in flags


def test_flags_x86_without_avx():
    flags = set(es.cmake_flags("x86_64", NEHALEM, env={}).split())
    assert {"-DGGML_AVX=OFF", "-DGGML_AVX2=OFF", "-DGGML_FMA=OFF", "-DGGML_F16C=OFF"} <= flags
    assert "-DGGML_SSE42=OFF" not in flags


def test_flags_x86_unknown_cpu_keeps_ggml_baseline():
    assert es.cmake_flags("x86_64", set(), env={}) == "-DGGML_NATIVE=OFF"


@pytest.mark.parametrize("machine", ["aarch64", "arm64", "ppc64le"])
def test_flags_non_x86_native_off_alone(machine):
    assert es.cmake_flags(machine, NEHALEM, env={}) == "-DGGML_NATIVE=OFF"


def test_flags_override_env():
    env = {es.CMAKE_ARGS_ENV: "  -DGGML_NATIVE=ON   -DGGML_LTO=ON "}
    assert es.cmake_flags("x86_64", SANDY_BRIDGE, env=env) == "-DGGML_NATIVE=ON -DGGML_LTO=ON"
    assert es.cmake_flags("x86_64", HASWELL, env={es.CMAKE_ARGS_ENV: "  "}) == "-DGGML_NATIVE=OFF"


def test_flags_ignore_plain_cmake_args():
    assert es.cmake_flags("x86_64", HASWELL, env={"CMAKE_ARGS": "-DGGML_NATIVE=ON"}) == "-DGGML_NATIVE=OFF"


def test_cpu_flags_parsing(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: X\nflags\t\t: fpu sse4_2 avx avx2 amx_tile\n\nprocessor\t: 1\n"
                    "flags\t\t: fpu\n")
    assert es.cpu_flags(info) == {"fpu", "sse4_2", "avx", "avx2", "amx_tile"}
    assert es.cpu_flags(tmp_path / "missing") is None
    (tmp_path / "noflags").write_text("Features\t: fp asimd\n")  # aarch64's /proc/cpuinfo
    assert es.cpu_flags(tmp_path / "noflags") is None


# --- the wheel cache key -----------------------------------------------------------------------

def test_cache_dir_differs_by_flags_version_and_machine(tmp_path):
    env = {es.WHEEL_CACHE_ENV: str(tmp_path)}
    portable = es.wheel_cache_dir("-DGGML_NATIVE=OFF", "0.3.36", "x86_64", env=env)
    assert portable.parent == tmp_path
    assert portable.name.startswith("llama-cpp-python-0.3.36-")
    assert es.wheel_cache_dir("-DGGML_NATIVE=ON", "0.3.36", "x86_64", env=env) != portable
    assert es.wheel_cache_dir("-DGGML_NATIVE=OFF -DGGML_AVX2=OFF", "0.3.36", "x86_64", env=env) != portable
    assert es.wheel_cache_dir("-DGGML_NATIVE=OFF", "0.3.35", "x86_64", env=env) != portable
    assert es.wheel_cache_dir("-DGGML_NATIVE=OFF", "0.3.36", "aarch64", env=env) != portable
    # the same flags spelled with other whitespace are the same build
    assert es.wheel_cache_dir("  -DGGML_NATIVE=OFF ", "0.3.36", "x86_64", env=env) == portable


def test_cache_root_default_and_override(tmp_path):
    assert es.cache_root({"XDG_CACHE_HOME": str(tmp_path)}) == tmp_path / "finephrase" / "wheels"
    assert es.cache_root({es.WHEEL_CACHE_ENV: str(tmp_path / "w"), "XDG_CACHE_HOME": "/x"}) == tmp_path / "w"


def test_build_wheel_builds_with_the_flags_and_reuses_only_its_own_folder(tmp_path, monkeypatch):
    env = {**os.environ, es.WHEEL_CACHE_ENV: str(tmp_path), "CMAKE_ARGS": "-DGGML_NATIVE=ON"}
    calls = []

    def fake_run(cmd, log, env=None, hint=""):
        calls.append((cmd, dict(env or {})))
        out = Path(cmd[cmd.index("-w") + 1])
        (out / f"llama_cpp_python-{es.LLAMA_CPP_VERSION}-py3-none-linux_x86_64.whl").write_bytes(b"wheel")

    monkeypatch.setattr(es, "_run", fake_run)
    wheel, built = es.build_wheel("-DGGML_NATIVE=OFF", env=env, log=lambda _: None)
    assert built and wheel.is_file()
    cmd, build_env = calls[0]
    assert cmd[:3] == [sys.executable, "-m", "pip"] and cmd[3] == "wheel"
    assert {"--no-deps", "--no-cache-dir"} <= set(cmd)
    assert cmd[cmd.index("--no-binary") + 1] == "llama-cpp-python"
    assert cmd[-1] == f"llama-cpp-python=={es.LLAMA_CPP_VERSION}"
    assert build_env["CMAKE_ARGS"] == "-DGGML_NATIVE=OFF"  # not the caller's CMAKE_ARGS
    assert wheel.parent == es.wheel_cache_dir("-DGGML_NATIVE=OFF", env=env)
    info = json.loads((wheel.parent / es.BUILD_INFO).read_text())
    assert info["cmake_args"] == "-DGGML_NATIVE=OFF" and info["version"] == es.LLAMA_CPP_VERSION
    assert [p.name for p in tmp_path.iterdir()] == [wheel.parent.name]  # no temporary folder left

    # same flags: reused, nothing built; other flags: a build of their own
    assert es.build_wheel("-DGGML_NATIVE=OFF", env=env, log=lambda _: None) == (wheel, False)
    assert len(calls) == 1
    native, built = es.build_wheel("-DGGML_NATIVE=ON", env=env, log=lambda _: None)
    assert built and native.parent != wheel.parent and len(calls) == 2


def test_install_replaces_another_build_of_the_same_version(tmp_path, monkeypatch):
    wheel = tmp_path / f"llama_cpp_python-{es.LLAMA_CPP_VERSION}-py3-none-linux_x86_64.whl"
    wheel.write_bytes(b"portable")
    installed = {"url": "file:///root/.cache/pip/wheels/ab/cd/llama_cpp_python-0.3.36-native.whl"}
    calls = []

    def fake_run(cmd, log, env=None, hint=""):
        calls.append(cmd[3:])
        if "--force-reinstall" in cmd:
            installed["url"] = wheel.as_uri()
            installed["archive_info"] = {"hashes": {"sha256": es.file_sha256(wheel)}}

    monkeypatch.setattr(es, "_run", fake_run)
    monkeypatch.setattr(es, "installed_direct_url", lambda package=es.LLAMA_CPP_PACKAGE: dict(installed))
    assert es.install_wheel(wheel, log=lambda _: None)
    assert calls == [["install", "-q", f"{wheel}[server]"],
                     ["install", "-q", "--force-reinstall", "--no-deps", str(wheel)]]
    assert not es.install_wheel(wheel, log=lambda _: None) and len(calls) == 2  # already this very wheel
    wheel.write_bytes(b"rebuilt")  # same path, other content: installed again
    assert es.install_wheel(wheel, log=lambda _: None) and len(calls) == 4


def test_half_finished_build_is_not_reused(tmp_path):
    folder = tmp_path / "llama-cpp-python-0.3.36-x"
    folder.mkdir()
    (folder / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl").write_bytes(b"")
    assert es.cached_wheel(folder) is None  # no build-info.json: the build did not finish
    (folder / es.BUILD_INFO).write_text("{}")
    assert es.cached_wheel(folder) == folder / "llama_cpp_python-0.3.36-py3-none-linux_x86_64.whl"


def test_pyproject_pins_the_version_setup_builds():
    tomllib = pytest.importorskip("tomllib")
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["embedded"] == [f"llama-cpp-python[server]=={es.LLAMA_CPP_VERSION}"]


def test_cli_has_setup_embedded():
    from finephrase.cli.main import build_parser

    args = build_parser().parse_args(["setup-embedded", "--cmake-args=-DGGML_NATIVE=ON", "--no-models"])
    assert args.cmake_args == "-DGGML_NATIVE=ON" and args.no_models and not args.rebuild


# --- the installed build -----------------------------------------------------------------------

def _installed_libraries() -> list[Path]:
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (finephrase setup-embedded)")
    libs = es.shared_libraries()
    assert libs, "llama_cpp is installed but llama_cpp/lib holds no shared library"
    return libs


def _scan(lib: Path, max_hits: int = 5) -> list[str]:
    """Lines of ``objdump -d`` with an AMX or AVX-512 instruction (streamed; stops after max_hits)."""
    hits = []
    proc = subprocess.Popen(["objdump", "-d", "--no-show-raw-insn", "--no-addresses", str(lib)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1 << 20)
    try:
        for line in proc.stdout:
            if AMX.search(line) or AVX512.search(line):
                hits.append(line.strip())
                if len(hits) >= max_hits:
                    break
    finally:
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    if not hits and proc.returncode not in (0, -9):
        pytest.fail(f"objdump -d {lib} failed with exit code {proc.returncode}")
    return hits


def test_scanner_finds_amx_and_avx512():
    assert AMX.search("\tldtilecfg (%rax)")
    assert AMX.search("\ttdpbssd %tmm2,%tmm1,%tmm0")
    assert AMX.search("\ttileloadd (%rsi,%rdx,1),%tmm1")
    assert AVX512.search("\tvmovups (%rdi),%zmm0")
    assert AVX512.search("\tvpaddd %ymm17,%ymm1,%ymm2")
    assert AVX512.search("\tkmovw %k1,%eax")
    assert not AVX512.search("\tvfmadd231ps %ymm15,%ymm1,%ymm2") and not AVX512.search("\tvmovaps %xmm1,%xmm0")
    assert not AMX.search("\tcall <ggml_backend_amx_mul_mat@plt>")


AMX_AVX512_C = r"""
#include <immintrin.h>
void amx(const void *cfg, const void *a, const void *b, void *c) {
    _tile_loadconfig(cfg); _tile_loadd(1, a, 64); _tile_loadd(2, b, 64);
    _tile_dpbssd(0, 1, 2); _tile_stored(0, c, 64); _tile_release();
}
__m512 add(__m512 x, __m512 y) { return _mm512_add_ps(x, y); }
"""


@pytest.mark.skipif(shutil.which("objdump") is None or shutil.which("gcc") is None, reason="needs gcc and objdump")
def test_scan_sees_amx_and_avx512_in_a_compiled_library(tmp_path):
    """The objdump scan is not vacuous: a library built with -mamx-* -mavx512f is caught."""
    (tmp_path / "amx.c").write_text(AMX_AVX512_C)
    lib = tmp_path / "libamx.so"
    proc = subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-mamx-tile", "-mamx-int8", "-mavx512f",
                           "-o", str(lib), str(tmp_path / "amx.c")], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"gcc cannot build AMX code here: {proc.stderr.strip()[:200]}")
    hits = " ".join(_scan(lib, max_hits=100))
    for insn in ("ldtilecfg", "tileloadd", "tdpbssd", "%zmm"):
        assert insn in hits, hits


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump (binutils) is not installed")
def test_installed_llama_cpp_has_no_amx_or_avx512_instructions():
    if os.environ.get(es.CMAKE_ARGS_ENV, "").strip():
        pytest.skip(f"{es.CMAKE_ARGS_ENV} is set: an expert build, not the portable one")
    libs = _installed_libraries()
    names = [lib.name for lib in libs]
    assert any(n.startswith("libggml-cpu") for n in names), names
    found = {lib.name: hits for lib in libs if (hits := _scan(lib))}
    assert not found, f"non-portable instructions in llama.cpp's libraries: {found}"


def test_installed_llama_cpp_is_the_setup_embedded_build():
    """The wheel came from setup-embedded's cache folder for this machine's portable flags."""
    from importlib import metadata

    _installed_libraries()
    assert metadata.version(es.LLAMA_CPP_PACKAGE) == es.LLAMA_CPP_VERSION
    wheel = es.installed_wheel_path()
    assert wheel is not None, (
        "llama-cpp-python was not installed from a wheel file (a plain `pip install` builds with "
        "-march=native): run `finephrase setup-embedded`")
    info_file = wheel.parent / es.BUILD_INFO
    assert info_file.is_file(), f"{wheel} is not in a finephrase wheel cache folder: run `finephrase setup-embedded`"
    info = json.loads(info_file.read_text())
    flags = es.cmake_flags()
    assert info["cmake_args"] == flags, f"installed build used {info['cmake_args']!r}, set-up computes {flags!r}"
    assert info["version"] == es.LLAMA_CPP_VERSION
    assert wheel.parent.name == es.wheel_cache_dir(flags).name  # the folder is keyed by these flags
    assert es.is_installed(wheel), f"{wheel} changed since it was installed: run `finephrase setup-embedded`"
