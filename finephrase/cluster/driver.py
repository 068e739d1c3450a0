"""The driver of a Ray launch: the ``finephrase launch --executor ray`` process that runs the stages (in the
foreground). Its Ray work (datatrove's ``RankWorker`` actors and the tasks they run) belongs to it: Ray ends a
driver's non-detached actors and tasks when the driver ends, however it ends.

- In the driver (:func:`stop_on_sigterm`): SIGTERM unwinds like Ctrl-C: datatrove's Ray executor cancels its tasks
  and kills its actors on the way out, the driver disconnects (``ray.shutdown``: Ray ends whatever is left of its
  job) and says in one line that the run stopped; a clean-up longer than ``STOP_GRACE`` seconds (many running
  tasks) is cut short by exiting: Ray ends the tasks of a driver that exits. The completion markers of the
  finished tasks and the rephrase checkpoints stay, so a relaunch resumes.
- The ledger records the driver (:func:`this_driver`: host, pid, its boot id and start time, the Ray address);
  ``finephrase stop`` (:func:`stop_driver`) sends it SIGTERM on the same host, never to a later process given the
  same pid, waits for it to end, and sends SIGKILL after ``timeout`` (as ``ray job stop`` does): Ray then ends
  its tasks with it. ``finephrase status`` (:func:`describe`) says whether it runs.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager

from finephrase.errors import ClusterError
from finephrase.cluster.jobs import Ledger, RayDriver
from finephrase.lifetime import process_identity
from finephrase.redact import redact_secrets

KILL_WAIT = 15.0  # seconds to wait for the driver's end after SIGKILL
STOP_GRACE = 10.0  # seconds the driver's clean-up may take after SIGTERM before it exits anyway


class StopSignal(KeyboardInterrupt):
    """SIGTERM in a Ray launch's driver, raised like Ctrl-C's KeyboardInterrupt (which no ``except Exception``
    swallows) so that everything on the way out runs its clean-up. (Ray may re-raise it as a plain
    KeyboardInterrupt: :func:`stop_on_sigterm` also keeps the signal's number.)"""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextmanager
def stop_on_sigterm(grace: float = STOP_GRACE, last_words: Callable[[int], None] | None = None):
    """While inside: SIGTERM raises :class:`StopSignal` in the main thread (once: a second one is ignored). Replaces
    the handler ``ray.init`` installs, which aborts the process. Yields the list the signals received are appended
    to. The clean-up on the way out gets ``grace`` seconds (datatrove's Ray executor waits about 2 s per running
    task); then the process calls ``last_words(signum)`` and exits (128 + signum) without finishing it: Ray ends the
    actors and tasks of a driver that exits."""
    received: list[int] = []

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        received.append(signum)
        timer = threading.Timer(grace, _exit_now, (signum, last_words))
        timer.daemon = True
        timer.start()
        raise StopSignal(signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield received
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def _exit_now(signum: int, last_words: Callable[[int], None] | None) -> None:
    try:
        if last_words:
            last_words(signum)
    finally:
        os._exit(128 + signum)


def this_driver(address: str | None) -> RayDriver:
    """This process, as the ledger records a Ray launch's driver."""
    return RayDriver(pid=os.getpid(), host=socket.gethostname(), identity=process_identity(os.getpid()) or "",
                     address=redact_secrets(address) if address else None)


def _running(driver: RayDriver) -> bool:
    """The recorded process is alive on this machine (not a zombie, not a later process with its pid)."""
    return bool(driver.identity) and process_identity(driver.pid) == driver.identity


def _here(driver: RayDriver) -> bool:
    return driver.host == socket.gethostname()


def describe(driver: RayDriver) -> str:
    """One line for ``finephrase status``: running, ended (how), or on another host (not checked from here)."""
    where = f"pid {driver.pid} on {driver.host}"
    if driver.ended:
        return f"{driver.ended} ({where})"
    if not _here(driver):
        return f"{where}: run `finephrase status` there to see whether it runs"
    return f"running ({where})" if _running(driver) else f"ended without a word ({where}: killed?)"


def last_driver(ledger: Ledger) -> RayDriver | None:
    """The driver of the run's last Ray launch (an earlier one ended before it started), or None."""
    return next((launch.driver for launch in reversed(ledger.launches) if launch.driver), None)


def check_no_live_driver(ledger: Ledger, output: str) -> None:
    """Refuse a launch while the run's Ray driver still runs on this machine (two drivers would run the same
    tasks)."""
    driver = last_driver(ledger)
    if driver and not driver.ended and _here(driver) and _running(driver):
        raise ClusterError(f"a Ray launch of this run is still running (driver pid {driver.pid} on {driver.host})\n"
                           f"wait for it (`finephrase status {output}`) or stop it (`finephrase stop {output}`)")


def _wait_gone(driver: RayDriver, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while _running(driver):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def _signal(driver: RayDriver, sig: int) -> None:
    """Send ``sig`` to the recorded driver if it still runs. Through a pidfd where Linux has them: the identity is
    checked while the fd holds the process, so a later process given the same pid is never signalled."""
    try:
        fd = os.pidfd_open(driver.pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        fd = None  # no pidfd (not Linux >= 5.3): the identity check just before the signal
    try:
        if _running(driver):
            signal.pidfd_send_signal(fd, sig) if fd is not None else os.kill(driver.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        raise ClusterError(f"not allowed to signal the Ray driver (pid {driver.pid}): another user runs it\n"
                           f"run `finephrase stop` as that user (or `kill -TERM {driver.pid}`)") from None
    finally:
        if fd is not None:
            os.close(fd)


def stop_driver(driver: RayDriver, output: str, timeout: float) -> str:
    """Stop the run's Ray driver (SIGTERM; SIGKILL after ``timeout`` seconds) and wait for its end; one line saying
    what happened. A driver on another host is an error naming the host and pid; one already gone is left alone."""
    where = f"pid {driver.pid} on {driver.host}"
    if driver.ended:
        return f"not running (it ended: {driver.ended}; {where})"
    if not _here(driver):
        raise ClusterError(f"the Ray driver of this run runs on {driver.host} (pid {driver.pid}), not on this "
                           f"machine ({socket.gethostname()})\nrun `finephrase stop {output}` on {driver.host} "
                           f"(or `kill -TERM {driver.pid}` there)")
    if not driver.identity:
        raise ClusterError(f"cannot tell whether pid {driver.pid} is still the Ray driver (no /proc here)\n"
                           f"check it with `ps -p {driver.pid}`, then `kill -TERM {driver.pid}`")
    if not _running(driver):
        return f"not running (it ended; {where})"
    _signal(driver, signal.SIGTERM)
    if _wait_gone(driver, timeout):
        return f"stopped ({where}): its Ray tasks ended with it"
    _signal(driver, signal.SIGKILL)
    if not _wait_gone(driver, KILL_WAIT):
        raise ClusterError(f"the Ray driver ({where}) did not end after SIGTERM and SIGKILL\ncheck `ps -p {driver.pid}`")
    return f"killed ({where}; it did not end {timeout:.0f}s after SIGTERM): Ray ends its tasks with it"
