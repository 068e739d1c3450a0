"""Run a recipe end to end on this machine: the library call behind ``finephrase run``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass

from loguru import logger

from finephrase.errors import EmptyOutputError
from finephrase.pipeline import GeneratorRuntime, RunPaths, build_stages, run_local
from finephrase.prompts import Prompt
from finephrase.recipe import Recipe, check_recipe


@dataclass
class RunResult:
    output: str
    prompts: list[Prompt]
    runtime: GeneratorRuntime
    wall_time: float
    summary: dict


def _file_sha256(path: str, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def generator_runtime(recipe: Recipe, paths: RunPaths):
    """Resolve how to reach the model; for `embedded`, start (and always stop) the supervised llama.cpp replicas."""
    g = recipe.generator
    if g.server == "embedded":
        from finephrase.servers.embedded import DEFAULT_ALIAS, EmbeddedServers

        servers = EmbeddedServers(gguf=g.gguf, replicas=g.replicas, threads=g.threads, n_ctx=g.n_ctx,
                                  alias=g.model or DEFAULT_ALIAS, log_dir=paths.w("logs", "server"),
                                  server_command=g.command)
        with servers:
            yield GeneratorRuntime(
                endpoints=servers.endpoints,
                protocol="openai",
                model=servers.alias,
                tokenizer=g.tokenizer or servers.gguf,
                context_length=g.context_length or g.n_ctx,
                state_file=servers.state_file,
            ), {"server": "embedded", "gguf": os.path.basename(servers.gguf),
                "gguf_sha256": _file_sha256(servers.gguf), "replicas": servers.replicas, "threads": servers.threads,
                "n_ctx": servers.n_ctx}
    else:
        protocol = {"openai": "openai", "tgi": "tgi" if g.api == "generate" else "tgi-chat"}[g.server]
        yield GeneratorRuntime(
            endpoints=g.endpoints,
            endpoints_file=g.endpoints_file,
            protocol=protocol,
            model=g.model or "default",
            tokenizer=g.tokenizer,
            context_length=g.context_length,
            api_key_env=g.api_key_env,
        ), {"server": g.server, "api": g.api, "endpoints": len(g.endpoints), "endpoints_file": bool(g.endpoints_file)}


def run_recipe(recipe: Recipe, output: str | None = None, limit: int | None = None, tasks: int | None = None,
               workers: int | None = None, fresh: bool = False) -> RunResult:
    prompts = check_recipe(recipe)
    from finephrase.lifetime import children_die_with_this_process

    children_die_with_this_process()  # before the servers and the workers start: none outlives this process
    output = output or recipe.output.folder
    paths = RunPaths(output)
    if fresh and os.path.exists(output):
        shutil.rmtree(output)
    os.makedirs(paths.work, exist_ok=True)
    start = time.time()
    with generator_runtime(recipe, paths) as (runtime, generator_info):
        stages = build_stages(recipe, prompts, output, runtime, tasks=tasks, limit=limit)
        run_local(stages, output, workers=workers or recipe.run.workers)
    wall = time.time() - start
    from finephrase.summary import collect_summary, empty_output_problem

    summary = collect_summary(output, [s.name for s in stages], prompts)
    summary["wall_time_s"] = round(wall, 1)
    summary["generator"] = {**generator_info, "model": runtime.model}
    with open(os.path.join(paths.work, "run.json"), "w") as f:
        json.dump({"summary": summary, "limit": limit, "tasks": tasks or recipe.run.tasks}, f, indent=2)
    problem = empty_output_problem(summary, output)
    if problem:
        raise EmptyOutputError(f"empty output: {problem}")
    if recipe.raw_text:
        with open(os.path.join(output, "recipe.yaml"), "w", encoding="utf-8") as f:
            f.write(recipe.raw_text)
    from finephrase.card import write_card

    write_card(output, recipe=recipe, prompts=prompts, summary=summary)
    logger.info(f"done in {wall:.0f}s: {output}")
    return RunResult(output, prompts, runtime, wall, summary)
