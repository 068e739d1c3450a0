"""Mix: real and synthetic documents at a ratio measured in tokens (WRAP 1:1, FinePhrase 60-80 % synthetic).

All synthetic rows are kept; real (original, filtered + deduplicated) documents are added in
a seeded shuffled order until the real share of tokens reaches ``1 - synthetic`` of the mix.
When the real data runs out first, every real document is used and the achieved ratio is
what the stats (and the card) report.
"""

from __future__ import annotations

import random

import pyarrow as pa
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from finephrase.inference.tokens import TokenCounter

MIX_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("kind", pa.string()),
                        ("source_id", pa.string()), ("prompt", pa.string()), ("tokens", pa.int64())])
MIX_SCHEMA_COLUMNS = [f.name for f in MIX_SCHEMA]


def mix_adapter(self, document: Document) -> dict:
    """ParquetWriter adapter: a row of MIX_SCHEMA (``kind``: ``real`` or ``synthetic``)."""
    row = {name: document.metadata.get(name) for name in MIX_SCHEMA_COLUMNS}
    row["id"], row["text"], row["kind"] = document.id, document.text, document.metadata["kind"]
    return row


class Mix(PipelineStep):
    """datatrove step (run as a single task): yields the mixed real + synthetic documents.

    Args:
        synthetic_readers: datatrove readers over the generated rows (with ``completion_tokens``), e.g. one
            per prompt config.
        real_reader: a datatrove reader over the original documents.
        synthetic: share of tokens that are synthetic, in (0, 1].
        tokenizer: token counter spec for the real documents (see ``finephrase.inference.tokens``).
        seed: shuffling seed for picking real documents.
    """

    name = "🥣 Mix real + synthetic"
    type = "Mixer"

    def __init__(self, synthetic_readers: list, real_reader, synthetic: float = 0.5, tokenizer: str | None = None, seed: int = 0):
        super().__init__()
        if not 0 < synthetic <= 1:
            raise ValueError("synthetic share must be in (0, 1]")
        self.synthetic_readers = list(synthetic_readers)
        self.real_reader = real_reader
        self.synthetic = synthetic
        self.tokens = TokenCounter(tokenizer)
        self.seed = seed

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if rank != 0:
            return
        synthetic_tokens = 0
        synthetic_docs = (doc for reader in self.synthetic_readers for doc in reader.run(None, 0, 1))
        for doc in synthetic_docs:
            n = int(doc.metadata.get("completion_tokens") or self.tokens.count(doc.text))
            synthetic_tokens += n
            self.stat_update("synthetic_documents")
            self.stat_update("synthetic_tokens", value=n)
            yield Document(
                text=doc.text,
                id=str(doc.id),
                metadata={"kind": "synthetic", "source_id": doc.metadata.get("source_id"),
                          "prompt": doc.metadata.get("prompt"), "tokens": n},
            )
        target_real = synthetic_tokens * (1 - self.synthetic) / self.synthetic
        real = list(self.real_reader.run(None, 0, 1))
        random.Random(self.seed).shuffle(real)
        real_tokens = 0
        for doc in real:
            if real_tokens >= target_real:
                break
            n = self.tokens.count(doc.text)
            real_tokens += n
            self.stat_update("real_documents")
            self.stat_update("real_tokens", value=n)
            yield Document(text=doc.text, id=str(doc.id), metadata={"kind": "real", "source_id": str(doc.id),
                                                                    "prompt": None, "tokens": n})
        if real_tokens < target_real:
            self.stat_update("real_tokens_short", value=int(target_real - real_tokens))
