"""Secrets of a launched run: ``cluster.secrets`` (names of the submitter's environment variables, e.g. HF_TOKEN)
and the run's API key (:data:`API_KEY_ENV`, generated at launch), passed to the jobs by environment (sbatch's
``--export=ALL``) and written nowhere: job scripts name them only, and every file finephrase writes for a run goes
through :func:`redact`.

A server job gets the API key as the variable each server reads it from (TGI ``API_KEY``, vLLM ``VLLM_API_KEY``,
llama.cpp's ``API_KEY``; SGLang has only ``--api-key``); the rephrase tasks send it as ``Authorization: Bearer``
(``generator.api_key_env`` = :data:`API_KEY_ENV`).
"""

from __future__ import annotations

import hashlib
import os
import secrets as _secrets

from finephrase.errors import ClusterError
from finephrase.recipe import ClusterConfig
from finephrase.redact import redact_secrets

API_KEY_ENV = "FINEPHRASE_API_KEY"


def check_secrets(cluster: ClusterConfig) -> None:
    """Every name in ``cluster.secrets`` is set in this (the submitting) environment."""
    missing = [name for name in cluster.secrets if not os.environ.get(name)]
    if missing:
        raise ClusterError(f"cluster.secrets: {', '.join(missing)} not set in this shell: the jobs get the values "
                           f"from the environment `finephrase launch` runs in\nrun `export {missing[0]}=...` "
                           "first (or remove the name from cluster.secrets)")


def run_api_key() -> str:
    """The run's API key: the submitter's ``FINEPHRASE_API_KEY`` if set, else a new random one, put in this process's
    environment so that every job submitted from here inherits it."""
    key = os.environ.get(API_KEY_ENV)
    if not key:
        key = os.environ[API_KEY_ENV] = _secrets.token_urlsafe(32)
    return key


def key_id(key: str) -> str:
    """A fingerprint of the key (not the key): which servers a relaunch may reuse."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def secret_values(cluster: ClusterConfig | None) -> list[str]:
    """The values of ``cluster.secrets`` and of the run's API key in this environment."""
    return [*(cluster.secret_values() if cluster else []), *([os.environ[API_KEY_ENV]] if os.environ.get(API_KEY_ENV)
                                                            else [])]


def redact(text: str, cluster: ClusterConfig | None) -> str:
    """``text`` without the values of the run's secrets or anything that looks like a token."""
    return redact_secrets(text, secret_values(cluster))


def write_redacted(path: str, text: str, cluster: ClusterConfig | None) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(redact(text, cluster))


def redact_file(path: str, cluster: ClusterConfig | None) -> None:
    """Rewrite a file someone else wrote (datatrove's ``launch_script.slurm``, ``executor.json``) without secrets."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError):
        return
    clean = redact(text, cluster)
    if clean != text:
        write_redacted(path, clean, cluster)
