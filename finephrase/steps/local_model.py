"""A fastText model file read where it lies.

datatrove's ``FastTextClassifierFilter`` and ``FastTextLID`` pass every model path through
``cached_asset_path_or_download``, which copies it once into ``~/.cache/huggingface/assets/datatrove`` under a
name made of the path: a model retrained or replaced at the same path would be scored with the stale copy, with no
sign of it. A local file is therefore loaded directly; a remote URL still goes through datatrove's cache.
"""

from __future__ import annotations

import os


def load_fasttext(path: str, load_cached):
    """The fastText model at ``path``: read from the file itself when it is local, else ``load_cached()``."""
    if os.path.isfile(path):
        from fasttext.FastText import _FastText

        return _FastText(path)
    return load_cached()
