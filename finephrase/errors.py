"""finephrase's expected failures, all in this module.

Every error a user can cause or fix (a bad recipe, a missing model file, a server that rejects
the request, no replica reachable, a run that produced nothing, a Hub repo that does not exist)
is a :class:`FinephraseError` with a ``cause`` (its first line) and a ``fix`` (the rest). The
CLI prints it without a traceback (``--debug`` shows one) and exits non-zero.

A request the server refused for good is a :class:`RequestFailed`, datatrove's
``InferenceError`` (the inference runner's contract): the rephrase step counts it against its
document, or stops the task when every request is refused the same way.

Errors raised inside a datatrove task travel back to the launching process as text (the local
executor's worker processes, Slurm logs); :func:`find_in_chain` finds the original error on the
way back where the exception object itself survived. :func:`describe_hub_error` turns the
Hub's failures into a cause and a fix.

Imports: the standard library and datatrove's inference types; huggingface_hub and loguru inside
functions. Any part of finephrase may import this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal

from datatrove.pipeline.inference.types import InferenceError


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


# ---------------------------------------------------------------- configuration and inputs
class RecipeError(FinephraseError, ValueError):
    """A recipe is invalid. The message names the recipe file and the offending key."""


class PromptError(FinephraseError, ValueError):
    """A prompt file is missing, malformed or fails validation. The message names the file."""

    index: int | None = None  # set by resolve_prompts: the position of the reference that failed


class NoPlanError(FinephraseError):
    """An output folder without ``.finephrase/plan.json``: not written by this version's ``finephrase run``."""


class InputError(FinephraseError):
    """An input path that holds no documents finephrase can read."""


class DemoDataError(FinephraseError, RuntimeError):
    """The demo corpus cannot be built (no apt-get / dpkg-deb, the package download failed)."""


# ---------------------------------------------------------------- models and filters
class LidModelMissing(FinephraseError, FileNotFoundError):
    """No language-id model: the message names the command that installs one."""


class ClassifierNotFound(FinephraseError):
    """The classifier is neither a local file nor a downloadable Hub file."""


class ScorerError(FinephraseError):
    """A classifier that cannot be loaded or does not have the asked label."""


class TrainingError(FinephraseError):
    """Too few examples, or fastText did not converge."""


class DecontaminationError(FinephraseError):
    """An eval set whose n-gram index would be empty or tiny (a wrong ``text_key``, passages shorter than the n-gram)."""


# ---------------------------------------------------------------- the embedded generator
class EmbeddedSetupError(FinephraseError, RuntimeError):
    """An embedded engine (llama-cpp-python, vLLM's CPU build) cannot be set up: a build or an install failed, or
    the engine is not set up here (the message names the set-up command)."""


class ConversionError(FinephraseError, RuntimeError):
    """A model cannot be converted to GGUF for llama.cpp."""


class EmbeddedServerError(FinephraseError, RuntimeError):
    """An embedded replica does not start or answer (its log's last lines say why)."""


class ChatTemplateError(FinephraseError, RuntimeError):
    """The model's tokenizer has no chat template, or it does not render the request."""


# ---------------------------------------------------------------- requests refused for good
class RequestFailed(InferenceError):
    """A request that failed for good (retries spent, or refused). ``status`` is the last HTTP status, if any."""

    def __init__(self, message: str, status: int | None = None, body: str = ""):
        super().__init__(None, message, payload=None)
        self.status = status
        self.body = body

    def stored(self) -> str:
        """The refusal as the request cache keeps it (:meth:`from_stored` raises the same kind again on resume)."""
        return json.dumps({"kind": type(self).__name__, "message": str(self.error), "status": self.status,
                           "body": self.body})

    @staticmethod
    def from_stored(text: str) -> RequestFailed:
        """The refusal a request cache row holds, of the kind it was (an input too long is retried shorter)."""
        row = json.loads(text)
        kind = {k.__name__: k for k in (RequestFailed, InputTooLong, RequestRejected)}[row["kind"]]
        return kind(row["message"], status=row["status"], body=row["body"])


class InputTooLong(RequestFailed):
    """The server says the input (with ``max_tokens``) does not fit: retry with less of the document."""


class RequestRejected(RequestFailed):
    """The server refuses the request for another reason (a parameter, the model name, auth): not the document's
    fault and not fixed by retrying."""


# ---------------------------------------------------------------- cluster and Hub
class ClusterError(FinephraseError):
    """A launch, status or stop cannot proceed (no Slurm, a job refused, a run folder without jobs)."""


class RunStopped(ClusterError):
    """A Ray launch stopped by a signal (``finephrase stop``: SIGTERM; Ctrl-C: SIGINT) before its stages were done:
    :meth:`by_signal` says where and how to resume. Its exit code is the shell's for that signal (128 + signum)."""

    exit_code = 128 + signal.SIGTERM

    @classmethod
    def by_signal(cls, signum: int, stage: str, unfinished: int, tasks: int, resume: str | None = None) -> RunStopped:
        fix = f"`{resume}` resumes" if resume else "launch again with the same --output to resume"
        stop = cls(f"stopped by {signal.Signals(signum).name} in stage {stage} ({unfinished} of {tasks} task(s) "
                   "unfinished)", f"{fix} (finished tasks are skipped)")
        stop.exit_code = 128 + signum
        return stop

    @property
    def line(self) -> str:
        """What the driver says when it stops: one line (a stop is not an error)."""
        return f"finephrase: {self.cause}; {self.fix}"


