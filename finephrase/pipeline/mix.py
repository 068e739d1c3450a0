"""Mix: real and synthetic documents at a token ratio per prompt (WRAP 1:1, FinePhrase 60-80 % synthetic).

Every synthetic row that passed its checks is kept: a row whose ``checks`` column notes a failed output rule
(``failed:<rule>``, written by the rows stage with ``output_checks: flag``) or an eval set's n-gram
(``contaminated:<eval set>``, ``decontamination.action: flag``) is left out and counted
(``synthetic_failed_checks``), unless ``include_flagged`` (the recipe's ``mix.include_flagged``). Real and synthetic
tokens are counted by the same ``TokenCounter`` (the generator's tokenizer; without one, an estimate at
``CHARS_PER_TOKEN`` characters per token): a synthetic row's tokens are those of its text as published (after
cleaning), not the server's ``completion_tokens``. Real documents come from any datatrove reader: the rephrased source after
filters and dedup by default, or another mix-in source (FinePhrase mixed FineWeb-Edu-HQ into its rephrased
data). For each prompt ``p`` with synthetic share ``s_p`` the real tokens it needs are
``synthetic_tokens_p * (1 - s_p) / s_p``; each real document picked counts toward the prompt furthest from its
target (column ``mixed_with``), until every prompt has its share.

Streaming, never all documents in memory:

1. the synthetic rows are read once to count their tokens per prompt, the real source once to count its
   characters (only its first ``SAMPLE_DOCUMENTS`` are tokenized, for its tokens per character: a large mix-in
   source is not tokenized in full to size the picks);
2. real documents are picked by a seeded hash of their id (``u(seed, id) < rate``, the rate sized from the
   counts with a 5 % margin), so the picks are spread over the whole source and the same seed picks the same
   documents; if the picks fall short, further passes take more of the documents left, until the target or the
   end of the source;
3. the synthetic and the picked real documents are interleaved by position: a document sits at the share of its
   stream's tokens before it, plus a seeded fraction of its own (each stream keeps its own order, and both are
   spread over the whole mix whatever their document sizes).

The achieved shares are measured (stats ``synthetic_tokens/<prompt>``, ``real_tokens/<prompt>``) and reported
in the card; when the real data runs out, every real document is used and ``real_tokens_short`` counts what is
missing.
"""

from __future__ import annotations

import hashlib
import heapq
import random
from collections.abc import Iterator

import pyarrow as pa
from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from finephrase.inference.client.tokens import TokenCounter
from finephrase import stats as names

MIX_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("kind", pa.string()),
                        ("source_id", pa.string()), ("prompt", pa.string()), ("mixed_with", pa.string()),
                        ("tokens", pa.int64())])
MIX_SCHEMA_COLUMNS = [f.name for f in MIX_SCHEMA]
RATE_MARGIN = 1.05  # picks sized 5 % above the need: one pass is nearly always enough
MAX_PASSES = 6  # over the real source, after the counting one (the last takes every document left)
SAMPLE_DOCUMENTS = 1000  # real documents tokenized in the counting pass (tokens per character)
# the notes of a ``checks`` column that mean a check failed (finephrase.pipeline.formatters.rows, .decontaminate)
FAILED_CHECKS = ("failed:", "contaminated:")


def passed_checks(doc: Document) -> bool:
    """True when the row's ``checks`` column notes no failed output rule and no eval set's n-gram."""
    return not any(note.startswith(FAILED_CHECKS) for note in (doc.metadata.get("checks") or "").split(","))


def mix_adapter(self, document: Document) -> dict:
    """ParquetWriter adapter: a row of MIX_SCHEMA (``kind``: ``real`` or ``synthetic``)."""
    row = {name: document.metadata.get(name) for name in MIX_SCHEMA_COLUMNS}
    row["id"], row["text"], row["kind"] = document.id, document.text, document.metadata["kind"]
    return row


