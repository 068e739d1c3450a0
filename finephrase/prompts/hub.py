"""Prompt sets on the Hugging Face Hub: push a folder of prompt files, pull it back.

A published prompt set is a Hub *dataset* repository holding the prompt files as they are
(``<name>.yaml``, byte for byte) and a README card describing the set (``cards/prompt_set_card.md.j2``).
A recipe names one prompt of it as ``hf://datasets/OWNER/REPO/NAME@REVISION``, resolved by
:mod:`finephrase.prompts.resolve`. Everything goes through ``huggingface_hub``
(``HfApi.create_repo`` / ``create_commit``, ``snapshot_download``) and so honours ``HF_ENDPOINT``,
``HF_TOKEN`` and the Hub cache.

Imports: :mod:`.resolve`, :mod:`.model`, :mod:`.context`, :mod:`.validate`, finephrase.resources.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from finephrase.errors import PromptError
from finephrase.prompts.context import CONTEXT_KIND, ChunkContext
from finephrase.prompts.model import Prompt
from finephrase.prompts.resolve import (
    PROMPT_SUFFIXES,
    hub_error,
    load_any_file,
    parse_hf_ref,
    resolve_revision,
)
from finephrase.resources import data_dir

SET_CARD_TEMPLATE = "prompt_set_card.md.j2"  # in cards/ (the wheel's package data, or cards/ of a source checkout)


def parse_repo_rev(spec: str) -> tuple[str, str | None]:
    """``OWNER/REPO[@REV]`` (or an ``hf://datasets/`` form) -> (repo_id, revision)."""
    if spec.startswith("hf://"):
        repo, name, rev = parse_hf_ref(spec)
        if name:
            raise PromptError(f"{spec!r}: name a repository, not a prompt in it")
        return repo, rev
    repo, _, rev = spec.partition("@")
    if not re.match(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", repo):
        raise PromptError(f"{spec!r}: expected OWNER/REPO[@REVISION]")
    return repo, rev or None


def local_set_files(set_dir: str | os.PathLike) -> list[Path]:
    folder = Path(set_dir)
    if not folder.is_dir():
        raise PromptError(f"{folder}: not a folder of prompt files")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in PROMPT_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise PromptError(f"{folder}: no prompt files (*.yaml)")
    return files


def _prompt_view(p: Prompt) -> dict:
    rules = ", ".join(f"{k}={v}" for k, v in p.output_rules.items() if v not in (None, [], False)) or "defaults"
    return {"name": p.name, "version": p.version, "sha256": p.sha256, "suits": p.suits, "context": p.context,
            "rules": rules.replace("|", "/"), "source": p.source.get("url") or p.source.get("title") or "",
            "description": p.description, "notes": (p.source.get("notes") or "").strip(), "system": p.system,
            "template": p.template.rstrip()}


def set_card(items: list[Prompt | ChunkContext], repo_id: str, set_name: str) -> str:
    """The README of a published prompt set: what it holds, how to use it, every prompt verbatim."""
    import jinja2
    import yaml

    prompts = [p for p in items if isinstance(p, Prompt)]
    front = {"tags": ["finephrase", "prompts", "synthetic-data", "rephrasing"], "pretty_name": f"finephrase prompts: {set_name}"}
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                             keep_trailing_newline=True, autoescape=False)
    template = env.from_string((data_dir("cards") / SET_CARD_TEMPLATE).read_text(encoding="utf-8"))
    text = template.render(
        card_data=yaml.safe_dump(front, sort_keys=False).strip(), set_name=set_name, repo_id=repo_id,
        sources=sorted({p.source.get("title", "") for p in prompts if p.source.get("title")}),
        prompts=[_prompt_view(p) for p in prompts], context_kind=CONTEXT_KIND,
        contexts=[{"name": c.name, "version": c.version, "sha256": c.sha256, "url": c.source.get("url", "")}
                  for c in items if isinstance(c, ChunkContext)],
    )
    return text.rstrip("\n") + "\n"


def push_prompt_set(set_dir: str | os.PathLike, repo_id: str, private: bool = False, revision: str | None = None,
                    commit_message: str | None = None) -> dict:
    """Validate every file in ``set_dir`` and publish them (plus a README card) to a Hub dataset repo.

    Files are uploaded byte for byte; prompt files in the repository that are no longer in the
    folder are deleted in the same commit. Returns ``{"repo_id", "commit", "url", "files"}``.
    """
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    folder = Path(set_dir)
    files = local_set_files(folder)
    items = [load_any_file(f) for f in files]  # raises PromptError naming the file and line
    set_name = next((p.set for p in items if isinstance(p, Prompt)), folder.resolve().name)
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
        existing = set(api.list_repo_files(repo_id, repo_type="dataset", revision=revision))
    except Exception as e:  # noqa: BLE001
        raise hub_error(repo_id, revision, e) from None
    rel = [f.relative_to(folder).as_posix() for f in files]
    operations = [CommitOperationAdd(path_in_repo=r, path_or_fileobj=str(f)) for r, f in zip(rel, files)]
    operations.append(CommitOperationAdd(path_in_repo="README.md",
                                         path_or_fileobj=set_card(items, repo_id, set_name).encode("utf-8")))
    operations += [CommitOperationDelete(path_in_repo=f) for f in sorted(existing)
                   if f.endswith(PROMPT_SUFFIXES) and f not in rel]
    try:
        info = api.create_commit(repo_id, operations, commit_message=commit_message or f"finephrase prompts: {set_name}",
                                 repo_type="dataset", revision=revision)
    except Exception as e:  # noqa: BLE001
        raise hub_error(repo_id, revision, e) from None
    return {"repo_id": repo_id, "commit": info.oid, "url": info.commit_url, "files": rel}


def pull_prompt_set(repo_id: str, revision: str | None = None, to: str | os.PathLike | None = None) -> dict:
    """Download a published prompt set at a revision. Returns ``{"repo_id", "revision", "path", "files"}``."""
    from huggingface_hub import snapshot_download

    sha = resolve_revision(repo_id, revision)
    try:
        path = snapshot_download(repo_id, repo_type="dataset", revision=sha, local_dir=str(to) if to else None,
                                 allow_patterns=["*.yaml", "*.yml", "README.md"])
    except Exception as e:  # noqa: BLE001
        raise hub_error(repo_id, revision, e) from None
    files = sorted(p.relative_to(path).as_posix() for p in Path(path).rglob("*")
                   if p.is_file() and p.suffix in PROMPT_SUFFIXES and ".cache" not in p.relative_to(path).parts)
    return {"repo_id": repo_id, "revision": sha, "path": str(path), "files": files}
