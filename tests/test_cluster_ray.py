"""``finephrase launch --executor ray``: the filter, rephrase and rows stages through datatrove's RayPipelineExecutor on
a real local Ray head (127.0.0.1), the replica from an endpoints file (``finephrase serve``), the same rows as the
local executor; with the endpoints given, no Slurm is needed (no ``sbatch`` on the PATH)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import (
    FAST_GENERATOR,
    ROOT,
    RUN_MARKER_ENV,
    assert_no_survivors,
    run_cli,
    run_marker,
    run_processes,
    write_recipe,
)
from test_cluster_slurm import rows

from finephrase.cluster.jobs import load_ledger

RAY_PORT = 6390
START_TIMEOUT = 240


def _wait(ready, what: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not ready after {timeout:.0f}s")
        time.sleep(1)


@pytest.fixture(scope="module")
def ray_and_server(demo_data, tmp_path_factory):
    """A Ray head on 127.0.0.1 and one embedded llama.cpp replica (``finephrase serve``) in an endpoints file; every
    process of both stopped at the end (by the marker in their environment)."""
    try:
        import ray  # noqa: F401 - in the dev extra
    except ImportError:
        pytest.fail("ray is not installed: pip install -e '.[dev]' (or '.[ray]')")
    folder = tmp_path_factory.mktemp("ray")
    marker, env = run_marker()
    endpoints = folder / "endpoints.txt"
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    server = None
    try:
        subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={RAY_PORT}",
                        "--include-dashboard=false", "--num-cpus=2", "--disable-usage-stats"],
                       env=env, check=True, capture_output=True, timeout=180)
        server = subprocess.Popen([sys.executable, "-m", "finephrase.cli.main", "serve", "--replicas", "1", "--n-ctx", "2048",
                                   "--endpoints-file", str(endpoints)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=open(folder / "serve.log", "wb"), start_new_session=True)
        _wait(lambda: endpoints.exists() and endpoints.read_text().strip(), "finephrase serve")
        yield {"folder": folder, "endpoints": endpoints, "env": {**env, "RAY_ADDRESS": f"127.0.0.1:{RAY_PORT}"}}
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        _signal_all(marker, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while run_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.5)
        _signal_all(marker, signal.SIGKILL)  # Ray's gcs_server and monitor ignore SIGTERM
        assert_no_survivors(marker, timeout=30)


def _signal_all(marker: str, sig: int) -> None:
    for pid in run_processes(marker):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _recipe(path, endpoints):
    """The rephrase of the first documents by the fixture's replica, four documents, one task per stage."""
    from finephrase.inference.servers.embedded import DEFAULT_ALIAS, default_gguf_path

    return write_recipe(path, {
        "dedup": None, "mix": None, "prompts": ["finephrase/faq"], "run": {"limit": 4, "tasks": 1},
        "generator": {"server": "openai", "endpoints_file": str(endpoints), "model": DEFAULT_ALIAS,
                      "tokenizer": default_gguf_path(), "replicas": None, "threads": None, "n_ctx": None,
                      "context_length": FAST_GENERATOR["context_length"],
                      "params": {**FAST_GENERATOR["params"], "top_p": None}},
        "cluster": {"task_mem_per_cpu_gb": 1},  # cluster.servers left at its default: the endpoints are given
    })


@pytest.fixture(scope="module")
def local_rows(ray_and_server):
    """The rows of the same recipe run by the local executor (uninterrupted): what every Ray run must give."""
    folder = ray_and_server["folder"]
    recipe = _recipe(folder / "local.yaml", ray_and_server["endpoints"])
    run_cli("launch", str(recipe), "--executor", "local", "--output", str(folder / "local"))
    return rows(folder / "local")


def _no_slurm(env: dict) -> dict:
    no_slurm = {**env, "PATH": os.path.dirname(sys.executable)}  # no sbatch on the PATH
    assert shutil.which("sbatch", path=no_slurm["PATH"]) is None
    return no_slurm


def test_ray_executor_gives_the_local_executors_rows(ray_and_server, local_rows, tmp_path):
    recipe, out = _recipe(tmp_path / "recipe.yaml", ray_and_server["endpoints"]), tmp_path / "ray"
    shown = run_cli("launch", str(recipe), "--executor", "ray", "--output", str(out),
                    env=_no_slurm(ray_and_server["env"])).stdout
    assert "filter" in shown and "rephrase" in shown
    for stage in ("filter", "rephrase", "rows"):
        assert (out / ".finephrase" / "logs" / stage / "completions" / "00000").exists()
    assert (out / "README.md").exists() and (out / ".finephrase" / "report.json").exists()
    assert len(rows(out)) >= 1 and rows(out) == local_rows


