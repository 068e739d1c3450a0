"""A classifier from a local path or a Hub model repo, downloaded and cached with huggingface_hub.

Accepted: a local fastText file (``models/quality.ftz``) or ``transformers`` folder (``config.json`` + weights +
tokenizer, as ``save_pretrained`` writes it); ``org/name`` (a transformers repo — one with ``config.json``, e.g. the
FineWeb-Edu classifier ``HuggingFaceFW/fineweb-edu-classifier``, downloaded whole with ``snapshot_download`` — or
the repo's single ``.bin`` / ``.ftz`` file, e.g. DCLM's ``mlfoundations/fasttext-oh-eli5``);
``org/name/file.bin`` or ``hf://org/name/file.bin`` (that file);
``...@revision`` pins a revision. Downloads land in huggingface_hub's cache (``HF_HUB_CACHE``), so a second run
reads the cached file, also offline (``HF_HUB_OFFLINE=1``). A Hub that cannot be reached is an error with the
fix (download it with ``hf download`` elsewhere, then pass the local path).
"""

from __future__ import annotations

import os

from finephrase.errors import ClassifierNotFound
from finephrase.quality.scorers import is_transformers_model

MODEL_SUFFIXES = (".bin", ".ftz")


def _parse(spec: str) -> tuple[str, str | None, str | None]:
    """(repo_id, filename or None, revision or None) of a Hub reference."""
    ref = spec.removeprefix("hf://")
    ref, _, revision = ref.partition("@")
    parts = ref.strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise ClassifierNotFound(f"{spec!r} is neither a local file nor a Hub model reference (org/name[/file])")
    filename = "/".join(parts[2:]) or None
    return f"{parts[0]}/{parts[1]}", filename, revision or None


def _download(repo_id: str, revision: str | None) -> str:
    """The repo whole (a transformers model) or its one fastText file."""
    from huggingface_hub import hf_hub_download, list_repo_files, snapshot_download

    listed = list_repo_files(repo_id, revision=revision)
    if "config.json" in listed:
        return snapshot_download(repo_id, revision=revision)
    return hf_hub_download(repo_id, _model_file(repo_id, listed), revision=revision)


def _model_file(repo_id: str, listed: list[str]) -> str:
    files = [f for f in listed if f.endswith(MODEL_SUFFIXES)]
    if len(files) != 1:
        found = ", ".join(files) or "none"
        raise ClassifierNotFound(f"{repo_id}: expected one .bin/.ftz file in the repo, found {found}; "
                                 f"fix: name it, e.g. {repo_id}/{files[0] if files else 'model.bin'}")
    return files[0]


def resolve_classifier(spec: str) -> str:
    """A local path to the classifier ``spec`` names (downloading it from the Hub when needed)."""
    if os.path.isfile(spec) or is_transformers_model(spec):
        return spec
    if spec.startswith(("/", "./", "../")) or (not spec.startswith("hf://") and spec.endswith(MODEL_SUFFIXES)
                                               and spec.count("/") < 2):
        raise ClassifierNotFound(f"classifier {spec!r} not found (a fastText file, or a transformers folder with "
                                 "config.json)")
    repo_id, filename, revision = _parse(spec)
    from huggingface_hub import hf_hub_download

    from finephrase.errors import describe_hub_error

    try:
        if filename:
            return hf_hub_download(repo_id, filename, revision=revision)
        return _download(repo_id, revision)
    except ClassifierNotFound:
        raise
    except Exception as e:  # noqa: BLE001 - an expected Hub failure gets its cause and fix; anything else re-raised
        why = describe_hub_error(e, repo_id, repo_type="model")
        if why is None:
            raise
        raise ClassifierNotFound(f"cannot get the classifier {spec!r} from the Hub: {why}\n"
                                 f"fix: `hf download {repo_id} --local-dir models/` on a machine with access, "
                                 "then give the local file") from e
