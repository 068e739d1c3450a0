#!/usr/bin/env python
"""OFFLINE TEST HUB SERVER -- for tests only. This is NOT a Hugging Face Hub implementation.

A small, dependency-free (stdlib + PyYAML) HTTP server that speaks the subset of the Hugging Face Hub
protocol used by the real ``huggingface_hub`` 2.x client (``HfApi``, ``hf_hub_download``,
``snapshot_download``, ``DatasetCard``, the ``hf`` CLI, ``datasets``), so that code which pushes to /
pulls from the Hub can be exercised end-to-end on a machine without network access.

It was written by reading the client code of ``huggingface_hub`` 2.4.0 (``hf_api.py``, ``_commit_api.py``,
``lfs.py``, ``file_download.py``, ``_snapshot_download.py``, ``utils/_http.py``, ``repocard.py``). Behaviour
that the client relies on is reproduced as faithfully as practical (status codes, ``X-Error-Code`` headers,
JSON shapes, LFS batch protocol, upload-mode rules, no-op detection through ``oid``), but there is no real git,
no Xet, no pull requests, no gating, no rate limiting (except injected faults).

Usage
-----
Command line::

    python tests/hub_server.py --host 127.0.0.1 --port 8999 --root /tmp/hub

Pytest (fixtures defined at the bottom of this module; import them into a test module or a conftest)::

    from hub_server import hub_server, hub_repo_id  # noqa: F401  (or tests.hub_server)

    def test_push(hub_server, hub_repo_id):
        from huggingface_hub import HfApi
        HfApi().create_repo(hub_repo_id, repo_type="dataset")
        hub_server.add_fault("commit", status=503, count=1)
        ...
        assert hub_server.stats()["repos"][f"datasets/{hub_repo_id}"]["commits"] == 1

Client configuration (``HubTestServer.client_env()`` returns it as a dict, ``hf_client_env()`` applies it to
the current process, patching an already-imported ``huggingface_hub``/``datasets``)::

    HF_ENDPOINT=http://127.0.0.1:PORT  HF_TOKEN=hf_testtoken  HF_HUB_DISABLE_XET=1
    HF_HUB_DISABLE_TELEMETRY=1  HF_HUB_DISABLE_UPDATE_CHECK=1  (HF_HUB_OFFLINE unset)

``huggingface_hub`` reads ``HF_ENDPOINT`` at import time: set the environment before importing it, run the
client in a subprocess with ``server.client_env()``, or use ``hf_client_env()`` which also patches the
already-imported module state.

Storage
-------
``ROOT/repos/{type}s/{namespace}/{name}/`` holds, per repository:

* ``repo.json``   -- metadata (private, creation date, ...)
* ``refs.json``   -- ``{"branches": {"main": sha}, "tags": {...}}``
* ``commits/{sha}.json`` -- one file per commit: parents, title, message, date and the full flat tree
  ``{path: {"oid": git-blob-oid, "sha256": ..., "size": ..., "lfs": bool}}``
* ``objects/{sha256[:2]}/{sha256}`` -- file contents, content-addressed (regular files and LFS objects)

New repositories get an ``initial commit`` containing the Hub's default ``.gitattributes``, like on the Hub.

Routes (``{t}`` = models|datasets|spaces|kernels, ``{p}`` = ``""``|``datasets/``|``spaces/``|``kernels/``)
----------------------------------------------------------------------------------------------------------
* ``GET  /api/whoami-v2``
* ``POST /api/repos/create`` (409 + ``{"url": ...}`` if it exists), ``DELETE /api/repos/delete``
* ``GET  /api/{t}/{ns}/{name}[/revision/{rev}]`` (``?blobs=true``, ``expand``)
* ``POST /api/{t}/{ns}/{name}/preupload/{rev}``
* ``POST /api/{t}/{ns}/{name}/commit/{rev}`` (NDJSON: header/file/lfsFile/deletedFile/deletedFolder, or JSON)
* ``GET  /api/{t}/{ns}/{name}/tree/{rev}[/{path}]`` (``recursive``, ``expand``, cursor pagination via ``Link``)
* ``POST /api/{t}/{ns}/{name}/paths-info/{rev}`` (form or JSON)
* ``GET  /api/{t}/{ns}/{name}/refs``, ``GET /api/{t}/{ns}/{name}/commits/{rev}``
* ``POST|DELETE /api/{t}/{ns}/{name}/branch/{branch}``, ``POST /api/{t}/{ns}/{name}/tag/{rev}``,
  ``DELETE /api/{t}/{ns}/{name}/tag/{tag}``
* ``PUT  /api/{t}/{ns}/{name}/settings``, ``GET /api/{t}/{ns}/{name}/auth-check[/write]``
* ``POST /api/validate-yaml``
* ``POST /{p}{ns}/{name}.git/info/lfs/objects/batch`` (+ ``.../objects/verify``)
* ``PUT|POST|GET /_lfs/...`` -- pre-signed "storage" URLs handed out by the batch endpoint (basic + multipart)
* ``GET|HEAD /{p}{ns}/{name}/resolve/{rev}/{path}`` (``X-Repo-Commit``, ``ETag``, ``X-Linked-Etag``,
  ``X-Linked-Size``, ``Content-Length``, ``Range``) and ``/raw/``
* Test-only admin routes: ``GET /_test/stats``, ``GET /_test/log``, ``GET|POST|DELETE /_test/faults``,
  ``GET|POST /_test/config``, ``POST /_test/reset``

Tokens and permissions (config keys, settable per server or through ``POST /_test/config``)
------------------------------------------------------------------------------------------
* ``known_tokens``: ``{token: user}``; any other token gets 401 ``Invalid credentials in Authorization header``
  (default: any ``hf_*`` token is ``testuser``'s). No token: 401 on writes and on private repositories.
* ``token_roles``: ``{token: "read" | "write"}``; a read token gets 403 on every write, and ``whoami`` reports
  its role, as on the Hub (default: write).
* ``allowed_namespaces``: namespaces (besides the user's own) a token may write to; others get 403
  (default: anywhere). A private repository outside the user's namespace and orgs answers 404 ``RepoNotFound``.

Fault injection
---------------
``POST /_test/faults`` with ``{"route": "commit", "status": 503, "count": 1}`` makes the next matching request
fail. Optional keys: ``repo`` (``"ns/name"`` or ``"datasets/ns/name"``), ``method``, ``headers`` (dict, e.g.
``{"Retry-After": "1"}``), ``message``, ``delay_s`` (sleep before answering) and ``when``: ``"before"``
(default; the request has no effect) or ``"after"`` (the request IS processed, then the error is returned --
e.g. a commit whose response is lost). Route names: whoami, create_repo, delete_repo, repo_info, preupload,
commit, tree, paths_info, refs, commits, branch, tag, settings, auth_check, validate_yaml, lfs_batch,
lfs_verify, lfs_upload, lfs_part, lfs_complete, lfs_download, resolve, or ``*``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as _dt
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import urllib.request
import uuid
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

try:  # PyYAML is a dependency of huggingface_hub / datasets
    import yaml
except ImportError:  # pragma: no cover
    yaml = None  # type: ignore[assignment]

DEFAULT_TOKEN = "hf_testtoken"
DEFAULT_USER = "testuser"
DEFAULT_ORGS = ("test-org",)
LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # files >= 10 MiB must go through LFS
LFS_POINTER_TEMPLATE = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
READY_LINE_PREFIX = "HUB_TEST_SERVER_READY "

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space", "kernels": "kernel"}
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/", "kernel": "kernels/"}
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")

# Default `.gitattributes` written by the Hub in the initial commit of a new repository.
DEFAULT_GITATTRIBUTES = """*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.bz2 filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.ftz filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.joblib filter=lfs diff=lfs merge=lfs -text
*.lfs.* filter=lfs diff=lfs merge=lfs -text
*.lz4 filter=lfs diff=lfs merge=lfs -text
*.mds filter=lfs diff=lfs merge=lfs -text
*.mlmodel filter=lfs diff=lfs merge=lfs -text
*.model filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.npz filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.ot filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pb filter=lfs diff=lfs merge=lfs -text
*.pickle filter=lfs diff=lfs merge=lfs -text
*.pkl filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.rar filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
saved_model/**/* filter=lfs diff=lfs merge=lfs -text
*.tar.* filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.tflite filter=lfs diff=lfs merge=lfs -text
*.tgz filter=lfs diff=lfs merge=lfs -text
*.wasm filter=lfs diff=lfs merge=lfs -text
*.xz filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.zst filter=lfs diff=lfs merge=lfs -text
*tfevents* filter=lfs diff=lfs merge=lfs -text
# Audio files - uncompressed
*.pcm filter=lfs diff=lfs merge=lfs -text
*.sam filter=lfs diff=lfs merge=lfs -text
*.raw filter=lfs diff=lfs merge=lfs -text
# Audio files - compressed
*.aac filter=lfs diff=lfs merge=lfs -text
*.flac filter=lfs diff=lfs merge=lfs -text
*.mp3 filter=lfs diff=lfs merge=lfs -text
*.ogg filter=lfs diff=lfs merge=lfs -text
*.wav filter=lfs diff=lfs merge=lfs -text
# Image files - uncompressed
*.bmp filter=lfs diff=lfs merge=lfs -text
*.gif filter=lfs diff=lfs merge=lfs -text
*.png filter=lfs diff=lfs merge=lfs -text
*.tiff filter=lfs diff=lfs merge=lfs -text
# Image files - compressed
*.jpg filter=lfs diff=lfs merge=lfs -text
*.jpeg filter=lfs diff=lfs merge=lfs -text
*.webp filter=lfs diff=lfs merge=lfs -text
# Video files - compressed
*.mp4 filter=lfs diff=lfs merge=lfs -text
*.webm filter=lfs diff=lfs merge=lfs -text
"""

DEFAULT_CONFIG: dict[str, Any] = {
    "tree_page_size": 1000,  # Hub: 1000 entries per page (50 with expand=True)
    "tree_expand_page_size": 50,
    "commits_page_size": 50,
    "lfs_multipart_threshold": None,  # bytes; None => always "basic" single-PUT transfers
    "lfs_multipart_chunk_size": 5 * 1024 * 1024,
    "allowed_namespaces": None,  # None => an authenticated user may write anywhere
    "known_tokens": None,  # None => any token starting with "hf_" is valid (and belongs to DEFAULT_USER)
    "token_roles": None,  # {token: "read" | "write"}; None / a token not listed => "write" (like a classic token)
}


# ----------------------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------------------


class HubError(Exception):
    """An error answered to the client, shaped like the Hub's (JSON body + X-Error-Code/X-Error-Message)."""

    def __init__(self, status: int, message: str, code: str | None = None, headers: dict | None = None, **extra):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.headers = dict(headers or {})
        self.extra = extra


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return LFS_POINTER_TEMPLATE.format(oid=sha256, size=size).encode()


def _looks_binary(sample: bytes) -> bool:
    """Heuristic used to decide the upload mode of a file from its first 512 bytes."""
    if b"\x00" in sample:
        return True
    try:
        sample.decode("utf-8")
        return False
    except UnicodeDecodeError as e:
        # a multi-byte character cut at the end of the sample is fine
        return e.start < len(sample) - 4


