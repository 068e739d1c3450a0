"""Prompt sets on the Hugging Face Hub: push a folder of prompt files, pull it back, load one prompt.

A published prompt set is a Hub *dataset* repository holding the prompt files as they are
(``<name>.yaml``, byte for byte) and a README card describing the set. A recipe names one prompt of
it as ``hf://datasets/OWNER/REPO/NAME@REVISION`` (``@REVISION`` — a branch, tag or commit — is
optional and defaults to ``main``); the revision is resolved to the commit sha, recorded on the
:class:`~finephrase.prompts.Prompt` (``revision``), and the file is fetched at that commit, so a
run always knows exactly which text it used. Everything goes through ``huggingface_hub``
(``HfApi.create_repo`` / ``create_commit`` / ``dataset_info``, ``hf_hub_download``,
``snapshot_download``) and so honours ``HF_ENDPOINT``, ``HF_TOKEN`` and the Hub cache.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from pathlib import Path

from finephrase.prompts import CONTEXT_KIND, ChunkContext, Prompt, PromptError, load_any_file, load_prompt_file

HF_REF_RE = re.compile(r"^hf://datasets/(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+)(?:/(?P<name>[^@]+?))?(?:@(?P<rev>.+))?$")
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
PROMPT_SUFFIXES = (".yaml", ".yml")


def parse_hf_ref(ref: str) -> tuple[str, str | None, str | None]:
    """``hf://datasets/OWNER/REPO[/NAME][@REVISION]`` -> (repo_id, name, revision)."""
    m = HF_REF_RE.match(ref.strip())
    if not m:
        raise PromptError(f"{ref!r}: a Hub prompt is named hf://datasets/OWNER/REPO/NAME[@REVISION]")
    return m.group("repo"), m.group("name"), m.group("rev")


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


def _hub_error(repo_id: str, revision: str | None, e: Exception) -> PromptError:
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

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
        raise _hub_error(repo_id, revision, e) from None
    return info.sha


def load_hub_prompt(ref: str) -> Prompt:
    """Load ``hf://datasets/OWNER/REPO/NAME@REVISION``; the Prompt records ``origin`` and the resolved ``revision``."""
    from huggingface_hub import hf_hub_download

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
        prompt = load_prompt_file(local, origin=ref)
        return replace(prompt, revision=sha)
    from huggingface_hub.errors import EntryNotFoundError

    if isinstance(last, EntryNotFoundError):
        available = ", ".join(sorted(Path(f).stem for f in list_remote_prompt_files(repo_id, sha))) or "none"
        raise PromptError(f"{ref!r}: no prompt file {filenames[0]!r} at {repo_id}@{sha[:12]} (prompts there: {available})")
    raise _hub_error(repo_id, revision, last) from None


