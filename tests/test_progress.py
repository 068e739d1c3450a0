"""finephrase.progress without a run: the stderr capture (real file descriptors, a real child process), the log
filter, the stage lines read from a folder laid out as datatrove lays out its logging dirs. The live display of a
real run is tested in tests/test_report_html.py (it shares that module's run)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

from finephrase.progress import LogFilter, PlainDisplay, RunWatch, captured_stderr, publish, stage_line


def test_captured_stderr_logs_everything_and_shows_warnings_errors_and_tracebacks(tmp_path):
    shown = []
    log = tmp_path / "logs" / "console.log"
    before = os.fstat(2)
    with captured_stderr(str(log), shown.append):
        os.write(2, b"2026-12-01 20:33:56.292 | INFO     | datatrove:run:1 - Launching pipeline for rank=0\n")
        # a child process inherits the pipe as its fd 2
        subprocess.run([sys.executable, "-c", "import sys; sys.stderr.write("
                        "'2026-12-01 20:33:57.000 | WARNING  | x:y:2 - from a child\\n  its second line\\n')"],
                       check=True)
        os.write(2, b"2026-12-01 20:33:58.000 | INFO     | x:y:3 - stats\nTraceback (most recent call last)\n  boom\n")
    assert shown == ["2026-12-01 20:33:57.000 | WARNING  | x:y:2 - from a child", "  its second line",
                     "Traceback (most recent call last)", "  boom"]
    text = log.read_text()
    assert "Launching pipeline for rank=0" in text and "from a child" in text and "stats" in text
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)  # fd 2 is restored


def test_log_filter_follows_the_record_level():
    keep = LogFilter()
    assert not keep("[NODE 1] 2026-12-01 20:33:56.292 | SUCCESS  | a:b:1 - done")
    assert not keep("  a stats line")
    assert keep("2026-12-01 20:33:56.292 | ERROR    | a:b:1 - failed")
    assert keep("  detail of the error")


def test_stage_lines_from_datatroves_folders(tmp_path, monkeypatch):
    from finephrase.pipeline.build import RunPaths, Stage

    out = tmp_path / "out"
    logs = out / ".finephrase" / "logs"
    watch = RunWatch(RunPaths(str(out)))
    watch.set_stages([Stage("filter", [], 1), Stage("rephrase", [], 2), Stage("rows", [], 1)])
    (logs / "filter" / "completions").mkdir(parents=True)
    (logs / "filter" / "completions" / "00000").touch()
    (logs / "filter" / "stats.json").write_text(json.dumps([{"name": "writer", "stats": {"total": 7}}]))
    (logs / "rephrase" / "completions").mkdir(parents=True)
    (logs / "rephrase" / "executor.json").write_text("{}")
    (logs / "rephrase" / "completions" / "00001").touch()
    monkeypatch.setenv("FINEPHRASE_PROGRESS_DIR", str(out / ".finephrase" / "progress"))
    publish("rephrase-00000", {"documents": 3, "requests": 5, "ok": 4, "failed": 1, "retried": 2, "in_flight": 2,
                               "prompt_tokens": 900, "completion_tokens": 300, "replicas": 2, "replicas_healthy": 1})
    rows = {r["name"]: r for r in watch.poll()}
    assert [r["state"] for r in rows.values()] == ["done", "running", "waiting"]
    line = stage_line(rows["rephrase"])
    assert line.startswith("> rephrase           1/2 tasks") and "documents 3/7" in line, line
    assert "4 done, 2 in flight, 2 retried, 1 failed" in line and "replicas 1/2 healthy" in line, line
    stream = io.StringIO()
    display = PlainDisplay(watch, stream, interval=60)
    display.tick()
    display.tick()  # nothing moved: no new line
    assert stream.getvalue().splitlines() == [stage_line(rows["filter"])]  # the rephrase stage ran < 3 s


CHILD = r"""
import json, os, sys, time
from finephrase.pipeline.build import RunPaths, Stage
from finephrase.progress import run_console

out = sys.argv[1]
logs = os.path.join(out, ".finephrase", "logs", "rows")
with run_console(RunPaths(out)) as watch:
    watch.set_stages([Stage("rows", [], 1)])
    os.makedirs(os.path.join(logs, "completions"))
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # what llama-cpp-python does to fds 1 and 2 while it loads a model, whatever thread prints
    with open(os.path.join(logs, "stats.json"), "w") as f:
        json.dump([{"name": "writer", "stats": {"total": 1}}], f)
    time.sleep(2.5)  # the display's thread ticks (once a second) while fd 1 points at /dev/null
    os.dup2(saved, 1)
print("after the run")
"""


def test_a_progress_line_survives_a_library_pointing_fd_1_elsewhere(tmp_path):
    proc = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=60, check=True)
    assert proc.stdout.splitlines() == ["✓ rows               1/1 tasks  0:00", "after the run"], proc.stdout
