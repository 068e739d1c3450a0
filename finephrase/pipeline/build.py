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

Stages: (``decont-index``: the eval sets' n-grams, with a ``decontamination``) -> (``quality-thresholds``: a
quality ensemble's percentile thresholds on a sample) -> ``filter`` (read, filters, the sources' decontamination
with ``check_sources``) -> (``quality-top-cutoff`` -> ``quality-top``: the top percent of the sources,
``filters.quality.top_percent``) -> exact / MinHash dedup of the sources -> ``rephrase`` -> ``rows`` (the output
rules) -> (``output-top-cutoff`` -> ``output-top``: the top percent of each config's rows, ``select_outputs``) ->
exact / MinHash dedup of the rows per config (``output_dedup``) -> ``decontaminate`` (the rows) -> ``mix``. The last stage before ``mix`` writes ``data/<prompt>/``; the stages before
it write ``.finephrase/rows*/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from datatrove.pipeline.decont import NGramsDecontConfig, NGramsDecontFilter
from datatrove.pipeline.dedup import (
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.dedup.exact_dedup import (
    ExactDedupConfig,
    ExactDedupFilter,
    ExactDedupSignature,
    ExactFindDedups,
)
from datatrove.pipeline.dedup.minhash import MinhashConfig
from datatrove.pipeline.readers import JsonlReader, ParquetReader
from datatrove.pipeline.writers import JsonlWriter, ParquetWriter

from finephrase.inference.client.backends import GeneratorRuntime
from finephrase.prompts import Prompt
from finephrase.plan import Plan
from finephrase.recipe import Recipe
from finephrase import stats as names
from finephrase.pipeline.decont.index import EvalSetIndex
from finephrase.pipeline.decont.decontaminate import Decontaminate
from finephrase.pipeline.formatters.rows import ROW_SCHEMA, FormatRows, row_adapter
from finephrase.pipeline.filters.language import LanguageFilter
from finephrase.pipeline.filters.length import MinCharsFilter
from finephrase.pipeline.mix import MIX_SCHEMA, Mix, mix_adapter
from finephrase.pipeline.dedup.outputs import (
    ConfigMinhashSignature,
    OutputExactDedupFilter,
    OutputMinhashDedupFilter,
    config_and_text,
)
from finephrase.pipeline.readers.jsonl import SafeJsonlReader
from finephrase.pipeline.rephrase import Rephrase
from finephrase.pipeline.filters.quality_ensemble import EnsembleFilter, EnsembleThresholdsStep
from finephrase.pipeline.filters.quality import quality_filter
from finephrase.pipeline.rephrase.routing import Router
from finephrase.pipeline.filters.select_top import TopPercentCutoff, TopPercentFilter

WORK_DIR = ".finephrase"
DECONT_INDEX = "decont-index"  # the eval sets' n-gram index, under the work folder
QUALITY_ENSEMBLE = "quality-ensemble"  # a quality ensemble's percentile thresholds, under the work folder


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

    def completed_tasks(self, stage: str) -> int:
        """The stage's tasks that finished (datatrove's completion markers)."""
        folder = os.path.join(self.logs(stage), "completions")
        return len(os.listdir(folder)) if os.path.isdir(folder) else 0


def document_text(doc) -> str:
    """What exact dedup compares (a module-level function: the config travels to worker processes)."""
    return doc.text


def source_reader(recipe: Recipe, limit: int = -1):
    """The recipe's source as a datatrove reader."""
    return reader_for(recipe.source, limit)


def reader_for(src, limit: int = -1):
    """A datatrove reader over a ``SourceConfig`` (the recipe's source, or the mix's mix-in source)."""
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


def build_stages(plan: Plan, output: str, runtime: GeneratorRuntime,
                 tasks: int | None = None, limit: int | None = None) -> list[Stage]:
    """The plan as datatrove stages, each depending on the one before: (eval sets' index), filter, dedup,
    rephrase, rows, (output dedup, decontamination), mix."""
    recipe, prompts = plan.recipe, plan.prompts
    paths = RunPaths(output)
    tasks = tasks or recipe.run.tasks
    limit = recipe.run.limit if limit is None else limit
    stages = [_decont_index_stage(recipe.decontamination, paths)] if recipe.decontamination else []
    q = recipe.filters.quality
    if q and q.ensemble:
        stages.append(_thresholds_stage(plan, paths))
    stages.append(_filter_stage(plan, paths, tasks, limit))
    current = paths.w("filtered")
    if q and q.top_percent:
        stages += _top_stages(TopSide("quality-", names.QUALITY_SCORE, False, names.STAGE_QUALITY_TOP), q.top_percent,
                              paths, current, tasks, _jsonl_writer(paths.w("selected")))
        current = paths.w("selected")
    if recipe.dedup.exact:
        stages += _exact_stages(SOURCE_SIDE, paths, current, tasks, _jsonl_writer(paths.w("exact-deduped")))
        current = paths.w("exact-deduped")
    if recipe.dedup.minhash:
        stages += _minhash_stages(SOURCE_SIDE, recipe.dedup.minhash, paths, current, tasks,
                                  _jsonl_writer(paths.w("deduped")))
        current = paths.w("deduped")
    stages.append(_rephrase_stage(recipe, prompts, paths, runtime, current, tasks))
    stages += _rows_stages(plan, paths, runtime, tasks)
    if recipe.mix:
        stages.append(_mix_stage(recipe, prompts, paths, runtime, current))
    for before, stage in zip(stages, stages[1:]):
        stage.depends = before.name
    return stages


def _jsonl_writer(folder: str) -> JsonlWriter:
    return JsonlWriter(folder, output_filename="${rank}.jsonl.gz")


def _parquet_writer(paths: RunPaths) -> ParquetWriter:
    """The prompt configs: ``data/<prompt>/<rank>.parquet``."""
    return ParquetWriter(paths.data, output_filename="${config}/${rank}.parquet", adapter=row_adapter,
                         schema=ROW_SCHEMA)


def _decont_config(decont) -> NGramsDecontConfig:
    return NGramsDecontConfig(n_grams=decont.n_grams)


def _decont_index_stage(decont, paths: RunPaths) -> Stage:
    """0. the eval sets' n-gram index (decontamination), one task."""
    eval_sets = [{**e.model_dump(), "text_key": e.text_keys} for e in decont.eval_sets]
    return Stage(names.STAGE_DECONT_INDEX, [EvalSetIndex(paths.w(DECONT_INDEX), eval_sets, _decont_config(decont),
                                                         language=decont.language)], 1)


def _text_filters(filters) -> list:
    """The length and language filters (the filter stage's first steps, and the ensemble sample's)."""
    steps: list = []
    if filters.min_chars > 1:
        steps.append(MinCharsFilter(filters.min_chars))
    if filters.language:
        lang = filters.language
        steps.append(LanguageFilter(lang.languages, lang.threshold, None if lang.model == "auto" else lang.model))
    return steps


def _classifiers(plan: Plan) -> list[dict]:
    """A quality ensemble's classifiers as its steps take them (their local paths from the plan)."""
    q = plan.recipe.filters.quality
    return [{"name": c.name, "path": plan.classifiers[c.name], "label": c.label, "device": q.device,
             "batch_size": q.batch_size} for c in q.classifiers]


def _thresholds_stage(plan: Plan, paths: RunPaths) -> Stage:
    """0. a quality ensemble's percentile thresholds, on a sample of the source (one task)."""
    recipe = plan.recipe
    q = recipe.filters.quality
    return Stage(names.STAGE_QUALITY_THRESHOLDS, [
        source_reader(recipe, q.sample), *_text_filters(recipe.filters),
        EnsembleThresholdsStep(paths.w(QUALITY_ENSEMBLE), _classifiers(plan), q.buckets, q.batch_size)], 1)


@dataclass(frozen=True)
class TopSide:
    """What a top-percent selection ranks: the sources by ``quality_score``, or each config's rows by
    ``output_quality_score``."""

    prefix: str  # of the cutoff stage and the work folder
    score_key: str
    by_config: bool
    stage: str  # the selecting stage's name (the report reads its stats)


def _top_stages(side: TopSide, percent: float, paths: RunPaths, current: str, tasks: int, writer) -> list[Stage]:
    """The top ``percent`` % over the whole run: the cutoff (one task, every file), then the selection."""
    folder = paths.w(f"{side.prefix}top")
    return [
        Stage(f"{side.prefix}top-cutoff", [_intermediate_reader(current),
                                           TopPercentCutoff(folder, percent, side.score_key, side.by_config)], 1),
        Stage(side.stage, [_intermediate_reader(current), TopPercentFilter(folder, side.score_key, side.by_config),
                           writer], tasks),
    ]


def _filter_stage(plan: Plan, paths: RunPaths, tasks: int, limit: int) -> Stage:
    """1. read + filter (length, language, quality, eval-set n-grams)."""
    recipe = plan.recipe
    filters = recipe.filters
    steps: list = [source_reader(recipe, limit), *_text_filters(filters)]
    q = filters.quality
    if q and q.ensemble:
        steps.append(EnsembleFilter(paths.w(QUALITY_ENSEMBLE), _classifiers(plan), int(q.threshold), q.batch_size))
    elif q:
        steps.append(quality_filter(plan.quality_model, q.label, q.threshold, q.device, q.batch_size))
    decont = recipe.decontamination
    if decont and decont.check_sources:  # datatrove's filter, on the index of stage 0
        steps.append(NGramsDecontFilter(paths.w(DECONT_INDEX), _decont_config(decont), language=decont.language))
    steps.append(_jsonl_writer(paths.w("filtered")))
    return Stage(names.STAGE_FILTER, steps, tasks)


@dataclass(frozen=True)
class DedupSide:
    """What a dedup runs on: the source documents, or the rows (every prompt config on its own)."""

    prefix: str  # of the stage names and work folders
    content: Callable  # exact dedup's content getter
    exact_filter: type
    minhash_signature: type
    minhash_filter: type


SOURCE_SIDE = DedupSide("", document_text, ExactDedupFilter, MinhashDedupSignature, MinhashDedupFilter)
OUTPUT_SIDE = DedupSide("output-", config_and_text, OutputExactDedupFilter, ConfigMinhashSignature,
                        OutputMinhashDedupFilter)


def _exact_stages(side: DedupSide, paths: RunPaths, current: str, tasks: int, writer) -> list[Stage]:
    """2. exact dedup (datatrove's three stages)."""
    cfg = ExactDedupConfig(content_getter=side.content)
    sigs, dups = paths.w(f"{side.prefix}exact", "sigs"), paths.w(f"{side.prefix}exact", "dups")
    return [
        Stage(f"{side.prefix}exact-signatures", [_intermediate_reader(current), ExactDedupSignature(sigs, cfg)], tasks),
        Stage(f"{side.prefix}exact-find", [ExactFindDedups(sigs, dups, cfg)], 1),
        Stage(side.prefix + names.STAGE_EXACT_FILTER, [_intermediate_reader(current), side.exact_filter(dups, cfg),
                                                       writer], tasks),
    ]


def _minhash_stages(side: DedupSide, m, paths: RunPaths, current: str, tasks: int, writer) -> list[Stage]:
    """3. MinHash dedup (datatrove's four stages)."""
    cfg = MinhashConfig(n_grams=m.n_grams, num_buckets=m.num_buckets, hashes_per_bucket=m.hashes_per_bucket)
    work = f"{side.prefix}minhash"
    sigs, buckets, clusters = paths.w(work, "sigs"), paths.w(work, "buckets"), paths.w(work, "clusters")
    return [
        Stage(f"{work}-signatures", [_intermediate_reader(current),
                                     side.minhash_signature(sigs, cfg, language=m.language)], tasks),
        Stage(f"{work}-buckets", [MinhashDedupBuckets(sigs, buckets, config=cfg)], m.num_buckets),
        Stage(f"{work}-cluster", [MinhashDedupCluster(buckets, clusters, config=cfg)], 1),
        Stage(side.prefix + names.STAGE_MINHASH_FILTER, [_intermediate_reader(current),
                                                         side.minhash_filter(clusters), writer], tasks),
    ]


def _rephrase_stage(recipe: Recipe, prompts: list[Prompt], paths: RunPaths, runtime: GeneratorRuntime,
                    current: str, tasks: int) -> Stage:
    """4. rephrase (datatrove's InferenceRunner with checkpoints + request cache)."""
    g = recipe.generator
    return Stage(names.STAGE_REPHRASE, [
        _intermediate_reader(current),
        Rephrase(
            prompts,
            output_folder=paths.w("rephrased"),
            **runtime.step_settings(),
            generation_params=g.params.model_dump(exclude_none=True),
            concurrency=g.concurrency,
            fleet_dir=paths.w("fleet"),
            request_timeout=g.request_timeout,
            max_retries=g.max_retries,
            checkpoints_dir=paths.w("checkpoints"),
            records_per_chunk=recipe.output.records_per_chunk,
            unavailable_timeout=g.unavailable_timeout,
            routing=recipe.routing.model_dump() if recipe.routing else None,
        ),
    ], tasks, kind="inference")


def _rows_stages(plan: Plan, paths: RunPaths, runtime: GeneratorRuntime, tasks: int) -> list[Stage]:
    """5. rows per prompt config with the output rules, then the output dedup and the decontamination of the
    rows (when the recipe has them): the last of these stages writes the parquet configs, the others
    ``.finephrase/rows*/``."""
    recipe = plan.recipe
    out_dedup, decont, select = recipe.output_dedup, recipe.decontamination, recipe.select_outputs
    after = [kind for kind, on in (("top", select), ("exact", out_dedup.exact), ("minhash", out_dedup.minhash),
                                   ("decontaminated", decont)) if on]
    folders = ["rows"] + [f"rows-{kind}" for kind in after]

    def writer(i: int):
        return _parquet_writer(paths) if i == len(folders) - 1 else _jsonl_writer(paths.w(folders[i]))

    stages = [_rows_stage(plan, paths, runtime, tasks, writer(0))]
    for i, kind in enumerate(after, start=1):
        current = paths.w(folders[i - 1])
        if kind == "top":
            stages += _top_stages(TopSide("output-", "output_quality_score", True, names.STAGE_OUTPUT_TOP),
                                  select.top_percent, paths, current, tasks, writer(i))
        elif kind == "exact":
            stages += _exact_stages(OUTPUT_SIDE, paths, current, tasks, writer(i))
        elif kind == "minhash":
            stages += _minhash_stages(OUTPUT_SIDE, out_dedup.minhash, paths, current, tasks, writer(i))
        else:
            stages.append(Stage(names.STAGE_DECONTAMINATE, [
                _intermediate_reader(current),
                Decontaminate(paths.w(DECONT_INDEX), _decont_config(decont), decont.action, decont.language),
                writer(i)], tasks))
    return stages


def _rows_stage(plan: Plan, paths: RunPaths, runtime: GeneratorRuntime, tasks: int, writer) -> Stage:
    """5. rows per prompt config, with the output rules."""
    return Stage(names.STAGE_ROWS, [
        _intermediate_reader(paths.w("rephrased"), compressed=False),
        FormatRows(plan.prompts, model=runtime.model, lid_model_path=plan.language_model,
                   on_fail=plan.recipe.output_checks,
                   # scored outputs: the generated text scored by the quality filter's classifier
                   quality_model=plan.quality_model, quality_label=plan.quality_label),
        writer,
    ], tasks)


def _mix_stage(recipe: Recipe, prompts: list[Prompt], paths: RunPaths, runtime: GeneratorRuntime,
               current: str) -> Stage:
    """6. real + synthetic mix."""
    m = recipe.mix
    real = reader_for(m.source) if m.source is not None else _intermediate_reader(current)
    router = Router(recipe.routing.model_dump(), prompts) if recipe.routing else None
    # routing with levels kept as they are (Nemotron-CC's medium): the real text is those documents
    real_filter = router.keeps if router and router.keeps_any and m.source is None else None
    return Stage(names.STAGE_MIX, [
        Mix([ParquetReader(os.path.join(paths.data, p.config_name)) for p in prompts], real,
            synthetic=m.synthetic, per_prompt=m.per_prompt, tokenizer=runtime.tokenizer, seed=m.seed,
            include_flagged=m.include_flagged, real_filter=real_filter),
        ParquetWriter(os.path.join(paths.data, "mix"), output_filename="${rank}.parquet", adapter=mix_adapter,
                      schema=MIX_SCHEMA),
    ], 1)


def run_local(stages: list[Stage], output: str, workers: int = 1) -> None:
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
