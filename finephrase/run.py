"""Run a recipe end to end on this machine: the library call behind ``finephrase run``."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from dataclasses import dataclass

from loguru import logger

from finephrase.inference.backends import GeneratorRuntime
from finephrase.pipeline import RunPaths, build_stages, run_local
from finephrase.prompts import Prompt
from finephrase.recipe import Recipe, check_recipe


@dataclass
class RunResult:
    output: str
    prompts: list[Prompt]
    runtime: GeneratorRuntime
    wall_time: float
    summary: dict


@contextlib.contextmanager
def generator_runtime(recipe: Recipe, paths: RunPaths, limit: int | None = None, tasks: int | None = None):
    """How to reach the model while the block runs (the backend starts and stops what it needs): (runtime, provenance)."""
    from finephrase.inference.backends import backend_for
    from finephrase.run_size import expected_completion_tokens

    backend = backend_for(recipe.generator.server)
    tokens = expected_completion_tokens(recipe, limit, tasks)  # what the embedded backend's `engine: auto` weighs
    with backend.runtime(recipe.generator, log_dir=paths.w("logs", "server"), expected_tokens=tokens) as rt:
        yield rt


def run_recipe(recipe: Recipe, output: str | None = None, limit: int | None = None, tasks: int | None = None,
               workers: int | None = None, fresh: bool = False, verbose: bool = True) -> RunResult:
    """Run ``recipe`` into ``output``. ``verbose=False`` (``finephrase run`` without ``-v``): a live progress
    display instead of datatrove's log, which goes to ``.finephrase/logs/console.log`` (:mod:`finephrase.progress`)."""
    prompts = check_recipe(recipe)
    from finephrase.lifetime import children_die_with_this_process

    children_die_with_this_process()  # before the servers and the workers start: none outlives this process
    output = output or recipe.output.folder
    paths = RunPaths(output)
    if fresh and os.path.exists(output):
        shutil.rmtree(output)
    os.makedirs(paths.work, exist_ok=True)
    start = time.time()
    from finephrase.progress import run_console

    with run_console(paths, verbose=verbose) as watch, generator_runtime(recipe, paths, limit, tasks) as (runtime, generator_info):
        stages = build_stages(recipe, prompts, output, runtime, tasks=tasks, limit=limit)
        if watch is not None:
            watch.set_stages(stages)
        run_local(stages, output, workers=workers or recipe.run.workers)
    wall = time.time() - start
    from finephrase.report import build_report
    from finephrase.report.finish import finish_output

    # the run report: datatrove's stats and the parquet footers, read once (.finephrase/report.json + run.json)
    report = build_report(output, [s.name for s in stages], prompts,
                          generator={**generator_info, "model": runtime.model}, wall_time_s=round(wall, 1),
                          limit=limit, tasks=tasks or recipe.run.tasks)
    finish_output(output, recipe, prompts, report)  # report.json, recipe.yaml, README.md (card), report.html
    logger.info(f"done in {wall:.0f}s: {output}")
    return RunResult(output, prompts, runtime, wall, report.to_summary())
