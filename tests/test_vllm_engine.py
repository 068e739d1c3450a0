"""The embedded generator on vLLM's CPU build (issue "A faster embedded default: continuous batching on CPU").

The engine choice, the run size it weighs and the conversion cache's keys are checked without a server. Then one
real run: vLLM's CPU build (``finephrase setup-embedded --engine vllm``, which `make test` runs) serves a recipe
end to end on its default single replica, which is SIGKILLed mid-run (its engine-core child with it): the supervisor
restarts it, the requests wait for it (the run does not fail), every document is rephrased exactly once, and the rows, the provenance and the card name the engine and its
version. vLLM takes ~2.5 minutes to start on 2 cores: one run covers all of it.
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
from conftest import ROOT, TITLE_PROMPT, first_demo_docs, is_alive, process_tree, replica_once_rephrasing

from finephrase.inference.servers.engine_choice import break_even_tokens, choose_engine, expected_tokens
from finephrase.inference.servers.gguf_convert import MARKER, cached_conversion, converted_folder
from finephrase.recipe import load_recipe
from finephrase.run_size import expected_requests
from finephrase.inference.servers.vllm_setup import SETUP_COMMAND, vllm_python, vllm_version


# ---------------------------------------------------------------- without a server


def test_auto_takes_vllm_only_when_it_is_set_up_and_the_run_pays_its_start_up():
    from finephrase.inference.servers.engine_choice import EngineCost

    measured = choose_engine("auto", True, 1e9)  # the benchmark's figures: vLLM no faster here
    assert measured.engine == "llama.cpp" and "no faster" in measured.reason
    limit = break_even_tokens(EngineCost(5, 49), EngineCost(145, 195))  # a machine where vLLM is ~4x faster
    assert 5_000 < limit < 15_000
    assert break_even_tokens(EngineCost(4, 23), EngineCost(167, 22)) == float("inf")
    assert choose_engine("llama.cpp", True, 1e9).engine == "llama.cpp"
    assert choose_engine("vllm", False, 10).engine == "vllm"  # asked for: it fails later, with the set-up command
    not_set_up = choose_engine("auto", False, 1e9)
    assert not_set_up.engine == "llama.cpp" and "setup-embedded --engine vllm" in not_set_up.reason
    assert choose_engine("auto", True, limit * 0.9, limit).engine == "llama.cpp"
    big = choose_engine("auto", True, limit * 1.1, limit)
    assert big.engine == "vllm" and "pays off" in big.reason
    assert choose_engine("auto", True, None, limit).engine == "vllm"  # open-ended: `finephrase serve`, a Hub source
    assert expected_tokens(60, 320) == 60 * 320 * 0.5 and expected_tokens(None, 320) is None
    with pytest.raises(ValueError, match="use auto, llama.cpp or vllm"):
        choose_engine("tgi", True, 1)


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


# ---------------------------------------------------------------- a real run on vLLM




def _rows(out: Path, config: str) -> list[dict]:
    return pq.read_table(out / "data" / config).to_pylist()


@pytest.mark.slow
def test_a_recipe_runs_on_vllm_and_survives_a_replica_killed_mid_run(tmp_path, demo_data, make_recipe):
    python = vllm_python()
    assert python is not None, f"vLLM's CPU build is not set up: run `{SETUP_COMMAND}` (`make test` does)"
    docs = [d for d in first_demo_docs(demo_data, 40) if len(d["text"]) > 400][:10]
    (tmp_path / "src").mkdir()
    with open(tmp_path / "src" / "docs.jsonl", "w") as f:
        f.writelines(json.dumps({"id": d["id"], "text": d["text"][:1200]}) + "\n" for d in docs)
    (tmp_path / "title.yaml").write_text(TITLE_PROMPT)
    recipe = make_recipe({
        "source": {"path": str(tmp_path / "src")}, "dedup": None, "mix": None, "output_checks": "flag",
        "filters": {"quality": None, "language": None, "min_chars": 1},
        "prompts": ["finephrase/faq", str(tmp_path / "title.yaml")],
        "generator": {"engine": "vllm", "n_ctx": 2048, "context_length": 1024,
                      "params": {"max_new_tokens": 48, "temperature": 0.0, "seed": 0}},
        "output": {"records_per_chunk": 2}, "run": {"limit": -1, "tasks": 1},
    })
    out = tmp_path / "out"
    run = subprocess.Popen([sys.executable, "-m", "finephrase.cli.main", "run", str(recipe), "--output", str(out)],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    state_file = out / ".finephrase" / "logs" / "server" / "state.json"
    victim = replica_once_rephrasing(run, out, timeout=900)
    group = process_tree(victim["pid"])
    assert len(group) >= 2, "a vLLM server runs an engine-core process beside its API server"
    os.kill(victim["pid"], signal.SIGKILL)  # the API server only: its engine core must not outlive it
    output, _ = run.communicate(timeout=1200)
    assert run.returncode == 0, output[-5000:]
    survivors = [pid for pid in group if is_alive(pid)]
    assert survivors == [], f"processes of the killed replica outlived it: {survivors}"
    state = json.loads(state_file.read_text())
    assert "signal SIGKILL (9)" in state["replicas"][0]["exits"] and state["replicas"][0]["restarts"] >= 1
    log = (out / ".finephrase" / "logs" / "console.log").read_text()
    assert "vLLM server 0" in log and "restarting vLLM server 0" in log, log[-3000:]
    ids = sorted(d["id"] for d in docs)
    version = vllm_version(python)
    for config in ("faq", "title"):
        rows = _rows(out, config)
        assert sorted(r["source_id"] for r in rows) == ids, f"{config}: every document exactly once"
        assert all(r["text"].strip() and r["completion_tokens"] > 0 for r in rows)
        assert {r["model"] for r in rows} == {"SmolLM2-135M-Instruct"}
    gen = json.loads((out / ".finephrase" / "report.json").read_text())["generator"]
    assert gen["engine"] == "vLLM" and gen["engine_version"] == version and gen["replicas"] == 1, gen
    assert gen["concurrency"] == 16 and gen["engine_choice"] == "set in the recipe"
    card = (out / "README.md").read_text()
    assert "vLLM" in card and version in card
