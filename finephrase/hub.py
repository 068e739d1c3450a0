"""Publish an output folder as a Hugging Face Hub dataset: the library call behind ``finephrase push`` and
``finephrase run --push-to``.

What is uploaded: ``data/**`` (the parquet files of every config), ``README.md`` (the dataset card),
``prompts/<set>/<name>.yaml`` (the prompts used, written from the recipe if missing), ``recipe.yaml``
(tokens and local absolute paths scrubbed as in the card: ``/home/me/x.jsonl`` -> ``<local>/x.jsonl``) and
``report.html`` when the output has one (the run's self-contained report page, :mod:`finephrase.report.html`).
The ``.finephrase/`` work folder is never uploaded.

How:

* The repository is created if needed (``private`` applies to a new repository; pushing with ``private=True`` to
  an existing public repository is refused rather than publishing the data). With ``revision``, the branch is
  created from ``main`` if it does not exist (a tag or a commit id is refused: commits go to branches).
* The remote tree is listed first and every local file is compared with it (sha256 for LFS files, the git blob
  id for the others): only new or changed files are sent, so pushing the same output again makes no commit and
  a push that was interrupted resumes where it stopped.
* Files go in batches (at most ``max_files`` files / ``max_bytes`` bytes per commit), data first; the card,
  prompts, recipe and the deletions go in the last commit, so the card only switches to the new configs once
  their data is there.
* Each commit names its parent. 412 (the branch moved), 408/429/5xx and network errors are retried with jittered
  exponential back-off; before each retry the head is read again and the batch re-checked against it, so a
  commit whose answer was lost is not made twice.
* Pushing to a repository that has configs from an earlier push replaces the configs this output has (remote
  files under ``data/<config>/`` that the output does not have are deleted) and keeps the others; the card is
  written for the union: kept configs stay in the card's ``configs`` and in ``all``.

Expected failures (no token, a rejected token, no write access, a missing repository, an unreachable Hub, a Hub
that keeps failing after the retries) raise :class:`HubError`, a ``FinephraseError`` whose message says the cause
and the fix in one or two lines; the huggingface_hub / network error is its ``__cause__``.

The token is huggingface_hub's (``HF_TOKEN`` or the stored ``hf auth login``); it is never printed, logged
or written. When ``HF_XET_CACHE`` is not set, each process gets its own Xet cache folder
(``$HF_HOME/xet/finephrase-<pid>``, removed when the process ends) so several tasks can upload at once.
"""

from __future__ import annotations

import atexit
import contextlib
import fnmatch
import hashlib
import os
import random
import re
import shutil
import time
from dataclasses import dataclass

from loguru import logger

from finephrase.errors import (
    FinephraseError,
    HubError,
    PushError,
    describe_hub_error,
    first_line,
)
from finephrase.plan import PLAN_FILE, load_plan

MAX_FILES_PER_COMMIT = 100
MAX_BYTES_PER_COMMIT = 2 * 1024**3
MAX_RETRIES = 6
RETRY_BASE_S = 1.0
RETRY_MAX_S = 60.0
CONFLICT_RETRIES = 30
BRANCH_WAIT_TRIES = 5
RETRY_STATUS = {408, 412, 429, 500, 502, 503, 504}
REPO_TYPE = "dataset"


_HASHES: dict[tuple, tuple[str, str]] = {}


@dataclass
class LocalFile:
    path_in_repo: str
    source: str | bytes  # a file path, or the content
    size: int
    sha256: str
    git_oid: str

    @classmethod
    def from_path(cls, path_in_repo: str, path: str) -> "LocalFile":
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns)
        if key not in _HASHES:  # each file is read once per process
            sha, git = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % st.st_size)
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    sha.update(block)
                    git.update(block)
            _HASHES[key] = (sha.hexdigest(), git.hexdigest())
        return cls(path_in_repo, path, st.st_size, *_HASHES[key])

    @classmethod
    def from_bytes(cls, path_in_repo: str, data: bytes) -> "LocalFile":
        return cls(path_in_repo, data, len(data), hashlib.sha256(data).hexdigest(),
                   hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest())

    def same_as(self, remote) -> bool:
        """Whether a remote ``RepoFile`` has this content."""
        if remote is None:
            return False
        lfs = getattr(remote, "lfs", None)
        if lfs is not None:
            return lfs.sha256 == self.sha256
        return getattr(remote, "blob_id", None) == self.git_oid

    def operation(self):
        from huggingface_hub import CommitOperationAdd

        return CommitOperationAdd(path_in_repo=self.path_in_repo, path_or_fileobj=self.source)