def test_an_output_folder_a_worker_cannot_see_is_a_clear_error(ray_and_server, tmp_path):
    import ray

    from finephrase.cluster.executors import check_output_visible
    from finephrase.errors import ClusterError

    ray.init(address=ray_and_server["env"]["RAY_ADDRESS"], log_to_driver=False)
    try:
        check_output_visible(str(tmp_path))  # this machine's folder: every (local) node sees it
        with pytest.raises(ClusterError, match="(?s)is not visible on Ray node.*a file system every node mounts"):
            check_output_visible(str(tmp_path / "elsewhere"))
    finally:
        ray.shutdown()


# ---------------------------------------------------------------- finephrase stop on a Ray run

def _rank_workers(marker: str) -> dict[int, str]:
    """Processes of the fixture's Ray head (found by its marker) running datatrove's RankWorker actor or its pool."""
    return {pid: cmd for pid, cmd in run_processes(marker).items() if "RankWorker" in cmd}


def _rephrased(work) -> dict[str, int]:
    """The rephrase checkpoints' chunks and their sizes."""
    return {p.name: p.stat().st_size for p in (work / "rephrased").glob("*.jsonl")} if (work / "rephrased").exists() \
        else {}


def test_stop_ends_a_ray_run_and_a_relaunch_resumes_it(ray_and_server, local_rows, tmp_path):
    """``finephrase stop`` on a Ray run mid-rephrase: the driver ends (SIGTERM, one line, exit 143), its Ray actors
    and their pool workers with it (none left working, nothing written after), status and a second stop say it is
    stopped, and a relaunch completes the run with the uninterrupted run's rows. No Slurm tool on the PATH."""
    env = _no_slurm(ray_and_server["env"])
    marker = env[RUN_MARKER_ENV]
    recipe, out = _recipe(tmp_path / "recipe.yaml", ray_and_server["endpoints"]), tmp_path / "ray"
    work, log = out / ".finephrase", tmp_path / "driver.log"
    with open(log, "wb") as f:
        driver = subprocess.Popen([sys.executable, "-m", "finephrase.cli.main", "launch", str(recipe), "--executor",
                                   "ray", "--output", str(out)], env=env, cwd=ROOT, stdout=f,
                                  stderr=subprocess.STDOUT)
    try:
        _wait(lambda: driver.poll() is not None or any(_rephrased(work).values()), "the first rephrased document")
        assert driver.poll() is None and _rank_workers(marker), log.read_text()[-3000:]
        started = time.monotonic()
        stopped = run_cli("stop", str(out), "--timeout", "60", env=env).stdout
        took = time.monotonic() - started
        assert driver.wait(timeout=5) == 128 + signal.SIGTERM, log.read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
    shown = log.read_text()
    assert "Traceback" not in shown and "SIGTERM received" not in shown, shown[-3000:]
    assert shown.strip().splitlines()[-1].startswith("finephrase: stopped by SIGTERM in stage rephrase (1 of 1 task")
    assert not (work / "logs" / "rephrase" / "completions" / "00000").exists(), "stopped after rephrase: more work"
    assert f"ray driver: stopped (pid {driver.pid} on " in stopped and "cancelled" not in stopped, stopped
    deadline = time.monotonic() + 10
    while _rank_workers(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _rank_workers(marker), f"Ray workers still running the run's tasks: {_rank_workers(marker)}"
    written = _rephrased(work)
    time.sleep(2)
    assert _rephrased(work) == written, "something still writes the run's output"
    print(f"stop: {took:.1f}s; workers gone {time.monotonic() - started - 2:.1f}s after the stop began")
    assert load_ledger(str(out)).launches[-1].driver.ended == "stopped"
    assert "ray driver: stopped" in run_cli("status", str(out), "--no-probe", env=env).stdout
    again = run_cli("stop", str(out), env=env).stdout
    assert "ray driver: not running" in again, again
    run_cli("launch", str(recipe), "--executor", "ray", "--output", str(out), env=env)  # resumes
    assert rows(out) == local_rows
    assert load_ledger(str(out)).launches[-1].driver.ended == "done"


# ---------------------------------------------------------------- the driver record, without Ray (fast)

def _ledger_with_driver(out, proc: subprocess.Popen | None = None, **fields) -> None:
    """A run folder whose ledger names ``proc`` (default: a pid no process has) as its Ray launch's driver."""
    import socket

    from finephrase.cluster.jobs import Launch, Ledger, RayDriver, save_ledger
    from finephrase.lifetime import process_identity

    pid = proc.pid if proc else 2 ** 22 + 1  # above pid_max's largest default
    driver = {"pid": pid, "host": socket.gethostname(), "identity": (process_identity(pid) if proc else None) or "x:1",
              "address": "127.0.0.1:6390", **fields}
    save_ledger(str(out), Ledger(launches=[Launch(time=time.time(), executor="ray", driver=RayDriver(**driver))]))


def _sleeper(ignore_sigterm: bool = False) -> subprocess.Popen:
    code = ("import signal, time\n" + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignore_sigterm else "")
            + "print('ready', flush=True)\ntime.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"  # its SIGTERM handler is set
    return proc


def test_stop_on_another_host_names_the_host_and_the_pid_and_signals_nothing(tmp_path):
    proc = _sleeper()
    try:
        _ledger_with_driver(tmp_path, proc, host="gpu-node-7")
        shown = run_cli("stop", str(tmp_path), env={"PATH": os.path.dirname(sys.executable)}, check=False)
        assert shown.returncode == 2 and "Traceback" not in shown.stderr, shown.stderr
        assert f"runs on gpu-node-7 (pid {proc.pid})" in shown.stderr
        assert f"finephrase stop {tmp_path}` on gpu-node-7" in shown.stderr and f"kill -TERM {proc.pid}" in shown.stderr
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()


def test_stop_never_signals_a_reused_pid_and_says_a_gone_driver_is_not_running(tmp_path):
    from finephrase.cluster.stop import stop_run

    proc = _sleeper()
    try:
        _ledger_with_driver(tmp_path, proc, identity="another-boot:1")  # the pid now belongs to another process
        assert stop_run(str(tmp_path), timeout=1).driver.startswith("not running")
        time.sleep(0.2)
        assert proc.poll() is None, "a process that merely has the driver's pid was signalled"
    finally:
        proc.kill()
        proc.wait()
    _ledger_with_driver(tmp_path)  # no process has the pid
    assert stop_run(str(tmp_path), timeout=1).driver.startswith("not running (it ended")


def test_stop_sends_sigterm_then_sigkill_and_a_live_driver_blocks_a_relaunch(tmp_path):
    from finephrase.errors import ClusterError
    from finephrase.cluster.driver import check_no_live_driver
    from finephrase.cluster.jobs import load_ledger
    from finephrase.cluster.stop import stop_run

    for stubborn, outcome, code in ((False, "stopped", -signal.SIGTERM), (True, "killed", -signal.SIGKILL)):
        proc = _sleeper(ignore_sigterm=stubborn)
        try:
            _ledger_with_driver(tmp_path, proc)
            with pytest.raises(ClusterError, match="(?s)still running .*finephrase stop"):
                check_no_live_driver(load_ledger(str(tmp_path)), str(tmp_path))
            assert stop_run(str(tmp_path), timeout=1).driver.startswith(outcome)
            assert proc.wait(timeout=5) == code
            check_no_live_driver(load_ledger(str(tmp_path)), str(tmp_path))  # gone: a relaunch may start
        finally:
            proc.kill()
            proc.wait()


def test_a_driver_whose_clean_up_outlasts_its_grace_exits_anyway_with_its_last_words():
    """datatrove's Ray executor waits about 2 s per running task on the way out: past the grace, the driver says
    its line and exits (Ray ends the tasks of a driver that exits)."""
    code = ("import time\nfrom finephrase.cluster.driver import stop_on_sigterm\n"
            "with stop_on_sigterm(grace=0.5, last_words=lambda signum: print('last words', signum, flush=True)):\n"
            "    try:\n        print('ready', flush=True)\n        time.sleep(60)\n"
            "    except KeyboardInterrupt:\n        print('cleaning up', flush=True)\n        time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 128 + signal.SIGTERM
        assert proc.stdout.read().split("\n")[:2] == ["cleaning up", f"last words {int(signal.SIGTERM)}"]
    finally:
        proc.kill()
        proc.wait()
