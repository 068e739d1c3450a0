"""Render the sbatch script of one inference server job from ``launch/`` (package data, see
:func:`finephrase.resources.data_dir`) and a recipe's ``cluster:`` block."""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass

import jinja2

from finephrase.cluster.secrets import API_KEY_ENV
from finephrase.recipe import ClusterConfig, Recipe
from finephrase.resources import launch_dir

KINDS = ("tgi", "vllm", "sglang", "embedded")
# the versions whose command-line flags the templates use (and tests/standins/ accept)
DEFAULT_IMAGES = {
    "tgi": "ghcr.io#huggingface/text-generation-inference:3.3.6",  # pyxis/enroot spelling of ghcr.io/...
    "vllm": "vllm/vllm-openai:v0.33.0",
    "sglang": "lmsysorg/sglang:v0.5.23",
}
# the variable each server reads the run's API key from (SGLang: --api-key only)
API_KEY_VARS = {"tgi": "API_KEY", "vllm": "VLLM_API_KEY", "embedded": "API_KEY", "sglang": None}
DEFAULT_CACHE = '"${HF_HOME:-$HOME/.cache/huggingface}"'


def server_kind(recipe: Recipe) -> str:
    """The server each server job runs: ``cluster.server``, else embedded for an embedded generator, else tgi."""
    cluster = recipe.cluster or ClusterConfig()
    return cluster.server or ("embedded" if recipe.generator.server == "embedded" else "tgi")


def _local_path(path: str) -> str | None:
    """``path`` made absolute when it names a local folder or file (a model path), else None (a Hub id)."""
    if path.startswith(("/", "./", "../", "~")) or os.path.exists(path):
        return os.path.abspath(os.path.expanduser(path))
    return None


def mounts(cluster: ClusterConfig, model_path: str) -> list[str]:
    """``host:container`` folders a server container mounts: the HF cache (``$HF_HOME``), a local model's folder,
    ``cluster.mounts``."""
    out = ['"$HF_HOME:$HF_HOME"']
    local = _local_path(model_path)
    if local:
        folder = local if os.path.isdir(local) else os.path.dirname(local)
        out.append(shlex.quote(f"{folder}:{folder}"))
    for m in cluster.mounts:
        out.append(shlex.quote(m if ":" in m else f"{m}:{m}"))
    return out


def container_prefix(cluster: ClusterConfig, kind: str, model_path: str = "") -> str:
    """What runs the server binary: ``srun --container-image=IMAGE`` (pyxis), ``apptainer exec --nv IMAGE``, or
    nothing (a binary on the node). The cache and model folders are mounted; the job's environment (``HF_HOME``,
    ``cluster.environment``, the secrets, the API key variable) wins over the image's (an image's ``HF_HOME=/data``
    would otherwise send every job to download the model again). The embedded server always runs from
    finephrase's own environment."""
    if kind == "embedded" or cluster.container == "none":
        return ""
    image = cluster.image or DEFAULT_IMAGES[kind]
    names = passed_env(cluster, kind)
    binds = mounts(cluster, model_path)
    if cluster.container == "pyxis":
        return (f"srun --ntasks=1 --container-image={shlex.quote(image)} --container-mounts={','.join(binds)} "
                f"--container-env={','.join(names)} ")
    if "://" not in image:
        image = "docker://" + image.replace("#", "/")
    secret = set(secret_names(cluster, kind))
    env = " ".join(f'--env "{n}=${n}"' for n in names if n not in secret)  # secrets: APPTAINERENV_* instead
    return f"apptainer exec --nv --bind {','.join(binds)} {env} {shlex.quote(image)} "


def secret_names(cluster: ClusterConfig, kind: str) -> list[str]:
    """The variables whose values never appear in a script or log: ``cluster.secrets`` and the API key's."""
    names = [*cluster.secrets, API_KEY_ENV]
    return names + ([API_KEY_VARS[kind]] if API_KEY_VARS.get(kind) else [])


def passed_env(cluster: ClusterConfig, kind: str) -> list[str]:
    """Names of the variables the server's container gets from the job."""
    names = ["HF_HOME", *cluster.environment, *secret_names(cluster, kind)]
    return list(dict.fromkeys(names))


def model_context_length(model_path: str) -> int | None:
    """The model's own context length (``max_position_embeddings`` of a local model's ``config.json``), or None."""
    local = _local_path(model_path)
    config = os.path.join(local, "config.json") if local else None
    if not config or not os.path.isfile(config):
        return None
    try:
        with open(config, encoding="utf-8") as f:
            value = json.load(f).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) and value > 0 else None


def context_flags(cluster: ClusterConfig, model_path: str) -> tuple[int | None, int | None]:
    """(context length, max input tokens) to pass, never above the model's own: ``cluster.max_total_tokens``
    capped by a local model's ``config.json``; None (flag omitted: the server reads the model's) when unset."""
    own = model_context_length(model_path)
    total = min(cluster.max_total_tokens, own) if cluster.max_total_tokens and own else cluster.max_total_tokens
    max_input = cluster.max_input_tokens
    if max_input and total:
        max_input = min(max_input, total - 1)
    return total, max_input


@dataclass
class ServerJob:
    """What one server job needs besides the recipe."""

    endpoints_file: str
    log_dir: str
    job_name: str
    partition: str | None
    env_command: str = ""
    listed_in: str | None = None  # a second file the server also registers in, for `finephrase status` only


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
        from finephrase.inference.servers.embedded import (
            DEFAULT_ALIAS,
            default_gguf_path,
        )

        return g.model or DEFAULT_ALIAS, cluster.model_path or g.gguf or default_gguf_path()
    path = cluster.model_path or g.model
    if not path:
        from finephrase.errors import RecipeError

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
    context_length, max_input_tokens = context_flags(cluster, model_path)
    return _environment().get_template("server.sbatch.j2").render(
        c=cluster, kind=kind, job_name=job.job_name, log_dir=job.log_dir, partition=job.partition,
        endpoints_file=job.endpoints_file, listed_in=job.listed_in or "", env_command=job.env_command, model=model,
        model_path=model_path,
        container=cluster.container if kind != "embedded" else "none",
        container_cmd=container_prefix(cluster, kind, model_path), python=sys.executable,
        n_ctx=recipe.generator.n_ctx, ready_timeout=cluster.ready_timeout, time=cluster.server_time or cluster.time,
        secrets=cluster.secrets, secret_names=secret_names(cluster, kind), api_key_var=API_KEY_VARS[kind],
        cache_dir=shlex.quote(cluster.cache_dir) if cluster.cache_dir else DEFAULT_CACHE,
        context_length=context_length, max_input_tokens=max_input_tokens)