# --- the output folder -----------------------------------------------------------------------------------------


def _walk(folder: str, prefix: str) -> list[tuple[str, str]]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            full = os.path.join(root, name)
            rel = os.path.relpath(full, folder).replace(os.sep, "/")
            out.append((f"{prefix}/{rel}", full))
    return out


def output_configs(output: str) -> list[str]:
    """The configs an output folder has: ``data/<config>/`` folders holding parquet files."""
    data = os.path.join(output, "data")
    if not os.path.isdir(data):
        return []
    return sorted(d for d in os.listdir(data) if not d.startswith(".") and os.path.isdir(os.path.join(data, d))
                  and any(f.endswith(".parquet") for f in os.listdir(os.path.join(data, d))))


def write_prompt_files(output: str, prompts) -> list[str]:
    """Write each prompt to ``OUTPUT/prompts/<set>/<name>.yaml`` unless a file with the same prompt (same sha256)
    is there: a copy of the prompt's file when it has one, else the prompt serialized. Returns the paths written."""
    import yaml

    from finephrase.prompts import load_prompt_file

    written = []
    for p in prompts:
        dest = os.path.join(output, "prompts", p.set, f"{p.name}.yaml")
        if os.path.exists(dest):
            try:
                if load_prompt_file(dest).sha256 == p.sha256:
                    continue
            except Exception:  # noqa: BLE001 - an unreadable file is replaced
                pass
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        text = None
        if p.path and os.path.isfile(p.path):
            with open(p.path, encoding="utf-8") as f:
                text = f.read()
        if text is None:
            data = {k: v for k, v in p.to_dict().items() if k != "sha256"}
            text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        with open(dest, "w", encoding="utf-8") as f:
            f.write(text)
        written.append(dest)
    return written


def _data_files(output: str) -> list[LocalFile]:
    return [LocalFile.from_path(p, f) for p, f in _walk(os.path.join(output, "data"), "data")]


def local_files(output: str, card: bytes | None = None) -> list[LocalFile]:
    """What is published from ``output``: data/**, prompts/**, recipe.yaml, the card (``card`` overrides
    ``OUTPUT/README.md``) and report.html. Never ``.finephrase/`` or other files."""
    from finephrase.report.card import scrub

    files = _data_files(output)
    files += [LocalFile.from_path(p, f) for p, f in _walk(os.path.join(output, "prompts"), "prompts")
              if p.endswith((".yaml", ".yml"))]
    recipe = os.path.join(output, "recipe.yaml")
    if os.path.exists(recipe):
        with open(recipe, encoding="utf-8") as f:
            text = f.read()
        clean = scrub(text)  # tokens and local absolute paths (`<local>/name`, as in the card)
        files.append(LocalFile.from_path("recipe.yaml", recipe) if clean == text
                     else LocalFile.from_bytes("recipe.yaml", clean.encode()))
    if card is not None:
        files.append(LocalFile.from_bytes("README.md", card))
    elif os.path.exists(os.path.join(output, "README.md")):
        with open(os.path.join(output, "README.md"), encoding="utf-8") as f:
            files.append(LocalFile.from_bytes("README.md", scrub(f.read()).encode()))
    if os.path.exists(os.path.join(output, "report.html")):  # opens as a file of the repository
        files.append(LocalFile.from_path("report.html", os.path.join(output, "report.html")))
    return files


# --- retries ---------------------------------------------------------------------------------------------------


