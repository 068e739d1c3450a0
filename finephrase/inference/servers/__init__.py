"""Servers finephrase runs on this machine for the embedded generator:

* :mod:`.embedded` — supervised replicas (start, readiness, restart) of :mod:`.llama_server` (llama.cpp) or
  :mod:`.vllm_engine` (vLLM's CPU build, started under :mod:`.group_leader`, a GGUF converted by :mod:`.gguf_convert`);
* :mod:`.engine_choice` — which engine ``generator.engine: auto`` takes on this machine, from :mod:`.calibration`
  (both engines measured here, cached per CPU, flags and versions) and :mod:`.cpu_dtype` (vLLM's dtype: bfloat16
  where this CPU executes a bf16 instruction, float32 and why elsewhere);
* :mod:`.llama_setup`, :mod:`.vllm_setup` — ``finephrase setup-embedded``: llama-cpp-python built with portable
  flags, vLLM's CPU build in an environment of its own, the model wheels.

What it may import: the standard library, ``finephrase.errors``, ``finephrase.lifetime`` and
``finephrase.resources``. Never the client, the runner or the pipeline.
"""
