"""Output dedup: datatrove's exact and MinHash dedup on the generated rows, one dataset config at a time.

A small model repeats itself across documents (the same FAQ for two similar pages, the same boilerplate
table), so the rows of each prompt config are deduplicated after the output rules, with datatrove's own
stages run once over every config (:func:`finephrase.pipeline.build.build_stages` chains them):

* exact: ``ExactDedupSignature`` / ``ExactFindDedups`` / :class:`OutputExactDedupFilter`, on
  :func:`config_and_text` (the config name and the text: two configs never share a hash);
* near duplicates: :class:`ConfigMinhashSignature` / ``MinhashDedupBuckets`` / ``MinhashDedupCluster`` /
  :class:`OutputMinhashDedupFilter`. The signature step salts every shingle of a row with its config name, so
  rows of different configs have disjoint shingles (Jaccard similarity 0) and never fall into one cluster.

The two filters are datatrove's, counting what they remove per config: ``duplicates/<prompt>/exact`` or
``duplicates/<prompt>/minhash``, and the tokens of the removed rows (``removed_prompt_tokens/<prompt>``,
``removed_completion_tokens/<prompt>``), besides datatrove's own ``total``/``forwarded``/``dropped``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from datatrove.data import Document
from datatrove.pipeline.dedup import MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.dedup.exact_dedup import ExactDedupFilter
from datatrove.utils.hashing import create_hash_func

from finephrase import stats as names
from finephrase.pipeline.formatters.rows import row_config, row_tokens


def config_and_text(doc: Document) -> str:
    """What output exact dedup compares: the row's config and its text (module level: it travels to workers)."""
    return f"{row_config(doc)}\x00{doc.text}"


class ConfigMinhashSignature(MinhashDedupSignature):
    """datatrove's MinHash signature step, with every shingle of a row salted (XOR) with its config's hash."""

    name = "🎯 MinHash stage 1 (per config)"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.salt = np.uint64(0)
        self.config_hash = create_hash_func(self.config.hash_config)

    def run(self, data, rank: int = 0, world_size: int = 1):
        return super().run(self.salted(data), rank, world_size)

    def salted(self, data):
        """The rows, setting the salt of each before datatrove's step shingles it."""
        for doc in data:
            self.salt = np.uint64(self.config_hash(row_config(doc)))
            yield doc

    def get_shingles(self, text: str) -> np.ndarray:
        return np.bitwise_xor(super().get_shingles(text), self.salt)


class CountsRemovedPerConfig:
    """Mixin for a datatrove filter: counts the rows it removes per config (and their tokens)."""

    label = ""  # the <reason> of duplicates/<prompt>/<reason>

    def run(self, data, rank: int = 0, world_size: int = 1):
        seen: Counter = Counter()
        seen_tokens: dict[str, list[int]] = {}

        def counted():
            for doc in data:
                config = row_config(doc)
                seen[config] += 1
                tokens = seen_tokens.setdefault(config, [0, 0])
                p, c = row_tokens(doc)
                tokens[0], tokens[1] = tokens[0] + p, tokens[1] + c
                yield doc

        for doc in super().run(counted(), rank, world_size):
            config = row_config(doc)
            seen[config] -= 1
            p, c = row_tokens(doc)
            seen_tokens[config][0] -= p
            seen_tokens[config][1] -= c
            yield doc
        for config, removed in seen.items():
            if removed:
                self.stat_update(names.per_prompt(names.DUPLICATES, config, self.label), value=removed)
                self.stat_update(names.per_prompt(names.REMOVED_PROMPT_TOKENS, config), value=seen_tokens[config][0])
                self.stat_update(names.per_prompt(names.REMOVED_COMPLETION_TOKENS, config),
                                 value=seen_tokens[config][1])


class OutputExactDedupFilter(CountsRemovedPerConfig, ExactDedupFilter):
    """datatrove's ExactDedupFilter on rows, counting ``duplicates/<prompt>/exact``."""

    name = "💥 output exact dedup"
    label = "exact"


class OutputMinhashDedupFilter(CountsRemovedPerConfig, MinhashDedupFilter):
    """datatrove's MinhashDedupFilter on rows, counting ``duplicates/<prompt>/minhash``."""

    name = "🎯 output MinHash dedup"
    label = "minhash"
