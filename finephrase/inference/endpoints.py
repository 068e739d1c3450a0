"""The endpoints file and the readiness probe: how servers join a run, and how a client knows one is ready.

The endpoints file (``generator.endpoints_file``, by default ``OUTPUT/.finephrase/endpoints.txt``) holds one
``host:port`` per line (``#`` starts a comment). A server appends its line when it is ready and removes it when it
goes, under an exclusive ``flock`` of the file (the sbatch templates of ``launch/`` do the same with ``flock(1)``);
the replica pool re-reads it while a run goes on. A server is ready when a 1-token chat completion comes back
(:data:`READY_REQUEST`): the model is loaded and generates, not only the HTTP port.

Imports: the standard library only; ``finephrase.inference.client`` and ``finephrase.inference.servers`` use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

# the one readiness probe: a 1-token generation (the pool's health checks, the embedded replicas' start-up)
READY_REQUEST = {"messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 1, "temperature": 0.0}


def normalize_endpoint(e: str) -> str:
    e = e.strip().rstrip("/")
    if not e.startswith(("http://", "https://")):
        e = "http://" + e
    return e.removesuffix("/v1")


def read_endpoints_file(path: str) -> list[str]:
    """The endpoints registered in ``path`` (``http://host:port``), none when the file is not there yet."""
    try:
        with open(path) as f:
            lines = [line.split("#", 1)[0].strip() for line in f]
    except FileNotFoundError:
        return []
    return [normalize_endpoint(line) for line in lines if line]


@contextlib.contextmanager
def _locked(path: str):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0)
            yield f
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def register(path: str, addresses: list[str]) -> None:
    """Append ``host:port`` lines to the endpoints file (under its lock)."""
    with _locked(path) as f:
        f.seek(0, os.SEEK_END)
        f.write("".join(f"{a.removeprefix('http://')}\n" for a in addresses))


def deregister(path: str, addresses: list[str]) -> None:
    """Remove these ``host:port`` lines from the endpoints file (under its lock); other servers' lines stay."""
    gone = {a.removeprefix("http://") for a in addresses}
    with _locked(path) as f:
        kept = [line for line in f.read().splitlines(keepends=True) if line.strip() not in gone]
        f.seek(0)
        f.truncate()
        f.writelines(kept)
