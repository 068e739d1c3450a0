"""What ``finephrase run`` shows while it runs: one progress line per stage instead of datatrove's log.

:func:`run_console` wraps a run. Unless ``verbose``:

* everything written to file descriptor 2 by this process and by every process it starts (datatrove's
  loguru sinks, its pool workers, the llama.cpp servers) goes through a pipe into
  ``OUTPUT/.finephrase/logs/console.log`` (complete, for debugging; each task's own log stays in
  ``logs/<stage>/logs/``); only warnings and errors (loguru's ``WARNING``/``ERROR``/``CRITICAL`` records, and
  Python tracebacks) reach the console;
* a display shows one line per stage: done/total tasks (the completion markers datatrove writes), elapsed time,
  ETA; for the rephrase stage, documents done of the stage's input, requests completed, failed, retried and in
  flight, prompt and completion tokens/s (overall and over the last seconds) and healthy replicas, published
  every second by the rephrase step (:func:`publish`, called by
  :class:`finephrase.inference.runner.loop.LeanInferenceRunner`) into ``OUTPUT/.finephrase/progress/``.

On a terminal the display is a rich ``Live`` region redrawn in place. When stdout is not a terminal (CI, a pipe,
``| tee``) it prints plain lines, no escape codes: one when a stage starts and when it ends, and for a running
stage at most one every ``FINEPHRASE_PROGRESS_INTERVAL`` seconds (default 30) when something moved.
``verbose`` (``finephrase run -v``) changes nothing: datatrove's log is printed as before.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time

PROGRESS_ENV = "FINEPHRASE_PROGRESS_DIR"
INTERVAL_ENV = "FINEPHRASE_PROGRESS_INTERVAL"
LOG_HEADER_RE = re.compile(r"^(?:\[NODE \d+\] )?\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \| (\w+)\s*\|")
SHOWN_LEVELS = ("WARNING", "ERROR", "CRITICAL")
START_AFTER_S = 3  # a running stage gets a plain line once it has run this long


def publish(name: str, data: dict) -> None:
    """Write ``data`` as ``<progress dir>/<name>.json`` (atomically), if a run console watches this run."""
    folder = os.environ.get(PROGRESS_ENV)
    if not folder:
        return
    try:
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, name + ".json")
        with open(path + ".tmp", "w") as f:
            json.dump({**data, "time": time.time()}, f)
        os.replace(path + ".tmp", path)
    except OSError:
        pass  # progress is never worth failing a run for


# --- the log filter ----------------------------------------------------------------------------------------------


class LogFilter:
    """Decides, line by line, what of the captured stderr reaches the console: a loguru record's lines follow
    its level; a traceback is shown; anything else follows the record before it."""

    def __init__(self):
        self.shown = False

    def __call__(self, line: str) -> bool:
        m = LOG_HEADER_RE.match(line)
        if m:
            self.shown = m.group(1).upper() in SHOWN_LEVELS
        elif line.startswith("Traceback (most recent call last)"):
            self.shown = True
        return self.shown


def _pump(read_fd: int, log, show, keep: LogFilter, marks: dict) -> None:
    """Copy the pipe to the log file; hand the lines ``keep`` accepts to ``show``. Runs until the pipe closes.
    A line that is a key of ``marks`` only sets its event (everything written before it has been handled)."""
    with os.fdopen(read_fd, "rb", buffering=0) as pipe:
        pending = b""
        while chunk := pipe.read(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode("utf-8", "replace")
                if line in marks:
                    marks[line].set()
                    continue
                try:
                    log.write(line + "\n")
                    log.flush()
                    if keep(line):
                        show(line)
                except Exception:  # noqa: BLE001 - the pump must never stop: writers would block
                    pass


@contextlib.contextmanager
def captured_stderr(log_path: str, show):
    """File descriptor 2 -> a pipe -> ``log_path`` (everything) and ``show(line)`` (warnings and errors).

    Processes started inside keep the pipe after the block (datatrove's forkserver lives as long as this
    process): the pump thread (a daemon) keeps copying what they write; fd 2 itself is restored on exit."""
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    log = open(log_path, "a", encoding="utf-8")
    sys.stderr.flush()
    saved = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    mark, drained = f"finephrase-drained-{os.getpid()}-{time.monotonic_ns()}", threading.Event()
    threading.Thread(target=_pump, args=(read_fd, log, show, LogFilter(), {mark: drained}), daemon=True,
                     name="stderr-pump").start()
    try:
        yield os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")
    finally:
        sys.stderr.flush()
        os.write(2, f"{mark}\n".encode())
        drained.wait(timeout=5)  # what was written before this point is logged and shown, in order
        os.dup2(saved, 2)
        os.close(saved)


# --- what the run has done ---------------------------------------------------------------------------------------


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 \
        else f"{seconds // 60}:{seconds % 60:02d}"


def _read_json(path: str):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


class RunWatch:
    """The state of a run's stages, read from its output folder: datatrove's ``executor.json`` (started),
    ``completions/`` (tasks done) and ``stats.json`` (finished), and the rephrase step's published progress."""

    def __init__(self, paths):
        self.paths = paths  # a RunPaths (finephrase.pipeline.build is not imported: its steps import this module)
        self.stages: list[tuple[str, int]] = []
        self.started: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.earlier: set[str] = set()  # finished by an earlier run (resumed)
        self._rates: list[tuple[float, int, int]] = []  # (time, prompt tokens, completion tokens)

    def set_stages(self, stages) -> None:
        self.stages = [(s.name, s.tasks) for s in stages]
        self.earlier = {name for name, _ in self.stages
                        if os.path.exists(os.path.join(self.paths.logs(name), "stats.json"))}

    def _input_documents(self, index: int) -> int | None:
        """Documents the stage at ``index`` reads: what the stage before it wrote (its last step's ``total``)."""
        if index == 0:
            return None
        stats = _read_json(os.path.join(self.paths.logs(self.stages[index - 1][0]), "stats.json"))
        return stats[-1]["stats"].get("total") if stats else None

    def rephrase_progress(self) -> dict | None:
        """The rephrase step's counters, summed over its tasks (``None`` before it published any)."""
        folder = self.paths.w("progress")
        parts = [_read_json(os.path.join(folder, f)) for f in sorted(os.listdir(folder))
                 if f.endswith(".json")] if os.path.isdir(folder) else []
        parts = [p for p in parts if p]
        if not parts:
            return None
        out = {k: sum(p.get(k, 0) for p in parts) for k in ("documents", "requests", "ok", "failed", "retried",
                                                            "in_flight", "prompt_tokens", "completion_tokens",
                                                            "replicas_healthy", "replicas")}
        now = time.time()
        self._rates = [r for r in self._rates if now - r[0] <= 10]
        self._rates.append((now, out["prompt_tokens"], out["completion_tokens"]))
        t0, p0, c0 = self._rates[0]
        out["now"] = ((out["prompt_tokens"] - p0) / (now - t0), (out["completion_tokens"] - c0) / (now - t0)) \
            if now - t0 >= 2 else None
        return out

    def poll(self) -> list[dict]:
        """One dict per stage: name, tasks, done, state (waiting/running/done/earlier), elapsed, eta, detail."""
        now, out = time.monotonic(), []
        for i, (name, tasks) in enumerate(self.stages):
            logs = self.paths.logs(name)
            finished = os.path.exists(os.path.join(logs, "stats.json"))
            done = self.paths.completed_tasks(name)
            if name not in self.started and (os.path.exists(os.path.join(logs, "executor.json")) or finished):
                self.started[name] = now
            if finished and name not in self.ended:
                self.ended[name] = now
            state = "earlier" if name in self.earlier else "done" if finished else \
                "running" if name in self.started else "waiting"
            elapsed = (self.ended.get(name, now) - self.started[name]) if name in self.started else None
            row = {"name": name, "tasks": tasks, "done": tasks if finished else done, "state": state,
                   "elapsed": elapsed, "eta": None, "detail": ""}
            if state == "running":
                self._running_detail(row, i)
            out.append(row)
        return out

    def _running_detail(self, row: dict, index: int) -> None:
        if row["done"] and row["elapsed"]:
            row["eta"] = row["elapsed"] / row["done"] * (row["tasks"] - row["done"])
        if row["name"] != "rephrase":
            return
        p, total = self.rephrase_progress(), self._input_documents(index)
        if p is None:
            row["detail"] = "waiting for the generator"
            return
        row["moved"] = (p["documents"], p["ok"], p["failed"])
        if total and p["documents"] and row["elapsed"]:
            row["eta"] = row["elapsed"] / p["documents"] * max(0, total - p["documents"])
        overall = p["completion_tokens"] / row["elapsed"] if row["elapsed"] else 0
        now = f", now {p['now'][1]:.0f}" if p["now"] else ""
        row["detail"] = (f"documents {p['documents']}/{total if total is not None else '?'} · requests "
                         f"{p['ok']} done, {p['in_flight']} in flight, {p['retried']} retried, {p['failed']} failed · "
                         f"generated tokens/s {overall:.0f}{now} (prompt {p['prompt_tokens']:,}, generated "
                         f"{p['completion_tokens']:,}) · replicas {p['replicas_healthy']}/{p['replicas']} healthy")