def _glob_to_regex(pattern: str) -> str:
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("/**", i) and i + 3 == len(pattern):
            out.append("(?:/.*)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pattern.find("]", i + 1)
            if j == -1:
                out.append(re.escape(c))
                i += 1
            else:
                body = pattern[i + 1 : j].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    return "".join(out)


def git_pattern_match(pattern: str, path: str) -> bool:
    """gitattributes/gitignore-style matching of ``pattern`` against a repo-relative file ``path``."""
    pattern = pattern.strip()
    if not pattern:
        return False
    anchored = "/" in pattern.rstrip("/")
    pattern = pattern.lstrip("/")
    regex = re.compile(_glob_to_regex(pattern) + r"\Z")
    if anchored:
        return bool(regex.match(path))
    return bool(regex.match(path.rsplit("/", 1)[-1]))


def lfs_patterns_from_gitattributes(content: str) -> list[tuple[str, bool]]:
    rules = []
    for line in content.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        pattern, attrs = parts[0], parts[1:]
        if "filter=lfs" in attrs:
            rules.append((pattern, True))
        elif "-filter" in attrs or "!filter" in attrs:
            rules.append((pattern, False))
    return rules


def is_ignored(path: str, gitignore: str | None) -> bool:
    if not gitignore:
        return False
    ignored = False
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in gitignore.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        if negate:
            line = line[1:]
        dir_only = line.endswith("/")
        pat = line.rstrip("/")
        targets = candidates[:-1] if dir_only else candidates
        if any(git_pattern_match(pat, t) if "/" in pat else git_pattern_match(pat, t.rsplit("/", 1)[-1])
               for t in targets):
            ignored = not negate
    return ignored


def split_front_matter(content: str) -> tuple[str | None, str]:
    """Return (yaml_block or None, body) of a README.md."""
    text = content.lstrip("\ufeff")
    m = re.match(r"^---[ \t]*\r?\n(.*?\r?\n)?---[ \t]*(\r?\n|$)", text, flags=re.S)
    if not m:
        return None, text
    return (m.group(1) or ""), text[m.end():]


def validate_card_metadata(content: str, repo_type: str = "model") -> tuple[list[str], list[str]]:
    """Validate the YAML metadata of a repo card. Returns (errors, warnings).

    Checks done (subset of the Hub's): the YAML block parses to a mapping; for datasets, ``configs`` is a list of
    mappings each with a unique ``config_name`` (str) and ``data_files`` (str | list[str] | list[{split, path}]),
    at most one ``default: true``; ``dataset_info`` entries (when a list) have a ``config_name``; ``license``,
    ``tags``, ``language`` are strings or lists of strings.
    """
    errors: list[str] = []
    warnings: list[str] = []
    block, _ = split_front_matter(content)
    if block is None or not block.strip():
        warnings.append("empty or missing yaml metadata in repo card "
                        "(https://huggingface.co/docs/hub/model-cards#model-card-metadata)")
        return errors, warnings
    if yaml is None:  # pragma: no cover
        return errors, warnings
    try:
        data = yaml.safe_load(block)
    except yaml.YAMLError as e:
        errors.append(f"Error parsing YAML metadata: {e}".replace("\n", " "))
        return errors, warnings
    if data is None:
        warnings.append("empty or missing yaml metadata in repo card")
        return errors, warnings
    if not isinstance(data, dict):
        errors.append('"value" must be of type object')
        return errors, warnings

    def _str_or_str_list(key: str) -> None:
        if key in data and data[key] is not None:
            v = data[key]
            if not (isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))):
                errors.append(f'"{key}" must be a string or an array of strings')

    for key in ("license", "tags", "language", "task_categories", "pretty_name"):
        _str_or_str_list(key)

    if repo_type == "dataset" and "configs" in data:
        configs = data["configs"]
        if not isinstance(configs, list):
            errors.append('"configs" must be an array')
        else:
            names: set[str] = set()
            n_default = 0
            for i, cfg in enumerate(configs):
                where = f'"configs[{i}]"'
                if not isinstance(cfg, dict):
                    errors.append(f"{where} must be of type object")
                    continue
                name = cfg.get("config_name")
                if name is None:
                    errors.append(f'"configs[{i}].config_name" is required')
                elif not isinstance(name, str) or not name:
                    errors.append(f'"configs[{i}].config_name" must be a non-empty string')
                elif name in names:
                    errors.append(f'"configs[{i}].config_name" must be unique, "{name}" is duplicated')
                else:
                    names.add(name)
                if cfg.get("default") is True:
                    n_default += 1
                if "data_files" not in cfg or cfg["data_files"] is None:
                    errors.append(f'"configs[{i}].data_files" is required')
                else:
                    df = cfg["data_files"]
                    ok = isinstance(df, str) or (
                        isinstance(df, list)
                        and all(
                            isinstance(x, str)
                            or (
                                isinstance(x, dict)
                                and isinstance(x.get("split"), str)
                                and (
                                    isinstance(x.get("path"), str)
                                    or (isinstance(x.get("path"), list)
                                        and all(isinstance(p, str) for p in x["path"]))
                                )
                            )
                            for x in df
                        )
                    )
                    if not ok:
                        errors.append(
                            f'"configs[{i}].data_files" must be a string, an array of strings or an array of '
                            "{split: string, path: string | string[]}"
                        )
            if n_default > 1:
                errors.append('"configs" can only have one config with "default: true"')
    if repo_type == "dataset" and isinstance(data.get("dataset_info"), list):
        for i, info in enumerate(data["dataset_info"]):
            if not isinstance(info, dict) or not isinstance(info.get("config_name"), str):
                errors.append(f'"dataset_info[{i}].config_name" is required when "dataset_info" is an array')
    return errors, warnings


def _parse_yaml_card_data(content: str) -> dict | None:
    block, _ = split_front_matter(content)
    if not block or yaml is None:
        return None
    try:
        data = yaml.safe_load(block)
    except Exception:
        return None
    return data if isinstance(data, dict) else None


# ----------------------------------------------------------------------------------------------------------------
# Storage
# ----------------------------------------------------------------------------------------------------------------


class Repo:
    def __init__(self, store: "Store", rtype: str, repo_id: str):
        self.store = store
        self.rtype = rtype
        self.repo_id = repo_id
        self.key = f"{rtype}s/{repo_id}"
        self.dir = store.root / "repos" / f"{rtype}s" / repo_id
        self.lock = threading.RLock()

    # -- metadata
    @property
    def meta(self) -> dict:
        return json.loads((self.dir / "repo.json").read_text())

    def save_meta(self, meta: dict) -> None:
        _atomic_write(self.dir / "repo.json", json.dumps(meta, indent=1).encode())

    @property
    def refs(self) -> dict:
        return json.loads((self.dir / "refs.json").read_text())

    def save_refs(self, refs: dict) -> None:
        _atomic_write(self.dir / "refs.json", json.dumps(refs, indent=1).encode())

    # -- objects
    def object_path(self, sha256: str) -> Path:
        return self.dir / "objects" / sha256[:2] / sha256

    def has_object(self, sha256: str, size: int | None = None) -> bool:
        p = self.object_path(sha256)
        return p.is_file() and (size is None or p.stat().st_size == size)

    def put_object(self, data: bytes) -> str:
        sha = hashlib.sha256(data).hexdigest()
        p = self.object_path(sha)
        if not p.exists():
            _atomic_write(p, data)
        return sha

    def adopt_object_file(self, tmp: Path, sha256: str) -> None:
        p = self.object_path(sha256)
        p.parent.mkdir(parents=True, exist_ok=True)
        if p.exists():
            tmp.unlink(missing_ok=True)
        else:
            os.replace(tmp, p)

    def read_object(self, sha256: str) -> bytes:
        return self.object_path(sha256).read_bytes()

    def tmp_dir(self) -> Path:
        d = self.dir / "tmp"
        d.mkdir(parents=True, exist_ok=True)
        return d

    # -- commits
    def load_commit(self, sha: str) -> dict:
        cache = self.store.commit_cache
        key = (self.key, sha)
        if key not in cache:
            p = self.dir / "commits" / f"{sha}.json"
            if not p.is_file():
                raise HubError(404, f"Invalid rev id: {sha}", "RevisionNotFound")
            cache[key] = json.loads(p.read_text())
        return cache[key]

    def all_commit_shas(self) -> list[str]:
        return [p.stem for p in (self.dir / "commits").glob("*.json")]

    def resolve(self, rev: str) -> str:
        """Resolve a branch, tag, full or short (>= 7 chars) commit sha into a commit sha."""
        refs = self.refs
        if rev in refs["branches"]:
            return refs["branches"][rev]
        if rev in refs["tags"]:
            return refs["tags"][rev]
        for prefix in ("refs/heads/", "refs/tags/"):
            if rev.startswith(prefix):
                name = rev[len(prefix):]
                table = refs["branches"] if prefix == "refs/heads/" else refs["tags"]
                if name in table:
                    return table[name]
        if re.fullmatch(r"[0-9a-f]{7,40}", rev):
            if len(rev) == 40 and (self.dir / "commits" / f"{rev}.json").is_file():
                return rev
            matches = [s for s in self.all_commit_shas() if s.startswith(rev)]
            if len(matches) == 1:
                return matches[0]
        raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")

    def tree_at(self, rev: str) -> tuple[str, dict]:
        sha = self.resolve(rev)
        return sha, self.load_commit(sha)["tree"]

    def write_commit(self, parents: list[str], tree: dict, title: str, message: str, author: str) -> str:
        date = _now_iso()
        payload = json.dumps(
            {"parents": parents, "tree": tree, "title": title, "message": message, "date": date,
             "nonce": uuid.uuid4().hex},
            sort_keys=True,
        ).encode()
        sha = hashlib.sha1(payload).hexdigest()
        commit = {"id": sha, "parents": parents, "title": title, "message": message, "date": date,
                  "authors": [author], "tree": tree}
        _atomic_write(self.dir / "commits" / f"{sha}.json", json.dumps(commit).encode())
        self.store.commit_cache[(self.key, sha)] = commit
        return sha

    def history(self, sha: str) -> Iterator[dict]:
        while sha:
            commit = self.load_commit(sha)
            yield commit
            sha = commit["parents"][0] if commit["parents"] else None  # type: ignore[assignment]

    def last_commit_for(self, head: str, path: str, is_dir: bool) -> dict:
        prev = None
        prev_sig = None
        for commit in self.history(head):
            sig = _path_signature(commit["tree"], path, is_dir)
            if prev is not None and sig != prev_sig:
                return prev
            prev, prev_sig = commit, sig
        return prev  # type: ignore[return-value]


def _path_signature(tree: dict, path: str, is_dir: bool) -> Any:
    if not is_dir:
        e = tree.get(path)
        return e and e["oid"]
    prefix = path + "/" if path else ""
    return tuple(sorted((p, e["oid"]) for p, e in tree.items() if p.startswith(prefix)))


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _dir_oid(tree: dict, prefix: str) -> str:
    h = hashlib.sha1(b"tree\0")
    pre = prefix + "/" if prefix else ""
    for p in sorted(tree):
        if p.startswith(pre):
            h.update(p.encode() + b"\0" + tree[p]["oid"].encode())
    return h.hexdigest()


