"""Which engine serves the embedded generator: ``generator.engine`` ``llama.cpp``, ``vllm`` or ``auto``.

``auto`` takes vLLM when it is set up (:func:`finephrase.inference.servers.vllm_setup.vllm_python`) and the run's expected output
pays for its start-up: llama.cpp starts in seconds and generates ``LLAMA.tokens_per_s``; vLLM needs
``VLLM.start_s`` to start and generates ``VLLM.tokens_per_s`` (continuous batching). With ``T`` completion tokens
to generate, vLLM finishes first when ``VLLM.start_s + T / VLLM.tokens_per_s < LLAMA.start_s + T /
LLAMA.tokens_per_s``, i.e. above :func:`break_even_tokens` — never, with the figures measured so far.

The figures are ``benchmarks/embedded.py``'s on a 2-core machine (``benchmarks/results/embedded.md``): both
throughputs grow with cores, their ratio and the start-up gap are what decide. The expected output is
``requests x max_new_tokens x EXPECTED_FILL`` (answers stop before the cap: SmolLM2's FinePhrase answers use about
half of it).
"""

from __future__ import annotations

from dataclasses import dataclass

ENGINES = ("llama.cpp", "vllm")
EXPECTED_FILL = 0.5


@dataclass(frozen=True)
class EngineCost:
    start_s: float
    tokens_per_s: float


# measured by benchmarks/embedded.py on a 2-core machine (benchmarks/results/embedded.md): vLLM's CPU build, as
# finephrase runs it there (float32, one core for the model), was no faster than two llama.cpp processes
LLAMA = EngineCost(start_s=4.0, tokens_per_s=23.0)
VLLM = EngineCost(start_s=167.0, tokens_per_s=22.0)


def break_even_tokens(llama: EngineCost = LLAMA, vllm: EngineCost = VLLM) -> float:
    """Completion tokens above which vLLM's start-up is paid back (infinite when vLLM is not faster)."""
    gain = 1 / llama.tokens_per_s - 1 / vllm.tokens_per_s
    return (vllm.start_s - llama.start_s) / gain if gain > 0 else float("inf")


def expected_tokens(requests: int | None, max_new_tokens: int) -> float | None:
    return None if requests is None else requests * max_new_tokens * EXPECTED_FILL


@dataclass(frozen=True)
class Choice:
    engine: str  # llama.cpp | vllm
    reason: str


def choose_engine(engine: str, vllm_ready: bool, tokens: float | None, limit: float | None = None) -> Choice:
    """The engine for ``generator.engine`` = ``engine``; ``tokens``: the run's expected completion tokens (``None``:
    unknown or unbounded, e.g. ``finephrase serve`` or a Hub source)."""
    if engine in ENGINES:
        return Choice(engine, "set in the recipe")
    if engine != "auto":
        raise ValueError(f"generator.engine {engine!r}: use auto, llama.cpp or vllm")
    if not vllm_ready:
        return Choice("llama.cpp", "auto: vLLM is not set up (`finephrase setup-embedded --engine vllm`)")
    limit = break_even_tokens() if limit is None else limit
    if limit == float("inf"):
        return Choice("llama.cpp", "auto: vLLM measured no faster than llama.cpp on CPU (benchmarks/embedded.py)")
    if tokens is None:
        return Choice("vllm", "auto: vLLM is set up and the amount of work is open-ended")
    if tokens >= limit:
        return Choice("vllm", f"auto: ~{tokens:,.0f} completion tokens expected, vLLM's start-up pays off above "
                              f"~{limit:,.0f}")
    return Choice("llama.cpp", f"auto: ~{tokens:,.0f} completion tokens expected, below the ~{limit:,.0f} where "
                               "vLLM's start-up pays off")


def choose_embedded(engine: str, tokens: float | None) -> Choice:
    """:func:`choose_engine` for this machine: vLLM counts as set up when :func:`finephrase.inference.servers.vllm_setup.vllm_python`
    finds it (looked up only when the choice can be vLLM)."""
    from finephrase.inference.servers.vllm_setup import vllm_python

    return choose_engine(engine, engine != "llama.cpp" and vllm_python() is not None, tokens)
