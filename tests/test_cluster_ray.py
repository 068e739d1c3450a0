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
    assert_no_survivors,
    run_cli,
    run_marker,
    run_processes,
    write_recipe,
)
from test_cluster_slurm import rows

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


def test_ray_executor_gives_the_local_executors_rows(ray_and_server, tmp_path):
    from finephrase.inference.servers.embedded import DEFAULT_ALIAS, default_gguf_path

    recipe = write_recipe(tmp_path / "recipe.yaml", {
        "dedup": None, "mix": None, "prompts": ["finephrase/faq"], "run": {"limit": 4, "tasks": 1},
        "generator": {"server": "openai", "endpoints_file": str(ray_and_server["endpoints"]), "model": DEFAULT_ALIAS,
                      "tokenizer": default_gguf_path(), "replicas": None, "threads": None, "n_ctx": None,
                      "context_length": FAST_GENERATOR["context_length"],
                      "params": {**FAST_GENERATOR["params"], "top_p": None}},
        "cluster": {"task_mem_per_cpu_gb": 1},  # cluster.servers left at its default: the endpoints are given
    })
    out, local = tmp_path / "ray", tmp_path / "local"
    no_slurm = {**ray_and_server["env"], "PATH": os.path.dirname(sys.executable)}  # no sbatch on the PATH
    assert shutil.which("sbatch", path=no_slurm["PATH"]) is None
    shown = run_cli("launch", str(recipe), "--executor", "ray", "--output", str(out), env=no_slurm).stdout
    assert "filter" in shown and "rephrase" in shown
    for stage in ("filter", "rephrase", "rows"):
        assert (out / ".finephrase" / "logs" / stage / "completions" / "00000").exists()
    assert (out / "README.md").exists() and (out / ".finephrase" / "report.json").exists()
    run_cli("launch", str(recipe), "--executor", "local", "--output", str(local))
    assert len(rows(out)) >= 1 and rows(out) == rows(local)


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