class Store:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        (self.root / "repos").mkdir(parents=True, exist_ok=True)
        self.lock = threading.RLock()
        self._repos: dict[tuple[str, str], Repo] = {}
        self.commit_cache: dict[tuple[str, str], dict] = {}

    def repo(self, rtype: str, repo_id: str, must_exist: bool = True) -> Repo:
        with self.lock:
            key = (rtype, repo_id)
            if key not in self._repos:
                self._repos[key] = Repo(self, rtype, repo_id)
            repo = self._repos[key]
        if must_exist and not (repo.dir / "repo.json").is_file():
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def exists(self, rtype: str, repo_id: str) -> bool:
        return (self.root / "repos" / f"{rtype}s" / repo_id / "repo.json").is_file()

    def create(self, rtype: str, repo_id: str, private: bool, author: str) -> Repo:
        repo = self.repo(rtype, repo_id, must_exist=False)
        with repo.lock:
            if (repo.dir / "repo.json").is_file():
                raise HubError(409, f"You already created this {rtype} repo")
            repo.dir.mkdir(parents=True, exist_ok=True)
            content = DEFAULT_GITATTRIBUTES.encode()
            sha256 = repo.put_object(content)
            tree = {".gitattributes": {"oid": git_blob_oid(content), "sha256": sha256, "size": len(content),
                                       "lfs": False}}
            head = repo.write_commit([], tree, "initial commit", "", author)
            repo.save_refs({"branches": {"main": head}, "tags": {}})
            repo.save_meta({"_id": uuid.uuid4().hex[:24], "id": repo_id, "type": rtype, "private": bool(private),
                            "gated": False, "disabled": False, "createdAt": _now_iso()})
        return repo

    def delete(self, rtype: str, repo_id: str) -> None:
        repo = self.repo(rtype, repo_id)
        with repo.lock:
            shutil.rmtree(repo.dir)
        with self.lock:
            self._repos.pop((rtype, repo_id), None)
            for k in [k for k in self.commit_cache if k[0] == repo.key]:
                self.commit_cache.pop(k, None)


# ----------------------------------------------------------------------------------------------------------------
# Server state: config, faults, stats
# ----------------------------------------------------------------------------------------------------------------


class ServerState:
    def __init__(self, root: str | os.PathLike, config: dict | None = None):
        self.store = Store(root)
        self.config = dict(DEFAULT_CONFIG)
        self.config.update(config or {})
        self.secret = secrets.token_bytes(32)
        self.lock = threading.Lock()
        self.faults: list[dict] = []
        self.reset_stats()

    def reset_stats(self) -> None:
        with getattr(self, "lock", threading.Lock()):
            self.route_stats: dict[str, dict] = defaultdict(lambda: {"count": 0, "by_status": defaultdict(int)})
            self.repo_stats: dict[str, dict] = defaultdict(lambda: defaultdict(int))
            self.faults_triggered = 0
            self.internal_errors: list[str] = []
            self.log: list[dict] = []

    # -- faults
    def add_fault(self, spec: dict) -> dict:
        if "route" not in spec or "status" not in spec:
            raise HubError(400, "fault needs 'route' and 'status'")
        fault = {"route": spec["route"], "status": int(spec["status"]), "count": int(spec.get("count", 1)),
                 "repo": spec.get("repo"), "method": spec.get("method"), "headers": spec.get("headers") or {},
                 "message": spec.get("message"), "when": spec.get("when", "before"),
                 "delay_s": float(spec.get("delay_s", 0))}
        if fault["when"] not in ("before", "after"):
            raise HubError(400, "'when' must be 'before' or 'after'")
        with self.lock:
            self.faults.append(fault)
        return fault

    def take_fault(self, route: str, method: str, repo_key: str | None) -> dict | None:
        with self.lock:
            for fault in self.faults:
                if fault["route"] not in ("*", route):
                    continue
                if fault["method"] and fault["method"].upper() != method:
                    continue
                if fault["repo"] and repo_key is not None:
                    want = fault["repo"]
                    if want != repo_key and repo_key.split("/", 1)[-1] != want:
                        continue
                elif fault["repo"]:
                    continue
                fault["count"] -= 1
                if fault["count"] <= 0:
                    self.faults.remove(fault)
                self.faults_triggered += 1
                return dict(fault)
        return None

    def record(self, method: str, path: str, route: str, status: int, repo_key: str | None) -> None:
        with self.lock:
            st = self.route_stats[route]
            st["count"] += 1
            st["by_status"][str(status)] += 1
            self.log.append({"method": method, "path": path, "route": route, "status": status, "repo": repo_key,
                             "time": time.time()})
            if len(self.log) > 20000:
                del self.log[:10000]

    def bump(self, repo_key: str, counter: str, n: int = 1) -> None:
        with self.lock:
            self.repo_stats[repo_key][counter] += n

    def stats(self) -> dict:
        with self.lock:
            repos = {k: dict(v) for k, v in self.repo_stats.items()}
            routes = {k: {"count": v["count"], "by_status": dict(v["by_status"])} for k, v in self.route_stats.items()}
            faults = [dict(f) for f in self.faults]
            triggered = self.faults_triggered
            internal_errors = list(self.internal_errors)
        for key in repos:
            rtype_s, repo_id = key.split("/", 1)
            rtype = REPO_TYPES.get(rtype_s)
            if rtype and self.store.exists(rtype, repo_id):
                repo = self.store.repo(rtype, repo_id)
                refs = repo.refs
                repos[key]["branches"] = dict(refs["branches"])
                repos[key]["tags"] = dict(refs["tags"])
                main = refs["branches"].get("main")
                if main:
                    repos[key]["history_length"] = sum(1 for _ in repo.history(main))
                    repos[key]["files"] = sorted(repo.load_commit(main)["tree"])
        for key in repos:
            repos[key].setdefault("commits", 0)
        return {"routes": routes, "repos": repos, "faults_pending": faults, "faults_triggered": triggered,
                "internal_errors": internal_errors}


# ----------------------------------------------------------------------------------------------------------------
# HTTP layer
# ----------------------------------------------------------------------------------------------------------------


class Response:
    def __init__(self, status: int = 200, body: Any = None, headers: dict | None = None,
                 content_type: str | None = None, file: tuple[Path, int, int] | None = None):
        self.status = status
        self.headers = dict(headers or {})
        self.file = file  # (path, offset, length): streamed body
        if isinstance(body, (dict, list)) or (body is None and file is None and content_type is None):
            body = json.dumps(body if body is not None else {}).encode()
            content_type = content_type or "application/json; charset=utf-8"
        elif isinstance(body, str):
            body = body.encode()
            content_type = content_type or "text/plain; charset=utf-8"
        self.body: bytes = body or b""
        if content_type:
            self.headers.setdefault("Content-Type", content_type)


def _error_response(err: HubError, head: bool = False) -> Response:
    headers = dict(err.headers)
    if err.code:
        headers["X-Error-Code"] = err.code
    headers["X-Error-Message"] = err.message.splitlines()[0][:500] if err.message else ""
    body = {"error": err.message, **err.extra}
    return Response(err.status, body, headers)


class _Ctx:
    """Per-request context handed to the route functions."""

    def __init__(self, handler: "HubRequestHandler", method: str, segments: list[str], query: dict[str, list[str]]):
        self.h = handler
        self.state: ServerState = handler.server.state  # type: ignore[attr-defined]
        self.method = method
        self.segments = segments
        self.query = query
        self.route = "unknown"
        self.repo_key: str | None = None
        self._body: bytes | None = None

    # -- request helpers
    def q(self, name: str, default: str | None = None) -> str | None:
        vals = self.query.get(name)
        return vals[-1] if vals else default

    def qbool(self, name: str) -> bool:
        return (self.q(name) or "").lower() in ("1", "true", "yes")

    def body(self) -> bytes:
        if self._body is None:
            self._body = b"".join(self.h.iter_body())
        return self._body

    def json(self) -> Any:
        raw = self.body()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except ValueError:
            raise HubError(400, "Invalid JSON body")

    @property
    def base_url(self) -> str:
        host = self.h.headers.get("Host") or "%s:%d" % self.h.server.server_address[:2]
        return f"http://{host}"

    def token(self) -> str | None:
        auth = self.h.headers.get("Authorization") or ""
        if auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return None

    def user(self, required: bool = False) -> str | None:
        tok = self.token()
        if tok is None:
            if required:
                raise HubError(401, "You must be authenticated to access this resource. Pass a token (HF_TOKEN).")
            return None
        known = self.state.config.get("known_tokens")
        if known is not None:
            user = known.get(tok)
        else:
            user = DEFAULT_USER if tok.startswith("hf_") else None
        if user is None:
            raise HubError(401, "Invalid credentials in Authorization header")
        return user

    def orgs(self) -> list[str]:
        return list(self.state.config.get("orgs") or DEFAULT_ORGS)

    def token_role(self) -> str:
        roles = self.state.config.get("token_roles") or {}
        return roles.get(self.token(), "write")

    def check_write(self, namespace: str) -> str:
        user = self.user(required=True)
        if self.token_role() == "read":  # the Hub refuses any write made with a read token
            raise HubError(403, "You don't have the rights to write with a read token: use a token with write "
                                "access (https://huggingface.co/settings/tokens)")
        allowed = self.state.config.get("allowed_namespaces")
        if allowed is not None and namespace not in set(allowed) | {user}:
            raise HubError(403, f"You don't have the rights to write to the namespace {namespace}")
        return user  # type: ignore[return-value]

    def get_repo(self, rtype: str, repo_id: str, write: bool = False) -> Repo:
        self.repo_key = f"{rtype}s/{repo_id}"
        if write:
            self.check_write(repo_id.split("/")[0])
        repo = self.state.store.repo(rtype, repo_id)
        if not write and repo.meta.get("private"):
            user = self.user(required=False)
            if user is None:
                raise HubError(401, "Repository not found", "RepoNotFound")
            if repo_id.split("/")[0] not in {user, *self.orgs()}:  # someone else's private repo: not found
                raise HubError(404, "Repository not found", "RepoNotFound")
        return repo


class HubRequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "HubTestServer/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence default stderr logging
        if os.environ.get("HUB_TEST_SERVER_VERBOSE"):
            super().log_message(format, *args)

    # -- body reading (Content-Length or chunked)
    def iter_body(self, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        if getattr(self, "_body_done", False):
            return
        self._body_done = True
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            while True:
                line = self.rfile.readline()
                if not line:
                    return
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while True:
                        trailer = self.rfile.readline()
                        if trailer in (b"\r\n", b"\n", b""):
                            break
                    return
                remaining = size
                while remaining > 0:
                    data = self.rfile.read(min(remaining, chunk_size))
                    if not data:
                        return
                    remaining -= len(data)
                    yield data
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining > 0:
                data = self.rfile.read(min(remaining, chunk_size))
                if not data:
                    return
                remaining -= len(data)
                yield data

    def drain_body(self) -> None:
        for _ in self.iter_body():
            pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        self._body_done = False
        parsed = urllib.parse.urlsplit(self.path)
        segments = [urllib.parse.unquote(s) for s in parsed.path.split("/")[1:]]
        query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
        ctx = _Ctx(self, method, segments, query)
        state = ctx.state
        try:
            handler = _route(ctx)
            if handler is None:
                raise HubError(404, f"Not found: {method} {parsed.path}")
            fault = None
            if ctx.route != "admin":
                fault = state.take_fault(ctx.route, method, ctx.repo_key)
            if fault is not None and fault["when"] == "before":
                resp = self._fault_response(fault)
            else:
                resp = handler(ctx)
                if fault is not None:
                    resp = self._fault_response(fault)
        except HubError as e:
            resp = _error_response(e)
        except Exception as e:  # pragma: no cover - surfaced to the client as a 500
            traceback.print_exc()
            with state.lock:
                state.internal_errors.append(f"{method} {self.path}: {e!r}")
            resp = Response(500, {"error": f"Internal test server error: {e!r}",
                                  "traceback": traceback.format_exc()})
        try:
            self.drain_body()
        except Exception:  # pragma: no cover
            self.close_connection = True
        if ctx.route != "admin":
            state.record(method, parsed.path, ctx.route, resp.status, ctx.repo_key)
        self._send(resp, head=(method == "HEAD"))

    def _fault_response(self, fault: dict) -> Response:
        if fault.get("delay_s"):
            time.sleep(fault["delay_s"])
        msg = fault.get("message") or f"Injected fault ({fault['status']}) on route '{fault['route']}'"
        headers = {"X-Error-Message": msg, "X-Test-Fault": "1", **fault.get("headers", {})}
        return Response(fault["status"], {"error": msg}, headers)

    def _send(self, resp: Response, head: bool = False) -> None:
        self.send_response(resp.status)
        length = resp.file[2] if resp.file is not None else len(resp.body)
        headers = {"Content-Length": str(length), "X-Request-Id": uuid.uuid4().hex, **resp.headers}
        for k, v in headers.items():
            # http.server encodes header lines as latin-1: keep them ASCII-safe
            value = str(v).replace("\r", " ").replace("\n", " ")
            self.send_header(k, value.encode("ascii", "backslashreplace").decode())
        self.end_headers()
        if head:
            return
        try:
            if resp.file is not None:
                path, offset, length = resp.file
                with open(path, "rb") as f:
                    f.seek(offset)
                    remaining = length
                    while remaining > 0:
                        data = f.read(min(remaining, 1024 * 1024))
                        if not data:
                            break
                        self.wfile.write(data)
                        remaining -= len(data)
            else:
                self.wfile.write(resp.body)
        except (BrokenPipeError, ConnectionResetError):  # client went away
            self.close_connection = True


class HubHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], state: ServerState):
        super().__init__(address, HubRequestHandler)
        self.state = state


# ----------------------------------------------------------------------------------------------------------------
# Routing
# ----------------------------------------------------------------------------------------------------------------


def _route(ctx: _Ctx):  # noqa: C901 - a flat routing table is the most readable here
    s, m = ctx.segments, ctx.method
    n = len(s)
    if n >= 1 and s[0] == "_test":
        ctx.route = "admin"
        return _admin
    if n >= 1 and s[0] == "_lfs":
        return _route_lfs_storage(ctx)
    if n >= 1 and s[0] == "api":
        if s[1:] == ["whoami-v2"] and m == "GET":
            ctx.route = "whoami"
            return _whoami
        if s[1:] == ["repos", "create"] and m == "POST":
            ctx.route = "create_repo"
            return _create_repo
        if s[1:] == ["repos", "delete"] and m == "DELETE":
            ctx.route = "delete_repo"
            return _delete_repo
        if s[1:] == ["validate-yaml"] and m == "POST":
            ctx.route = "validate_yaml"
            return _validate_yaml
        if n >= 2 and s[1] == "telemetry":
            ctx.route = "telemetry"
            return lambda c: Response(200, {})
        if n >= 4 and s[1] in REPO_TYPES:
            rtype = REPO_TYPES[s[1]]
            repo_id = f"{s[2]}/{s[3]}"
            ctx.repo_key = f"{rtype}s/{repo_id}"
            rest = s[4:]
            ctx.rtype, ctx.repo_id, ctx.rest = rtype, repo_id, rest  # type: ignore[attr-defined]
            if not rest and m == "GET":
                ctx.route = "repo_info"
                return _repo_info
            if not rest:
                return None
            action = rest[0]
            table = {
                ("revision", "GET"): ("repo_info", _repo_info),
                ("preupload", "POST"): ("preupload", _preupload),
                ("commit", "POST"): ("commit", _commit),
                ("tree", "GET"): ("tree", _tree),
                ("paths-info", "POST"): ("paths_info", _paths_info),
                ("refs", "GET"): ("refs", _refs),
                ("commits", "GET"): ("commits", _commits),
                ("branch", "POST"): ("branch", _create_branch),
                ("branch", "DELETE"): ("branch", _delete_branch),
                ("tag", "POST"): ("tag", _create_tag),
                ("tag", "DELETE"): ("tag", _delete_tag),
                ("settings", "PUT"): ("settings", _settings),
                ("auth-check", "GET"): ("auth_check", _auth_check),
            }
            if (action, m) in table:
                ctx.route, fn = table[(action, m)]
                return fn
        return None
    # git LFS batch / verify: /{prefix}{ns}/{name}.git/info/lfs/objects/{batch|verify}
    if n >= 6 and s[-4:-1] == ["info", "lfs", "objects"] and m == "POST":
        head = s[:-4]
        parsed = _parse_repo_prefix(head, git=True)
        if parsed:
            ctx.rtype, ctx.repo_id = parsed  # type: ignore[attr-defined]
            ctx.repo_key = f"{parsed[0]}s/{parsed[1]}"
            if s[-1] == "batch":
                ctx.route = "lfs_batch"
                return _lfs_batch
            if s[-1] == "verify":
                ctx.route = "lfs_verify"
                return _lfs_verify
        return None
    # file downloads: /{prefix}{ns}/{name}/{resolve|raw}/{rev}/{path...}
    for i in (2, 3):
        if n > i + 2 and s[i] in ("resolve", "raw") and m in ("GET", "HEAD"):
            parsed = _parse_repo_prefix(s[:i], git=False)
            if parsed:
                ctx.rtype, ctx.repo_id = parsed  # type: ignore[attr-defined]
                ctx.repo_key = f"{parsed[0]}s/{parsed[1]}"
                ctx.rev = s[i + 1]  # type: ignore[attr-defined]
                ctx.file_path = "/".join(s[i + 2:])  # type: ignore[attr-defined]
                ctx.raw = s[i] == "raw"  # type: ignore[attr-defined]
                ctx.route = "resolve"
                return _resolve
    return None


def _parse_repo_prefix(head: list[str], git: bool) -> tuple[str, str] | None:
    if len(head) == 3 and head[0] in REPO_TYPES and head[0] != "models":
        rtype, ns, name = REPO_TYPES[head[0]], head[1], head[2]
    elif len(head) == 2:
        rtype, ns, name = "model", head[0], head[1]
    else:
        return None
    if git:
        if not name.endswith(".git"):
            return None
        name = name[: -len(".git")]
    return rtype, f"{ns}/{name}"


# ----------------------------------------------------------------------------------------------------------------
# Route implementations
# ----------------------------------------------------------------------------------------------------------------


def _admin(ctx: _Ctx) -> Response:
    state, m = ctx.state, ctx.method
    what = ctx.segments[1] if len(ctx.segments) > 1 else ""
    if what == "stats" and m == "GET":
        return Response(200, state.stats())
    if what == "log" and m == "GET":
        with state.lock:
            return Response(200, list(state.log))
    if what == "faults":
        if m == "GET":
            with state.lock:
                return Response(200, [dict(f) for f in state.faults])
        if m == "POST":
            spec = ctx.json()
            specs = spec if isinstance(spec, list) else [spec]
            return Response(200, [state.add_fault(x) for x in specs])
        if m == "DELETE":
            with state.lock:
                state.faults.clear()
            return Response(200, {})
    if what == "config":
        if m == "GET":
            return Response(200, state.config)
        if m == "POST":
            update = ctx.json()
            unknown = set(update) - set(DEFAULT_CONFIG) - {"orgs"}
            if unknown:
                raise HubError(400, f"unknown config keys: {sorted(unknown)}")
            state.config.update(update)
            return Response(200, state.config)
    if what == "reset" and m == "POST":
        opts = ctx.json() or {}
        with state.lock:
            state.faults.clear()
        state.reset_stats()
        if opts.get("config", True):
            state.config = dict(DEFAULT_CONFIG)
        if opts.get("repos", False):
            with state.store.lock:
                shutil.rmtree(state.store.root / "repos", ignore_errors=True)
                (state.store.root / "repos").mkdir(parents=True, exist_ok=True)
                state.store._repos.clear()
                state.store.commit_cache.clear()
        return Response(200, {})
    raise HubError(404, f"unknown admin route {m} /_test/{what}")


def _whoami(ctx: _Ctx) -> Response:
    user = ctx.user(required=False)
    if user is None:
        raise HubError(401, "Invalid credentials in Authorization header")
    return Response(200, {
        "type": "user",
        "id": hashlib.sha1(user.encode()).hexdigest()[:24],
        "name": user,
        "fullname": "Test User",
        "email": f"{user}@example.com",
        "emailVerified": True,
        "canPay": False,
        "isPro": False,
        "periodEnd": None,
        "avatarUrl": "",
        "orgs": [{"type": "org", "name": o, "fullname": o, "roleInOrg": "admin", "isEnterprise": False,
                  "id": hashlib.sha1(o.encode()).hexdigest()[:24]} for o in ctx.orgs()],
        "auth": {"type": "access_token", "accessToken": {"displayName": "test token", "role": ctx.token_role(),
                                                          "createdAt": "2024-01-01T00:00:00.000Z"}},
    })


def _repo_url(ctx: _Ctx, rtype: str, repo_id: str) -> str:
    return f"{ctx.base_url}/{URL_PREFIXES[rtype]}{repo_id}"


def _create_repo(ctx: _Ctx) -> Response:
    user = ctx.user(required=True)
    payload = ctx.json()
    name = payload.get("name")
    namespace = payload.get("organization") or user
    rtype = payload.get("type") or "model"
    if rtype not in URL_PREFIXES:
        raise HubError(400, f"Invalid repo type: {rtype}")
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.endswith(".git") or ".." in name:
        raise HubError(400, f"Invalid repo name: {name!r}")
    repo_id = f"{namespace}/{name}"
    ctx.repo_key = f"{rtype}s/{repo_id}"
    ctx.check_write(namespace)
    visibility = payload.get("visibility")
    private = bool(payload.get("private")) or visibility == "private"
    url = _repo_url(ctx, rtype, repo_id)
    if ctx.state.store.exists(rtype, repo_id):
        raise HubError(409, f"You already created this {rtype} repo", url=url)
    try:
        ctx.state.store.create(rtype, repo_id, private=private, author=user)
    except HubError as e:
        if e.status == 409:
            raise HubError(409, e.message, url=url)
        raise
    ctx.state.bump(ctx.repo_key, "created")
    return Response(200, {"url": url, "name": repo_id, "id": ctx.state.store.repo(rtype, repo_id).meta["_id"]})


def _delete_repo(ctx: _Ctx) -> Response:
    user = ctx.user(required=True)
    payload = ctx.json()
    namespace = payload.get("organization") or user
    rtype = payload.get("type") or "model"
    repo_id = f"{namespace}/{payload.get('name')}"
    ctx.repo_key = f"{rtype}s/{repo_id}"
    ctx.check_write(namespace)
    ctx.state.store.delete(rtype, repo_id)
    return Response(200, {})


