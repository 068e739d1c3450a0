"""Generator backends by registration: ``embedded``, ``openai`` and ``tgi``.

A recipe's ``generator.server`` names a :class:`Backend`; the backend alone knows what that kind of generator
needs: which settings are required (:meth:`Backend.check`), how a request is addressed (model name, context
window, tokenizer, wire protocol: :meth:`Backend.request_settings`), how to reach it at run time — the embedded
backend starts and stops its supervised llama.cpp replicas here and nowhere else (:meth:`Backend.runtime`) —
and what its provenance and card say (:meth:`Backend.card_facts`). Nothing outside this module branches on the
kind. A new kind (vLLM on CPU, a Slurm-launched server) is one more :func:`register` call.

Imports: the standard library and, inside functions, :mod:`finephrase.inference.servers.embedded`. The recipe's
``GeneratorConfig`` is only a type here (no import of :mod:`finephrase.recipe`, which imports this module).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    from finephrase.recipe import GeneratorConfig


@dataclass
class GeneratorRuntime:
    """What the rephrase stage needs to reach the model, resolved at run time."""

    endpoints: list[str] = field(default_factory=list)
    endpoints_file: str | None = None
    protocol: str = "openai"
    model: str = "default"
    tokenizer: str | None = None
    context_length: int | None = None
    api_key_env: str | None = None  # the variable's name only: the key never travels with the steps
    state_file: str | None = None  # the embedded replicas' supervisor state (see finephrase.inference.servers.embedded)
    concurrency: int | None = None  # requests the launched servers take at once (embedded: launch settings)

    def step_settings(self) -> dict:
        """The ``Rephrase`` step's arguments that say how to reach the model."""
        return {"endpoints": self.endpoints, "endpoints_file": self.endpoints_file, "protocol": self.protocol,
                "model": self.model, "tokenizer": self.tokenizer, "context_length": self.context_length,
                "api_key_env": self.api_key_env, "server_state_file": self.state_file, "window": self.window()}

    def window(self) -> dict:
        """Every replica's in-flight window settings: servers launched here start at their share of the launch
        settings' concurrency; others start at the window's default and learn (finephrase.inference.client.window)."""
        if not self.concurrency:
            return {}
        return {"initial": max(1, self.concurrency // max(1, len(self.endpoints)))}


@dataclass(frozen=True)
class RequestSettings:
    """How a request to this generator is addressed, before anything runs (``prompts render`` and the run)."""

    model: str
    context_length: int | None
    tokenizer: str | None
    protocol: str


class Backend:
    """One kind of generator. Subclasses set ``name`` and override what differs."""

    name: ClassVar[str] = ""
    needs_endpoints: ClassVar[bool] = True
    apis: ClassVar[tuple[str, ...]] = ("chat",)

    def check(self, g: GeneratorConfig, launched: bool = False) -> None:
        """Raise ValueError (a recipe error) for settings this backend cannot run with. ``launched``: the recipe has
        a ``cluster:`` block, whose server jobs provide the endpoints."""
        if self.needs_endpoints and not launched and not (g.endpoints or g.endpoints_file):
            raise ValueError(f"generator.endpoints or generator.endpoints_file is required for server {self.name!r}")
        if g.api not in self.apis:
            raise ValueError(f"generator.api: {g.api!r} is not available with server {self.name!r} "
                             f"(it has: {', '.join(self.apis)})")

    def protocol(self, g: GeneratorConfig, program: str | None = None) -> str:
        """The wire protocol of a request. ``program``: the server program a cluster's server jobs run
        (``cluster.server``), when they do."""
        return "openai"

    def request_settings(self, g: GeneratorConfig) -> RequestSettings:
        return RequestSettings(model=g.model or "default", context_length=g.context_length, tokenizer=g.tokenizer,
                               protocol=self.protocol(g))

    def served_runtime(self, g: GeneratorConfig, endpoints_file: str | None = None, model: str | None = None,
                       api_key_env: str | None = None, program: str | None = None) -> GeneratorRuntime:
        """How the rephrase stage reaches servers that run apart from it: the recipe's endpoints, and the endpoints
        file its servers register in. A cluster's server jobs (``program``: what they run) give their own endpoints
        file, the model name they serve and the run's API key variable."""
        s = self.request_settings(g)
        return GeneratorRuntime(endpoints=list(g.endpoints), endpoints_file=endpoints_file or g.endpoints_file,
                                protocol=self.protocol(g, program), model=model or s.model, tokenizer=s.tokenizer,
                                context_length=s.context_length, api_key_env=api_key_env or g.api_key_env)

    @contextlib.contextmanager
    def runtime(self, g: GeneratorConfig, log_dir: str | None = None,
                expected_tokens: float | None = None) -> Iterator[tuple[GeneratorRuntime, dict]]:
        """(how the rephrase stage reaches the model, the generator's provenance) while the block runs.
        ``expected_tokens``: the run's expected completion tokens (the embedded backend's ``engine: auto``)."""
        yield self.served_runtime(g), {"server": self.name, "api": g.api, "endpoints": len(g.endpoints),
                                       "endpoints_file": bool(g.endpoints_file)}

    def card_facts(self, g: GeneratorConfig, provenance: dict) -> dict:
        """The card's context window and the backend-specific provenance lines (``extra``)."""
        extra = {k: provenance[k] for k in ("api", "endpoints") if k in provenance}
        extra.setdefault("api", g.api)
        return {"context": g.context_length, "extra": extra}


class OpenAIBackend(Backend):
    """Any OpenAI-compatible server (vLLM, SGLang, llama.cpp's llama-server, TGI's Messages API, a hosted API)."""

    name = "openai"


class TGIBackend(Backend):
    """Text Generation Inference: its Messages API (``api: chat``) or its native ``/generate`` (``api: generate``)."""

    name = "tgi"
    apis = ("chat", "generate")

    def protocol(self, g: GeneratorConfig, program: str | None = None) -> str:
        if program not in (None, "tgi"):
            return "openai"  # server jobs of vLLM, SGLang or llama.cpp speak the OpenAI API only
        return "tgi" if g.api == "generate" else "tgi-chat"


class EmbeddedBackend(Backend):
    """Supervised servers on this machine: llama.cpp (llama-cpp-python's, or ``generator.command``) or vLLM's CPU
    build (``generator.engine``; :mod:`finephrase.inference.servers.engine_choice`)."""

    name = "embedded"
    needs_endpoints = False

    def request_settings(self, g: GeneratorConfig) -> RequestSettings:
        from finephrase.inference.servers.embedded import DEFAULT_ALIAS, default_gguf_path

        return RequestSettings(model=g.model or DEFAULT_ALIAS, context_length=g.context_length or g.n_ctx,
                               tokenizer=g.tokenizer or g.gguf or default_gguf_path(), protocol="openai")

    @staticmethod
    def choose(g: GeneratorConfig, expected_tokens: float | None = None):
        from finephrase.inference.servers.engine_choice import choose_embedded

        # a server command of the user's is served as given
        return choose_embedded("llama.cpp" if g.command and g.engine != "vllm" else g.engine, expected_tokens,
                               EmbeddedBackend.make_servers)

    @contextlib.contextmanager
    def runtime(self, g: GeneratorConfig, log_dir: str | None = None,
                expected_tokens: float | None = None) -> Iterator[tuple[GeneratorRuntime, dict]]:
        from finephrase.inference.servers.llama_setup import file_sha256

        choice = self.choose(g, expected_tokens)
        with self.servers(g, log_dir, engine=choice.engine) as servers:
            yield GeneratorRuntime(
                endpoints=servers.endpoints, protocol="openai", model=servers.alias,
                tokenizer=g.tokenizer or servers.tokenizer, context_length=self.request_settings(g).context_length,
                state_file=servers.state_file, concurrency=servers.concurrency,
            ), {"server": self.name, "engine": servers.engine, "engine_version": servers.version,
                "engine_choice": choice.reason, "gguf": os.path.basename(servers.gguf),
                "gguf_sha256": file_sha256(Path(servers.gguf)), "replicas": servers.replicas,
                "threads": servers.threads, "n_ctx": servers.n_ctx, "concurrency": g.concurrency or servers.concurrency,
                **servers.facts}

    @staticmethod
    def servers(g: GeneratorConfig, log_dir: str | None = None, engine: str = "llama.cpp"):
        """The supervised replicas of a recipe's generator (not started: use it as a context manager)."""
        from finephrase.inference.servers.embedded import DEFAULT_ALIAS

        return EmbeddedBackend.make_servers(engine=engine, gguf=g.gguf, replicas=g.replicas, threads=g.threads,
                                            n_ctx=g.n_ctx, alias=g.model or DEFAULT_ALIAS, log_dir=log_dir,
                                            server_command=g.command)

    @staticmethod
    def make_servers(engine: str = "llama.cpp", **settings):
        """The one place the embedded replicas are made: ``EmbeddedServers(**settings)``, or ``VllmServers`` for
        ``engine="vllm"`` (a recipe's generator, ``finephrase serve``, or the ``embedded=`` settings of a
        ``Rephrase`` step used in a plain datatrove pipeline). Settings left ``None`` take the engine's default."""
        from finephrase.inference.servers.embedded import EmbeddedServers
        from finephrase.inference.servers.vllm_engine import VllmServers

        settings = {k: v for k, v in settings.items() if v is not None}
        return (VllmServers if engine == "vllm" else EmbeddedServers)(**settings)

    def card_facts(self, g: GeneratorConfig, provenance: dict) -> dict:
        extra = {k: provenance[k] for k in ("engine", "engine_version", "engine_choice", "gguf", "replicas",
                                            "threads", "threads_choice", "dtype") if provenance.get(k) is not None}
        return {"context": g.context_length or provenance.get("n_ctx") or self.request_settings(g).context_length,
                "extra": extra}


BACKENDS: dict[str, Backend] = {}


def register(backend: Backend) -> Backend:
    """Make ``backend`` available as ``generator.server: <backend.name>``."""
    BACKENDS[backend.name] = backend
    return backend


def backend_for(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown generator.server {name!r}; available: {', '.join(sorted(BACKENDS))}") from None


register(EmbeddedBackend())
register(OpenAIBackend())
register(TGIBackend())
