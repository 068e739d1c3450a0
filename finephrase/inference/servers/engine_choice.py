"""Which engine serves the embedded generator: ``generator.engine`` ``llama.cpp``, ``vllm`` or ``auto``.

``auto`` takes vLLM when it is set up (:func:`finephrase.inference.servers.vllm_setup.vllm_python`) and the run's expected output
pays for its start-up *on this machine*: the figures are this machine's calibration
(:mod:`finephrase.inference.servers.calibration`: each engine's start-up and completion tokens/s, measured here once and
cached), never figures from another machine. With ``T`` completion tokens to generate, vLLM finishes first when
``vllm.start_s + T / vllm.tokens_per_s < llama.start_s + T / llama.tokens_per_s``, i.e. above
:func:`break_even_tokens`. The expected output is ``requests x max_new_tokens x EXPECTED_FILL`` (answers stop
before the cap: SmolLM2's FinePhrase answers use about half of it). The decision, with its figures, is the run
report's and the card's ``engine_choice``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from finephrase.inference.servers.calibration import Calibration, EngineCost

ENGINES = ("llama.cpp", "vllm")
EXPECTED_FILL = 0.5


def break_even_tokens(llama: EngineCost, vllm: EngineCost) -> float:
    """Completion tokens above which vLLM's start-up is paid back (infinite when vLLM is not faster)."""
    gain = 1 / llama.tokens_per_s - 1 / vllm.tokens_per_s
    return max(0.0, vllm.start_s - llama.start_s) / gain if gain > 0 else float("inf")


def expected_tokens(requests: int | None, max_new_tokens: int) -> float | None:
    return None if requests is None else requests * max_new_tokens * EXPECTED_FILL


@dataclass(frozen=True)
class Choice:
    engine: str  # llama.cpp | vllm
    reason: str


def choose_engine(engine: str, vllm_ready: bool, tokens: float | None,
                  calibration: Calibration | str | None = None) -> Choice:
    """The engine for ``generator.engine`` = ``engine``; ``tokens``: the run's expected completion tokens (``None``:
    unknown or unbounded, e.g. ``finephrase serve`` or a Hub source); ``calibration``: this machine's figures, or
    why there are none."""
    if engine in ENGINES:
        return Choice(engine, "set in the recipe")
    if engine != "auto":
        raise ValueError(f"generator.engine {engine!r}: use auto, llama.cpp or vllm")
    if not vllm_ready:
        return Choice("llama.cpp", "auto: vLLM is not set up (`finephrase setup-embedded --engine vllm`)")
    if not isinstance(calibration, Calibration):
        return Choice("llama.cpp", f"auto: vLLM could not be calibrated here ({calibration or 'no figures'})")
    limit = break_even_tokens(calibration.llama, calibration.best_vllm)
    figures = f"{calibration.describe()}; vLLM's start-up pays off above ~{limit:,.0f} completion tokens"
    if limit == float("inf"):
        return Choice("llama.cpp", f"auto: vLLM is no faster than llama.cpp here ({calibration.describe()})")
    if tokens is None:
        return Choice("vllm", f"auto: the amount of work is open-ended ({figures})")
    if tokens >= limit:
        return Choice("vllm", f"auto: ~{tokens:,.0f} completion tokens expected ({figures})")
    return Choice("llama.cpp", f"auto: ~{tokens:,.0f} completion tokens expected ({figures})")


def choose_embedded(engine: str, tokens: float | None, make_servers: Callable) -> Choice:
    """:func:`choose_engine` for this machine: vLLM counts as set up when :func:`finephrase.inference.servers.vllm_setup.vllm_python`
    finds it (looked up only when the choice can be vLLM); ``auto`` calibrates the engines here the first time
    (with ``make_servers``: ``EmbeddedBackend.make_servers``)."""
    from finephrase.errors import FinephraseError
    from finephrase.inference.servers.calibration import machine_calibration
    from finephrase.inference.servers.vllm_setup import vllm_python

    python = vllm_python() if engine != "llama.cpp" else None
    calibration: Calibration | str | None = None
    if engine == "auto" and python is not None:
        try:
            calibration = machine_calibration(python, make_servers)
        except (FinephraseError, OSError, RuntimeError) as e:  # an engine that does not start here: one line
            calibration = str(e).splitlines()[0][:300]
    return choose_engine(engine, python is not None, tokens, calibration)
