"""From a recipe to datatrove pipelines.

``build_stages`` is executor-agnostic: it returns a list of :class:`Stage` (a name, a list of
datatrove steps, a number of tasks, the stage it depends on). ``run_local`` runs them with
datatrove's ``LocalPipelineExecutor`` (chained with ``depends``, completed tasks skipped on
rerun); a Slurm launcher can map the same stages onto ``SlurmPipelineExecutor``.

Layout of an output folder::

    OUTPUT/
      data/<prompt>/*.parquet      one dataset config per prompt
      data/mix/*.parquet           real + synthetic mix (when the recipe has `mix`)
      README.md                    dataset card
      recipe.yaml, prompts/        what made it
      .finephrase/                 work files: intermediate documents, checkpoints, logs (not published)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from datatrove.pipeline.dedup import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
from datatrove.pipeline.dedup.exact_dedup import ExactDedupConfig, ExactDedupFilter, ExactDedupSignature, ExactFindDedups
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.readers import JsonlReader, ParquetReader
from datatrove.pipeline.writers import JsonlWriter, ParquetWriter

from finephrase.inference.backends import GeneratorRuntime
from finephrase.prompts import Prompt
from finephrase.recipe import Recipe
from finephrase.steps.format_rows import ROW_SCHEMA, FormatRows, row_adapter
from finephrase.steps.language_filter import LanguageFilter
from finephrase.steps.length_filter import MinCharsFilter
from finephrase.steps.mix import Mix, mix_adapter
from finephrase.steps.quality_filter import QualityFilter
from finephrase.steps.read_jsonl import SafeJsonlReader
from finephrase.steps.rephrase import Rephrase

WORK_DIR = ".finephrase"


@dataclass
class Stage:
    name: str
    pipeline: list
    tasks: int = 1
    depends: str | None = None
    kind: str = "cpu"  # "cpu" or "inference" (a launcher may give inference stages other resources)


@dataclass
class RunPaths:
    output: str

    @property
    def work(self) -> str:
        return os.path.join(self.output, WORK_DIR)

    def w(self, *parts: str) -> str:
        return os.path.join(self.work, *parts)

    @property
    def data(self) -> str:
        return os.path.join(self.output, "data")

    def logs(self, stage: str) -> str:
        return self.w("logs", stage)


def document_text(doc) -> str:
    """What exact dedup compares (a module-level function: the config travels to worker processes)."""
    return doc.text


def source_reader(recipe: Recipe, limit: int = -1):
    src = recipe.source
    common = dict(limit=limit, text_key=src.text_key, id_key=src.id_key)
    if src.kind == "jsonl":
        if os.path.isfile(src.path):
            return SafeJsonlReader(os.path.dirname(src.path) or ".", glob_pattern=os.path.basename(src.path), **common)
        return SafeJsonlReader(src.path, glob_pattern=src.default_glob, **common)
    if src.kind == "parquet":
        if os.path.isfile(src.path):
            return ParquetReader(os.path.dirname(src.path) or ".", glob_pattern=os.path.basename(src.path), **common)
        return ParquetReader(src.path, glob_pattern=src.default_glob, **common)
    from datatrove.pipeline.readers import HuggingFaceDatasetReader

    dataset = src.path or src.dataset
    args = {"split": src.split}
    if src.config:
        args["name"] = src.config
    return HuggingFaceDatasetReader(dataset, dataset_options=args, limit=limit, text_key=src.text_key, id_key=src.id_key)


def _intermediate_reader(folder: str, compressed: bool = True) -> JsonlReader:
    if compressed:
        return SafeJsonlReader(folder, glob_pattern="*.jsonl.gz", compression="gzip")
    return SafeJsonlReader(folder, glob_pattern="*.jsonl", compression=None)


def build_stages(recipe: Recipe, prompts: list[Prompt], output: str, runtime: GeneratorRuntime,
                 tasks: int | None = None, limit: int | None = None) -> list[Stage]:
    paths = RunPaths(output)
    tasks = tasks or recipe.run.tasks
    limit = recipe.run.limit if limit is None else limit
    stages: list[Stage] = []

    def add(stage: Stage):
        stage.depends = stages[-1].name if stages else None
        stages.append(stage)

    # 1. read + filter
    filters = recipe.filters
    steps: list = [source_reader(recipe, limit)]
    if filters.min_chars > 1:
        steps.append(MinCharsFilter(filters.min_chars))
    if filters.language:
        lang = filters.language
        steps.append(LanguageFilter(lang.languages, lang.threshold, None if lang.model == "auto" else lang.model))
    if filters.quality:
        q = filters.quality
        steps.append(QualityFilter(q.model, q.label, q.threshold))
    steps.append(JsonlWriter(paths.w("filtered"), output_filename="${rank}.jsonl.gz"))
    add(Stage("filter", steps, tasks))
    current = paths.w("filtered")

    # 2. exact dedup (datatrove's three stages)
    if recipe.dedup.exact:
        cfg = ExactDedupConfig(content_getter=document_text)
        add(Stage("exact-signatures", [_intermediate_reader(current), ExactDedupSignature(paths.w("exact", "sigs"), cfg)], tasks))
        add(Stage("exact-find", [ExactFindDedups(paths.w("exact", "sigs"), paths.w("exact", "dups"), cfg)], 1))
        add(Stage("exact-filter", [_intermediate_reader(current), ExactDedupFilter(paths.w("exact", "dups"), cfg),
                                   JsonlWriter(paths.w("exact-deduped"), output_filename="${rank}.jsonl.gz")], tasks))
        current = paths.w("exact-deduped")

    # 3. MinHash dedup (datatrove's four stages)
    if recipe.dedup.minhash:
        m = recipe.dedup.minhash
        cfg = MinhashConfig(n_grams=m.n_grams, num_buckets=m.num_buckets, hashes_per_bucket=m.hashes_per_bucket)
        add(Stage("minhash-signatures", [_intermediate_reader(current),
                                         MinhashDedupSignature(paths.w("minhash", "sigs"), cfg, language=m.language)], tasks))
        add(Stage("minhash-buckets", [MinhashDedupBuckets(paths.w("minhash", "sigs"), paths.w("minhash", "buckets"), config=cfg)],
                  m.num_buckets))
        add(Stage("minhash-cluster", [MinhashDedupCluster(paths.w("minhash", "buckets"), paths.w("minhash", "clusters"), config=cfg)], 1))
        add(Stage("minhash-filter", [_intermediate_reader(current), MinhashDedupFilter(paths.w("minhash", "clusters")),
                                     JsonlWriter(paths.w("deduped"), output_filename="${rank}.jsonl.gz")], tasks))
        current = paths.w("deduped")

    # 4. rephrase (datatrove InferenceRunner with checkpoints + request cache)
    g = recipe.generator
    params = g.params.model_dump(exclude_none=True)
    add(Stage("rephrase", [
        _intermediate_reader(current),
        Rephrase(
            prompts,
            output_folder=paths.w("rephrased"),
            endpoints=runtime.endpoints,
            endpoints_file=runtime.endpoints_file,
            protocol=runtime.protocol,
            model=runtime.model,
            generation_params=params,
            concurrency=g.concurrency,
            request_timeout=g.request_timeout,
            max_retries=g.max_retries,
            context_length=runtime.context_length,
            tokenizer=runtime.tokenizer,
            checkpoints_dir=paths.w("checkpoints"),
            records_per_chunk=recipe.output.records_per_chunk,
            api_key_env=runtime.api_key_env,
            unavailable_timeout=g.unavailable_timeout,
            server_state_file=runtime.state_file,
            routing=recipe.routing.model_dump() if recipe.routing else None,
        ),
    ], tasks, kind="inference"))

    # 5. rows per prompt config, with output checks
    lid_model = None
    if filters.language and filters.language.model != "auto":
        lid_model = filters.language.model
    add(Stage("rows", [
        _intermediate_reader(paths.w("rephrased"), compressed=False),
        FormatRows(prompts, model=runtime.model, lid_model_path=lid_model, on_fail=recipe.output_checks),
        ParquetWriter(paths.data, output_filename="${config}/${rank}.parquet", adapter=row_adapter, schema=ROW_SCHEMA),
    ], tasks))

    # 6. real + synthetic mix
    if recipe.mix:
        import pyarrow as pa

        mix_schema = pa.schema([("id", pa.string()), ("text", pa.string()), ("kind", pa.string()),
                                ("source_id", pa.string()), ("prompt", pa.string()), ("tokens", pa.int64())])
        add(Stage("mix", [
            Mix([ParquetReader(os.path.join(paths.data, p.config_name)) for p in prompts], _intermediate_reader(current),
                synthetic=recipe.mix.synthetic, tokenizer=runtime.tokenizer, seed=recipe.mix.seed),
            ParquetWriter(os.path.join(paths.data, "mix"), output_filename="${rank}.parquet", adapter=mix_adapter,
                          schema=mix_schema),
        ], 1))
    return stages


def run_local(stages: list[Stage], output: str, workers: int = 1, tasks_override: dict | None = None) -> None:
    """Run the stages with datatrove's LocalPipelineExecutor, chained with `depends`.

    Every process this starts (datatrove's per-stage ``multiprocess.Manager`` server, the forkserver's pool
    workers) is killed when this process dies, even by SIGKILL: see :mod:`finephrase.lifetime`.
    """
    from datatrove.executor import LocalPipelineExecutor

    from finephrase.lifetime import children_die_with_this_process

    children_die_with_this_process()
    paths = RunPaths(output)
    executors = {}
    for stage in stages:
        executors[stage.name] = LocalPipelineExecutor(
            pipeline=stage.pipeline,
            tasks=stage.tasks,
            workers=min(workers, stage.tasks),
            logging_dir=paths.logs(stage.name),
            depends=executors.get(stage.depends) if stage.depends else None,
            skip_completed=True,
            # workers are forked by a forkserver (not by this process, which has threads by then)
            start_method="forkserver",
        )
    executors[stages[-1].name].run()
