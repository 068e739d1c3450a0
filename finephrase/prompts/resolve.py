"""The one resolver: a prompt reference -> a :class:`~finephrase.prompts.model.Prompt`.

A reference is

- ``set/name``: a packaged prompt (``prompts/<set>/<name>.yaml``);
- a file path (``*.yaml``, or a path with a suffix): relative to ``base_dir`` first (a recipe's folder),
  then as given;
- ``hf://datasets/OWNER/REPO/NAME[@REVISION]``: a prompt of a set published on the Hub. ``@REVISION``
  (a branch, tag or commit; default ``main``) is resolved to the commit sha, recorded on the Prompt
  (``revision``), and the file is fetched at that commit, so a run always knows exactly which text
  it used. This is the only module that fetches from the Hub (through ``huggingface_hub``, so
  ``HF_ENDPOINT``, ``HF_TOKEN`` and the Hub cache apply); publishing and pulling whole sets is
  :mod:`finephrase.prompts.hub`.

A recipe's prompts, a published dataset's prompts and the CLI all go through :func:`load_prompt`
(:func:`resolve_prompts` for a list). With ``published_dir`` (a dataset's output folder), a reference
that does not resolve is looked up among the copies a run wrote to ``published_dir/prompts/<set>/``.

Imports: :mod:`.model`, :mod:`.context`, :mod:`.validate`.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

from finephrase.errors import PromptError
from finephrase.prompts.context import (
    CONTEXT_KIND,
    PACKAGED_PROMPTS_DIR,
    ChunkContext,
    chunk_context_from_dict,
    is_packaged_context,
)
from finephrase.prompts.model import Prompt, prompt_from_dict
from finephrase.prompts.validate import YAML_SUFFIXES, fail, read_yaml

HF_REF_RE = re.compile(r"^hf://datasets/(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:/(?P<name>[^@]+?))?(?:@(?P<rev>.+))?$")
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
PROMPT_SUFFIXES = YAML_SUFFIXES


# ------------------------------------------------------------------------------------ files
def load_prompt_file(path: str | Path, origin: str | None = None) -> Prompt:
    path = Path(path)
    data, text = read_yaml(path, what="prompt file")
    prompt = prompt_from_dict(data, str(path), text, origin=origin)
    if path.parent.name != prompt.set and path.parent.resolve().parent == PACKAGED_PROMPTS_DIR:
        raise fail(str(path), f"set {prompt.set!r} does not match its folder {path.parent.name!r}")
    return prompt


def load_any_file(path: str | Path) -> Prompt | ChunkContext:
    """Validate-and-load a prompt file or a chunk-context file (``kind: chunk_context``)."""
    path = Path(path)
    data, text = read_yaml(path)
    if isinstance(data, dict) and data.get("kind") == CONTEXT_KIND:
        return chunk_context_from_dict(data, str(path), text)
    return load_prompt_file(path)


def list_packaged_prompts(set_name: str | None = None) -> list[Prompt]:
    prompts = []
    for p in sorted(PACKAGED_PROMPTS_DIR.glob("*/*.yaml")):
        if p.parent.name.startswith("_"):  # _context/: chunk-context wordings, not prompts
            continue
        if set_name and p.parent.name != set_name:
            continue
        prompts.append(load_prompt_file(p, origin=f"{p.parent.name}/{p.stem}"))
    return prompts


# ------------------------------------------------------------------------------------ references
def load_prompt(ref: str, base_dir: str | Path | None = None, published_dir: str | Path | None = None) -> Prompt:
    """Resolve a prompt reference: ``set/name`` (packaged), a local path (relative to ``base_dir`` first), or
    ``hf://datasets/...``; then, with ``published_dir``, the copy under ``published_dir/prompts/``."""
    try:
        if ref.startswith("hf://"):
            return load_hub_prompt(ref)
        if ref.endswith(YAML_SUFFIXES) or "/" in ref and Path(ref).suffix:
            return _load_local(ref, base_dir)
        return _load_packaged(ref)
    except PromptError:
        copy = _published_copy(ref, published_dir) if published_dir is not None else None
        if copy is None:
            raise
    return load_prompt_file(copy, origin=ref)


def resolve_prompts(refs: Iterable[str], base_dir: str | Path | None = None,
                    published_dir: str | Path | None = None) -> list[Prompt]:
    """:func:`load_prompt` for each reference; a failure's ``PromptError.index`` is the reference's position."""
    prompts = []
    for i, ref in enumerate(refs):
        try:
            prompts.append(load_prompt(ref, base_dir=base_dir, published_dir=published_dir))
        except PromptError as e:
            e.index = i
            raise
    return prompts


def _load_local(ref: str, base_dir: str | Path | None) -> Prompt:
    p = Path(ref)
    candidates = [Path(base_dir) / p] if not p.is_absolute() and base_dir is not None else []
    for c in [*candidates, p]:
        if c.is_file():
            return load_prompt_file(c, origin=ref)
    raise PromptError(f"prompt file {ref!r} not found")


