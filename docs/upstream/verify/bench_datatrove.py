"""datatrove's own InferenceRunner (server_type="endpoint", checkpoints + request cache) against an instant server:
requests/s and client CPU µs/request. Run with the datatrove to measure first on PYTHONPATH:

    python instant_server.py PORT 1 &   # finephrase's benchmarks/instant_server.py, pinned to CPU 1
    PYTHONPATH=<datatrove>/src python bench_datatrove.py PORT N CONCURRENCY
"""
import os
import resource
import sys
import tempfile
import time

if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
    os.sched_setaffinity(0, {0})

from loguru import logger

import datatrove
from datatrove.data import Document
from datatrove.pipeline.inference.run_inference import InferenceConfig, InferenceRunner
from datatrove.pipeline.writers.jsonl import JsonlWriter

logger.remove()
port, n, concurrency = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
TEXT = ("The collections module provides specialized container datatypes. " * 12).strip()
docs = [Document(text=f"{i}. {TEXT}", id=str(i)) for i in range(n)]


async def rollout(document, generate):
    return (await generate({"messages": [{"role": "user", "content": document.text}], "max_tokens": 64})).text


with tempfile.TemporaryDirectory() as tmp:
    config = InferenceConfig(server_type="endpoint", model_name_or_path="default",
                             endpoint_url=f"http://127.0.0.1:{port}", max_concurrent_generations=concurrency,
                             metric_interval=3600)
    writer = JsonlWriter(os.path.join(tmp, "out"), output_filename="${rank}_chunk_${chunk_index}.jsonl.gz")
    step = InferenceRunner(rollout, config, writer, checkpoints_local_dir=os.path.join(tmp, "ckpt"),
                           records_per_chunk=6000)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    step.run(iter(docs), rank=0)
    wall = time.perf_counter() - t0
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
print(f"{os.path.dirname(os.path.dirname(datatrove.__file__))}: {n / wall:,.0f} requests/s, "
      f"{cpu / n * 1e6:,.0f} client CPU µs/request (n={n}, concurrency={concurrency})")
