"""Run a server command whose processes must all go when it goes: ``python -m finephrase.inference.servers.group_leader
-- CMD ...``.

A vLLM server starts an engine-core process and a worker of its own. Linux's parent-death signal
(:mod:`finephrase.lifetime`) reaches only the direct child of a run, so a run killed with SIGKILL would leave those
grandchildren behind. This leader is started in a process group of its own with SIGTERM as its parent-death
signal, starts ``CMD`` in that group, and:

* on SIGTERM or SIGINT (finephrase stopping it, or finephrase dying): terminates ``CMD``, waits up to
  ``GRACE_S`` seconds, then kills the whole group;
* when ``CMD`` exits: kills what it left in the group and exits the same way (same code, or the same signal), so
  the supervisor reports ``CMD``'s own exit status.

Killed itself with SIGKILL (a test's fault injection, the OOM killer), it cannot act: the supervisor then kills
the group (:meth:`finephrase.inference.servers.embedded.EmbeddedServers._kill_group`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

GRACE_S = 10.0


def _group_members() -> list[int]:
    """The other live processes of this process group (from /proc)."""
    group, me, out = os.getpgid(0), os.getpid(), []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == me:
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().decode(errors="replace").rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[2]) == group and fields[0] not in ("Z", "X"):
            out.append(int(name))
    return out


def _kill_group_and_exit(code: int) -> None:
    """SIGKILL what the command left in the group, then end as the command ended (its code, or its signal)."""
    for pid in _group_members():
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if code < 0:
        if -code not in (signal.SIGKILL, signal.SIGSTOP):  # those two cannot be handled (signal() refuses them)
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--"]:
        argv = argv[1:]
    from finephrase.lifetime import die_with_parent

    die_with_parent(os.getppid(), signal.SIGTERM)
    if os.getpgid(0) != os.getpid():  # started without a group of its own: make one (never empty the caller's)
        os.setpgid(0, 0)
    child = subprocess.Popen(argv)
    stopping = []

    def stop(signum, _frame):
        stopping.append(signum)
        child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while True:
        try:
            code = child.wait(timeout=GRACE_S if stopping else None)
            break
        except subprocess.TimeoutExpired:  # asked to stop, and the server did not within GRACE_S
            child.kill()
    _kill_group_and_exit(code)


if __name__ == "__main__":
    main()
