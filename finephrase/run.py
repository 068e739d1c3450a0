"""Run a recipe end to end on this machine: the library call behind ``finephrase run``."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass

from loguru import logger

from finephrase.inference.client.backends import GeneratorRuntime
from finephrase.pipeline.build import RunPaths, build_stages, run_local
from finephrase.plan import Plan, save_plan
from finephrase.recipe import Recipe


@dataclass
class RunResult:
    output: str
    plan: Plan
    runtime: GeneratorRuntime
    wall_time: float


@contextlib.contextmanager
def generator_runtime(recipe: Recipe, paths: RunPaths, limit: int | None = None, tasks: int | None = None):
    """How to reach the model while the block runs (the backend starts and stops what it needs): (runtime, provenance)."""
    from finephrase.inference.client.backends import backend_for
    from finephrase.run_size import expected_completion_tokens

    backend = backend_for(recipe.generator.server)
    tokens = expected_completion_tokens(recipe, limit, tasks)  # what the embedded backend's `engine: auto` weighs
    with backend.runtime(recipe.generator, log_dir=paths.w("logs", "server"), expected_tokens=tokens) as rt:
        yield rt


def run_recipe(plan: Plan, output: str | None = None, limit: int | None = None, tasks: int | None = None,
               workers: int | None = None, fresh: bool = False, verbose: bool = True) -> RunResult:
    """Run a resolved recipe (:func:`finephrase.plan.resolve`) into ``output``; the plan is saved there first
    (``.finephrase/plan.json``). ``verbose=False`` (``finephrase run`` without ``-v``): a live progress display
    instead of datatrove's log, which goes to ``.finephrase/logs/console.log`` (:mod:`finephrase.progress`)."""
    recipe = plan.recipe
    from finephrase.lifetime import children_die_with_this_process

    children_die_with_this_process()  # before the servers and the workers start: none outlives this process
    output = output or recipe.output.folder
    paths = RunPaths(output)
    if fresh and os.path.exists(output):
        shutil.rmtree(output)
    os.makedirs(paths.work, exist_ok=True)
    save_plan(plan, output)
    start = time.time()
    from finephrase.progress import run_console

    with run_console(paths, verbose=verbose) as watch, generator_runtime(recipe, paths, limit, tasks) as (runtime, generator_info):
        stages = build_stages(plan, output, runtime, tasks=tasks, limit=limit)
        if watch is not None:
            watch.set_stages(stages)
        run_local(stages, output, workers=workers or recipe.run.workers)
    wall = time.time() - start
    from finephrase.report import build_report
    from finephrase.report.finish import finish_output

    # the run report: datatrove's stats and the parquet footers, read once (.finephrase/report.json)
    report = build_report(output, [s.name for s in stages], plan.prompts,
                          generator={**generator_info, "model": runtime.model}, wall_time_s=round(wall, 1),
                          limit=limit, tasks=tasks or recipe.run.tasks)
    finish_output(output, plan, report)  # report.json, recipe.yaml, README.md (card), report.html
    logger.info(f"done in {wall:.0f}s: {output}")
    return RunResult(output, plan, runtime, wall)
