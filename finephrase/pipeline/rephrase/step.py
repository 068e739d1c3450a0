"""Rephrase: send each document through one or more prompts to an inference server.

Built on finephrase's ``LeanInferenceRunner`` (a datatrove step with datatrove's inference contract and
files: chunked checkpoints, an sqlite request cache — already-answered requests are not sent again after a
crash —, metrics and stats; see :mod:`finephrase.inference.runner.loop`) with finephrase's ``ReplicaPool`` as the
server (several replicas, TGI or OpenAI protocol, retries that never end the task) and a rollout that

- renders every prompt for the document (sandboxed Jinja2),
- fits the document into the request with the prompt's strategy (``STRATEGIES``): ``truncate`` cuts it at
  a token budget derived from the server's context window and the prompt's ``max_new_tokens`` (recorded
  per row; :mod:`.truncate`), ``chunked`` rewrites it chunk by chunk (Kimi K2 style; :mod:`.chunked`);
- records a failed generation for that prompt (counted in stats, logged with the document id) — one bad
  document never ends the task and never takes the other documents with it;
- treats any other refusal (``RequestRejected``: a parameter, the model name, auth) as the
  configuration problem it is: while no request of the task has been answered, the same
  refusal ``REJECTIONS_BEFORE_STOP`` times stops the task with ``GeneratorRejected`` quoting
  the server and naming the recipe key to change (the documents stay unprocessed, so a rerun
  after the fix resumes them); in a run that works, a refused request is a counted failure;
- never records a document as failed because no replica was reachable: the pool waits, and
  ends the task after ``unavailable_timeout`` (``GeneratorUnavailable``) with the work kept.

Each written document keeps the source text and carries, under ``metadata["rollout_results"][0]``,
one entry per prompt: generated text or error, finish reason, token counts, truncation.
"""

from __future__ import annotations

import asyncio
from typing import Any

from datatrove.data import Document
from datatrove.pipeline.inference.run_inference import InferenceConfig
from datatrove.pipeline.inference.types import InferenceError
from loguru import logger

from finephrase import stats as names
from finephrase.errors import GeneratorRejected, RequestRejected
from finephrase.inference.client.pool import rejection_hint
from finephrase.inference.client.request_builder import RequestBuilder
from finephrase.inference.client.tokens import TokenCounter
from finephrase.inference.runner.loop import LeanInferenceRunner
from finephrase.inference.runner.writer import LeanJsonlWriter, jsonl_adapter
from finephrase.pipeline.rephrase.chunked import rewrite_chunked
from finephrase.pipeline.rephrase.routing import Router
from finephrase.pipeline.rephrase.truncate import rewrite_truncated
from finephrase.prompts import Prompt, load_prompt

STRATEGIES = {"truncate": rewrite_truncated, "chunked": rewrite_chunked}  # prompt.context -> strategy
UNBOUNDED = 100_000  # requests in flight when the recipe sets no bound (the replicas' windows are the limit)
REJECTIONS_BEFORE_STOP = 3  # the same refusal this many times with nothing answered yet: a configuration problem


