"""Expected failures talking to the Hub, in one or two lines (the cause, then the fix).

Used by the push (:mod:`finephrase.hub`), the CLI, and everything else that downloads from the Hub (prompt sets,
quality classifiers). Imports only huggingface_hub (inside functions): anything may import it.
"""

from __future__ import annotations

import contextlib


def _network_error_types() -> tuple[type, ...]:
    types: list[type] = []
    for name in ("httpx2", "httpx"):
        with contextlib.suppress(ImportError):
            types.append(__import__(name).TransportError)
    return tuple(types)


def _first_line(text: object, limit: int = 200) -> str:
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
        return f"invalid repository id: {_first_line(e)}\nuse NAMESPACE/NAME, e.g. my-user/my-dataset"
    if isinstance(e, HfHubHTTPError):
        status = getattr(getattr(e, "response", None), "status_code", None)
        server = _first_line(getattr(e, "server_message", None))
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
        return (f"cannot reach the Hub at {constants.ENDPOINT} ({type(e).__name__}: {_first_line(e) or 'no answer'}).\n"
                f"check the network, a proxy, or HF_ENDPOINT{again}")
    return None