def _fetch_chunk_context(repo_id: str, sha: str, local: str, filename: str) -> None:
    """A prompt naming a chunk-context file of its own set: fetch it next to the prompt (same commit)."""
    import yaml
    from huggingface_hub import hf_hub_download

    from finephrase.prompts import CONTEXT_DIR, PACKAGED_PROMPTS_DIR

    try:
        data = yaml.safe_load(Path(local).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - load_prompt_file reports it
        return
    ref = data.get("chunk_context") if isinstance(data, dict) else None
    if not isinstance(ref, str) or (PACKAGED_PROMPTS_DIR / CONTEXT_DIR / f"{ref}.yaml").is_file():
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
        raise _hub_error(repo_id, revision, e) from None
    return [f for f in files if f.endswith(PROMPT_SUFFIXES)]


# ------------------------------------------------------------------------------------------- push
def local_set_files(set_dir: str | os.PathLike) -> list[Path]:
    folder = Path(set_dir)
    if not folder.is_dir():
        raise PromptError(f"{folder}: not a folder of prompt files")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in PROMPT_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise PromptError(f"{folder}: no prompt files (*.yaml)")
    return files


def set_card(items: list[Prompt | ChunkContext], repo_id: str, set_name: str) -> str:
    """The README of a published prompt set: what it holds, how to use it, every prompt verbatim."""
    import yaml

    prompts = [p for p in items if isinstance(p, Prompt)]
    sources = sorted({p.source.get("title", "") for p in prompts if p.source.get("title")})
    front = {"tags": ["finephrase", "prompts", "synthetic-data", "rephrasing"], "pretty_name": f"finephrase prompts: {set_name}"}
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
             f"# finephrase prompt set `{set_name}`", "",
             f"{len(prompts)} prompt file(s) for [finephrase](https://github.com/huggingface/datatrove) "
             "(FinePhrase-style synthetic pretraining data with datatrove). Each file is a prompt: the "
             "published text, where it comes from, default sampling parameters and output rules "
             "(schema: `prompts/README.md` in finephrase). The files are stored exactly as written.", ""]
    if sources:
        lines += ["Sources: " + "; ".join(sources) + ".", ""]
    lines += ["## Use it", "", "In a recipe, name a prompt and pin the revision (the commit sha is recorded either way):", "",
              "```yaml", "prompts:"]
    for p in prompts[:3]:
        lines.append(f"  - hf://datasets/{repo_id}/{p.name}@main")
    lines += ["```", "", "or fetch the whole set:", "", "```bash",
              f"finephrase prompts pull {repo_id}@main --to prompts/{set_name}", "```", "",
              "## Prompts", "", "| prompt | version | sha256 | suits | context | output rules | source |",
              "|---|---|---|---|---|---|---|"]
    for p in prompts:
        rules = ", ".join(f"{k}={v}" for k, v in p.output_rules.items() if v not in (None, [], False)) or "defaults"
        src = p.source.get("url") or p.source.get("title") or ""
        lines.append(f"| `{p.name}` | {p.version} | `{p.sha256[:16]}` | {p.suits} | {p.context} | "
                     f"{rules.replace('|', '/')} | {src} |")
    for c in items:
        if isinstance(c, ChunkContext):
            lines.append(f"| `{c.name}` ({CONTEXT_KIND}) | {c.version} | `{c.sha256[:16]}` | | | | "
                         f"{c.source.get('url', '')} |")
    lines += ["", "A prompt's sha256 is computed from its normalized system prompt, template and generation "
              "parameters; every row finephrase generates carries it (`prompt_sha256`).", ""]
    for p in prompts:
        lines += [f"### `{p.name}` v{p.version}", "", p.description, ""]
        if p.source.get("notes"):
            lines += [f"Source notes: {p.source['notes'].strip()}", ""]
        if p.system:
            lines += ["System prompt:", "", "```text", p.system, "```", ""]
        lines += ["Template:", "", "```text", p.template.rstrip(), "```", ""]
    return "\n".join(lines)


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
        raise _hub_error(repo_id, revision, e) from None
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
        raise _hub_error(repo_id, revision, e) from None
    return {"repo_id": repo_id, "commit": info.oid, "url": info.commit_url, "files": rel}


def pull_prompt_set(repo_id: str, revision: str | None = None, to: str | os.PathLike | None = None) -> dict:
    """Download a published prompt set at a revision. Returns ``{"repo_id", "revision", "path", "files"}``."""
    from huggingface_hub import snapshot_download

    sha = resolve_revision(repo_id, revision)
    try:
        path = snapshot_download(repo_id, repo_type="dataset", revision=sha, local_dir=str(to) if to else None,
                                 allow_patterns=["*.yaml", "*.yml", "README.md"])
    except Exception as e:  # noqa: BLE001
        raise _hub_error(repo_id, revision, e) from None
    files = sorted(p.relative_to(path).as_posix() for p in Path(path).rglob("*")
                   if p.is_file() and p.suffix in PROMPT_SUFFIXES and ".cache" not in p.relative_to(path).parts)
    return {"repo_id": repo_id, "revision": sha, "path": str(path), "files": files}