def _retryable(e: Exception) -> tuple[bool, float | None]:
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, HfHubHTTPError):
        response = getattr(e, "response", None)
        status = getattr(response, "status_code", None)
        retry_after = None
        if response is not None:
            with contextlib.suppress(TypeError, ValueError):
                retry_after = float(response.headers.get("Retry-After"))
        return status in RETRY_STATUS, retry_after
    try:
        import httpx2 as httpx
    except ImportError:  # pragma: no cover - older huggingface_hub
        import httpx
    return isinstance(e, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)), None


def _status(e: Exception) -> str:
    return str(getattr(getattr(e, "response", None), "status_code", None) or type(e).__name__)


@contextlib.contextmanager
def hub_errors(repo_id: str | None = None, revision: str | None = None, pushing: bool = True):
    """Turn expected Hub failures raised inside the block into :class:`HubError` (the original is ``__cause__``);
    anything else (a bug) passes through unchanged."""
    try:
        yield
    except FinephraseError:
        raise
    except Exception as e:  # noqa: BLE001 - only the failures describe_hub_error knows are converted
        message = describe_hub_error(e, repo_id, revision, pushing=pushing, retries=MAX_RETRIES)
        if message is None:
            raise
        raise HubError(message) from e


def with_retries(fn, what: str, max_retries: int | None = None):
    """Call ``fn()``, retrying 408/429/5xx and network errors with jittered exponential back-off, and 412 (another
    commit landed first: ``fn`` re-reads the head) up to ``CONFLICT_RETRIES`` times with a short jittered wait."""
    max_retries = MAX_RETRIES if max_retries is None else max_retries
    failures = conflicts = 0
    while True:
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - filtered below
            retry, retry_after = _retryable(e)
            if not retry:
                raise
            if _status(e) == "412":
                conflicts += 1
                if conflicts > CONFLICT_RETRIES:
                    raise
                delay = RETRY_BASE_S * random.uniform(0.1, 1.0) * min(conflicts, 5)
                logger.info(f"{what}: the branch moved (HTTP 412), retrying on the new head in {delay:.1f}s")
            else:
                failures += 1
                if failures > max_retries:
                    raise
                delay = min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (failures - 1)) * random.uniform(0.5, 1.5)
                if retry_after is not None:
                    delay = max(delay, min(retry_after, RETRY_MAX_S))
                cause = f"HTTP {_status(e)}" if _status(e).isdigit() else f"{type(e).__name__}: {first_line(e)}"
                logger.warning(f"{what}: {cause}, retrying in {delay:.1f}s ({failures}/{max_retries})")
            time.sleep(delay)


# --- remote state ----------------------------------------------------------------------------------------------


def _head(api, repo_id: str, branch: str) -> str:
    return api.repo_info(repo_id, repo_type=REPO_TYPE, revision=branch).sha


def _remote_files(api, repo_id: str, revision: str) -> dict:
    from huggingface_hub.hf_api import RepoFile

    return {e.path: e for e in api.list_repo_tree(repo_id, repo_type=REPO_TYPE, revision=revision, recursive=True)
            if isinstance(e, RepoFile)}


def _remote_configs(api, repo_id: str, revision: str, remote: dict) -> list[dict]:
    """The ``configs`` of the remote card (``[]`` if none or unreadable)."""
    if "README.md" not in remote:
        return []
    from huggingface_hub import DatasetCard

    try:
        path = with_retries(lambda: api.hf_hub_download(repo_id, "README.md", repo_type=REPO_TYPE, revision=revision),
                            "read the remote card")
        data = DatasetCard.load(path, repo_type=REPO_TYPE).data.to_dict()
    except Exception as e:  # noqa: BLE001 - a broken remote card is replaced, not a reason to stop
        logger.warning(f"could not read the remote card's configs ({type(e).__name__}); writing this output's only")
        return []
    configs = data.get("configs") or []
    return [c for c in configs if isinstance(c, dict) and isinstance(c.get("config_name"), str)]


