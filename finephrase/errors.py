"""finephrase's expected failures.

Every error a user can cause or fix (a bad recipe, a missing model file, a server that rejects
the request, no replica reachable, a run that produced nothing, a Hub repo that does not exist)
is a :class:`FinephraseError`. Its message says the cause and the fix in one or two lines; the
CLI prints it without a traceback (``--debug`` shows one) and exits non-zero.

Errors raised inside a datatrove task travel back to the launching process as text (the local
executor's worker processes, Slurm logs); :func:`find_in_chain` finds the original error on the
way back where the exception object itself survived.
"""

from __future__ import annotations

import os


class FinephraseError(Exception):
    """An expected failure with an actionable message: its ``cause`` (the first line) and its ``fix`` (the rest).

    ``FinephraseError("the cause", fix="what to do")`` or ``FinephraseError("the cause\nwhat to do")`` are the same
    error (the message travels as one string through datatrove's workers and pickling)."""

    exit_code = 2

    def __init__(self, cause: str = "", fix: str | None = None):
        super().__init__(f"{cause}\n{fix}" if fix else cause)

    @property
    def cause(self) -> str:
        return str(self).partition("\n")[0]

    @property
    def fix(self) -> str | None:
        return str(self).partition("\n")[2].strip() or None


class GeneratorError(FinephraseError):
    """The inference side cannot do the work: no replica reachable, every request rejected, replicas crashing."""

    exit_code = 3


class GeneratorUnavailable(GeneratorError):
    """No replica answered for ``generator.unavailable_timeout``. Work done is kept; a rerun resumes."""


class GeneratorRejected(GeneratorError):
    """The server rejects requests for a reason the client cannot fix by retrying (a configuration problem)."""


class ReplicasCrashed(GeneratorError):
    """The embedded replicas keep dying and cannot be kept alive."""


class EmptyOutputError(FinephraseError):
    """A run (or a prompt of it) produced no rows from a non-empty input."""

    exit_code = 4


def find_in_chain(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of ``kind`` in ``exc``'s ``__cause__`` / ``__context__`` chain, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _drop_expected_traceback(record: dict) -> None:
    exc = record["exception"]
    if exc is not None and isinstance(exc.value, FinephraseError):
        record["exception"] = None  # the message is logged; the traceback of an expected failure is noise


QUIET_ENV = "FINEPHRASE_QUIET_TRACEBACKS"  # inherited by worker processes, which import this module


def quiet_expected_tracebacks() -> None:
    """Log expected failures (datatrove's executor logs every task error with ``logger.exception``) as their message
    only, without a traceback, in this process and in the worker processes it starts. The CLI calls this unless
    ``--debug`` is given."""
    from loguru import logger

    os.environ[QUIET_ENV] = "1"
    logger.configure(patcher=_drop_expected_traceback)


if os.environ.get(QUIET_ENV) == "1":  # a worker of a process that asked for it
    quiet_expected_tracebacks()