def _entry_json(repo: Repo, tree: dict, path: str, head: str, expand: bool, is_dir: bool) -> dict:
    if is_dir:
        out: dict[str, Any] = {"type": "directory", "oid": _dir_oid(tree, path), "size": 0, "path": path}
    else:
        e = tree[path]
        out = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
        if e["lfs"]:
            out["lfs"] = {"oid": e["sha256"], "size": e["size"],
                          "pointerSize": len(lfs_pointer(e["sha256"], e["size"]))}
    if expand:
        last = repo.last_commit_for(head, path, is_dir)
        out["lastCommit"] = {"id": last["id"], "title": last["title"], "date": last["date"]}
        if not is_dir:
            out["securityFileStatus"] = {"status": "safe", "avScan": {"virusFound": False, "virusNames": None},
                                         "pickleImportScan": None}
    return out


def _dirs_of(tree: dict) -> set[str]:
    dirs = set()
    for p in tree:
        parts = p.split("/")[:-1]
        for i in range(len(parts)):
            dirs.add("/".join(parts[: i + 1]))
    return dirs


def _repo_info(ctx: _Ctx) -> Response:
    rtype, repo_id, rest = ctx.rtype, ctx.repo_id, ctx.rest  # type: ignore[attr-defined]
    repo = ctx.get_repo(rtype, repo_id)
    rev = rest[1] if len(rest) >= 2 else "main"
    if len(rest) > 2:
        rev = "/".join(rest[1:])
    sha, tree = repo.tree_at(rev)
    commit = repo.load_commit(sha)
    meta = repo.meta
    blobs = ctx.qbool("blobs")
    siblings = []
    for p in sorted(tree):
        sib: dict[str, Any] = {"rfilename": p}
        if blobs:
            e = tree[p]
            sib.update({"size": e["size"], "blobId": e["oid"]})
            if e["lfs"]:
                sib["lfs"] = {"sha256": e["sha256"], "size": e["size"],
                              "pointerSize": len(lfs_pointer(e["sha256"], e["size"]))}
        siblings.append(sib)
    namespace = repo_id.split("/")[0]
    info: dict[str, Any] = {
        "_id": meta["_id"],
        "id": repo_id,
        "author": namespace,
        "sha": sha,
        "lastModified": commit["date"],
        "createdAt": meta["createdAt"],
        "private": meta.get("private", False),
        "gated": meta.get("gated", False),
        "disabled": False,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
        "usedStorage": sum(e["size"] for e in tree.values()),
    }
    if rtype == "model":
        info["modelId"] = repo_id
    if "README.md" in tree:
        card = _parse_yaml_card_data(repo.read_object(tree["README.md"]["sha256"]).decode("utf-8", "replace"))
        if card is not None:
            info["cardData"] = card
            tags = card.get("tags")
            if isinstance(tags, list):
                info["tags"] = [t for t in tags if isinstance(t, str)]
    expand = ctx.query.get("expand") or ctx.query.get("expand[]")
    if expand:
        info = {k: v for k, v in info.items() if k in set(expand) | {"_id", "id"}}
    return Response(200, info)


def _require_branch(repo: Repo, rev: str) -> str:
    refs = repo.refs
    name = rev[len("refs/heads/"):] if rev.startswith("refs/heads/") else rev
    if name in refs["branches"]:
        return name
    if name.startswith("refs/pr/"):
        raise HubError(400, "Pull requests are not supported by the test hub server")
    raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")


def _gitattributes_rules(repo: Repo, tree: dict) -> list[tuple[str, bool]]:
    if ".gitattributes" in tree:
        content = repo.read_object(tree[".gitattributes"]["sha256"]).decode("utf-8", "replace")
    else:
        content = ""
    return lfs_patterns_from_gitattributes(content)


def _upload_mode(path: str, size: int, sample: bytes, rules: list[tuple[str, bool]]) -> str:
    if size >= LFS_SIZE_THRESHOLD:
        return "lfs"
    lfs = None
    for pattern, is_lfs in rules:
        if git_pattern_match(pattern, path):
            lfs = is_lfs
    if lfs is True:
        return "lfs"
    if _looks_binary(sample):
        return "lfs"
    return "regular"


def _preupload(ctx: _Ctx) -> Response:
    rtype, repo_id, rest = ctx.rtype, ctx.repo_id, ctx.rest  # type: ignore[attr-defined]
    repo = ctx.get_repo(rtype, repo_id, write=True)
    if ctx.qbool("create_pr"):
        raise HubError(400, "Pull requests are not supported by the test hub server")
    rev = "/".join(rest[1:]) or "main"
    branch = _require_branch(repo, rev)
    sha, tree = repo.tree_at(branch)
    payload = ctx.json()
    files = payload.get("files")
    if not isinstance(files, list):
        raise HubError(400, '"files" must be an array')
    if len(files) > 1000:
        raise HubError(413, "too many files in a single preupload call")
    gitignore = payload.get("gitIgnore")
    if gitignore is None and ".gitignore" in tree:
        gitignore = repo.read_object(tree[".gitignore"]["sha256"]).decode("utf-8", "replace")
    rules = _gitattributes_rules(repo, tree)
    out = []
    for f in files:
        path, size = f.get("path"), f.get("size")
        if not isinstance(path, str) or not isinstance(size, int):
            raise HubError(400, "each file needs a 'path' (string) and a 'size' (integer)")
        try:
            sample = base64.b64decode(f.get("sample") or "")
        except ValueError:
            raise HubError(400, f"invalid base64 sample for {path}")
        mode = _upload_mode(path, size, sample, rules)
        entry: dict[str, Any] = {"path": path, "uploadMode": mode, "shouldIgnore": is_ignored(path, gitignore)}
        existing = tree.get(path)
        if existing is not None:
            entry["oid"] = existing["sha256"] if existing["lfs"] else existing["oid"]
        out.append(entry)
    ctx.state.bump(ctx.repo_key or "", "preupload_calls")  # type: ignore[arg-type]
    return Response(200, {"files": out, "commitOid": sha})


def _validate_path(path: Any) -> str:
    if not isinstance(path, str) or not path:
        raise HubError(400, f"Invalid path: {path!r}")
    path = path.lstrip("/")
    parts = path.split("/")
    if any(p in ("", ".", "..") for p in parts) or parts[0] == ".git" or ".git" in parts:
        raise HubError(400, f"Invalid path: {path!r}")
    return path


def _parse_commit_payload(ctx: _Ctx) -> tuple[dict, list[tuple[str, dict]]]:
    raw = ctx.body()
    ctype = (ctx.h.headers.get("Content-Type") or "").lower()
    header: dict | None = None
    ops: list[tuple[str, dict]] = []
    if "ndjson" in ctype or (raw.lstrip().startswith(b"{") and b"\n{" in raw.strip()):
        for lineno, line in enumerate(raw.splitlines()):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except ValueError:
                raise HubError(400, f"Invalid NDJSON line {lineno + 1}")
            key, value = item.get("key"), item.get("value")
            if not isinstance(value, dict):
                raise HubError(400, f"Invalid NDJSON line {lineno + 1}: missing 'value'")
            if key == "header":
                header = value
            elif key in ("file", "lfsFile", "deletedFile", "deletedFolder"):
                ops.append((key, value))
            else:
                raise HubError(400, f"Unknown key in commit payload: {key!r}")
    else:
        payload = ctx.json()
        header = {k: payload.get(k) for k in ("summary", "description", "parentCommit") if k in payload}
        for f in payload.get("files") or []:
            ops.append(("file", f))
        for f in payload.get("lfsFiles") or []:
            ops.append(("lfsFile", f))
        for f in payload.get("deletedFiles") or []:
            ops.append(("deletedFile", f))
        for f in payload.get("deletedFolders") or []:
            ops.append(("deletedFolder", f))
    if header is None:
        raise HubError(400, "Missing commit header")
    if not isinstance(header.get("summary"), str) or not header["summary"].strip():
        raise HubError(400, "Commit summary (title) is required")
    return header, ops


def _commit(ctx: _Ctx) -> Response:
    rtype, repo_id, rest = ctx.rtype, ctx.repo_id, ctx.rest  # type: ignore[attr-defined]
    repo = ctx.get_repo(rtype, repo_id, write=True)
    user = ctx.user(required=True)
    if ctx.qbool("create_pr"):
        raise HubError(400, "Pull requests are not supported by the test hub server")
    rev = "/".join(rest[1:]) or "main"
    header, ops = _parse_commit_payload(ctx)
    ctx.state.bump(ctx.repo_key or "", "commit_attempts")
    with repo.lock:
        branch = _require_branch(repo, rev)
        head = repo.refs["branches"][branch]
        parent = header.get("parentCommit")
        if parent:
            if not re.fullmatch(r"[0-9a-f]{7,40}", parent) or not head.startswith(parent):
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
        tree = {p: dict(e) for p, e in repo.load_commit(head)["tree"].items()}
        readme_changed = False
        for key, value in ops:
            path = _validate_path(value.get("path"))
            if key == "file":
                content = value.get("content", "")
                encoding = value.get("encoding", "utf-8")
                try:
                    data = base64.b64decode(content, validate=True) if encoding == "base64" else content.encode()
                except ValueError:
                    raise HubError(400, f"Invalid base64 content for {path}")
                if len(data) >= LFS_SIZE_THRESHOLD:
                    raise HubError(400, f"Your push was rejected because it contains files larger than 10 MiB "
                                        f"({path}). Please use https://git-lfs.github.com/ to store large files.")
                if _looks_binary(data[:512]) and data:
                    raise HubError(400, f"Your push was rejected because it contains binary files ({path}). "
                                        "Please use https://huggingface.co/docs/hub/xet to store binary files.")
                sha256 = repo.put_object(data)
                tree[path] = {"oid": git_blob_oid(data), "sha256": sha256, "size": len(data), "lfs": False}
                readme_changed |= path == "README.md"
            elif key == "lfsFile":
                oid = value.get("oid")
                algo = value.get("algo", "sha256")
                if algo != "sha256" or not isinstance(oid, str) or not _SHA256_RE.match(oid):
                    raise HubError(400, f"Invalid LFS oid for {path}")
                size = value.get("size")
                if not repo.has_object(oid):
                    raise HubError(422, f"Your push was rejected because an LFS pointer pointed to a file that "
                                        f"does not exist. For instance: {path} (sha256:{oid})")
                actual = repo.object_path(oid).stat().st_size
                if size is not None and int(size) != actual:
                    raise HubError(422, f"LFS object size mismatch for {path}: {size} != {actual}")
                tree[path] = {"oid": git_blob_oid(lfs_pointer(oid, actual)), "sha256": oid, "size": actual,
                              "lfs": True}
                readme_changed |= path == "README.md"
            elif key == "deletedFile":
                if path not in tree:
                    raise HubError(404, f"File not found: {path}", "EntryNotFound")
                del tree[path]
            elif key == "deletedFolder":
                prefix = path.rstrip("/") + "/"
                victims = [p for p in tree if p.startswith(prefix)]
                if not victims:
                    raise HubError(404, f"Folder not found: {path}", "EntryNotFound")
                for p in victims:
                    del tree[p]
        if readme_changed and "README.md" in tree:
            content = repo.read_object(tree["README.md"]["sha256"]).decode("utf-8", "replace")
            errors, _ = validate_card_metadata(content, rtype)
            if errors:
                raise HubError(400, "Invalid metadata in README.md.\n" + "\n".join(f"- {e}" for e in errors))
        new_sha = repo.write_commit([head], tree, header["summary"], header.get("description") or "", user)
        refs = repo.refs
        refs["branches"][branch] = new_sha
        repo.save_refs(refs)
    ctx.state.bump(ctx.repo_key or "", "commits")
    ctx.state.bump(ctx.repo_key or "", "committed_operations", len(ops))
    commit_url = f"{_repo_url(ctx, rtype, repo_id)}/commit/{new_sha}"
    return Response(200, {"success": True, "commitOid": new_sha, "commitUrl": commit_url, "hookOutput": "",
                          "pullRequestUrl": None})


