"""The commands no other test runs, run as a user runs them: ``finephrase serve`` (a real llama.cpp server,
a real chat completion, Ctrl-C) and ``finephrase demo-data`` (Debian's python3.11-doc fetched with
``apt-get download``, extracted, a quality model trained by ``finephrase quality train``'s code)."""

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

from conftest import ROOT, _proc_cmdline, assert_no_survivors, first_demo_docs, process_tree, run_cli


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

    # trained by `finephrase quality train`'s code, on whole pages: every page is a document of one label, 10 %
    # of them held out
    q = info["quality"]
    assert q["trainer"] == "finephrase quality train" and q["settings"]["seed"] == 0, q
    assert q["examples"]["hq"] > 0 and q["examples"]["lq"] > 0
    assert q["held_out"] == int(info["documents"] * 0.1), q
    assert q["examples"]["hq"] + q["examples"]["lq"] + q["held_out"] == info["documents"], q
    assert sum(s["support"] for s in q["labels"].values()) == q["held_out"], q
    assert 0.5 < q["accuracy"] <= 1.0, q
    for s in q["labels"].values():
        assert 0 <= s["precision"] <= 1 and 0 <= s["recall"] <= 1 and 0 <= s["f1"] <= 1, q
    model_line = re.search(r"quality model: (\S+) \(`finephrase quality train`: held-out accuracy ([\d.]+) on (\d+) "
                           r"documents, F1 hq ([\d.]+), lq ([\d.]+)\)", console)
    assert model_line and model_line.group(1) == str(model_path) == info["quality_model"], console[-3000:]
    assert float(model_line.group(2)) == q["accuracy"] and int(model_line.group(3)) == q["held_out"]
    assert [float(model_line.group(i)) for i in (4, 5)] == [q["labels"]["hq"]["f1"], q["labels"]["lq"]["f1"]]

    # the model is a usable fastText classifier with the two labels
    import fasttext

    model = fasttext.load_model(str(model_path))
    assert set(model.get_labels()) == {"__label__hq", "__label__lq"}
    labels, _ = model.predict("A for loop repeats the statements in its body once for every item of a sequence, "
                              "in the order that the items appear in the sequence.")
    assert labels[0] in ("__label__hq", "__label__lq")
    # scored as the recipes' filter scores (the whole page, normalised): a tutorial page kept, the index dropped
    from finephrase.quality.scorers import label_score

    page = {d["id"].removeprefix("python-docs/"): d["text"] for d in docs}
    assert label_score(model, page["tutorial/introduction.html"], "hq") >= 0.5
    assert label_score(model, page["genindex-A.html"], "hq") < 0.5
    # the unpacked package is removed, the downloaded .deb kept (a rerun does not download it again)
    assert not (folder / "deb" / "root").exists()
    assert list((folder / "deb").glob("python3.11-doc_*.deb"))


def _old_demo_folder(folder: Path, docs: list[dict]) -> None:
    """A demo folder as an older finephrase left it: the corpus, a model and an info.json without a trainer."""
    folder.mkdir()
    with gzip.open(folder / "docs.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(d) + "\n" for d in docs)
    (folder / "quality.ftz").write_bytes(b"an older demo's model")
    (folder / "info.json").write_text(json.dumps({"documents": len(docs), "quality": {"precision_at_1": 0.9}}))


def test_an_older_demo_model_is_retrained_by_quality_train(tmp_path, demo_data):
    """A demo folder whose model an older demo trained gets its model retrained, its corpus kept (no package is
    fetched: there is none in the folder); the model is the one `finephrase quality train` makes of the two inputs
    the demo writes, byte for byte (seeded, one fastText thread), with the same held-out scores."""
    from finephrase.demo_data import build_demo_data, write_training_inputs

    docs = first_demo_docs(demo_data, 528)
    docs = docs[:60] + [d for d in docs[60:] if d["id"].startswith("python-docs/genindex")][:10]  # small: fast
    folder = tmp_path / "demo"
    _old_demo_folder(folder, docs)
    corpus = (folder / "docs.jsonl.gz").read_bytes()
    info = build_demo_data(str(folder))
    assert (folder / "docs.jsonl.gz").read_bytes() == corpus and not (folder / "deb").exists()
    assert json.loads((folder / "info.json").read_text()) == info and info["documents"] == len(docs)
    assert info["quality"]["trainer"] == "finephrase quality train"
    assert build_demo_data(str(folder)) == info  # now current: returned as it is

    positive, negative = write_training_inputs(docs, str(tmp_path))
    metrics = tmp_path / "metrics.json"
    run_cli("quality", "train", "--positive", positive, "--negative", negative, "--output", str(tmp_path / "q.ftz"),
            "--json", str(metrics), timeout=600)
    assert (tmp_path / "q.ftz").read_bytes() == (folder / "quality.ftz").read_bytes()
    cli = json.loads(metrics.read_text())
    assert {k: v for k, v in cli.items() if k != "model"} == {k: info["quality"][k] for k in cli if k != "model"}


def test_a_corpus_too_small_to_train_on_says_how_to_rebuild_it(tmp_path, demo_data):
    from finephrase.demo_data import DemoDataError, build_demo_data
    from finephrase.errors import FinephraseError

    _old_demo_folder(tmp_path / "demo", [d for d in first_demo_docs(demo_data, 40) if "genindex" not in d["id"]])
    with pytest.raises(DemoDataError, match=r"too few documents to train on: .*'lq': 0.*fix: rebuild the corpus "
                                            r"with `finephrase demo-data --force`") as e:
        build_demo_data(str(tmp_path / "demo"))
    assert isinstance(e.value, FinephraseError) and "--positive" not in str(e.value)
    assert not list((tmp_path / "demo").glob("*.partial"))
