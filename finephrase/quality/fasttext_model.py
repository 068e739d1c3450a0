"""A fastText model file read where it lies.

The one place finephrase loads a fastText model (the filters, the rows step's output scores, ``quality score``).
datatrove's ``FastTextClassifierFilter`` and ``FastTextLID`` pass every model path through
``cached_asset_path_or_download``, which copies it once into ``~/.cache/huggingface/assets/datatrove`` under a
name made of the path: a model retrained or replaced at the same path would be scored with the stale copy, with no
sign of it. finephrase's filters therefore load the local file itself (a Hub classifier is downloaded to a local
file when the recipe is resolved, :func:`finephrase.plan.resolve`).
"""

from __future__ import annotations

import os


def load_fasttext(path: str):
    """The fastText model in the local file ``path``."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"fastText model {path!r} not found")
    from fasttext.FastText import _FastText  # fasttext.load_model without its warning on stderr

    return _FastText(path)
