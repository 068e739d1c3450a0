"""The embedded generator on vLLM's CPU build, and how ``engine: auto`` decides on this machine.

Without a server: the decision from given calibration figures, the calibration's cache keys, the dtype paths (a CPU
that does not execute bf16 gets float32 and says why), the run size, the conversion cache's keys, the process group.
Then one vLLM server for the tests that only need a server (the session fixture ``vllm_servers``: its dtype and
cores, the calibration's driver, a SIGKILLed API server taking its engine core with it and restarted), and one real
recipe run that starts vLLM itself (``finephrase setup-embedded --engine vllm``, which `make test` runs), chosen by
``engine: auto`` on given calibration figures: every document rephrased exactly once, the rows, the provenance and
the card naming the engine, its version, the decision and its figures, its dtype and cores and why. vLLM takes ~2.5 minutes to start on 2 cores: two starts in all.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import ROOT, TITLE_PROMPT, first_demo_docs, is_alive, process_tree

from finephrase.inference.servers.calibration import (Calibration, EngineCost, cache_file, cached, cpu_identity, machine_key,
                                              model_thread_choices, payloads, save)
from finephrase.inference.servers.cpu_dtype import PROBES, DtypeChoice, choose_dtype, machine_dtype, probe
from finephrase.inference.servers.gguf_convert import MARKER, cached_conversion, converted_folder
from finephrase.inference.servers.vllm_engine import VllmServers
from finephrase.inference.servers.engine_choice import break_even_tokens, choose_embedded, choose_engine, expected_tokens
from finephrase.recipe import load_recipe
from finephrase.run_size import expected_requests
from finephrase.inference.servers.vllm_setup import SETUP_COMMAND, vllm_python, vllm_version

KEY = {"cpu": "AMD EPYC", "flags_sha256": "0" * 16, "cores": 2, "llama_cpp_python": "0.3.36", "vllm": "0.32.0",
       "dtype": "bfloat16"}


def _calibration(llama: tuple, vllm: dict, key: dict = KEY) -> Calibration:
    return Calibration(key=key, llama=EngineCost(*llama), vllm={t: EngineCost(*c) for t, c in vllm.items()},
                       dtype=key["dtype"], dtype_reason="bfloat16: this CPU executes AVX512-BF16 instructions")


# ---------------------------------------------------------------- without a server


def test_auto_decides_on_this_machines_calibration():
    # an AVX512-BF16 machine (2 cores): vLLM bf16 2.3x llama.cpp with one core for the model, slower on both
    bf16 = _calibration((4, 36.2), {1: (125, 83.9), 2: (131, 61.0)})
    assert bf16.vllm_threads == 1 and bf16.best_vllm == EngineCost(125, 83.9)
    limit = break_even_tokens(bf16.llama, bf16.best_vllm)
    assert 7_500 < limit < 8_000  # (125 - 4) / (1/36.2 - 1/83.9)
    demo = choose_engine("auto", True, 8_300, bf16)
    assert demo.engine == "vllm" and "83.9 tokens/s on 1 core(s)" in demo.reason and "36.2" in demo.reason
    assert f"~{limit:,.0f} completion tokens" in demo.reason
    assert choose_engine("auto", True, limit * 0.9, bf16).engine == "llama.cpp"
    assert choose_engine("auto", True, None, bf16).engine == "vllm"  # open-ended: `finephrase serve`, a Hub source
    # an AVX2-only machine: vLLM float32 no faster than llama.cpp, whatever the run's size
    avx2 = _calibration((4, 23.0), {1: (167, 22.0)}, {**KEY, "dtype": "float32"})
    assert break_even_tokens(avx2.llama, avx2.best_vllm) == float("inf")
    slow = choose_engine("auto", True, 1e9, avx2)
    assert slow.engine == "llama.cpp" and "no faster" in slow.reason and "22.0 tokens/s" in slow.reason
    failed = choose_engine("auto", True, 1e9, "vLLM server 0 exited with code 1")
    assert failed.engine == "llama.cpp" and "could not be calibrated here (vLLM server 0 exited" in failed.reason
    not_set_up = choose_engine("auto", False, 1e9)
    assert not_set_up.engine == "llama.cpp" and "setup-embedded --engine vllm" in not_set_up.reason
    assert choose_engine("llama.cpp", True, 1e9, bf16).engine == "llama.cpp"
    assert choose_engine("vllm", False, 10).engine == "vllm"  # asked for: it fails later, with the set-up command
    assert expected_tokens(60, 320) == 60 * 320 * 0.5 and expected_tokens(None, 320) is None
    with pytest.raises(ValueError, match="use auto, llama.cpp or vllm"):
        choose_engine("tgi", True, 1)


def test_auto_on_this_machine_reads_its_cached_calibration(tmp_path, monkeypatch):
    monkeypatch.setenv("FINEPHRASE_CALIBRATION_DIR", str(tmp_path))
    python = vllm_python()
    assert python is not None, f"vLLM's CPU build is not set up: run `{SETUP_COMMAND}` (`make test` does)"

    def must_not_measure(*args, **kwargs):
        raise AssertionError("a cached calibration is measured again")

    here = machine_key(vllm_version(python), machine_dtype().dtype)
    save(_calibration((4, 36.2), {1: (125, 83.9), 2: (131, 61.0)}, here))
    choice = choose_embedded("auto", 8_300, must_not_measure)
    assert choice.engine == "vllm" and "83.9 tokens/s on 1 core(s)" in choice.reason
    assert choose_embedded("auto", 1_000, must_not_measure).engine == "llama.cpp"
    # vLLM's own interpreter gone wrong: auto stays on llama.cpp and says why, in one line
    monkeypatch.setenv("FINEPHRASE_VLLM_PYTHON", str(tmp_path / "no-python"))
    broken = choose_embedded("auto", 8_300, must_not_measure)
    assert broken.engine == "llama.cpp" and "could not be calibrated here" in broken.reason


def test_a_calibration_is_cached_per_cpu_flags_cores_and_engine_versions(tmp_path, monkeypatch):
    monkeypatch.setenv("FINEPHRASE_CALIBRATION_DIR", str(tmp_path))
    figures = _calibration((4, 36.2), {1: (125, 83.9), 2: (131, 61.0)})
    path = save(figures)
    assert path == cache_file(KEY) and path.parent == tmp_path
    again = cached(KEY)
    assert again is not None and again.to_json() == figures.to_json() and again.vllm_threads == 1
    for changed in ({"vllm": "0.33.0"}, {"llama_cpp_python": "0.3.37"}, {"dtype": "float32"}, {"cores": 4},
                    {"flags_sha256": "1" * 16}, {"cpu": "Intel Xeon"}):
        assert cached({**KEY, **changed}) is None, changed
    path.write_text("{")  # a torn file is no calibration
    assert cached(KEY) is None
    model, flags = cpu_identity("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: sse avx512f avx\n\n"
                                "processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: sse avx512f avx\n")
    assert (model, flags) == ("AMD EPYC", "avx avx512f sse")
    key = machine_key("0.32.0", "float32", llama_version="0.3.36")
    assert key["cores"] == os.cpu_count() and key["vllm"] == "0.32.0" and key["dtype"] == "float32"
    assert model_thread_choices(2) == [2, 1] and model_thread_choices(16) == [16, 15] and model_thread_choices(1) == [1]
    batch = payloads(3, 16)  # Python's own documentation: the calibration needs no data set
    assert len(batch) == 3 and batch[0]["max_tokens"] == 16 and len(batch[0]["messages"][-1]["content"]) > 600


def test_the_dtype_is_what_the_cpu_executes(tmp_path):
    # an instruction no CPU executes (ud2): the probe's child dies of SIGILL, this process goes on; float32, and why
    assert probe("0f0bc3") == (False, "SIGILL")
    none = choose_dtype({"UD2": ("0f0bc3", False)})
    assert none.dtype == "float32" and "does not execute bf16" in none.reason and "UD2: SIGILL" in none.reason
    assert choose_dtype({"RET": ("c3", False)}) == DtypeChoice("bfloat16", "bfloat16: this CPU executes RET "
                                                                           "instructions")
    arm = choose_dtype(machine="aarch64")
    assert arm.dtype == "float32" and "x86-64 only" in arm.reason
    # this machine: bf16 exactly when one of the real probes runs here
    here = machine_dtype()
    runs = [name for name, (code, amx) in PROBES.items() if probe(code, amx)[0]]
    assert (here.dtype == "bfloat16") == bool(runs), (here, runs)
    # a CPU without bf16: vLLM is started with --dtype float32 and the report and the card get the reason
    servers = VllmServers(gguf=str(tmp_path / "m.gguf"), dtype=none)
    servers.python, servers.model_dir = sys.executable, str(tmp_path)
    command = servers.command(8000)
    assert command[command.index("--dtype") + 1] == "float32"
    assert servers.facts["dtype"] == none.reason


def test_the_run_size_comes_from_the_limit_or_the_source(tmp_path, make_recipe):
    src = tmp_path / "src"
    src.mkdir()
    with gzip.open(src / "a.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"id": str(i), "text": "x"}) + "\n" for i in range(30))
    (src / "b.jsonl").write_text("".join(json.dumps({"id": f"b{i}", "text": "y"}) + "\n" for i in range(12)))
    recipe = load_recipe(make_recipe({"source": {"path": str(src)}, "run": {"limit": -1, "tasks": 1}}))
    assert expected_requests(recipe) == 42 * len(recipe.prompts)
    assert expected_requests(recipe, limit=5, tasks=2) == 10 * len(recipe.prompts)
    import pyarrow as pa

    pq.write_table(pa.table({"id": ["p1", "p2"], "text": ["u", "v"]}), tmp_path / "one.parquet")
    recipe = load_recipe(make_recipe({"source": {"kind": "parquet", "path": str(tmp_path / "one.parquet")},
                                      "run": {"limit": -1}}, name="parquet.yaml"))
    assert expected_requests(recipe) == 2 * len(recipe.prompts)


def test_a_conversion_is_keyed_by_the_gguf_bytes_and_used_only_once_finished(tmp_path, monkeypatch):
    monkeypatch.setenv("FINEPHRASE_MODELS_DIR", str(tmp_path / "models"))
    gguf = str(tmp_path / "m.gguf")
    a, b = converted_folder(gguf, "a" * 64), converted_folder(gguf, "b" * 64)
    assert a != b and a.name.startswith("m-") and a.parent == tmp_path / "models"
    a.mkdir(parents=True)
    (a / "config.json").write_text("{}")  # an interrupted conversion: no marker
    assert cached_conversion(gguf, "a" * 64) is None
    (a / MARKER).write_text("{}")
    assert cached_conversion(gguf, "a" * 64) == a


def test_vllm_not_set_up_is_a_one_line_error(tmp_path, make_recipe, monkeypatch):
    env = {**os.environ, "FINEPHRASE_ENGINES_DIR": str(tmp_path / "none"), "FINEPHRASE_VLLM_PYTHON": ""}
    if vllm_python(env) is not None:  # this interpreter imports vllm itself: nothing to check here
        return
    recipe = make_recipe({"generator": {"engine": "vllm"}, "run": {"limit": 2}})
    proc = subprocess.run([sys.executable, "-m", "finephrase.cli.main", "run", str(recipe), "--output",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    console = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "Traceback" not in console, console[-3000:]
    assert SETUP_COMMAND in console, console[-3000:]


LEADER = [sys.executable, "-m", "finephrase.inference.servers.group_leader", "--"]
RUN_STANDIN = r"""
import subprocess, sys, time
from finephrase.lifetime import preexec_die_with_parent
p = subprocess.Popen(sys.argv[1:], start_new_session=True, preexec_fn=preexec_die_with_parent())
print(p.pid, flush=True)
time.sleep(300)
"""


def _group(pgid: int, timeout: float = 10) -> list[int]:
    """Live (not zombie) processes of process group ``pgid``, once at least 3 are up or ``timeout`` passed."""
    deadline = time.time() + timeout
    while True:
        live = []
        for name in filter(str.isdigit, os.listdir("/proc")):
            try:
                fields = open(f"/proc/{name}/stat").read().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] not in "ZX":
                live.append(int(name))
        if len(live) >= 3 or time.time() > deadline:
            return live


def test_a_server_group_goes_with_its_run_however_it_dies():
    """A server with a grandchild (vLLM: API server -> engine core -> worker), under the group leader."""
    server = ["sh", "-c", "sleep 300 & sleep 300; exit 3"]
    # 1. the run (a stand-in holding the leader with the run's parent-death signal) is SIGKILLed
    run = subprocess.Popen([sys.executable, "-c", RUN_STANDIN, *LEADER, *server], cwd=ROOT, stdout=subprocess.PIPE,
                           text=True)
    leader = int(run.stdout.readline())
    assert len(_group(leader)) >= 3
    run.kill()
    run.wait()
    deadline = time.time() + 15
    while _group(leader, timeout=0) and time.time() < deadline:
        time.sleep(0.2)
    assert _group(leader, timeout=0) == [], "the server's processes outlived the run"
    # 2. stopped (SIGTERM): the server is terminated, the group emptied, the server's own end reported
    proc = subprocess.Popen([*LEADER, *server], cwd=ROOT, start_new_session=True)
    assert len(_group(proc.pid)) >= 3
    proc.terminate()
    assert proc.wait(timeout=30) == -signal.SIGTERM
    assert _group(proc.pid, timeout=0) == []
    # 3. the server exits by itself: its exit code is the leader's
    assert subprocess.run([*LEADER, "sh", "-c", "exit 3"], cwd=ROOT, timeout=60).returncode == 3
    # 4. the server is killed (SIGKILL, which no handler can take): the leader ends killed the same way
    assert subprocess.run([*LEADER, "sh", "-c", "kill -9 $$"], cwd=ROOT, timeout=60).returncode == -signal.SIGKILL


# ---------------------------------------------------------------- one vLLM server (the session's)


@pytest.mark.slow
def test_the_vllm_server_runs_in_the_dtype_and_on_the_cores_chosen_here(vllm_servers):
    from finephrase.inference.servers.calibration import drive

    dtype = machine_dtype()
    assert vllm_servers.facts["dtype"] == dtype.reason and vllm_servers.facts["threads_choice"]
    log = Path(vllm_servers.log_dir, "vllm_server_0.log").read_text()
    assert f"dtype=torch.{dtype.dtype}" in log, log[-3000:]  # vLLM's own account of the engine it built
    replica = vllm_servers.pool[0]
    bound = vllm_servers.process_env(replica)["VLLM_CPU_OMP_THREADS_BIND"]
    assert len(bound.split(",")) == vllm_servers.threads
    # the calibration's driver on a real vLLM: completion tokens are the server's own usage counts
    wall, tokens = __import__("asyncio").run(drive(vllm_servers.endpoints, vllm_servers.alias, payloads(4, 16), 4))
    assert 4 <= tokens <= 4 * 16 and wall > 0


def test_long_seeded_requests_in_one_batch_are_answered(vllm_servers):
    """Recipes send a seed (the demo's generator.params.seed: 0): seeded requests whose prompts are long enough to be
    prefilled over several steps killed vLLM's CPU engine core ("CPU Generator does not use offset") until the
    server ran without chunked prefill."""
    import concurrent.futures
    import json
    import urllib.request

    long_text = " ".join(["The history of the Python programming language is long and varied."] * 120)

    def ask(i: int) -> dict:
        body = {"model": vllm_servers.alias, "messages": [{"role": "user", "content": f"{i} {long_text}"}],
                "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "seed": 0}
        req = urllib.request.Request(f"{vllm_servers.endpoints[0]}/v1/chat/completions",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=300) as r:
            return json.loads(r.read())

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(6)))
    assert all(a["choices"][0]["message"]["content"] for a in answers)
    assert all(a["usage"]["prompt_tokens"] > 1000 for a in answers)  # long enough to need several prefill chunks


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])


@pytest.mark.slow
def test_a_killed_vllm_server_takes_its_engine_core_with_it_and_is_restarted(vllm_servers):
    """The last test on the session's server: SIGKILL its API server (not the group); the engine core goes with it
    and the supervisor starts a new server. That requests wait for a restarted replica is the supervisor's, the
    same for both engines (the llama.cpp kill test runs a recipe through one)."""
    replica = vllm_servers.pool[0]
    leader = replica.proc.pid
    group = process_tree(leader)
    assert len(group) >= 3, "a vLLM server (under its group leader) runs an API server and an engine core"
    (api_server,) = [p for p in group if p != leader and _parent(p) == leader]  # the leader's one child
    os.kill(api_server, signal.SIGKILL)
    deadline = time.time() + 30
    while time.time() < deadline and ([p for p in group if is_alive(p)] or replica.proc.pid == leader):
        time.sleep(0.2)
    assert [p for p in group if is_alive(p)] == [], "processes of the killed server outlived it"
    assert replica.proc.pid != leader and replica.proc.poll() is None, "the supervisor did not start a new server"
    state = json.loads(Path(vllm_servers.state_file).read_text())["replicas"][0]
    assert state["exits"] == ["signal SIGKILL (9)"] and state["restarts"] == 1 and state["pid"] == replica.proc.pid
    vllm_servers.stop()  # the new server would take ~2.5 minutes of the suite's two cores to start
    assert not is_alive(replica.proc.pid)


# ---------------------------------------------------------------- a real recipe run on vLLM


def _rows(out: Path, config: str) -> list[dict]:
    return pq.read_table(out / "data" / config).to_pylist()


@pytest.mark.slow
def test_a_recipe_runs_on_vllm_it_starts_itself(tmp_path, demo_data, make_recipe, monkeypatch):
    """``engine: auto`` on given calibration figures for this machine (measuring them takes ~6 minutes) under
    which this small run pays vLLM's start-up: the decision and its figures reach the report and the card."""
    python = vllm_python()
    assert python is not None, f"vLLM's CPU build is not set up: run `{SETUP_COMMAND}` (`make test` does)"
    monkeypatch.setenv("FINEPHRASE_CALIBRATION_DIR", str(tmp_path / "calibration"))  # the run inherits it
    key = machine_key(vllm_version(python), machine_dtype().dtype)
    save(_calibration((4, 10.0), {1: (30, 1000.0), 2: (30, 500.0)}, key))  # break-even ~263 tokens
    docs = [d for d in first_demo_docs(demo_data, 40) if len(d["text"]) > 400][:8]
    (tmp_path / "src").mkdir()
    with open(tmp_path / "src" / "docs.jsonl", "w") as f:
        f.writelines(json.dumps({"id": d["id"], "text": d["text"][:1200]}) + "\n" for d in docs)
    (tmp_path / "title.yaml").write_text(TITLE_PROMPT)
    recipe = make_recipe({
        "source": {"path": str(tmp_path / "src")}, "dedup": None, "mix": None, "output_checks": "flag",
        "filters": {"quality": None, "language": None, "min_chars": 1},
        "prompts": ["finephrase/faq", str(tmp_path / "title.yaml")],
        "generator": {"engine": "auto", "n_ctx": 2048, "context_length": 1024,
                      "params": {"max_new_tokens": 48, "temperature": 0.0, "seed": 0}},
        "output": {"records_per_chunk": 2}, "run": {"limit": -1, "tasks": 1},
    })
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "finephrase.cli.main", "run", str(recipe), "--output", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    ids = sorted(d["id"] for d in docs)
    version = vllm_version(python)
    for config in ("faq", "title"):
        rows = _rows(out, config)
        assert sorted(r["source_id"] for r in rows) == ids, f"{config}: every document exactly once"
        assert all(r["text"].strip() and r["completion_tokens"] > 0 for r in rows)
        assert {r["model"] for r in rows} == {"SmolLM2-135M-Instruct"}
    gen = json.loads((out / ".finephrase" / "report.json").read_text())["generator"]
    assert gen["engine"] == "vLLM" and gen["engine_version"] == version and gen["replicas"] == 1, gen
    assert gen["concurrency"] == 16
    # 8 documents x 2 prompts x half of 48 new tokens, against the break-even of the given figures
    assert gen["engine_choice"].startswith("auto: ~384 completion tokens expected (measured here"), gen
    assert "1000.0 tokens/s on 1 core(s)" in gen["engine_choice"] and "pays off above ~263" in gen["engine_choice"]
    dtype = machine_dtype()
    assert gen["dtype"] == dtype.reason and gen["threads"] == 1, gen  # what it ran in, and why
    assert gen["threads_choice"].startswith(f"1 of {os.cpu_count()} cores: the fastest in this machine's "
                                            "calibration"), gen
    log = (out / ".finephrase" / "logs" / "server" / "vllm_server_0.log").read_text()
    assert f"dtype=torch.{dtype.dtype}" in log
    card = (out / "README.md").read_text()
    assert "vLLM" in card and version in card and dtype.reason in card and "pays off above ~263" in card
