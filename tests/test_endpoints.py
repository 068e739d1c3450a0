"""The endpoints file: servers registering and leaving at once (separate processes) lose no one's line."""

from __future__ import annotations

import multiprocessing

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