def kept_remote_configs(remote_configs: list[dict], local_configs: list[str], remote_paths) -> list[dict]:
    """Remote card configs that stay: not produced by this output, not ``all``, and with files still there."""
    from finephrase.report import ALL, config_paths

    remote_paths = list(remote_paths)
    kept = []
    for c in remote_configs:
        name = c["config_name"]
        if name == ALL or name in local_configs:
            continue
        patterns = config_paths(c)
        if any(fnmatch.fnmatchcase(p, pat) for pat in patterns for p in remote_paths):
            kept.append(c)
    return kept


# --- the card --------------------------------------------------------------------------------------------------


def card_for_push(output: str, repo_id: str, kept: list[dict]) -> bytes | None:
    """The card to publish: rendered as the run rendered it (from the run's plan, ``.finephrase/plan.json``, and
    its saved report, :func:`finephrase.report.load_report`) with the repo id and the kept configs; for a folder
    without a plan, the local README.md with the kept configs merged into its ``configs``
    (:func:`finephrase.report.dataset_configs`)."""
    from huggingface_hub import DatasetCard

    from finephrase.report import dataset_configs, load_report
    from finephrase.report.card import render_card, scrub

    if os.path.exists(os.path.join(output, PLAN_FILE)):
        plan = load_plan(output)
        write_prompt_files(output, plan.prompts)
        card = render_card(load_report(output, plan.prompts), plan.recipe, plan.prompts, repo_id=repo_id,
                           kept_configs=kept)
        return str(card).encode()
    readme = os.path.join(output, "README.md")
    if not os.path.exists(readme):
        return None
    card = DatasetCard.load(readme, repo_type=REPO_TYPE)
    if kept:
        card.data.configs = dataset_configs([dict(c) for c in (card.data.to_dict().get("configs") or [])], kept)
    return scrub(str(card)).encode()


# --- push ------------------------------------------------------------------------------------------------------


_XET_FOLDERS: set[str] = set()


@contextlib.contextmanager
def _per_process_xet_cache():
    """Give this process its own Xet cache unless HF_XET_CACHE is set (parallel uploads from several tasks)."""
    if os.environ.get("HF_XET_CACHE"):
        yield
        return
    from huggingface_hub import constants

    folder = os.path.join(constants.HF_HOME, "xet", f"finephrase-{os.getpid()}")
    if folder not in _XET_FOLDERS:  # removed when the process ends
        _XET_FOLDERS.add(folder)
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    os.environ["HF_XET_CACHE"] = folder
    try:
        yield
    finally:
        os.environ.pop("HF_XET_CACHE", None)


