"""datatrove's own runner against ``benchmarks/fleet.py``'s fleet, the way a datatrove user spreads it over N servers.

datatrove's ``InferenceRunner`` with ``server_type="endpoint"`` sends every request of a task to one
``endpoint_url``, so N replicas take N tasks: a ``LocalPipelineExecutor`` with ``tasks=N, workers=N`` (one process
per task), task ``r`` sending to server ``r`` (:class:`PerRankEndpointRunner` sets the task's ``endpoint_url`` when
the task starts, through the public ``run``; nothing else of the runner changes). Each task reads its share of the
same document stream as finephrase's client in ``fleet.py`` (document ``i`` goes to task ``i mod N``, made until
the deadline) and sends the same chat request per document (finephrase's ``RequestBuilder`` builds the body, so the
prompt, ``max_tokens`` and sampling parameters are the ones ``Rephrase`` sends, and the simulated server gives the
same answer length); results are written with datatrove's ``JsonlWriter``. datatrove's public API only.

A task that fails (datatrove's runner raises ``ServerError`` on an HTTP 500, e.g. from a server going down with
requests in flight) makes ``LocalPipelineExecutor.run`` raise, and its pool ends the other tasks: the client
reports ``failed`` instead of its counters, and the benchmark measures what the servers generated regardless.

Imported by the ``--datatrove`` client process of ``fleet.py`` (and by the executor's worker processes, which is
why it is a module: the pipeline's steps are pickled by reference).
"""

from __future__ import annotations

import dataclasses
import os
import time

from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.inference.run_inference import InferenceConfig, InferenceRunner
from datatrove.pipeline.inference.types import InferenceError, ServerError
from datatrove.pipeline.writers import JsonlWriter

MODEL = "HuggingFaceTB/SmolLM2-1.7B-Instruct"
PROMPT = "finephrase/faq"
DOC_TEXT = "Continuous batching keeps a GPU busy only while its batch is full. "  # as fleet.py's


class FleetDocuments:
    """Pipeline step (a callable, as datatrove's executors take them): this task's documents until ``deadline``."""

    def __init__(self, deadline: float):
        self.deadline = deadline

    def __call__(self, data, rank: int = 0, world_size: int = 1):
        i = rank
        while time.time() < self.deadline:
            yield Document(text=f"{i}. {DOC_TEXT * 4}", id=f"doc-{i}")
            i += world_size


class PerRankEndpointRunner(InferenceRunner):
    """datatrove's ``InferenceRunner``; task ``rank`` sends to ``urls[rank]``."""

    def __init__(self, urls: list[str], **kwargs):
        super().__init__(**kwargs)
        self.urls = urls

    def run(self, data, rank: int = 0, world_size: int = 1):
        self.config = dataclasses.replace(self.config, endpoint_url=self.urls[rank])
        return super().run(data, rank, world_size)


def request_tools() -> dict:
    """The shared context (built once per task): the prompt and the builder of finephrase's request body."""
    from finephrase.inference.client.request_builder import RequestBuilder
    from finephrase.prompts import load_prompt

    builder = RequestBuilder(model=MODEL, generation_params={"max_new_tokens": 1024}, context_length=4096)
    return {"prompt": load_prompt(PROMPT), "builder": builder}


async def rollout(document: Document, generate, prompt=None, builder=None):
    """One request per document: the body ``Rephrase`` sends for it."""
    result = await generate(builder.payload(prompt, document.text, builder.params_for(prompt)))
    return {"text": result.text, "finish_reason": result.finish_reason}


def run_datatrove(urls: list[str], per_task: int, deadline: float, work: str) -> dict:
    """N tasks (one per server, ``max_concurrent_generations=per_task`` each) until ``deadline``; their stats."""
    config = InferenceConfig(server_type="endpoint", model_name_or_path=MODEL, endpoint_url=urls[0],
                             max_concurrent_generations=per_task, model_max_context=4096)
    runner = PerRankEndpointRunner(urls, rollout_fn=rollout, config=config,
                                   output_writer=JsonlWriter(os.path.join(work, "out")), shared_context=request_tools)
    executor = LocalPipelineExecutor(pipeline=[FleetDocuments(deadline), runner], tasks=len(urls),
                                     workers=len(urls), logging_dir=os.path.join(work, "logs"))
    started = time.time()
    try:
        stats = executor.run()
    except (ServerError, InferenceError) as e:  # a failed task: the executor's pool ends the others, the run stops (datatrove's way)
        return {"tasks": len(urls), "seconds": round(time.time() - started, 1),
                "failed": f"{type(e).__name__}: {str(e)[:160]}"}
    inference = stats.stats[-1].stats  # the runner's (the documents' callable keeps none)
    count = {key: inference[key].total for key in ("documents_processed", "successful_requests", "failed_requests")
             if key in inference}
    return {"tasks": len(urls), "seconds": round(time.time() - started, 1), **count}