def _list_entries(tree: dict, base: str, recursive: bool) -> list[tuple[str, bool]]:
    """(path, is_dir) entries under ``base`` ("" = root), folders before their content, sorted."""
    prefix = base + "/" if base else ""
    entries: dict[str, bool] = {}
    for p in tree:
        if not p.startswith(prefix):
            continue
        rel = p[len(prefix):]
        parts = rel.split("/")
        if recursive:
            for i in range(len(parts) - 1):
                entries[prefix + "/".join(parts[: i + 1])] = True
            entries[p] = False
        else:
            if len(parts) == 1:
                entries[p] = False
            else:
                entries[prefix + parts[0]] = True
    return sorted(entries.items(), key=lambda kv: kv[0].split("/"))


def _page(ctx: _Ctx, items: list, page_size: int) -> tuple[list, dict]:
    cursor = ctx.q("cursor")
    try:
        start = int(base64.urlsafe_b64decode((cursor or "").encode() + b"==").decode() or 0) if cursor else 0
    except (ValueError, UnicodeDecodeError):
        raise HubError(400, "Invalid cursor")
    limit = ctx.q("limit")
    if limit and limit.isdigit():
        page_size = min(page_size, max(1, int(limit)))
    page = items[start:start + page_size]
    headers = {}
    if start + page_size < len(items):
        query = {k: v for k, v in ctx.query.items() if k != "cursor"}
        query["cursor"] = [base64.urlsafe_b64encode(str(start + page_size).encode()).decode().rstrip("=")]
        path = urllib.parse.urlsplit(ctx.h.path).path
        url = f"{ctx.base_url}{path}?{urllib.parse.urlencode(query, doseq=True)}"
        headers["Link"] = f'<{url}>; rel="next"'
    return page, headers


def _tree(ctx: _Ctx) -> Response:
    rtype, repo_id, rest = ctx.rtype, ctx.repo_id, ctx.rest  # type: ignore[attr-defined]
    repo = ctx.get_repo(rtype, repo_id)
    if len(rest) < 2:
        raise HubError(400, "Missing revision")
    rev = rest[1]
    path = "/".join(rest[2:]).strip("/")
    sha, tree = repo.tree_at(rev)
    if path and path not in _dirs_of(tree):
        code = "EntryNotFound"
        raise HubError(404, f"Entry not found: {path}" if path not in tree else f"{path} is not a directory", code,
                       headers={"X-Repo-Commit": sha})
    expand = ctx.qbool("expand")
    entries = _list_entries(tree, path, ctx.qbool("recursive"))
    size = ctx.state.config["tree_expand_page_size" if expand else "tree_page_size"]
    if expand:
        size = min(size, ctx.state.config["tree_page_size"])
    page, headers = _page(ctx, entries, int(size))
    body = [_entry_json(repo, tree, p, sha, expand, is_dir) for p, is_dir in page]
    headers["X-Repo-Commit"] = sha
    return Response(200, body, headers)


def _paths_info(ctx: _Ctx) -> Response:
    rtype, repo_id, rest = ctx.rtype, ctx.repo_id, ctx.rest  # type: ignore[attr-defined]
    repo = ctx.get_repo(rtype, repo_id)
    rev = "/".join(rest[1:]) or "main"
    sha, tree = repo.tree_at(rev)
    ctype = (ctx.h.headers.get("Content-Type") or "").lower()
    if "json" in ctype:
        payload = ctx.json()
        paths = payload.get("paths") or []
        expand = bool(payload.get("expand"))
    else:
        form = urllib.parse.parse_qs(ctx.body().decode(), keep_blank_values=True)
        paths = form.get("paths", [])
        expand = (form.get("expand", ["false"])[-1]).lower() in ("1", "true")
    if isinstance(paths, str):
        paths = [paths]
    if len(paths) > 1000:
        raise HubError(413, "too many parameters")
    dirs = _dirs_of(tree)
    out, seen = [], set()
    for p in paths:
        p = str(p).strip("/")
        if p in seen:
            continue
        seen.add(p)
        if p in tree:
            out.append(_entry_json(repo, tree, p, sha, expand, False))
        elif p in dirs:
            out.append(_entry_json(repo, tree, p, sha, expand, True))
    return Response(200, out, {"X-Repo-Commit": sha})


def _refs(ctx: _Ctx) -> Response:
    repo = ctx.get_repo(ctx.rtype, ctx.repo_id)  # type: ignore[attr-defined]
    refs = repo.refs
    body: dict[str, Any] = {
        "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": s}
                     for b, s in sorted(refs["branches"].items())],
        "converts": [],
        "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": s} for t, s in sorted(refs["tags"].items())],
    }
    if ctx.q("include_prs"):
        body["pullRequests"] = []
    return Response(200, body)


def _commits(ctx: _Ctx) -> Response:
    repo = ctx.get_repo(ctx.rtype, ctx.repo_id)  # type: ignore[attr-defined]
    rest = ctx.rest  # type: ignore[attr-defined]
    rev = "/".join(rest[1:]) or "main"
    sha = repo.resolve(rev)
    items = [
        {"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"],
         "authors": [{"user": a, "avatar": ""} for a in c["authors"]],
         "formatted": {"title": c["title"], "message": c["message"]}}
        for c in repo.history(sha)
    ]
    page, headers = _page(ctx, items, int(ctx.state.config["commits_page_size"]))
    headers["X-Total-Count"] = str(len(items))
    return Response(200, page, headers)


def _valid_ref_name(name: str) -> bool:
    return bool(name) and not name.startswith(("refs/", "/")) and ".." not in name and not name.endswith(
        (".", "/", ".lock")) and not re.search(r"[\s~^:?*\[\\]", name)


def _create_branch(ctx: _Ctx) -> Response:
    repo = ctx.get_repo(ctx.rtype, ctx.repo_id, write=True)  # type: ignore[attr-defined]
    branch = "/".join(ctx.rest[1:])  # type: ignore[attr-defined]
    if not _valid_ref_name(branch):
        raise HubError(400, f"Invalid reference for a branch: {branch}")
    payload = ctx.json()
    with repo.lock:
        refs = repo.refs
        if branch in refs["branches"]:
            raise HubError(409, f"Reference already exists: refs/heads/{branch}")
        start = payload.get("startingPoint") or "main"
        refs["branches"][branch] = repo.resolve(start)
        repo.save_refs(refs)
    ctx.state.bump(ctx.repo_key or "", "branches_created")
    return Response(200, {})


def _delete_branch(ctx: _Ctx) -> Response:
    repo = ctx.get_repo(ctx.rtype, ctx.repo_id, write=True)  # type: ignore[attr-defined]
    branch = "/".join(ctx.rest[1:])  # type: ignore[attr-defined]
    with repo.lock:
        refs = repo.refs
        if branch == "main":
            raise HubError(403, "Cannot delete the default branch")
        if branch not in refs["branches"]:
            raise HubError(404, f"Invalid rev id: {branch}", "RevisionNotFound")
        del refs["branches"][branch]
        repo.save_refs(refs)
    return Response(200, {})


def _create_tag(ctx: _Ctx) -> Response:
    repo = ctx.get_repo(ctx.rtype, ctx.repo_id, write=True)  # type: ignore[attr-defined]
    rev = "/".join(ctx.rest[1:]) or "main"  # type: ignore[attr-defined]
    payload = ctx.json()
    tag = payload.get("tag")
    if not isinstance(tag, str) or not _valid_ref_name(tag):
        raise HubError(400, f"Invalid tag name: {tag!r}")
    with repo.lock:
        refs = repo.refs
        if tag in refs["tags"]:
            raise HubError(409, f"Reference already exists: refs/tags/{tag}")
        refs["tags"][tag] = repo.resolve(rev)
        repo.save_refs(refs)
    return Response(200, {})


def _delete_tag(ctx: _Ctx) -> Response:
    repo = ctx.get_repo(ctx.rtype, ctx.repo_id, write=True)  # type: ignore[attr-defined]
    tag = "/".join(ctx.rest[1:])  # type: ignore[attr-defined]
    with repo.lock:
        refs = repo.refs
        if tag not in refs["tags"]:
            raise HubError(404, f"Invalid rev id: {tag}", "RevisionNotFound")
        del refs["tags"][tag]
        repo.save_refs(refs)
    return Response(200, {})


def _settings(ctx: _Ctx) -> Response:
    repo = ctx.get_repo(ctx.rtype, ctx.repo_id, write=True)  # type: ignore[attr-defined]
    payload = ctx.json()
    with repo.lock:
        meta = repo.meta
        if "private" in payload:
            meta["private"] = bool(payload["private"])
        if "visibility" in payload:
            meta["private"] = payload["visibility"] == "private"
        if "gated" in payload:
            meta["gated"] = payload["gated"]
        repo.save_meta(meta)
    return Response(200, {})


def _auth_check(ctx: _Ctx) -> Response:
    write = len(ctx.rest) > 1 and ctx.rest[1] == "write"  # type: ignore[attr-defined]
    ctx.get_repo(ctx.rtype, ctx.repo_id, write=write)  # type: ignore[attr-defined]
    return Response(200, {})


def _validate_yaml(ctx: _Ctx) -> Response:
    payload = ctx.json()
    content = payload.get("content")
    repo_type = payload.get("repoType") or "model"
    if not isinstance(content, str):
        raise HubError(400, '"content" is required')
    errors, warnings = validate_card_metadata(content, repo_type)
    accept = (ctx.h.headers.get("Accept") or "").lower()
    if "text/plain" in accept and "json" not in accept:
        if errors:
            return Response(400, "\n".join(f"Error: {e}" for e in errors), {"X-Error-Message": errors[0]})
        return Response(200, "\n".join(f"Warning: {w}" for w in warnings) or "OK")
    body = {"errors": [{"message": e} for e in errors], "warnings": [{"message": w} for w in warnings]}
    if errors:
        return Response(400, body, {"X-Error-Message": errors[0]})
    return Response(200, body)


# -- LFS ---------------------------------------------------------------------------------------------------------


def _sign(ctx: _Ctx, *parts: Any) -> str:
    msg = "|".join(str(p) for p in parts).encode()
    return hmac.new(ctx.state.secret, msg, hashlib.sha256).hexdigest()


def _lfs_storage_url(ctx: _Ctx, rtype: str, repo_id: str, oid: str, size: int, suffix: str = "") -> str:
    expires = int(time.time()) + 3600
    sig = _sign(ctx, rtype, repo_id, oid, size, suffix, expires)
    q = urllib.parse.urlencode({"size": size, "expires": expires, "sig": sig})
    return f"{ctx.base_url}/_lfs/{rtype}s/{repo_id}/{oid}{suffix}?{q}"


