"""Shared fixtures: the demo data, recipes derived from pipelines/demo.yaml, CLI runner."""

from __future__ import annotations

import copy
import json
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

from slurm_cluster import slurm_cluster  # noqa: E402,F401 - the session's one-node Slurm (tests/slurm_cluster.py)


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
    """The demo corpus and quality model (built by `finephrase demo-data` if missing; a model an older demo trained
    is retrained, so the tests score with the model this code builds)."""
    from finephrase.demo_data import build_demo_data

    build_demo_data(str(DEMO_DATA))
    return DEMO_DATA


def first_demo_docs(demo_data: Path, n: int) -> list[dict]:
    """The first ``n`` records of the demo corpus (data/demo/docs.jsonl.gz), as dicts."""
    import gzip
    import itertools
    import json

    with gzip.open(demo_data / "docs.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in itertools.islice(f, n)]


def write_recipe(path: Path, overrides: dict | None = None, base: Path = DEMO_RECIPE) -> Path:
    """A recipe derived from `base` with `overrides` merged in (None deletes a key); absolute data paths."""
    data = yaml.safe_load(base.read_text())
    data = _merge(data, overrides or {})
    gen, asked = data.get("generator") or {}, ((overrides or {}).get("generator") or {}).get("engine")
    if gen.get("server", "embedded") == "embedded" and not asked:  # llama.cpp unless a test asks (test_vllm_engine)
        gen["engine"] = "llama.cpp"
    src = data.get("source", {})
    if src.get("path") and not os.path.isabs(src["path"]):
        src["path"] = str(ROOT / src["path"])
    q = (data.get("filters") or {}).get("quality") or {}
    for c in [q] + list(q.get("ensemble") or []):  # one classifier, or an ensemble's
        if c.get("model") and not os.path.isabs(c["model"]) and (ROOT / c["model"]).exists():  # else a Hub model
            c["model"] = str(ROOT / c["model"])
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@pytest.fixture
def make_recipe(tmp_path):
    def make(overrides: dict | None = None, name: str = "recipe.yaml", base: Path = DEMO_RECIPE) -> Path:
        return write_recipe(tmp_path / name, overrides, base)

    return make


def source_ids(out: Path) -> list[str]:
    """The ids of the documents a finished run sent to rephrase (its filtered stage's output)."""
    import gzip

    ids = []
    folder = Path(out) / ".finephrase" / "filtered"
    for name in sorted(os.listdir(folder)):
        with gzip.open(folder / name, "rt") as f:
            ids += [json.loads(line)["id"] for line in f]
    return ids


def run_summary(work: Path) -> dict:
    """A finished run's counts as the tests read them: ``<work>/report.json``'s counts (``work`` is the run's
    ``.finephrase`` folder), with its wall time and generator."""
    report = json.loads((Path(work) / "report.json").read_text())
    return {**(report["counts"] or {}), "wall_time_s": report.get("wall_time_s"), "generator": report.get("generator") or {}}


def run_cli(*args: str, timeout: float = 900, env: dict | None = None, check: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "finephrase.cli.main", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


# a small local prompt (a title per document) for tests that run two prompts
TITLE_PROMPT = """\
name: title
set: local
version: "1.0"
source:
  title: "finephrase tests"
description: Gives the document a short title.
suits: any
system: null
template: |-
  Write a title of at most eight words for the document below. Output only the title.

  Document:
  {{ document }}
generation:
  max_new_tokens: 48
context: truncate
output_rules:
  drop_refusals: true
  drop_truncated: false
"""


@pytest.fixture(scope="session")
def vllm_servers(tmp_path_factory):
    """One vLLM server, started once for the tests that only need a vLLM server (tests/test_vllm_engine.py), with
    the defaults a run gets on this machine (the dtype this CPU executes, the model's cores); a real recipe run
    starts its own. Logs and state file in a folder of the session."""
    from finephrase.inference.client.backends import EmbeddedBackend
    from finephrase.inference.servers.vllm_setup import SETUP_COMMAND, vllm_python

    assert vllm_python() is not None, f"vLLM's CPU build is not set up: run `{SETUP_COMMAND}` (`make test` does)"
    servers = EmbeddedBackend.make_servers("vllm", n_ctx=2048, log_dir=str(tmp_path_factory.mktemp("vllm")))
    with servers:
        yield servers


# a fast generation setting for tests that run the real embedded model
FAST_GENERATOR = {"params": {"max_new_tokens": 48, "temperature": 0.0, "seed": 0}, "context_length": 768}


# ---------------------------------------------------------------- the processes of one run
# A test that starts a run gives it a marker (an environment variable every process of the run inherits,
# read back from /proc/PID/environ) and its own session, and records the run's process tree before
# killing it; "no survivor" is checked over those only, never over every process of the machine.

RUN_MARKER_ENV = "FINEPHRASE_TEST_RUN_ID"


def run_marker() -> tuple[str, dict]:
    """A fresh marker and the environment (os.environ + marker) to start a run with."""
    import uuid

    marker = uuid.uuid4().hex
    return marker, {**os.environ, RUN_MARKER_ENV: marker}


def _proc_stat(pid: int) -> dict | None:
    """ppid, process group, session and state of a live process (None if gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = raw.rpartition(")")[2].split()  # the command name (in parentheses) may contain spaces
    return {"state": fields[0], "ppid": int(fields[1]), "pgid": int(fields[2]), "sid": int(fields[3])}


def _proc_cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def _proc_has_marker(pid: int, marker: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f"{RUN_MARKER_ENV}={marker}".encode() in f.read().split(b"\0")
    except OSError:
        return False


def is_alive(pid: int) -> bool:
    """A live process (not a zombie)."""
    st = _proc_stat(pid)
    return st is not None and st["state"] not in ("Z", "X")


def replica_once_rephrasing(run, out, timeout: float) -> dict:
    """Wait until the rephrase stage of ``run`` (a ``finephrase run`` Popen writing to ``out``) has written its first
    documents (requests are in flight), then return the first embedded replica of its supervisor state."""
    import json
    import time

    checkpoints = out / ".finephrase" / "rephrased"
    deadline = time.time() + timeout
    while time.time() < deadline and not (checkpoints.exists() and any(checkpoints.iterdir())):
        assert run.poll() is None, run.communicate()[0][-4000:]
        time.sleep(0.2)
    return json.loads((out / ".finephrase" / "logs" / "server" / "state.json").read_text())["replicas"][0]


def _live_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def process_tree(root: int) -> set[int]:
    """`root` and its live (not zombie) descendants (by parent pid, from /proc)."""
    children: dict[int, list[int]] = {}
    for pid in _live_pids():
        st = _proc_stat(pid)
        if st is not None and st["state"] not in ("Z", "X"):
            children.setdefault(st["ppid"], []).append(pid)
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo += children.get(pid, [])
    return tree


def run_processes(marker: str | None = None, pids=(), session: int | None = None) -> dict[int, str]:
    """Live (not zombie) processes of a run: those carrying `marker` in their environment, those in `pids`
    (its tree recorded before a kill) and those in session `session`. {pid: command line}."""
    pids = set(pids)
    found = {}
    for pid in _live_pids():
        if pid == os.getpid():
            continue
        st = _proc_stat(pid)
        if st is None or st["state"] in ("Z", "X"):
            continue
        if pid in pids or (session is not None and st["sid"] == session) or (marker and _proc_has_marker(pid, marker)):
            found[pid] = _proc_cmdline(pid)
    return found


def assert_no_survivors(marker: str | None = None, pids=(), session: int | None = None, timeout: float = 10.0) -> None:
    """Within `timeout` seconds, no process of the run is left (see `run_processes`)."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        left = run_processes(marker, pids, session)
        if not left:
            return
        if time.monotonic() > deadline:
            details = "\n".join(f"  {pid} ({_proc_stat(pid)}): {cmd}" for pid, cmd in sorted(left.items()))
            raise AssertionError(f"{len(left)} process(es) of the run still alive {timeout:.0f}s after it ended:\n"
                                 f"{details}")
        time.sleep(0.1)


def child_processes(pattern: str, root: int | None = None) -> dict[int, str]:
    """Live descendants of `root` (default: this process) whose command line contains `pattern`."""
    root = os.getpid() if root is None else root
    out = {}
    for pid in process_tree(root) - {root}:
        st = _proc_stat(pid)
        if st is not None and st["state"] not in ("Z", "X") and pattern in (cmd := _proc_cmdline(pid)):
            out[pid] = cmd
    return out