def _load_packaged(ref: str) -> Prompt:
    parts = ref.split("/")
    if len(parts) == 2 and not parts[0].startswith("_"):
        p = PACKAGED_PROMPTS_DIR / parts[0] / f"{parts[1]}.yaml"
        if p.is_file():
            return load_prompt_file(p, origin=ref)
    known = ", ".join(pr.ref for pr in list_packaged_prompts())
    raise PromptError(f"unknown prompt {ref!r}; packaged prompts: {known}")


def _published_copy(ref: str, published_dir: str | Path) -> str | None:
    """The copy of a prompt a run wrote to ``published_dir/prompts/<set>/<name>.yaml`` (the recipe may name it
    relative to where the recipe was first written)."""
    stem = os.path.splitext(os.path.basename(ref))[0]
    found = sorted(glob.glob(os.path.join(published_dir, "prompts", "*", f"{stem}.yaml")))
    if ref.count("/") == 1 and not ref.endswith(YAML_SUFFIXES):
        found = [f for f in found if f.endswith(os.path.join("prompts", ref) + ".yaml")] or found
    return found[0] if found else None


# ------------------------------------------------------------------------------------ the Hub
def parse_hf_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``hf://datasets/OWNER/REPO[/NAME][@REVISION]`` -> (repo_id, name, revision)."""
    m = HF_REF_RE.match(ref.strip())
    if not m:
        raise PromptError(f"{ref!r}: a Hub prompt is named hf://datasets/OWNER/REPO/NAME[@REVISION]")
    return m.group("repo"), m.group("name"), m.group("rev")


def hub_error(repo_id: str, revision: str | None, e: Exception) -> PromptError:
    """A huggingface_hub failure as a PromptError naming the repository (and revision)."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision or 'main'}"
    if isinstance(e, RevisionNotFoundError):
        return PromptError(f"hf://datasets/{where}: revision {revision!r} not found")
    if isinstance(e, RepositoryNotFoundError):
        return PromptError(f"hf://datasets/{repo_id}: dataset repository not found (or not accessible with your token)")
    if isinstance(e, EntryNotFoundError):
        return PromptError(f"hf://datasets/{where}: {e}")
    return PromptError(f"hf://datasets/{where}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")


def resolve_revision(repo_id: str, revision: str | None = None) -> str:
    """The commit sha that ``revision`` (branch, tag, sha; default main) points to."""
    from huggingface_hub import HfApi

    if revision and SHA_RE.match(revision) and os.environ.get("HF_HUB_OFFLINE"):
        return revision  # offline: a full sha is already resolved
    try:
        info = HfApi().dataset_info(repo_id, revision=revision)
    except Exception as e:  # noqa: BLE001 - turned into a user error naming the repo
        raise hub_error(repo_id, revision, e) from None
    return info.sha


def load_hub_prompt(ref: str) -> Prompt:
    """Load ``hf://datasets/OWNER/REPO/NAME@REVISION``; the Prompt records ``origin`` and the resolved ``revision``."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    repo_id, name, revision = parse_hf_ref(ref)
    if not name:
        raise PromptError(f"{ref!r}: name the prompt: hf://datasets/{repo_id}/NAME[@REVISION]")
    sha = resolve_revision(repo_id, revision)
    filenames = [name] if name.endswith(PROMPT_SUFFIXES) else [f"{name}.yaml", f"{name}.yml"]
    last: Exception | None = None
    for filename in filenames:
        try:
            local = hf_hub_download(repo_id, filename, repo_type="dataset", revision=sha)
        except Exception as e:  # noqa: BLE001
            last = e
            continue
        _fetch_chunk_context(repo_id, sha, local, filename)
        return replace(load_prompt_file(local, origin=ref), revision=sha)
    if isinstance(last, EntryNotFoundError):
        available = ", ".join(sorted(Path(f).stem for f in list_remote_prompt_files(repo_id, sha))) or "none"
        raise PromptError(f"{ref!r}: no prompt file {filenames[0]!r} at {repo_id}@{sha[:12]} (prompts there: {available})")
    raise hub_error(repo_id, revision, last) from None


def _fetch_chunk_context(repo_id: str, sha: str, local: str, filename: str) -> None:
    """A prompt naming a chunk-context file of its own set: fetch it next to the prompt (same commit)."""
    import yaml
    from huggingface_hub import hf_hub_download

    try:
        data = yaml.safe_load(Path(local).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - load_prompt_file reports it
        return
    ref = data.get("chunk_context") if isinstance(data, dict) else None
    if not isinstance(ref, str) or is_packaged_context(ref):
        return
    name = ref if ref.endswith(PROMPT_SUFFIXES) else f"{ref}.yaml"
    folder = Path(filename).parent.as_posix()
    remote = name if folder in ("", ".") else f"{folder}/{name}"
    try:
        hf_hub_download(repo_id, remote, repo_type="dataset", revision=sha)
    except Exception:  # noqa: BLE001 - then the prompt's validation names the missing file
        pass


def list_remote_prompt_files(repo_id: str, revision: str | None = None) -> list[str]:
    from huggingface_hub import HfApi

    try:
        files = HfApi().list_repo_files(repo_id, repo_type="dataset", revision=revision)
    except Exception as e:  # noqa: BLE001
        raise hub_error(repo_id, revision, e) from None
    return [f for f in files if f.endswith(PROMPT_SUFFIXES)]