def _lfs_batch(ctx: _Ctx) -> Response:
    rtype, repo_id = ctx.rtype, ctx.repo_id  # type: ignore[attr-defined]
    payload = ctx.json()
    operation = payload.get("operation")
    repo = ctx.get_repo(rtype, repo_id, write=(operation == "upload"))
    if operation not in ("upload", "download"):
        raise HubError(422, f"Invalid operation: {operation!r}")
    if payload.get("hash_algo", "sha256") != "sha256":
        raise HubError(422, "Only sha256 is supported")
    ref = (payload.get("ref") or {}).get("name")
    if operation == "upload" and ref:
        _require_branch(repo, ref)
    transfers = payload.get("transfers") or ["basic"]
    threshold = ctx.state.config.get("lfs_multipart_threshold")
    chunk = int(ctx.state.config.get("lfs_multipart_chunk_size") or 5 * 1024 * 1024)
    objects = []
    chosen = "basic"
    for obj in payload.get("objects") or []:
        oid, size = obj.get("oid"), obj.get("size")
        if not isinstance(oid, str) or not _SHA256_RE.match(oid) or not isinstance(size, int) or size < 0:
            objects.append({"oid": str(oid), "size": size if isinstance(size, int) else 0,
                            "error": {"code": 422, "message": "Invalid oid or size"}})
            continue
        out: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
        if operation == "download":
            if not repo.has_object(oid, size):
                out["error"] = {"code": 404, "message": "Object does not exist"}
            else:
                out["actions"] = {"download": {"href": _lfs_storage_url(ctx, rtype, repo_id, oid, size),
                                               "expires_in": 3600}}
        elif repo.has_object(oid, size):
            pass  # already uploaded: no actions
        else:
            verify = {"href": f"{ctx.base_url}/{URL_PREFIXES[rtype]}{repo_id}.git/info/lfs/objects/verify",
                      "header": {"Authorization": ctx.h.headers.get("Authorization", "")}}
            if threshold is not None and size >= int(threshold) and "multipart" in transfers and size > 0:
                chosen = "multipart"
                n_parts = (size + chunk - 1) // chunk
                header = {"chunk_size": str(chunk)}
                for i in range(1, n_parts + 1):
                    header[f"{i:05d}"] = _lfs_storage_url(ctx, rtype, repo_id, oid, size, f"/part/{i}")
                out["actions"] = {"upload": {"href": _lfs_storage_url(ctx, rtype, repo_id, oid, size),
                                             "header": header, "expires_in": 3600},
                                  "verify": verify}
            else:
                out["actions"] = {"upload": {"href": _lfs_storage_url(ctx, rtype, repo_id, oid, size),
                                             "expires_in": 3600},
                                  "verify": verify}
        objects.append(out)
    return Response(200, {"transfer": chosen, "objects": objects, "hash_algo": "sha256"},
                    content_type="application/vnd.git-lfs+json")


def _lfs_verify(ctx: _Ctx) -> Response:
    repo = ctx.get_repo(ctx.rtype, ctx.repo_id, write=True)  # type: ignore[attr-defined]
    payload = ctx.json()
    oid, size = payload.get("oid"), payload.get("size")
    if not isinstance(oid, str) or not repo.has_object(oid, size if isinstance(size, int) else None):
        raise HubError(404, f"LFS object not found: {oid}")
    ctx.state.bump(ctx.repo_key or "", "lfs_verified")
    return Response(200, {"success": True}, content_type="application/vnd.git-lfs+json")


def _route_lfs_storage(ctx: _Ctx):
    # /_lfs/{t}/{ns}/{name}/{oid}[/part/{n}]
    s, m = ctx.segments, ctx.method
    if len(s) < 5 or s[1] not in REPO_TYPES:
        return None
    ctx.rtype, ctx.repo_id = REPO_TYPES[s[1]], f"{s[2]}/{s[3]}"  # type: ignore[attr-defined]
    ctx.repo_key = f"{ctx.rtype}s/{ctx.repo_id}"  # type: ignore[attr-defined]
    ctx.oid = s[4]  # type: ignore[attr-defined]
    ctx.suffix = "/" + "/".join(s[5:]) if len(s) > 5 else ""  # type: ignore[attr-defined]
    if ctx.suffix and m == "PUT":  # type: ignore[attr-defined]
        ctx.route = "lfs_part"
    elif not ctx.suffix and m == "PUT":  # type: ignore[attr-defined]
        ctx.route = "lfs_upload"
    elif not ctx.suffix and m == "POST":  # type: ignore[attr-defined]
        ctx.route = "lfs_complete"
    elif not ctx.suffix and m in ("GET", "HEAD"):  # type: ignore[attr-defined]
        ctx.route = "lfs_download"
    else:
        return None
    return _lfs_storage


def _lfs_storage(ctx: _Ctx) -> Response:
    rtype, repo_id, oid, suffix = ctx.rtype, ctx.repo_id, ctx.oid, ctx.suffix  # type: ignore[attr-defined]
    size_s, expires, sig = ctx.q("size"), ctx.q("expires"), ctx.q("sig")
    if not (size_s and expires and sig) or not hmac.compare_digest(
            sig, _sign(ctx, rtype, repo_id, oid, size_s, suffix, expires)):
        raise HubError(403, "SignatureDoesNotMatch")
    if int(expires) < time.time():
        raise HubError(403, "Request has expired")
    size = int(size_s)
    repo = ctx.state.store.repo(rtype, repo_id)
    if ctx.route == "lfs_download":
        if not repo.has_object(oid):
            raise HubError(404, "NoSuchKey")
        p = repo.object_path(oid)
        return Response(200, headers={"Content-Type": "application/octet-stream", "ETag": f'"{oid}"'},
                        file=(p, 0, p.stat().st_size))
    if ctx.route == "lfs_part":
        part = int(suffix.rsplit("/", 1)[-1])
        tmp = repo.tmp_dir() / f"{oid}.part{part:05d}"
        md5 = hashlib.md5()
        with open(tmp, "wb") as f:
            for data in ctx.h.iter_body():
                md5.update(data)
                f.write(data)
        return Response(200, b"", {"ETag": f'"{md5.hexdigest()}"'}, content_type="text/plain")
    if ctx.route == "lfs_complete":
        payload = ctx.json()
        parts = payload.get("parts") or []
        if payload.get("oid") != oid or not parts:
            raise HubError(400, "Invalid multipart completion payload")
        fd, tmp_name = tempfile.mkstemp(dir=repo.tmp_dir(), prefix=f"{oid}.assemble-")
        h = hashlib.sha256()
        total = 0
        with os.fdopen(fd, "wb") as out:
            for expected_n, part in enumerate(sorted(parts, key=lambda x: x["partNumber"]), start=1):
                if part["partNumber"] != expected_n:
                    raise HubError(400, "Missing part in multipart completion")
                p = repo.tmp_dir() / f"{oid}.part{expected_n:05d}"
                if not p.is_file():
                    raise HubError(400, f"Part {expected_n} was not uploaded")
                data = p.read_bytes()
                if f'"{hashlib.md5(data).hexdigest()}"' != part.get("etag") and hashlib.md5(
                        data).hexdigest() != part.get("etag"):
                    raise HubError(400, f"ETag mismatch for part {expected_n}")
                h.update(data)
                total += len(data)
                out.write(data)
        return _finish_lfs_object(ctx, repo, Path(tmp_name), h.hexdigest(), total, oid, size, multipart=True)
    # single PUT
    fd, tmp_name = tempfile.mkstemp(dir=repo.tmp_dir(), prefix=f"{oid}.upload-")
    h = hashlib.sha256()
    total = 0
    with os.fdopen(fd, "wb") as out:
        for data in ctx.h.iter_body():
            h.update(data)
            total += len(data)
            out.write(data)
    return _finish_lfs_object(ctx, repo, Path(tmp_name), h.hexdigest(), total, oid, size, multipart=False)


def _finish_lfs_object(ctx: _Ctx, repo: Repo, tmp: Path, digest: str, total: int, oid: str, size: int,
                       multipart: bool) -> Response:
    if digest != oid or total != size:
        tmp.unlink(missing_ok=True)
        raise HubError(400, f"Uploaded content does not match oid/size (got sha256={digest}, size={total})")
    repo.adopt_object_file(tmp, oid)
    if multipart:
        for p in repo.tmp_dir().glob(f"{oid}.part*"):
            p.unlink(missing_ok=True)
    ctx.state.bump(ctx.repo_key or "", "lfs_uploads")
    ctx.state.bump(ctx.repo_key or "", "lfs_bytes", total)
    if multipart:
        ctx.state.bump(ctx.repo_key or "", "lfs_multipart_uploads")
    return Response(200, b"", {"ETag": f'"{oid}"'}, content_type="text/plain")


# -- downloads ---------------------------------------------------------------------------------------------------


def _resolve(ctx: _Ctx) -> Response:
    rtype, repo_id = ctx.rtype, ctx.repo_id  # type: ignore[attr-defined]
    repo = ctx.get_repo(rtype, repo_id)
    sha, tree = repo.tree_at(ctx.rev)  # type: ignore[attr-defined]
    path = ctx.file_path  # type: ignore[attr-defined]
    entry = tree.get(path)
    if entry is None:
        raise HubError(404, "Entry not found", "EntryNotFound", headers={"X-Repo-Commit": sha})
    headers: dict[str, str] = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes", "Vary": "Origin, Range"}
    if ctx.raw and entry["lfs"]:  # type: ignore[attr-defined]
        pointer = lfs_pointer(entry["sha256"], entry["size"])
        headers["ETag"] = f'"{entry["oid"]}"'
        return Response(200, pointer, headers, content_type="text/plain; charset=utf-8")
    if entry["lfs"]:
        headers["ETag"] = f'"{entry["sha256"]}"'
        headers["X-Linked-Etag"] = f'"{entry["sha256"]}"'
        headers["X-Linked-Size"] = str(entry["size"])
        ctype = "application/octet-stream"
    else:
        headers["ETag"] = f'"{entry["oid"]}"'
        ctype = "text/plain; charset=utf-8" if not _looks_binary(repo.read_object(entry["sha256"])[:512]) \
            else "application/octet-stream"
    headers["Content-Type"] = ctype
    fname = path.rsplit("/", 1)[-1]
    ascii_name = fname.encode("ascii", "replace").decode().replace('"', "_")
    headers["Content-Disposition"] = f"inline; filename*=UTF-8''{urllib.parse.quote(fname)}; filename=\"{ascii_name}\""
    obj = repo.object_path(entry["sha256"])
    size = entry["size"]
    rng = ctx.h.headers.get("Range")
    if rng:
        m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", rng)
        if not m or (m.group(1) == "" and m.group(2) == ""):
            raise HubError(416, "Invalid range", headers={"Content-Range": f"bytes */{size}", **headers})
        if m.group(1) == "":
            n = int(m.group(2))
            start, end = max(0, size - n), size - 1
        else:
            start = int(m.group(1))
            end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        if start >= size or start > end:
            raise HubError(416, "Requested range not satisfiable",
                           headers={"Content-Range": f"bytes */{size}", **headers})
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        return Response(206, headers=headers, file=(obj, start, end - start + 1))
    return Response(200, headers=headers, file=(obj, 0, size))


# ----------------------------------------------------------------------------------------------------------------
# Programmatic API: HubTestServer + client environment helpers + pytest fixtures
# ----------------------------------------------------------------------------------------------------------------