def stage_line(row: dict) -> str:
    """A stage as one plain line."""
    mark = {"waiting": " ", "running": ">", "done": "✓", "earlier": "✓"}[row["state"]]
    text = f"{mark} {row['name']:<18} {row['done']}/{row['tasks']} tasks"
    if row["state"] == "earlier":
        return text + "  (done by an earlier run)"
    if row["elapsed"] is not None:
        text += f"  {_clock(row['elapsed'])}"
    if row["state"] == "running":
        text += f"  ETA {_clock(row['eta'])}"
    return text + (f"  {row['detail']}" if row["detail"] else "")


# --- the displays ------------------------------------------------------------------------------------------------


class PlainDisplay:
    """Plain lines for a stdout that is not a terminal: a stage's start and end, and while it runs one line at most
    every ``interval`` seconds when it moved. Warnings and errors go to the real stderr."""

    def __init__(self, watch: RunWatch, stream, interval: float):
        self.watch, self.stream, self.interval = watch, stream, interval
        self.err = sys.__stderr__
        self.printed: dict[str, tuple] = {}  # stage -> (state, moved, time) of its last line
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="progress")

    def show(self, line: str) -> None:
        self.err.write(line + "\n")
        self.err.flush()

    def _due(self, row: dict, now: float) -> bool:
        """A stage's line is due when it ended, when it has run for a few seconds (quick stages only get their
        end line), and while it runs when it moved and the last line is ``interval`` seconds old."""
        if row["state"] == "waiting" or (row["state"] == "running" and (row["elapsed"] or 0) < START_AFTER_S):
            return False
        last = self.printed.get(row["name"])
        if last is None or last[0] != row["state"]:
            return True
        moved = (row["done"], row.get("moved")) != last[1]
        return row["state"] == "running" and moved and now - last[2] >= self.interval

    def tick(self) -> None:
        with self._lock:
            now = time.monotonic()
            for row in self.watch.poll():
                if self._due(row, now):
                    self.stream.write(stage_line(row) + "\n")
                    self.stream.flush()
                    self.printed[row["name"]] = (row["state"], (row["done"], row.get("moved")), now)

    def _loop(self) -> None:
        while not self._stop.wait(1.0):
            self.tick()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.tick()


