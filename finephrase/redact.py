"""Secrets never reach a file: the one redaction every file finephrase writes for a run goes through (the plan,
``recipe.yaml``, the card, the job scripts and datatrove's executor files of a launch, the server logs).

Redacted: anything that looks like an HF or OpenAI token, the values of the token environment variables, and the
values of a recipe's ``cluster.secrets`` (names of the submitter's environment variables) in this environment.

Imports: the standard library only (any part may import it).
"""

from __future__ import annotations

import os
import re

TOKEN_RE = re.compile(r"hf_[A-Za-z0-9]{8,}|\bsk-[A-Za-z0-9_-]{20,}")
SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def redact_secrets(text: str, secrets: tuple[str, ...] | list[str] = ()) -> str:
    """Remove anything that looks like an HF/OpenAI token and the values of the token environment variables and
    of ``secrets``."""
    values = [s for s in (*secrets, *(os.environ.get(v) for v in SECRET_ENV_VARS)) if s and len(s) >= 6]
    for value in sorted(set(values), key=len, reverse=True):
        text = text.replace(value, "<redacted>")
    return TOKEN_RE.sub("<redacted>", text)


def recipe_secret_values(recipe) -> list[str]:
    """The values of the recipe's ``cluster.secrets`` in this environment."""
    cluster = getattr(recipe, "cluster", None)
    return cluster.secret_values() if cluster else []
