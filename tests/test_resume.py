"""A run killed with SIGKILL mid-rephrase resumes on rerun without losing or duplicating documents."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time

from datasets import load_dataset

from conftest import FAST_GENERATOR, ROOT, run_cli
from test_end_to_end import llama_servers


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
    before = llama_servers()
    cmd = [sys.executable, "-m", "finephrase.cli", "run", str(recipe), "--limit", "8", "--output", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "data").exists(), "killed before the rows stage"
    # the llama.cpp servers die with their parent (PR_SET_PDEATHSIG)
    for _ in range(50):
        if llama_servers() == before:
            break
        time.sleep(0.2)
    assert llama_servers() == before

    run_cli("run", str(recipe), "--limit", "8", "--output", str(out))
    expected = sorted(_ids_in(out / ".finephrase" / "filtered"))
    assert len(expected) >= 6
    rephrased = _ids_in(out / ".finephrase" / "rephrased")
    assert sorted(rephrased) == expected, "rephrased documents lost or duplicated"
    for config in ("faq", "table"):
        ds = load_dataset("parquet", data_dir=str(out / "data" / config), split="train")
        assert len(ds["id"]) == len(set(ds["id"]))
        assert set(ds["source_id"]) <= set(expected)
        summary = json.loads((out / ".finephrase" / "run.json").read_text())["summary"]
        dropped = sum(summary["prompts"][config]["dropped"].values())
        assert len(ds) + dropped == len(expected)
        # the summary (and the card) count every document, not only those of the resumed run
        p = summary["prompts"][config]
        assert p["rephrased"] + p["failed"] == len(expected) == summary["rephrase_documents"]
        assert p["completion_tokens"] >= sum(ds["completion_tokens"])