def _batches(files: list[LocalFile], max_files: int, max_bytes: int) -> list[list[LocalFile]]:
    batches: list[list[LocalFile]] = []
    current: list[LocalFile] = []
    size = 0
    for f in files:
        if current and (len(current) >= max_files or size + f.size > max_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(f)
        size += f.size
    if current:
        batches.append(current)
    return batches


def _commit(api, repo_id: str, branch: str, adds: list[LocalFile], deletes: list[str], message: str) -> bool:
    """One commit, retried; returns whether a commit was made. Every attempt re-reads the head and drops what the
    remote already has (a commit whose answer was lost is not made twice)."""
    from huggingface_hub import CommitOperationDelete

    def attempt() -> bool:
        head = _head(api, repo_id, branch)
        paths = [f.path_in_repo for f in adds] + list(deletes)
        remote = {}
        for i in range(0, len(paths), 500):
            remote.update({e.path: e for e in api.get_paths_info(repo_id, paths[i:i + 500], repo_type=REPO_TYPE,
                                                                 revision=head)})
        todo = [f for f in adds if not f.same_as(remote.get(f.path_in_repo))]
        gone = [p for p in deletes if p in remote]
        if not todo and not gone:
            return False
        ops = [f.operation() for f in todo] + [CommitOperationDelete(path_in_repo=p) for p in gone]
        api.create_commit(repo_id, ops, commit_message=message, repo_type=REPO_TYPE, revision=branch,
                          parent_commit=head)
        logger.info(f"{message}: {len(todo)} file(s) added, {len(gone)} deleted")
        return True

    return with_retries(attempt, f"commit '{message}'")


def _final_commit(api, repo_id: str, branch: str, output: str, configs: list[str]) -> bool:
    """The last commit: card, prompts, recipe, data still missing, stale data files deleted. Everything is worked
    out from the current head (each retry too), so a concurrent push's configs are kept; returns whether a
    commit was made."""
    from huggingface_hub import CommitOperationDelete

    head = _head(api, repo_id, branch)
    remote = _remote_files(api, repo_id, head)
    kept = kept_remote_configs(_remote_configs(api, repo_id, head, remote), configs, remote)
    if kept:
        logger.info(f"keeping configs of an earlier push: {', '.join(c['config_name'] for c in kept)}")
    files = local_files(output, card_for_push(output, repo_id, kept))
    local_paths = {f.path_in_repo for f in files}
    stale = sorted(p for p in remote if p not in local_paths and any(p.startswith(f"data/{c}/") for c in configs))
    todo = [f for f in files if not f.same_as(remote.get(f.path_in_repo))]
    if not todo and not stale:
        return False
    what = ", ".join(sorted({f.path_in_repo.split("/")[0] for f in todo})) or "data"
    message = f"finephrase: update {what}" + (f", remove {len(stale)} stale file(s)" if stale else "")
    ops = [f.operation() for f in todo] + [CommitOperationDelete(path_in_repo=p) for p in stale]
    api.create_commit(repo_id, ops, commit_message=message, repo_type=REPO_TYPE, revision=branch, parent_commit=head)
    logger.info(f"{message}: {len(todo)} file(s) added, {len(stale)} deleted")
    return True


def _has_token(token: str | None) -> bool:
    from huggingface_hub import get_token

    return bool(token or get_token())


def check_push_access(repo_id: str, token: str | None = None) -> None:
    """Fail fast, before a long run, when a push to ``repo_id`` cannot work: no token, a token the Hub rejects, a
    read-only token, a namespace that is neither the user's nor one of their organizations, or no way to reach the
    Hub. Raises :class:`HubError`; the repository itself is not touched (one ``whoami`` call)."""
    from huggingface_hub import HfApi

    with hub_errors(repo_id, pushing=False):
        if not _has_token(token):
            from huggingface_hub.errors import LocalTokenNotFoundError

            raise LocalTokenNotFoundError("no token")
        who = with_retries(lambda: HfApi(token=token).whoami(), "check the Hub token")
    role = ((who.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise HubError(f"your Hugging Face token is read-only: it cannot push to {repo_id}.\n"
                       "create a token with write access (https://huggingface.co/settings/tokens), then "
                       "`hf auth login` or HF_TOKEN")
    namespace = repo_id.split("/")[0] if "/" in repo_id else None
    user = who.get("name")
    orgs = [o.get("name") for o in who.get("orgs") or [] if isinstance(o, dict)]
    if namespace and user and namespace.lower() not in {n.lower() for n in [user, *orgs] if n}:
        raise HubError(f"cannot push to {repo_id}: {namespace!r} is neither your user ({user!r}) nor one of your "
                       f"organizations ({', '.join(map(repr, orgs)) or 'none'}).\n"
                       f"push to {user}/{repo_id.split('/', 1)[1]}, or join {namespace!r} on the Hub")


def _ensure_repo(api, repo_id: str, private: bool) -> str:
    url = with_retries(lambda: api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True),
                       "create the repository")
    if private:  # an existing repository keeps its visibility: never publish "private" data in a public repo
        info = with_retries(lambda: api.repo_info(repo_id, repo_type=REPO_TYPE, expand=["private"]),
                            "read the repository visibility")
        if info.private is False:
            raise HubError(f"dataset repository {repo_id} exists and is public, and the push is private "
                           "(--private / output.private); nothing was pushed.\n"
                           f"make it private first (`hf repos settings {repo_id} --private --repo-type dataset`), "
                           "or push without --private")
    return url


_SHA_RE = re.compile(r"^[0-9a-f]{40}$")


def _ensure_branch(api, repo_id: str, branch: str) -> None:
    """Create ``branch`` from ``main`` when it does not exist, and wait until the Hub serves it."""
    from huggingface_hub.errors import RevisionNotFoundError

    if branch.startswith("refs/pr/"):  # a pull request ref: it exists or the Hub says so
        return
    refs = with_retries(lambda: api.list_repo_refs(repo_id, repo_type=REPO_TYPE), "list the branches")
    if branch in {b.name for b in refs.branches}:
        return
    if branch in {t.name for t in refs.tags} or _SHA_RE.match(branch):
        what = "a tag" if branch in {t.name for t in refs.tags} else "a commit id"
        raise HubError(f"revision {branch!r} is {what} of {repo_id}, not a branch: a push commits to a branch.\n"
                       "name a branch (--revision NAME; a new name is created from main)")
    with_retries(lambda: api.create_branch(repo_id, repo_type=REPO_TYPE, branch=branch, exist_ok=True),
                 f"create branch {branch}")
    logger.info(f"created branch {branch} of {repo_id} (from main)")
    for attempt in range(BRANCH_WAIT_TRIES):  # a new branch can take a moment to show everywhere
        try:
            with_retries(lambda: _head(api, repo_id, branch), "read the new branch")
            return
        except RevisionNotFoundError:
            if attempt == BRANCH_WAIT_TRIES - 1:
                raise
            time.sleep(RETRY_BASE_S * 2 ** attempt * random.uniform(0.5, 1.0))


def push_repo(given: str | None, hub_repo: str | None) -> str:
    """The dataset repository a push goes to: the one named on the command line, else the recipe's
    ``output.hub_repo``."""
    if given or hub_repo:
        return given or hub_repo
    raise PushError("no repository to push to\nname one (`--push-to REPO_ID`, `finephrase push OUTPUT REPO_ID`) "
                    "or set output.hub_repo in the recipe")


def push_output(output: str, repo_id: str, private: bool = False, revision: str | None = None, *,
                token: str | None = None, max_files: int = MAX_FILES_PER_COMMIT,
                max_bytes: int = MAX_BYTES_PER_COMMIT) -> str:
    """Push an output folder to the Hub dataset ``repo_id`` (see the module docstring). Returns the dataset URL
    (``.../tree/<branch>`` for a branch). Raises :class:`PushError` (nothing to push) or :class:`HubError`."""
    from huggingface_hub import HfApi

    output = os.path.abspath(output)
    if not os.path.isdir(output):
        raise PushError(f"{output}: no such folder\nname the output folder of a `finephrase run`")
    configs = output_configs(output)
    if not configs:
        raise PushError(f"{output}: nothing to push (no data/<config>/*.parquet).\n"
                        "run the recipe first (`finephrase run RECIPE`), or name the run's output folder")
    branch = revision or "main"
    api = HfApi(token=token)
    with _per_process_xet_cache(), hub_errors(repo_id, branch):
        if not _has_token(token):
            from huggingface_hub.errors import LocalTokenNotFoundError

            raise LocalTokenNotFoundError("no token")
        repo_url = _ensure_repo(api, repo_id, private)
        if revision:
            _ensure_branch(api, repo_id, revision)
        head = with_retries(lambda: _head(api, repo_id, branch), "read the branch head")
        remote = with_retries(lambda: _remote_files(api, repo_id, head), "list the remote files")
        data = [f for f in _data_files(output) if not f.same_as(remote.get(f.path_in_repo))]
        batches = _batches(data, max_files, max_bytes)
        for i, batch in enumerate(batches, 1):
            _commit(api, repo_id, branch, batch, [], f"finephrase: upload data ({i}/{len(batches)})")
        if not with_retries(lambda: _final_commit(api, repo_id, branch, output, configs), "commit the card") \
                and not batches:
            logger.info(f"{repo_id}@{branch} is up to date: nothing to push")
    url = str(repo_url).rstrip("/")
    return f"{url}/tree/{revision}" if revision else url


__all__ = ["push_output", "check_push_access", "describe_hub_error", "hub_errors", "write_prompt_files",
           "local_files", "output_configs", "PushError", "HubError", "with_retries"]
