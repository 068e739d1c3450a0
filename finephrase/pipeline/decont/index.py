"""EvalSetIndex: the n-gram index of the evaluation sets, for decontamination.

datatrove's ``NGramsDecontIndexer`` reads the eval sets through lighteval's task registry (lighteval is not a
finephrase dependency); this step builds the same index from eval sets given as files or Hub datasets: every
passage (the ``text_key`` fields of a row, joined by a space) is normalised, word-tokenised and hashed into
n-grams exactly as ``NGramsDecontIndexer.compute_hashes`` does it (``simplify_text``, ``load_word_tokenizer``,
``ngrams``, ``create_hash_func`` with an ``NGramsDecontConfig``), and written as datatrove's index files
(``<eval set>.index.hashes``, uint64), which datatrove's ``NGramsDecontFilter`` loads.

An eval set (a dict, as in the recipe's ``decontamination.eval_sets``): ``name``, ``path`` (a jsonl / json /
parquet file, a folder of them, or a local copy of a Hub dataset) or ``dataset`` (a Hub id, loaded with
``datasets.load_dataset``; ``path`` wins when both are given), ``config``, ``split``, ``text_key`` (a field or a
list of fields; list values are joined too). Counted: ``eval_passages/<name>``, ``eval_ngrams/<name>``.

An index that would check (almost) nothing stops the run with a one-line :class:`DecontaminationError` naming the
eval set and the field: no rows, no row with the ``text_key`` field(s) (its fields are listed), or fewer than
``MIN_INDEXED_SHARE`` of the passages as long as one n-gram.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from collections.abc import Iterator

import numpy as np
from datatrove.io import get_datafolder
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.decont import NGramsDecontConfig
from datatrove.utils.hashing import create_hash_func
from datatrove.utils.text import ngrams, simplify_text
from datatrove.utils.word_tokenizers import load_word_tokenizer
from loguru import logger

from finephrase import stats as names
from finephrase.errors import DecontaminationError

FILE_SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet")


def _json_rows(path: str) -> Iterator[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        if path.removesuffix(".gz").endswith(".json"):
            data = json.load(f)
            yield from (data if isinstance(data, list) else data.get("data", []))
            return
        for line in f:
            if line.strip():
                yield json.loads(line)


def _file_rows(path: str) -> Iterator[dict]:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches():
            yield from batch.to_pylist()
    else:
        yield from _json_rows(path)


def eval_files(path: str, split: str | None = None, config: str | None = None) -> list[str]:
    """The data files of a local eval set: the file, or the folder's files — those whose path names ``config`` and
    ``split`` (a local copy of a Hub dataset: ``<config>/test-00000-of-00001.parquet``), else those naming
    ``split``, else all of them."""
    if os.path.isfile(path):
        return [path]
    found = sorted(f for f in glob.glob(os.path.join(path, "**", "*"), recursive=True) if f.endswith(FILE_SUFFIXES))

    def naming(*words):
        return [f for f in found if all(w in os.path.relpath(f, path) for w in words if w)]

    for words in ((config, split), (split,)):
        if any(words) and naming(*words):
            return naming(*words)
    return found


def eval_rows(eval_set: dict) -> Iterator[dict]:
    """The rows of an eval set: its local files, else the Hub dataset (``datasets.load_dataset``)."""
    path = eval_set.get("path")
    if path:
        files = eval_files(path, eval_set.get("split"), eval_set.get("config"))
        if not files:
            raise FileNotFoundError(f"eval set {eval_set['name']!r}: no {'/'.join(FILE_SUFFIXES)} files at {path!r}")
        for f in files:
            yield from _file_rows(f)
        return
    from datasets import load_dataset

    dataset, config, split = eval_set["dataset"], eval_set.get("config"), eval_set.get("split") or "test"
    try:
        rows = load_dataset(dataset, config, split=split)
    except Exception as e:  # no network, a gated dataset, a wrong config or split: say what to do
        raise RuntimeError(f"eval set {eval_set['name']!r}: could not load the Hub dataset {dataset!r} (config "
                           f"{config!r}, split {split!r}): {e}. Download it (hf download {dataset} --repo-type "
                           "dataset --local-dir DIR) and set the eval set's `path` to DIR") from e
    yield from rows


MIN_INDEXED_SHARE = 0.1  # of an eval set's passages that must hold at least one n-gram


def passage(row: dict, keys: list[str]) -> str:
    """The text of a row that is checked: its ``keys`` fields (lists joined), joined by a space."""
    parts = []
    for key in keys:
        value = row.get(key)
        if isinstance(value, (list, tuple)):
            parts += [str(v) for v in value if v is not None]
        elif value is not None:
            parts.append(str(value))
    return " ".join(parts)


class EvalSetIndex(PipelineStep):
    """datatrove step (one task, no input): write ``<eval set>.index.hashes`` for every eval set.

    Args:
        output_folder: the index folder (read by ``NGramsDecontFilter``).
        eval_sets: the eval sets (dicts, see the module docstring).
        config: datatrove's ``NGramsDecontConfig`` (``n_grams``, normalisation, hashing), the same as the filters'.
        language: the word tokenizer's language.
    """

    type = "🦠 - DECONT"
    name = "📇 eval sets n-gram index"

    def __init__(self, output_folder: str, eval_sets: list[dict], config: NGramsDecontConfig | None = None,
                 language: str = "en"):
        super().__init__()
        self.output_folder = get_datafolder(output_folder)
        self.eval_sets = eval_sets
        self.config = config or NGramsDecontConfig()
        self.language = language

    def hashes(self, text: str, tokenizer, hash_func) -> list[int]:
        """``NGramsDecontIndexer.compute_hashes`` of a label without a query."""
        tokens = tokenizer.word_tokenize(simplify_text(text, self.config.norm_config))
        return [hash_func(" ".join(gram)) for gram in ngrams(tokens, self.config.n_grams)]

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        if world_size != 1:
            raise ValueError("the eval sets' index is built by a single task")
        tokenizer, hash_func = load_word_tokenizer(self.language), create_hash_func(self.config.hash_config)
        for eval_set in self.eval_sets:
            name, keys = eval_set["name"], eval_set["text_key"]
            keys = [keys] if isinstance(keys, str) else list(keys)
            found: set[int] = set()
            tally = IndexTally()
            with self.track_time():
                for row in eval_rows(eval_set):
                    self.stat_update(names.per_prompt(names.EVAL_PASSAGES, name))
                    hashes = self.hashes(passage(row, keys), tokenizer, hash_func)
                    tally.add(row, keys, hashes)
                    found.update(hashes)
            tally.check(name, keys, self.config.n_grams)
            self.stat_update(names.per_prompt(names.EVAL_NGRAMS, name), value=len(found))
            logger.info(f"eval set {name}: {len(found)} {self.config.n_grams}-grams indexed")
            with self.output_folder.open(f"{name}.index.hashes", mode="wb") as f:
                f.write(np.array(sorted(found), dtype=self.config.hash_config.np_descr).tobytes())


class IndexTally:
    """What one eval set's rows gave the index: rows, rows with the checked field(s), passages long enough for an
    n-gram; :meth:`check` raises when the index would check (almost) nothing."""

    def __init__(self):
        self.rows = self.with_field = self.indexed = 0
        self.fields: set[str] = set()

    def add(self, row: dict, keys: list[str], hashes: list[int]) -> None:
        self.rows += 1
        if len(self.fields) < 50:
            self.fields.update(map(str, row))
        if any(row.get(k) not in (None, "", [], ()) for k in keys):
            self.with_field += 1
        self.indexed += bool(hashes)

    def check(self, name: str, keys: list[str], n: int) -> None:
        field = "text_key " + ", ".join(keys)
        if not self.rows:
            raise DecontaminationError(f"eval set {name!r}: no rows read; fix: check its path/dataset, config and split")
        if not self.with_field:
            raise DecontaminationError(f"eval set {name!r}: no row has {field} (its fields: "
                                       f"{', '.join(sorted(self.fields))}); fix: set the eval set's text_key")
        if self.indexed < MIN_INDEXED_SHARE * self.rows:
            raise DecontaminationError(
                f"eval set {name!r}: only {self.indexed} of {self.rows} passages of {field} have {n} words or more "
                f"(the n-gram size), so the index would check almost nothing; fix: add longer fields to text_key or "
                "lower decontamination.n_grams")