class PushError(FinephraseError, FileNotFoundError):
    """The output folder has nothing to push, or no repository is named to push it to."""


class HubError(FinephraseError):
    """The Hub refused or failed the push (or cannot be reached). The message has the cause and the fix; the
    huggingface_hub / network error is ``__cause__``. Exit code 5: the local output is intact, only the push
    failed (pushing again resumes)."""

    exit_code = 5


def find_in_chain(exc: BaseException, kind: type[BaseException]) -> BaseException | None:
    """The first exception of ``kind`` in ``exc``'s ``__cause__`` / ``__context__`` chain, or None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _network_error_types() -> tuple[type, ...]:
    types: list[type] = []
    for name in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            types.append(__import__(name).TransportError)
    return tuple(types)


def first_line(text: object, limit: int = 200) -> str:
    line = next((x.strip() for x in str(text or "").splitlines() if x.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def describe_hub_error(e: BaseException, repo_id: str | None = None, revision: str | None = None,
                       pushing: bool = False, network: bool = True, repo_type: str = "dataset",
                       retries: int | None = None) -> str | None:
    """One or two lines (the cause, then the fix) for an expected failure talking to the Hub, or None when ``e``
    is not one (a bug keeps its traceback). ``pushing`` adds that a push resumes where it stopped; ``network``:
    ``e`` came from a Hub call, so a network error (connection refused, timeout) means the Hub is unreachable."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        DisabledRepoError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo = repo_id or getattr(e, "repo_id", None)
    kind = getattr(e, "repo_type", None) or repo_type
    name = f"{kind} repository {repo}" if repo else f"the {kind} repository"
    again = " (pushing again resumes where it stopped)" if pushing else ""
    if isinstance(e, LocalTokenNotFoundError):
        return "no Hugging Face token found.\nrun `hf auth login`, or set HF_TOKEN to a token with write access"
    if isinstance(e, OfflineModeIsEnabled):
        return "HF_HUB_OFFLINE is set, so the Hub cannot be reached.\nunset HF_HUB_OFFLINE to talk to the Hub"
    if isinstance(e, HFValidationError):
        return f"invalid repository id: {first_line(e)}\nuse NAMESPACE/NAME, e.g. my-user/my-dataset"
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        server = first_line(getattr(e, "server_message", None))
        said = f"HTTP {status}" + (f": {server}" if server else "")
        namespace = repo.split("/")[0] if repo and "/" in repo else None
        if isinstance(e, GatedRepoError):
            return (f"{name} is gated and your token is not on its access list ({said}).\n"
                    f"ask for access on {constants.ENDPOINT}/{'datasets/' if kind == 'dataset' else ''}{repo}")
        if isinstance(e, DisabledRepoError):
            return f"{name} is disabled on the Hub ({said}).\nuse another repository"
        if isinstance(e, RevisionNotFoundError):
            what = f"branch {revision!r}" if revision else "the revision"
            fix = ("push again: the branch is created if missing" if pushing else
                   f"check the name (`hf repos branch create {repo or 'REPO'} BRANCH --repo-type {kind}` creates one)")
            return f"{what} of {name} does not exist ({said}).\n{fix}"
        if isinstance(e, RepositoryNotFoundError):
            return (f"{name} not found, or your token cannot see it ({said}).\n"
                    "check the id and your token (`hf auth whoami`); a push creates a missing repository only "
                    f"when the token may create repositories in {namespace or 'its namespace'!r}")
        if status == 401:
            return (f"the Hub rejected your token ({said}).\n"
                    "run `hf auth login`, or set HF_TOKEN to a valid token (HF_TOKEN wins over the stored login)")
        if status == 403:
            return (f"your token may not write to {name} ({said}).\n"
                    "use a write token (not read-only) of an account that may write to "
                    + (f"{namespace!r}" if namespace else "it") + ": `hf auth login` or HF_TOKEN")
        if status == 402:
            return f"the Hub wants a paid plan for this ({said}).\ncheck your plan, or push somewhere else"
        if status == 429:
            return f"the Hub is rate-limiting your requests ({said}).\nwait a few minutes and try again{again}"
        if status in (408, 500, 502, 503, 504) or (status or 0) >= 500:
            return (f"the Hub is failing ({said}" + (f", {retries} retries" if pushing and retries else "")
                    + f").\ntry again later{again}")
        return f"the Hub refused the request on {name} ({said})."
    if network and isinstance(e, _network_error_types()):
        return (f"cannot reach the Hub at {constants.ENDPOINT} ({type(e).__name__}: {first_line(e) or 'no answer'}).\n"
                f"check the network, a proxy, or HF_ENDPOINT{again}")
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