class LiveDisplay:
    """A rich ``Live`` region on a terminal, redrawn twice a second; warnings and errors print above it."""

    def __init__(self, watch: RunWatch, stream):
        from rich.console import Console
        from rich.live import Live

        self.watch = watch
        self.console = Console(file=stream)
        self.live = Live(get_renderable=self.render, console=self.console, refresh_per_second=2, transient=False,
                         redirect_stdout=False, redirect_stderr=False)

    def render(self):
        from rich.text import Text

        rows = self.watch.poll()
        if not rows:
            return Text("starting the generator ...")
        lines = []
        for row in rows:  # a running stage's details on a line of their own: terminals are narrower than CI logs
            detail, row["detail"] = row["detail"], ""
            lines += [stage_line(row)] + ([f"    {detail}"] if detail else [])
        return Text("\n".join(lines))

    def show(self, line: str) -> None:
        from rich.text import Text

        self.console.print(Text(line, style="yellow"))

    def start(self) -> None:
        self.live.start()

    def stop(self) -> None:
        self.live.stop()


def _own_copy(stream):
    """The display's own file descriptor for ``stream``: a library that points fd 1 elsewhere for a moment
    (llama-cpp-python sends fds 1 and 2 to /dev/null while it loads a model, from whatever thread) must not swallow
    a progress line written meanwhile by the display's thread."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        return stream  # not a file (a test's StringIO)
    stream.flush()
    return os.fdopen(os.dup(fd), "w", buffering=1, encoding="utf-8", errors="replace")


@contextlib.contextmanager
def run_console(paths, verbose: bool = False, stream=None):
    """Show the progress of the run writing to ``paths`` (a :class:`finephrase.pipeline.build.RunPaths`; see the module
    docstring) while the block runs; yields the :class:`RunWatch` (call ``set_stages`` once the stages are built),
    or ``None`` when ``verbose`` (nothing changes)."""
    if verbose:
        yield None
        return
    watch = RunWatch(paths)
    stream = stream or sys.stdout
    folder = watch.paths.w("progress")
    if os.path.isdir(folder):  # an earlier run's numbers
        for f in os.listdir(folder):
            os.remove(os.path.join(folder, f))
    previous = os.environ.get(PROGRESS_ENV)
    os.environ[PROGRESS_ENV] = folder
    isatty = getattr(stream, "isatty", lambda: False)()
    own = _own_copy(stream)
    display = LiveDisplay(watch, own) if isatty else \
        PlainDisplay(watch, own, float(os.environ.get(INTERVAL_ENV) or 30))
    try:
        with captured_stderr(watch.paths.w("logs", "console.log"), display.show) as real_stderr:
            display.err = real_stderr
            display.start()
            try:
                yield watch
            finally:
                display.stop()
    finally:
        if own is not stream:
            own.close()
        if previous is None:
            os.environ.pop(PROGRESS_ENV, None)
        else:
            os.environ[PROGRESS_ENV] = previous
