"""Process lifetime: nothing a run starts outlives the run's main process, however that process dies.

A run's main process (``finephrase run``) starts other processes:

- per pipeline stage, datatrove's ``LocalPipelineExecutor.run`` creates a ``multiprocess.Manager()``: a
  server process **forked** from the main process (it keeps its command line, ``python -m finephrase.cli.main
  run …``). Its main thread waits on an event that only ``Manager.shutdown()`` sets, its other thread on
  ``accept()``: when the main process is killed (``kill -9``, OOM killer, preemption) it waits forever,
  orphaned;
- with ``workers > 1``, multiprocess's *forkserver* (spawned by the main process) and the pool workers it
  forks. The forkserver would exit when the main process's end of its "alive" pipe closes, but every worker
  holds a copy of that end: after a ``kill -9`` of the main process, forkserver, workers (blocked on their
  task queue or still running a task) and multiprocess's resource tracker all stay;
- the embedded llama.cpp servers (``subprocess.Popen``).

Linux's ``PR_SET_PDEATHSIG`` makes the kernel signal a process when its parent dies — the only mechanism
that still works when the parent gets SIGKILL (nothing runs in the parent then). Two things to know:

- the signal fires when the parent **thread** that forked the child exits, not the parent process: it is
  only set for children forked from their parent's main thread (which lives as long as the process);
- the parent may die between ``fork()`` and ``prctl()``: after setting it, the child compares
  ``os.getppid()`` with the pid that forked it and kills itself if they differ.

:func:`children_die_with_this_process` (called by ``run_local``) sets it up for every process forked by
Python in this process from now on (an ``os.register_at_fork`` hook), and, through an environment variable
naming the main process and the forkserver's preload list, for Python processes the run starts with fork +
exec that import this module (the forkserver: it dies with the main process, its workers with it), and so
for their children in turn. :func:`die_with_parent` is the same thing for one child, to call from
``subprocess.Popen(preexec_fn=...)`` (see :func:`preexec_die_with_parent`).

On systems without ``prctl`` (not Linux) everything here is a no-op.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading

PR_SET_PDEATHSIG = 1

#: set to "<pid>:<start time>" of the run's main process by :func:`children_die_with_this_process`; a Python
#: process started by the run that imports this module (multiprocess's forkserver, through its preload list)
#: dies with the main process and makes its own children die with it (see the end of this module)
ENV_VAR = "FINEPHRASE_CHILDREN_DIE_WITH_PARENT"


def _load_prctl():
    # resolved once, at import, in the parent: a child between fork and exec must not dlopen (locks)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_prctl = _load_prctl() if os.name == "posix" else None


def supported() -> bool:
    """Whether this system has ``prctl(PR_SET_PDEATHSIG)`` (Linux)."""
    return _prctl is not None and hasattr(os, "getppid")


def die_with_parent(parent_pid: int | None = None, sig: int = signal.SIGKILL) -> bool:
    """Make the kernel send ``sig`` (default SIGKILL) to this process when its parent dies.

    ``parent_pid`` is the pid of the process that started this one, read *before* the fork: if the parent
    already died (so this process was re-parented and the signal would never come), this process kills
    itself right away. Safe between fork and exec (no allocation-heavy work, no imports, no locks).
    Returns False where unsupported.
    """
    if not supported():
        return False
    _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)
    return True


def preexec_die_with_parent(sig: int = signal.SIGKILL):
    """A ``preexec_fn`` for ``subprocess.Popen``: the child dies with this process.

    Call it in the parent, in the thread that calls ``Popen``: ``Popen(cmd, preexec_fn=preexec_die_with_parent())``.
    The death signal is tied to the *thread* that forks; start long-lived children from the main thread (or
    a thread that outlives them).
    """
    parent = os.getpid()

    def preexec() -> None:
        die_with_parent(parent, sig)

    return preexec


# ---------------------------------------------------------------- every fork of this process
_enabled = False
_registered = False
_pid = os.getpid()  # this process, i.e. the parent of anything it forks (updated in each child)
_forked_from_main_thread = True


def _before_fork() -> None:
    global _forked_from_main_thread
    _forked_from_main_thread = threading.current_thread() is threading.main_thread()


def _after_fork_in_child() -> None:
    global _pid
    parent, _pid = _pid, os.getpid()
    if _enabled and _forked_from_main_thread:
        die_with_parent(parent)


def children_die_with_this_process() -> None:
    """From now on, every process this process forks (``os.fork``, multiprocess's fork and forkserver start
    methods, ``multiprocess.Manager()``), and every process those fork in turn, is killed (SIGKILL) when its
    parent dies — so all of them when this process dies, even by SIGKILL. Idempotent.

    Processes started with ``subprocess`` (fork + exec) are not covered unless they pass
    ``preexec_fn=preexec_die_with_parent()``.
    """
    global _enabled, _registered, _pid
    if not supported():
        return
    _pid = os.getpid()
    _enabled = True
    if not _registered:
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
        _registered = True
    os.environ[ENV_VAR] = f"{os.getpid()}:{_start_time(os.getpid())}"
    _preload_in_forkserver()


def _stat_fields(pid: int) -> list[bytes]:
    """/proc/PID/stat after the command name (state, ppid, ...; the start time is the 20th); [] when unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rpartition(b")")[2].split()
    except OSError:
        return []


def _start_time(pid: int) -> str:
    """The process's start time (clock ticks after boot, /proc/PID/stat): tells a pid's reuse apart."""
    fields = _stat_fields(pid)
    return fields[19].decode() if len(fields) > 19 else ""


def process_identity(pid: int) -> str | None:
    """``BOOT_ID:START_TICKS`` of a live process (not a zombie), or None when there is none (or no /proc): equal
    identities are the same process, never a later one given the same pid (even after a reboot)."""
    fields = _stat_fields(pid)
    if len(fields) <= 19 or fields[0] in (b"Z", b"X"):
        return None
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = ""
    return f"{boot}:{fields[19].decode()}"


def _same_process_alive(pid: int, start: str) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not start or _start_time(pid) == start


def _preload_in_forkserver() -> None:
    """multiprocess's forkserver is spawned (fork + exec: the hook above is gone) and forks the pool workers:
    have it import this module, which, seeing ENV_VAR, makes the forkserver die with this process and its
    workers with the forkserver. (Left alone, the forkserver outlives this process: each worker holds the
    write end of the pipe whose EOF would tell the forkserver to exit.) Effective for a forkserver started
    after this call."""
    for name in ("multiprocess", "multiprocessing"):
        try:
            mod = __import__(f"{name}.forkserver", fromlist=["_forkserver"])
        except ImportError:
            continue
        server = getattr(mod, "_forkserver", None)
        preload = list(getattr(server, "_preload_modules", None) or ["__main__"])
        if __name__ not in preload:
            mod.set_forkserver_preload(preload + [__name__])


def _inherit_from_run(value: str) -> None:
    """In a Python process started (fork + exec) by a run that imports this module: die with the run's main
    process if it is this process's parent, or now if it is already gone; children die with this process."""
    global _enabled, _registered
    pid_text, _, start = value.partition(":")
    try:
        main_pid = int(pid_text)
    except ValueError:
        return
    if main_pid == os.getpid():
        return
    if os.getppid() == main_pid:
        die_with_parent(main_pid)
    elif not _same_process_alive(main_pid, start):
        os.kill(os.getpid(), signal.SIGKILL)  # the run that started this process is over
    _enabled = True
    if not _registered:
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
        _registered = True


if os.environ.get(ENV_VAR) and supported():
    _inherit_from_run(os.environ[ENV_VAR])