class HubTestServer:
    """Start the offline test Hub on a loopback port, in a background thread (default) or a subprocess.

    >>> with HubTestServer(tmp_path) as server:
    ...     env = server.client_env()          # env vars for subprocess clients
    ...     server.add_fault("commit", 503)    # next commit fails
    ...     server.stats()["repos"]

    Args:
        root: folder where repositories are stored (kept after stop; reusing it restores the repos).
        host / port: bind address (port 0 = pick a free port).
        mode: "thread" (in-process, default) or "subprocess" (``python hub_server.py``).
        token: token returned by ``client_env()`` (any ``hf_*`` token is accepted by default).
        **config: overrides of ``DEFAULT_CONFIG`` (e.g. ``tree_page_size=2``, ``lfs_multipart_threshold=1``).
    """

    def __init__(self, root: str | os.PathLike, host: str = "127.0.0.1", port: int = 0, mode: str = "thread",
                 token: str = DEFAULT_TOKEN, **config: Any):
        if mode not in ("thread", "subprocess"):
            raise ValueError("mode must be 'thread' or 'subprocess'")
        self.root = Path(root)
        self.host = host
        self.port = port
        self.mode = mode
        self.token = token
        self.config = config
        self.url: str | None = None
        self._httpd: HubHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None

    # -- lifecycle
    def start(self) -> "HubTestServer":
        if self.mode == "thread":
            state = ServerState(self.root, self.config)
            self._httpd = HubHTTPServer((self.host, self.port), state)
            self.port = self._httpd.server_address[1]
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                            name="hub-test-server", daemon=True)
            self._thread.start()
            self.url = f"http://{self.host}:{self.port}"
        else:
            cmd = [sys.executable, os.path.abspath(__file__), "--host", self.host, "--port", str(self.port),
                   "--root", str(self.root)]
            if self.config:
                cmd += ["--config", json.dumps(self.config)]
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
            assert self._proc.stdout is not None
            line = self._proc.stdout.readline()
            if not line.startswith(READY_LINE_PREFIX):
                self._proc.kill()
                raise RuntimeError(f"hub test server failed to start: {line!r}")
            self.url = line[len(READY_LINE_PREFIX):].strip()
            self.port = int(self.url.rsplit(":", 1)[1])
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.time() + timeout
        while True:
            try:
                self._admin("GET", "stats")
                return
            except OSError:
                if time.time() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            if self._proc.stdout:
                self._proc.stdout.close()
            self._proc = None

    def __enter__(self) -> "HubTestServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- admin helpers (work in both modes: they go through HTTP)
    def _admin(self, method: str, what: str, payload: Any = None) -> Any:
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(f"{self.url}/_test/{what}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    def add_fault(self, route: str, status: int, count: int = 1, **kwargs: Any) -> dict:
        """Make the next ``count`` requests on ``route`` fail with ``status``. See module docstring for kwargs."""
        return self._admin("POST", "faults", {"route": route, "status": status, "count": count, **kwargs})[0]

    def clear_faults(self) -> None:
        self._admin("DELETE", "faults")

    def faults(self) -> list[dict]:
        return self._admin("GET", "faults")

    def stats(self) -> dict:
        return self._admin("GET", "stats")

    def repo_stats(self, repo_id: str, repo_type: str = "dataset") -> dict:
        return self.stats()["repos"].get(f"{repo_type}s/{repo_id}", {"commits": 0})

    def requests_log(self) -> list[dict]:
        return self._admin("GET", "log")

    def set_config(self, **config: Any) -> dict:
        return self._admin("POST", "config", config)

    def reset(self, repos: bool = False, config: bool = True) -> None:
        """Clear faults and stats (and config overrides; and all repositories if ``repos=True``)."""
        self._admin("POST", "reset", {"repos": repos, "config": config})
        if config and self.config:
            self.set_config(**self.config)

    # -- client side
    def client_env(self, token: str | None = None, hf_home: str | os.PathLike | None = None) -> dict[str, str]:
        """Environment variables pointing a huggingface_hub client at this server (for subprocesses)."""
        assert self.url is not None, "server not started"
        return client_env(self.url, token=token or self.token, hf_home=hf_home)


def client_env(endpoint: str, token: str = DEFAULT_TOKEN, hf_home: str | os.PathLike | None = None,
               base: dict[str, str] | None = None) -> dict[str, str]:
    """A full environment (``base`` or ``os.environ`` + overrides) for a client subprocess."""
    env = dict(os.environ if base is None else base)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HUGGING_FACE_HUB_TOKEN",
                "HF_HUB_ENABLE_HF_TRANSFER"):
        env.pop(var, None)
    env.update({
        "HF_ENDPOINT": endpoint,
        "HF_TOKEN": token,
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_UPDATE_CHECK": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": "0",
    })
    if hf_home is not None:
        env["HF_HOME"] = str(hf_home)
    return env


def client_patches(endpoint: str, token: str = DEFAULT_TOKEN, hf_home: str | os.PathLike | None = None
                   ) -> tuple[dict[str, str], list[str], list[tuple[Any, str, Any]]]:
    """What pointing the *current process* at ``endpoint`` takes: (env vars to set, env vars to unset,
    ``(object, attribute, value)`` patches of huggingface_hub / datasets module state read at import time).
    huggingface_hub is imported first, so that every patch can be undone (a module imported while the patches
    are in place would keep the test endpoint after they are undone); so is ``datasets``, when installed."""
    import huggingface_hub.hf_api  # noqa: F401 - see the docstring
    import huggingface_hub.utils._http  # noqa: F401
    from huggingface_hub import constants as hc

    with contextlib.suppress(ImportError):
        import datasets.config  # noqa: F401

    env = client_env(endpoint, token=token, base={}, hf_home=hf_home)
    unset = ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"]
    attrs: list[tuple[Any, str, Any]] = [
        (hc, "ENDPOINT", endpoint),
        (hc, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"),
        (hc, "HF_HUB_DISABLE_XET", True),
        (hc, "HF_HUB_OFFLINE", False),
        (hc, "HF_HUB_DISABLE_TELEMETRY", True),
        (hc, "HF_HUB_DISABLE_UPDATE_CHECK", True),
    ]
    if hf_home is not None:
        home = str(hf_home)
        attrs += [(hc, "HF_HOME", home), (hc, "HF_HUB_CACHE", os.path.join(home, "hub")),
                  (hc, "HF_ASSETS_CACHE", os.path.join(home, "assets")), (hc, "HF_XET_CACHE", os.path.join(home, "xet")),
                  (hc, "CHECK_FOR_UPDATE_DONE_PATH", os.path.join(home, ".check_for_update_done"))]
    attrs.append((sys.modules["huggingface_hub.hf_api"].api, "endpoint", endpoint))
    http_mod = sys.modules["huggingface_hub.utils._http"]
    if hasattr(http_mod, "_HUB_ORIGINS"):
        attrs.append((http_mod, "_HUB_ORIGINS", frozenset(http_mod._HUB_ORIGINS | {http_mod._url_origin(endpoint)})))
    dc = sys.modules.get("datasets.config")
    if dc is not None:
        attrs += [(dc, "HF_ENDPOINT", endpoint),
                  (dc, "HUB_DATASETS_URL", endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}"),
                  (dc, "HF_HUB_OFFLINE", False)]
        if hf_home is not None:
            home_p = Path(hf_home)
            attrs += [(dc, "HF_CACHE_HOME", str(home_p)), (dc, "HF_DATASETS_CACHE", home_p / "datasets"),
                      (dc, "DOWNLOADED_DATASETS_PATH", home_p / "datasets" / "downloads"),
                      (dc, "EXTRACTED_DATASETS_PATH", home_p / "datasets" / "downloads" / "extracted")]
    return env, unset, [(obj, attr, value) for obj, attr, value in attrs if hasattr(obj, attr)]


@contextlib.contextmanager
def hf_client_env(endpoint: str, token: str = DEFAULT_TOKEN,
                  hf_home: str | os.PathLike | None = None) -> Iterator[None]:
    """Point the *current process* at ``endpoint`` (see :func:`client_patches`): sets the env vars and patches
    huggingface_hub / datasets module state; with ``hf_home``, the default caches (hub + datasets) are redirected
    there as well. Everything is restored on exit."""
    env, unset, attrs = client_patches(endpoint, token=token, hf_home=hf_home)
    saved_env = {k: os.environ.get(k) for k in [*env, *unset]}
    patches: list[tuple[Any, str, Any]] = []
    try:
        for var in unset:
            os.environ.pop(var, None)
        os.environ.update(env)
        for obj, attr, value in attrs:
            patches.append((obj, attr, getattr(obj, attr)))
            setattr(obj, attr, value)
        yield
    finally:
        for obj, attr, old in reversed(patches):
            setattr(obj, attr, old)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


try:  # pytest fixtures (optional: the module is also a standalone script)
    import pytest
except ImportError:  # pragma: no cover
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    _SESSION_SERVER: dict[str, HubTestServer] = {}

    def _session_server(tmp_path_factory: Any) -> HubTestServer:
        """One test Hub (thread mode) per test session, started on first use and stopped at exit. (A module-level
        singleton rather than a session fixture: test modules import ``hub_server`` alone, and a fixture it
        depends on would have to be imported everywhere too.)"""
        server = _SESSION_SERVER.get("server")
        if server is None:
            server = HubTestServer(tmp_path_factory.mktemp("hub_server_root")).start()
            server.hf_home = tmp_path_factory.mktemp("hf_home")  # type: ignore[attr-defined]
            _SESSION_SERVER["server"] = server
            import atexit

            atexit.register(server.stop)
        return server

    @pytest.fixture
    def hub_server(tmp_path_factory: Any, monkeypatch: Any) -> Iterator[HubTestServer]:
        """The session's offline test Hub. For the duration of the test only, the current process is pointed at
        it (env vars + patched huggingface_hub/datasets state, through ``monkeypatch``: undone in order with the
        test's own ``monkeypatch`` changes); subprocesses should use ``hub_server.client_env()``. Use unique repo
        ids per test (see ``hub_repo_id``)."""
        server = _session_server(tmp_path_factory)
        env, unset, attrs = client_patches(server.url, token=server.token, hf_home=server.hf_home)  # type: ignore
        for var in unset:
            monkeypatch.delenv(var, raising=False)
        for var, value in env.items():
            monkeypatch.setenv(var, value)
        for obj, attr, value in attrs:
            monkeypatch.setattr(obj, attr, value)
        yield server

    @pytest.fixture
    def hub_repo_id(hub_server: HubTestServer) -> Iterator[str]:
        """A fresh, not-yet-created repo id (``testuser/test-<hex>``); faults are cleared before and after."""
        hub_server.clear_faults()
        yield f"{DEFAULT_USER}/test-{uuid.uuid4().hex[:12]}"
        hub_server.clear_faults()


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Offline TEST Hub server (not a Hugging Face Hub implementation)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 = pick a free port")
    parser.add_argument("--root", required=True, help="storage folder")
    parser.add_argument("--config", default=None, help="JSON object overriding DEFAULT_CONFIG")
    args = parser.parse_args(argv)
    config = json.loads(args.config) if args.config else {}
    state = ServerState(args.root, config)
    httpd = HubHTTPServer((args.host, args.port), state)
    url = f"http://{args.host}:{httpd.server_address[1]}"
    print(READY_LINE_PREFIX + url, flush=True)
    try:
        httpd.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:  # pragma: no cover
        pass
    finally:
        httpd.server_close()


if __name__ == "__main__":
    main()
