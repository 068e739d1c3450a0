"""The commands no other test runs, run as a user runs them: ``finephrase serve`` (a real llama.cpp server,
a real chat completion, Ctrl-C) and ``finephrase demo-data`` (Debian's python3.11-doc fetched with
``apt-get download``, extracted, a quality model trained)."""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, _proc_cmdline, assert_no_survivors, process_tree, run_cli


def finephrase_command() -> list[str]:
    """The ``finephrase`` console script of this environment (what a user types), else ``python -m``."""
    script = Path(sys.executable).with_name("finephrase")
    return [str(script)] if script.exists() else [sys.executable, "-m", "finephrase.cli.main"]


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def test_serve_answers_chat_completions_and_stops_its_servers_on_ctrl_c(tmp_path):
    endpoints_file = tmp_path / "endpoints.txt"
    log = tmp_path / "serve.log"
    with open(log, "wb") as log_file:
        serve = subprocess.Popen([*finephrase_command(), "serve", "--replicas", "1", "--endpoints-file",
                                  str(endpoints_file)], cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env={**os.environ, "COLUMNS": "500"})  # no wrapping
    servers: set[int] = set()
    try:
        # ready = the endpoints file has a host:port line (written once the server has generated)
        deadline = time.monotonic() + 240
        lines: list[str] = []
        while not lines:
            if serve.poll() is not None:
                pytest.fail(f"finephrase serve exited ({serve.returncode}) before writing {endpoints_file}:\n"
                            f"{_tail(log)}")
            if time.monotonic() > deadline:
                pytest.fail(f"no host:port line in {endpoints_file} within 240 s:\n{_tail(log)}")
            time.sleep(0.25)
            if endpoints_file.exists():
                lines = [line for line in endpoints_file.read_text().splitlines() if line.strip()]
        assert len(lines) == 1 and re.fullmatch(r"127\.0\.0\.1:\d+", lines[0]), lines
        endpoint = lines[0]
        port = endpoint.rsplit(":", 1)[1]

        # a real chat completion, as a client of the OpenAI-compatible server
        body = {"model": "SmolLM2-135M-Instruct", "max_tokens": 8, "temperature": 0.0,
                "messages": [{"role": "user", "content": "What is the capital of France? Answer in one word."}]}
        req = urllib.request.Request(f"http://{endpoint}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200
            answer = json.loads(r.read())
        content = answer["choices"][0]["message"]["content"]
        assert "paris" in content.lower(), answer
        assert answer["choices"][0]["finish_reason"] in ("stop", "length"), answer
        assert 0 < answer["usage"]["completion_tokens"] <= 8 and answer["usage"]["prompt_tokens"] > 10, answer
        console = _tail(log)
        assert f"http://{endpoint}/v1" in console and f"endpoints appended to {endpoints_file}" in console, console

        # its llama.cpp server: a child of the serve process, listening on the port it wrote
        servers = {pid for pid in process_tree(serve.pid) - {serve.pid}
                   if "--port" in (cmd := _proc_cmdline(pid)).split() and port in cmd.split()}
        assert len(servers) == 1, {pid: _proc_cmdline(pid) for pid in process_tree(serve.pid)}

        start = time.monotonic()
        serve.send_signal(signal.SIGINT)  # Ctrl-C: to the serve process only, not to its server
        try:
            code = serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"finephrase serve still running 30 s after SIGINT:\n{_tail(log)}")
        elapsed = time.monotonic() - start
        output = log.read_text(errors="replace")
        assert code == 0, output[-3000:]
        assert elapsed < 15, f"took {elapsed:.1f}s to stop"
        assert "Traceback" not in output, output[-3000:]
        assert_no_survivors(pids=servers, timeout=5)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def test_demo_data_builds_the_corpus_and_the_quality_model(tmp_path):
    folder = tmp_path / "demo"
    # fails (does not skip) when apt-get cannot download the package: no package lists (`apt-get update`) or no
    # network is an environment problem to report
    proc = run_cli("demo-data", "--to", str(folder), timeout=900, env={"COLUMNS": "500"})  # no wrapped lines
    console = proc.stdout + proc.stderr
    corpus, model_path, info_path = folder / "docs.jsonl.gz", folder / "quality.ftz", folder / "info.json"
    assert corpus.is_file() and model_path.is_file() and info_path.is_file(), sorted(p.name for p in folder.iterdir())
    info = json.loads(info_path.read_text())

    reported = re.search(r"demo corpus: (\d+) documents from Debian's (\S+) -> (\S+)", console)
    assert reported, console[-3000:]
    assert int(reported.group(1)) == info["documents"] and reported.group(2) == info["source"] == "python3.11-doc"
    assert reported.group(3) == str(corpus) == info["corpus"]

    with gzip.open(corpus, "rt", encoding="utf-8") as f:
        docs = [json.loads(line) for line in f]
    assert len(docs) == info["documents"] > 400, len(docs)  # 528 pages from 3.11.2-6+deb12u8
    assert len({d["id"] for d in docs}) == len(docs)
    for d in docs:
        assert d["id"].startswith("python-docs/") and d["id"].endswith(".html"), d["id"]
        # extracted text, not the page: no markup at the start, no Sphinx layout (pages quote HTML in examples)
        assert len(d["text"]) >= 200 and not d["text"].lstrip().startswith("<"), d["id"]
        assert "sphinxsidebar" not in d["text"] and "searchbox" not in d["text"], d["id"]
        assert d["metadata"]["url"] == "https://docs.python.org/3.11/" + d["id"].removeprefix("python-docs/")
    assert any(d["id"] == "python-docs/tutorial/introduction.html" for d in docs)

    q = info["quality"]
    total = q["examples"]["hq"] + q["examples"]["lq"]
    assert q["examples"]["hq"] > 0 and q["examples"]["lq"] > 0
    assert q["validation_examples"] == total - int(total * 0.9), q  # the 10 % held out
    assert 0.5 < q["precision_at_1"] <= 1.0, q
    model_line = re.search(r"quality model: (\S+) \(validation precision@1 ([\d.]+)\)", console)
    assert model_line and model_line.group(1) == str(model_path) == info["quality_model"], console[-3000:]
    assert float(model_line.group(2)) == q["precision_at_1"]

    # the model is a usable fastText classifier with the two labels
    import fasttext

    model = fasttext.load_model(str(model_path))
    assert set(model.get_labels()) == {"__label__hq", "__label__lq"}
    labels, _ = model.predict("A for loop repeats the statements in its body once for every item of a sequence, "
                              "in the order that the items appear in the sequence.")
    assert labels[0] in ("__label__hq", "__label__lq")
    # the unpacked package is removed, the downloaded .deb kept (a rerun does not download it again)
    assert not (folder / "deb" / "root").exists()
    assert list((folder / "deb").glob("python3.11-doc_*.deb"))
