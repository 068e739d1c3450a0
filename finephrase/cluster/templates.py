"""Render the sbatch script of one inference server job from ``launch/`` (package data, see
:func:`finephrase.resources.data_dir`) and a recipe's ``cluster:`` block."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass

import jinja2

from finephrase.recipe import ClusterConfig, Recipe
from finephrase.resources import launch_dir

KINDS = ("tgi", "vllm", "sglang", "embedded")
DEFAULT_IMAGES = {
    "tgi": "ghcr.io#huggingface/text-generation-inference:3.3.6",  # pyxis/enroot spelling of ghcr.io/...
    "vllm": "vllm/vllm-openai:latest",
    "sglang": "lmsysorg/sglang:latest",
}


def server_kind(recipe: Recipe) -> str:
    """The server each server job runs: ``cluster.server``, else embedded for an embedded generator, else tgi."""
    cluster = recipe.cluster or ClusterConfig()
    return cluster.server or ("embedded" if recipe.generator.server == "embedded" else "tgi")


def container_prefix(cluster: ClusterConfig, kind: str) -> str:
    """What runs the server binary: ``srun --container-image=IMAGE`` (pyxis), ``apptainer exec --nv IMAGE``, or
    nothing (a binary on the node). The embedded server always runs from finephrase's own environment."""
    if kind == "embedded" or cluster.container == "none":
        return ""
    image = cluster.image or DEFAULT_IMAGES[kind]
    if cluster.container == "pyxis":
        return f"srun --ntasks=1 --container-image={shlex.quote(image)} "
    if "://" not in image:
        image = "docker://" + image.replace("#", "/")
    return f"apptainer exec --nv {shlex.quote(image)} "


@dataclass
class ServerJob:
    """What one server job needs besides the recipe."""

    endpoints_file: str
    log_dir: str
    job_name: str
    partition: str | None
    env_command: str = ""


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(launch_dir())), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    env.filters["q"] = lambda v: shlex.quote(str(v))
    return env


def model_for(recipe: Recipe, kind: str) -> tuple[str, str]:
    """(the name requests use, what the server loads)."""
    g = recipe.generator
    cluster = recipe.cluster or ClusterConfig()
    if kind == "embedded":
        from finephrase.inference.servers.embedded import DEFAULT_ALIAS, default_gguf_path

        return g.model or DEFAULT_ALIAS, cluster.model_path or g.gguf or default_gguf_path()
    path = cluster.model_path or g.model
    if not path:
        from finephrase.recipe import RecipeError

        raise RecipeError(f"{recipe.path}: generator.model: required to launch {kind} servers "
                          "(the Hub id or path the server loads; or set cluster.model_path)")
    return g.model or path, path


def render_server_job(recipe: Recipe, job: ServerJob, kind: str | None = None) -> str:
    """The sbatch script of one server job of ``kind`` (default :func:`server_kind`)."""
    kind = kind or server_kind(recipe)
    if kind not in KINDS:
        raise ValueError(f"unknown server kind {kind!r}; known: {', '.join(KINDS)}")
    cluster = recipe.cluster or ClusterConfig()
    model, model_path = model_for(recipe, kind)
    return _environment().get_template("server.sbatch.j2").render(
        c=cluster, kind=kind, job_name=job.job_name, log_dir=job.log_dir, partition=job.partition,
        endpoints_file=job.endpoints_file, env_command=job.env_command, model=model, model_path=model_path,
        container=container_prefix(cluster, kind), python=sys.executable, n_ctx=recipe.generator.n_ctx,
        ready_timeout=cluster.ready_timeout)
