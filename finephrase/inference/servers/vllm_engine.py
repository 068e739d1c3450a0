"""The embedded generator on vLLM's CPU build: continuous batching instead of one request per process.

:class:`VllmServers` is :class:`finephrase.inference.servers.embedded.EmbeddedServers` — the same supervision, readiness
by a real generation, restarts with back-off, state file and clean stop — with ``python -m
vllm.entrypoints.openai.api_server`` as each replica's process, run by vLLM's own interpreter
(:mod:`finephrase.inference.servers.vllm_setup`) on the GGUF converted once to a Hugging Face folder
(:mod:`finephrase.inference.servers.gguf_convert`). A vLLM server starts an engine-core process and a worker of its own:
each replica runs under :mod:`finephrase.inference.servers.group_leader` in a process group of its own, killed whole when
it exits, stops, or the run dies (SIGKILL included).

Dtype: ``bfloat16`` where this CPU executes bf16 dot products, else ``float32``
(:mod:`finephrase.inference.servers.cpu_dtype`: found by executing them), the reason in the run report and the card.

Threads: by default one replica whose model runs on the cores this machine's calibration found fastest (all, or all
but one: :mod:`finephrase.inference.servers.calibration`), all but one where it has not been calibrated; replica ``i`` is
bound to ``threads`` cores of its own (``VLLM_CPU_OMP_THREADS_BIND``), its KV cache is ``kv_cache_gib`` GiB
(``VLLM_CPU_KVCACHE_SPACE``).
"""

from __future__ import annotations

import os
import signal
import sys

from loguru import logger

from finephrase.inference.servers.cpu_dtype import DtypeChoice
from finephrase.inference.servers.embedded import DEFAULT_ALIAS, EmbeddedServers, Replica
from finephrase.inference.servers.embedded import likely_cause as llama_likely_cause

START_TIMEOUT_S = 900.0  # ~145 s on 2 cores for SmolLM2-135M; more when replicas start side by side
KV_CACHE_GIB = 1


def model_threads(python: str, dtype: str) -> tuple[int, str]:
    """The model's cores: the fastest in this machine's calibration, else all but one (the API server and the
    engine core's scheduler are Python processes of their own); and why."""
    from finephrase.inference.servers.calibration import machine_calibration

    calibration = machine_calibration(python)  # cached figures only: never measured here
    if calibration is not None and calibration.dtype == dtype:
        t = calibration.vllm_threads
        return t, (f"{t} of {calibration.key['cores']} cores: the fastest in this machine's calibration ("
                   + ", ".join(f"{c.tokens_per_s:.1f} tokens/s on {n}" for n, c in sorted(calibration.vllm.items()))
                   + ")")
    cores = os.cpu_count() or 1
    return max(1, cores - 1), f"all {cores} cores but one (not calibrated here)"


class VllmServers(EmbeddedServers):
    engine = "vLLM"
    log_name = "vllm_server"
    own_group = True

    def __init__(self, gguf: str | None = None, replicas: int | None = None, threads: int | None = None,
                 n_ctx: int = 2048, alias: str = DEFAULT_ALIAS, kv_cache_gib: int = KV_CACHE_GIB,
                 start_timeout: float = START_TIMEOUT_S, dtype: DtypeChoice | None = None, **settings):
        # one replica batches many requests: by default one per machine, its model on the calibrated cores (chosen
        # in prepare); several replicas asked for: one core each unless threads says otherwise
        super().__init__(gguf=gguf, replicas=replicas or 1, threads=threads or 1, n_ctx=n_ctx, alias=alias,
                         start_timeout=start_timeout, **settings)
        self.threads_choice = "set in the recipe" if threads else ("one per replica" if replicas else None)
        self.dtype = dtype
        self.kv_cache_gib = kv_cache_gib
        self.python: str | None = None
        self.model_dir: str | None = None

    @property
    def tokenizer(self) -> str:
        """The converted folder's tokenizer.json (what vLLM itself tokenizes with), once started."""
        return self.model_dir or self.gguf

    @property
    def concurrency(self) -> int:
        """Continuous batching: 16 in flight per server."""
        return 16 * self.replicas

    def prepare(self) -> None:
        from finephrase.inference.servers.cpu_dtype import machine_dtype
        from finephrase.inference.servers.gguf_convert import convert_gguf
        from finephrase.inference.servers.vllm_setup import require_vllm_python

        self.python = require_vllm_python()
        self.dtype = self.dtype or machine_dtype()
        if self.threads_choice is None:
            self.threads, self.threads_choice = model_threads(self.python, self.dtype.dtype)
        if self.model_dir is None:
            self.model_dir = str(convert_gguf(self.gguf, self.python, log=logger.info))

    @property
    def version(self) -> str | None:
        from finephrase.inference.servers.vllm_setup import require_vllm_python, vllm_version

        return vllm_version(self.python or require_vllm_python())

    def command(self, port: int) -> list[str]:
        if self.server_command:
            return super().command(port)
        # under a group leader: the engine-core and worker processes vLLM starts go with it, however it ends
        return [sys.executable, "-m", "finephrase.inference.servers.group_leader", "--",
                self.python, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_dir,
                "--served-model-name", self.alias, "--host", self.host, "--port", str(port),
                "--max-model-len", str(self.n_ctx), "--dtype", self.dtype.dtype,
                # a prompt's prefill in one step: vLLM's CPU build dies on a seeded request whose prefill is chunked
                # (its sampler rewinds the request's torch generator by an offset, which a CPU generator lacks:
                # "CPU Generator does not use offset"), and recipes set generator.params.seed
                "--no-enable-chunked-prefill", "--disable-uvicorn-access-log"]

    @property
    def facts(self) -> dict:
        """The run report's and the card's: the dtype and the model's cores, each with why."""
        return {"dtype": f"{self.dtype.reason}" if self.dtype else None, "threads_choice": self.threads_choice}

    def cores(self, replica: Replica) -> str:
        """``VLLM_CPU_OMP_THREADS_BIND`` of a replica: its own ``threads`` cores, wrapping round the machine."""
        n = max(1, os.cpu_count() or 1)
        first = replica.index * self.threads
        return ",".join(str((first + k) % n) for k in range(self.threads))

    def process_env(self, replica: Replica) -> dict:
        return {**os.environ, "VLLM_CPU_KVCACHE_SPACE": str(self.kv_cache_gib),
                "VLLM_CPU_OMP_THREADS_BIND": self.cores(replica), "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def likely_cause(self, returncode: int) -> str:
        if returncode == -signal.SIGKILL:
            return ("killed from outside, most often by the out-of-memory killer: fewer generator.replicas, a "
                    "smaller generator.n_ctx, or the llama.cpp engine")
        if returncode > 0:
            return "see the log tail (vLLM writes why it stopped there)"
        return llama_likely_cause(returncode)
