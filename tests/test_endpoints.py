"""The endpoints file: servers registering and leaving at once (separate processes) lose no one's line."""

from __future__ import annotations

import multiprocessing
import signal

import pytest

from finephrase.inference.endpoints import deregister, read_endpoints_file, register


def _join_and_maybe_leave(path: str, i: int) -> None:
    register(path, [f"http://node{i}:8080"])
    if i % 2:
        deregister(path, [f"node{i}:8080"])


def test_concurrent_registrations_and_removals_keep_every_other_line(tmp_path):
    path = str(tmp_path / "run" / "endpoints.txt")  # its folder does not exist yet
    register(path, ["static:1"])
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_join_and_maybe_leave, args=(path, i)) for i in range(24)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    expected = {"http://static:1"} | {f"http://node{i}:8080" for i in range(0, 24, 2)}
    assert sorted(read_endpoints_file(path)) == sorted(expected)


def test_a_missing_file_is_no_endpoint_yet_and_comments_are_ignored(tmp_path):
    path = tmp_path / "endpoints.txt"
    assert read_endpoints_file(str(path)) == []
    path.write_text("# server jobs register here\nhost-a:80  # gpu 0\n\nhttp://host-b:81/v1\n")
    assert read_endpoints_file(str(path)) == ["http://host-a:80", "http://host-b:81"]


def test_serve_advertise_registers_an_address_other_hosts_reach_and_leaves_on_ctrl_c(tmp_path):
    """`finephrase serve --advertise HOST`: the servers listen on every interface (127.0.0.2 stands for another
    node's view of this one: a server bound to 127.0.0.1 refuses it), HOST:port is what the endpoints file holds,
    a generation through it comes back, and Ctrl-C takes the line out of the file."""
    import json
    import subprocess
    import sys
    import time
    import urllib.request

    endpoints = tmp_path / "endpoints.txt"
    proc = subprocess.Popen([sys.executable, "-m", "finephrase.cli.main", "serve", "--replicas", "1", "--n-ctx", "1024",
                             "--advertise", "127.0.0.2", "--endpoints-file", str(endpoints)],
                            stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "wb"))
    try:
        deadline = time.monotonic() + 180  # a llama.cpp replica is ready in seconds
        while not read_endpoints_file(str(endpoints)):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-2000:]
            time.sleep(0.5)
        [url] = read_endpoints_file(str(endpoints))
        assert url.startswith("http://127.0.0.2:")
        body = json.dumps({"messages": [{"role": "user", "content": "Say OK."}], "max_tokens": 2}).encode()
        req = urllib.request.Request(f"{url}/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert r.status == 200 and json.loads(r.read())["choices"]
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) == 0
    assert read_endpoints_file(str(endpoints)) == []


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_in_the_background_stops_on_a_signal_and_leaves_the_file(tmp_path, sig):
    """`finephrase serve ... &` from a script starts with SIGINT ignored (background jobs do): `kill` (SIGTERM) and
    `kill -INT` both stop it as Ctrl-C does, and its line leaves the endpoints file."""
    import subprocess
    import sys
    import time

    endpoints = tmp_path / "endpoints.txt"
    proc = subprocess.Popen([sys.executable, "-m", "finephrase.cli.main", "serve", "--replicas", "1", "--n-ctx", "1024",
                             "--endpoints-file", str(endpoints)], stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "serve.log", "wb"),
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.monotonic() + 180
        while not read_endpoints_file(str(endpoints)):
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()[-2000:]
            time.sleep(0.5)
    finally:
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0, (tmp_path / "serve.log").read_text()[-2000:]
    assert read_endpoints_file(str(endpoints)) == []