class Rephrase(LeanInferenceRunner):
    """datatrove step: rephrase documents with prompts through a pool of inference replicas.

    Args:
        prompts: Prompt objects or references (``set/name``, a path, ``hf://...``).
        output_folder: where the rephrased documents are written (jsonl.gz, chunked for resume).
        endpoints: base URLs of the inference replicas (OpenAI-compatible or TGI).
        endpoints_file: optional file of ``host:port`` lines, re-read while running.
        protocol: ``openai`` (chat completions), ``tgi-chat`` (TGI's Messages API) or ``tgi`` (TGI's native
            ``/generate``, prompts rendered with the model's chat template).
        model: model name sent in requests and recorded in provenance.
        generation_params: overrides of the prompts' defaults (max_new_tokens, temperature, top_p, seed).
        concurrency: the most requests in flight (None: no bound; each replica's in-flight window adapts to what
            the server takes, see :mod:`finephrase.inference.client.window`).
        window: settings of every replica's window (``initial``, and ``capacity`` / ``capacity_source`` for
            servers launched with a known batch size), see ``AdaptiveWindow``.
        fleet_dir: where each task saves what happened on the replicas (see :mod:`finephrase.inference.client.fleet`).
        context_length: the server's context window in tokens (None: from the server's info, else 4096).
        tokenizer: token counter spec (a .gguf, a tokenizer.json or folder); None = estimate.
        checkpoints_dir: local folder for datatrove's checkpoints and request cache (enables resume).
        records_per_chunk: documents per checkpoint chunk.
        embedded: dict of EmbeddedServers settings: when given, the step starts its own llama.cpp
            replicas for the duration of the task (used when running the step outside ``finephrase run``).
        routing: the recipe's ``routing`` (score buckets -> prompts, or ``threshold`` with the prompts' ``suits``),
            as in Nemotron-CC: see :mod:`finephrase.pipeline.rephrase.routing`.
    """

    name = "✍️ Rephrase"
    type = "Model call"
    payloads_final = True  # payloads are built complete (model included) and never changed after sending

    def __init__(
        self,
        prompts: list[Prompt | str],
        output_folder: str,
        endpoints: list[str] | None = None,
        endpoints_file: str | None = None,
        protocol: str = "openai",
        model: str = "default",
        generation_params: dict | None = None,
        concurrency: int | None = None,
        window: dict | None = None,
        fleet_dir: str | None = None,
        request_timeout: float = 600,
        max_retries: int = 4,
        context_length: int | None = None,
        tokenizer: str | None = None,
        checkpoints_dir: str | None = None,
        records_per_chunk: int = 100,
        api_key_env: str | None = None,
        unavailable_timeout: float = 600,
        server_state_file: str | None = None,
        embedded: dict | None = None,
        routing: dict | None = None,
    ):
        self.prompts = [p if isinstance(p, Prompt) else load_prompt(p) for p in prompts]
        self.endpoints = list(endpoints or [])
        self.endpoints_file = endpoints_file
        self.protocol = protocol
        self.model = model
        self.generation_params = {k: v for k, v in (generation_params or {}).items() if v is not None}
        self.context_length = context_length
        self.max_retries = max_retries
        self.api_key_env = api_key_env  # only the variable's name: the key is read from the environment per session
        self.unavailable_timeout = unavailable_timeout
        self.server_state_file = server_state_file
        self.embedded = embedded
        self.routing = routing
        self.router = Router(routing, self.prompts)
        self.tokens = TokenCounter(tokenizer)
        self.window = dict(window or {})
        self.fleet_dir = fleet_dir
        if concurrency is not None:
            self.window["ceiling"] = concurrency
        concurrency = concurrency or UNBOUNDED
        self.requests_per_document = len(self.prompts) if not routing else 1
        config = InferenceConfig(
            server_type="endpoint",  # informational: make_server below returns finephrase's ReplicaPool
            model_name_or_path=model,
            use_chat=True,
            max_concurrent_generations=concurrency,
            max_concurrent_documents=max(1, concurrency // max(1, len(self.prompts))) + 1,
            request_timeout=request_timeout,
            metric_interval=60,
        )
        # an intermediate file read once by the rows stage: no gzip, and no deep copy of each document
        writer = LeanJsonlWriter(output_folder, output_filename="${rank}_chunk_${chunk_index}.jsonl", compression=None,
                                 adapter=jsonl_adapter, expand_metadata=False)
        super().__init__(
            rollout_fn=self.rollout,
            config=config,
            output_writer=writer,
            checkpoints_local_dir=checkpoints_dir,
            records_per_chunk=records_per_chunk,
            metadata_key=names.ROLLOUTS,
            skip_bad_requests=True,
        )
        # sampling parameters (cached per prompt), token budgets (per prompt and max_new_tokens), payloads
        self.request_builder = RequestBuilder(model, self.generation_params, context_length, self.tokens)
        self._rejections: dict[str, int] = {}  # "status message" -> times, while nothing was answered

    # ------------------------------------------------------------------ server
    def make_server(self, rank: int):
        """The task's ``ReplicaPool`` (and its embedded llama.cpp replicas, when the step starts its own)."""
        from finephrase.inference.client.pool import ReplicaPool

        endpoints = self.endpoints
        if self.embedded is not None:
            from finephrase.inference.client.backends import EmbeddedBackend

            self._embedded_servers = EmbeddedBackend.make_servers(**self.embedded)
            endpoints = self._embedded_servers.start()
        return ReplicaPool(
            self.config,
            rank,
            endpoints=endpoints,
            endpoints_file=self.endpoints_file,
            protocol=self.protocol,
            max_retries=self.max_retries,
            api_key_env=self.api_key_env,
            unavailable_timeout=self.unavailable_timeout,
            tokenizer=self.tokens.spec,
            state_file=self.server_state_file,
            window={"share": 1 / max(1, self.world_size), **self.window},
        )

    def run(self, data, rank: int = 0, world_size: int = 1):
        try:
            return super().run(data, rank, world_size)
        finally:
            servers = getattr(self, "_embedded_servers", None)
            if servers is not None:
                servers.stop()

    def budget_for(self, prompt: Prompt, max_new_tokens: int) -> int:
        """Tokens of source text that fit: context - max_new_tokens - prompt overhead - margin (RequestBuilder)."""
        return self.request_builder.budget_for(prompt, max_new_tokens, self.server)

    # ------------------------------------------------------------------ rollout
    def params_for(self, prompt: Prompt) -> dict:
        """The prompt's sampling parameters with the recipe's overrides (computed once per prompt; do not mutate)."""
        return self.request_builder.params_for(prompt)

    def sent_params(self, params: dict) -> dict:
        """The generation parameters as the protocol puts them on the wire (the ``generation_params`` column)."""
        from finephrase.inference.client.protocols import make_protocol

        protocol = self.server.protocol if self.server is not None else make_protocol(self.protocol)
        return protocol.sent_params(params)

    def rollout(self, document: Document, generate):
        """datatrove's rollout function: returns a coroutine of ``{prompt name: entry}``. With one prompt it is
        ``_rephrase_one``'s own coroutine (no extra frame per document on the hot path)."""
        if self.server is not None and not self.server.ready:
            return self._rollout(document, generate)  # the token budget and provenance need the server's info
        prompts = self.route(document)
        if len(prompts) == 1:
            return self._rephrase_one(prompts[0], document, generate, keyed=True)
        return self._rephrase_all(prompts, document, generate)

    async def _rollout(self, document: Document, generate) -> dict:
        await self.server.wait_ready()
        return await self.rollout(document, generate)

    async def _rephrase_all(self, prompts: list[Prompt], document: Document, generate) -> dict:
        results = await asyncio.gather(*(self._rephrase_one(p, document, generate) for p in prompts))
        return {p.name: r for p, r in zip(prompts, results)}

    def route(self, document: Document) -> list[Prompt]:
        """The prompts a document goes to (all of them without routing); its bucket goes in ``metadata["bucket"]``
        (see :mod:`finephrase.pipeline.rephrase.routing`)."""
        if not self.routing:
            return self.prompts
        bucket, prompts = self.router.route(document.metadata)
        document.metadata["bucket"] = bucket
        return prompts

    def payload(self, prompt: Prompt, text: str, params: dict, **context: Any) -> dict:
        """The request for ``text`` with ``prompt`` (RequestBuilder; ``context``: the chunk variables)."""
        return self.request_builder.payload(prompt, text, params, **context)

    async def _rephrase_one(self, prompt: Prompt, document: Document, generate, keyed: bool = False) -> dict:
        """One prompt for one document: the row entry (``{prompt.name: entry}`` when ``keyed``)."""
        params = self.params_for(prompt)
        info = self.server.server_info if self.server is not None else {}
        entry = {
            "model": info.get("model_id") or self.model,
            "model_revision": info.get("model_sha"),
            "prompt": prompt.name,
            "prompt_set": prompt.set,
            "prompt_version": prompt.version,
            "prompt_sha256": prompt.sha256,
            "generation_params": self.sent_params(params),
        }
        try:
            entry.update(await STRATEGIES[prompt.context](self, prompt, document.text, params, generate))
            name = prompt.name
            self.stat_update(names.per_prompt(names.REPHRASED, name))
            self.stat_update(names.per_prompt(names.PROMPT_TOKENS, name), value=entry["prompt_tokens"])
            self.stat_update(names.per_prompt(names.COMPLETION_TOKENS, name), value=entry["completion_tokens"])
            if entry.get("truncated"):
                self.stat_update(names.per_prompt(names.TRUNCATED_INPUTS, name))
        except InferenceError as e:
            if isinstance(e, RequestRejected):
                self._note_rejection(e)
            message = str(e.error)[:500]
            logger.warning(f"rephrase failed for document {document.id} with prompt {prompt.ref}: {message}")
            self.stat_update(names.per_prompt(names.FAILED, prompt.name))
            entry["error"] = message
        return {prompt.name: entry} if keyed else entry

    def _note_rejection(self, e: RequestRejected) -> None:
        """Stop the task when the server refuses the same way again and again before anything was answered."""
        if self.answered:  # requests answered in this task: a refusal after that is a counted skip
            return
        key = f"{e.status} {e.body}"
        seen = self._rejections[key] = self._rejections.get(key, 0) + 1
        if seen >= REJECTIONS_BEFORE_STOP:
            raise GeneratorRejected(
                f"the server refused the first {seen} requests with HTTP {e.status}: {e.body[:300]}\n"
                f"fix: {rejection_hint(e.status, e.body)}; then run the same command again "
                "(nothing was recorded for these documents)")
