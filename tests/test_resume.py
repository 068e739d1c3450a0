"""A run killed with SIGKILL mid-rephrase resumes on rerun without losing or duplicating documents, and
no process of the killed run (llama.cpp servers, datatrove's manager, pool workers) outlives it."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from datasets import load_dataset

from conftest import FAST_GENERATOR, ROOT, assert_no_survivors, process_tree, run_cli, run_marker, run_processes, run_summary


def _ids_in(folder) -> list[str]:
    ids = []
    for name in sorted(os.listdir(folder)):
        opener = gzip.open if name.endswith(".gz") else open
        if name.endswith((".jsonl", ".jsonl.gz")):
            with opener(os.path.join(folder, name), "rt") as f:
                ids += [json.loads(line)["id"] for line in f]
    return ids


def test_kill9_mid_rephrase_then_resume(tmp_path, demo_data, make_recipe):
    recipe = make_recipe({
        "dedup": None,
        "mix": None,
        "prompts": ["finephrase/faq", "finephrase/table"],
        "generator": FAST_GENERATOR,
        "output": {"records_per_chunk": 2},
    })
    out = tmp_path / "out"
    marker, env = run_marker()
    cmd = [sys.executable, "-m", "finephrase.cli.main", "run", str(recipe), "--limit", "8", "--output", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                            start_new_session=True)
    checkpoints = out / ".finephrase" / "checkpoints"
    deadline = time.time() + 600
    # wait until at least one chunk is complete and another is in progress, then SIGKILL the executor
    while time.time() < deadline:
        done = (checkpoints / "last_chunk" / "00000.txt").exists()
        partial = list((checkpoints / "00000").glob("chunk_*.jsonl")) if (checkpoints / "00000").exists() else []
        if done and partial and partial[0].stat().st_size > 0:
            break
        assert proc.poll() is None, "the run finished before it could be killed"
        time.sleep(0.2)
    else:
        raise AssertionError("rephrase never reached a checkpoint")
    tree = process_tree(proc.pid)
    alive = run_processes(marker)
    # positive control: the run's processes are found (main, datatrove's manager, two llama.cpp servers)
    assert proc.pid in alive and tree <= set(alive), (tree, alive)
    assert sum("llama_cpp.server" in cmd for cmd in alive.values()) == 2, alive
    assert len(alive) >= 4, alive
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "data").exists(), "killed before the rows stage"
    # nothing outlives the killed run: servers, manager, workers all die with it (PR_SET_PDEATHSIG)
    assert_no_survivors(marker, pids=tree - {proc.pid}, session=proc.pid, timeout=10)

    run_cli("run", str(recipe), "--limit", "8", "--output", str(out))
    expected = sorted(_ids_in(out / ".finephrase" / "filtered"))
    assert len(expected) >= 6
    rephrased = _ids_in(out / ".finephrase" / "rephrased")
    assert sorted(rephrased) == expected, "rephrased documents lost or duplicated"
    for config in ("faq", "table"):
        ds = load_dataset("parquet", data_dir=str(out / "data" / config), split="train")
        assert len(ds["id"]) == len(set(ds["id"]))
        assert set(ds["source_id"]) <= set(expected)
        summary = run_summary(out / ".finephrase")
        dropped = sum(summary["prompts"][config]["dropped"].values())
        assert len(ds) + dropped == len(expected)
        # the summary (and the card) count every document, not only those of the resumed run
        p = summary["prompts"][config]
        assert p["rephrased"] + p["failed"] == len(expected) == summary["rephrase_documents"]
        assert p["completion_tokens"] >= sum(ds["completion_tokens"])


SLOW_STEPS = textwrap.dedent("""
    import os, time

    def mark_and_wait(data, rank=0, world_size=1):
        open(os.path.join(os.environ["SLOW_STEP_DIR"], f"{rank}.started"), "w").close()
        time.sleep(600)
        yield from data or ()
""")

RUN_SLOW_STAGES = textwrap.dedent("""
    import sys

    if __name__ == "__main__":  # the forkserver imports __main__
        from finephrase.pipeline.build import Stage, run_local
        from slow_steps import mark_and_wait

        out, tasks, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
        run_local([Stage("slow", [mark_and_wait], tasks)], out, workers=workers)
""")


def _kill_run(marker: str) -> None:
    for pid in run_processes(marker):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _start_slow_run(tmp_path, tasks: int, workers: int):
    (tmp_path / "slow_steps.py").write_text(SLOW_STEPS)
    (tmp_path / "run_slow.py").write_text(RUN_SLOW_STAGES)
    started = tmp_path / "started"
    started.mkdir()
    marker, env = run_marker()
    env.update(SLOW_STEP_DIR=str(started), PYTHONPATH=os.pathsep.join([str(tmp_path), str(ROOT)]))
    proc = subprocess.Popen([sys.executable, str(tmp_path / "run_slow.py"), str(tmp_path / "out"), str(tasks),
                             str(workers)], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 120
    while len(list(started.iterdir())) < min(tasks, workers):
        if proc.poll() is not None:
            _kill_run(marker)
            raise AssertionError(f"the run ended before its tasks started:\n{proc.stdout.read().decode()[-3000:]}")
        if time.time() > deadline:
            _kill_run(marker)
            raise AssertionError(f"the run's tasks never started:\n{proc.stdout.read().decode()[-3000:]}")
        time.sleep(0.1)
    return proc, marker


def test_kill9_leaves_no_pool_worker_or_manager(tmp_path):
    """workers > 1: datatrove's manager (forked) and the pool's workers (forked by multiprocess's forkserver)
    die with the run's main process when it is SIGKILLed mid-task."""
    proc, marker = _start_slow_run(tmp_path, tasks=2, workers=2)
    try:
        tree = process_tree(proc.pid)
        alive = run_processes(marker)
        # positive control: main + manager + forkserver + 2 workers (+ resource tracker) are seen
        assert proc.pid in alive and tree <= set(alive), (tree, alive)
        assert any("forkserver" in cmd for cmd in alive.values()), alive
        assert len(alive) >= 5, alive
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert_no_survivors(marker, pids=tree - {proc.pid}, session=proc.pid, timeout=10)
    finally:
        _kill_run(marker)


def test_kill9_leaves_no_manager_single_worker(tmp_path):
    """workers == 1: the task runs in the main process; datatrove still forks a manager server for the stage."""
    proc, marker = _start_slow_run(tmp_path, tasks=1, workers=1)
    try:
        tree = process_tree(proc.pid)
        alive = run_processes(marker)
        assert proc.pid in alive and len(alive) >= 2, alive  # main + manager
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert_no_survivors(marker, pids=tree - {proc.pid}, session=proc.pid, timeout=10)
    finally:
        _kill_run(marker)