def pick_value(seed: int, doc_id: str) -> float:
    """A uniform number in [0, 1) fixed by the seed and the document id (which documents a mix picks)."""
    digest = hashlib.blake2b(f"{seed}\x00{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0 ** 64


class Mix(PipelineStep):
    """datatrove step (run as a single task): yields the mixed real + synthetic documents.

    Args:
        synthetic_readers: datatrove readers over the generated rows (with ``completion_tokens`` and ``prompt``),
            e.g. one per prompt config.
        real_reader: a datatrove reader over the real documents (the source, or another mix-in source).
        synthetic: share of tokens that are synthetic, in (0, 1], for prompts without their own.
        per_prompt: ``{prompt name: synthetic share}`` overriding ``synthetic`` (FinePhrase: table 0.7, math 0.8).
        tokenizer: token counter spec for real and synthetic text alike (see ``finephrase.inference.client.tokens``).
        seed: which real documents are picked and how the two streams interleave.
        include_flagged: also mix the rows whose checks failed (kept and flagged by the rows stage).
        real_filter: which real documents may be picked (e.g. a router's ``keeps``: the documents of the quality
            levels kept as they are, Nemotron-CC's medium quality); None: all of them.
    """

    name = "🥣 Mix real + synthetic"
    type = "Mixer"

    def __init__(self, synthetic_readers: list, real_reader, synthetic: float = 0.5, tokenizer: str | None = None,
                 seed: int = 0, per_prompt: dict[str, float] | None = None, include_flagged: bool = False,
                 real_filter=None):
        super().__init__()
        self.shares = dict(per_prompt or {})
        for share in (synthetic, *self.shares.values()):
            if not 0 < share <= 1:
                raise ValueError(f"a synthetic share must be in (0, 1], not {share}")
        self.synthetic_readers = list(synthetic_readers)
        self.real_reader = real_reader
        self.synthetic = synthetic
        self.tokens = TokenCounter(tokenizer)
        self.seed = seed
        self.include_flagged = include_flagged
        self.real_filter = real_filter

    def share_of(self, prompt: str | None) -> float:
        return self.shares.get(prompt, self.synthetic) if prompt else self.synthetic

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if rank != 0:
            return
        synthetic = self._synthetic_tokens()
        need = {p: n * (1 - self.share_of(p)) / self.share_of(p) for p, n in synthetic.items()}
        real = self._picked_real(dict(need), self._real_tokens_estimate())
        yield from self._interleave(self._synthetic_docs(), sum(synthetic.values()), real, sum(need.values()))

    # ------------------------------------------------------------------ the two streams
    def _synthetic_rows(self, count_skipped: bool = False) -> Iterator[Document]:
        """The rows that go into the mix (those that passed their checks, unless ``include_flagged``)."""
        for reader in self.synthetic_readers:
            folder = getattr(reader, "data_folder", None)
            if folder is not None and not folder.exists(""):
                continue  # a prompt without rows (every generation failed): the end of the run says why
            for doc in reader.run(None, 0, 1):
                if self.include_flagged or passed_checks(doc):
                    yield doc
                elif count_skipped:
                    self.stat_update(names.MIX_SYNTHETIC_FAILED_CHECKS)

    def _synthetic_tokens(self) -> dict[str, int]:
        """Completion tokens of the synthetic rows per prompt (a counting pass)."""
        out: dict[str, int] = {}
        for doc in self._synthetic_rows():
            prompt = doc.metadata.get("prompt")
            out[prompt] = out.get(prompt, 0) + self._synthetic_count(doc)
        return out

    def _synthetic_count(self, doc: Document) -> int:
        return self.tokens.count(doc.text)

    def _synthetic_docs(self) -> Iterator[tuple[Document, int]]:
        for doc in self._synthetic_rows(count_skipped=True):
            n, prompt = self._synthetic_count(doc), doc.metadata.get("prompt")
            self.stat_update("synthetic_documents")
            self.stat_update("synthetic_tokens", value=n)
            self.stat_update(names.per_prompt("synthetic_tokens", prompt), value=n)
            yield Document(text=doc.text, id=str(doc.id), metadata={
                "kind": "synthetic", "source_id": doc.metadata.get("source_id"), "prompt": prompt,
                "mixed_with": None, "tokens": n}), n

    def _real_docs(self) -> Iterator[Document]:
        docs = self.real_reader.run(None, 0, 1)
        return docs if self.real_filter is None else (d for d in docs if self.real_filter(d.metadata))

    def _count(self, doc: Document) -> int:
        return self.tokens.count(doc.text)

    def _real_tokens_estimate(self) -> float:
        """The real source's tokens: its characters times the tokens per character of its first documents."""
        chars = sample_chars = sample_tokens = 0
        for i, doc in enumerate(self._real_docs()):
            chars += len(doc.text)
            if i < SAMPLE_DOCUMENTS:
                sample_chars += len(doc.text)
                sample_tokens += self._count(doc)
        return chars * sample_tokens / sample_chars if sample_chars else 0.0

    def _picked_real(self, need: dict[str, float], real_total: float) -> Iterator[tuple[Document, int]]:
        """Real documents, picked by the seeded hash in passes until every prompt's need is met."""
        taken_below, remaining = 0.0, sum(need.values())
        for attempt in range(MAX_PASSES):
            left_tokens = real_total * (1 - taken_below)
            if remaining <= 0 or left_tokens <= 0:
                break
            rate = 1.0 if attempt == MAX_PASSES - 1 else min(1.0, remaining * RATE_MARGIN / left_tokens)
            upper = taken_below + rate * (1 - taken_below)
            for doc in self._real_docs():
                if not taken_below <= pick_value(self.seed, str(doc.id)) < upper:
                    continue
                n = self._count(doc)
                prompt = max(need, key=need.get)
                need[prompt] -= n
                remaining -= n
                yield self._real_row(doc, n, prompt), n
                if remaining <= 0:
                    return
            taken_below = upper
            if upper >= 1.0:
                break
        if remaining > 0:
            self.stat_update("real_tokens_short", value=int(remaining))

    def _real_row(self, doc: Document, n: int, prompt: str | None) -> Document:
        self.stat_update("real_documents")
        self.stat_update("real_tokens", value=n)
        self.stat_update(names.per_prompt("real_tokens", prompt), value=n)
        return Document(text=doc.text, id=str(doc.id), metadata={"kind": "real", "source_id": str(doc.id),
                                                                 "prompt": None, "mixed_with": prompt, "tokens": n})

    def _interleave(self, synthetic, synthetic_tokens: float, real, real_tokens: float) -> Iterator[Document]:
        """The two streams merged by position: each document sits at the share of its stream's tokens before it (plus
        a seeded fraction of its own), so both streams are spread over the whole mix whatever their document sizes."""
        rng = random.Random(self.seed)

        def placed(stream, total: float):
            done = 0
            for doc, n in stream:
                yield (done + rng.random() * n) / max(total, 1.0), doc
                done += n

        for _, doc in heapq.merge(placed(synthetic, synthetic_tokens), placed(real, real_tokens), key=lambda x: x[0]):
            yield doc
