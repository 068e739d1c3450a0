"""How finephrase reaches a model, in three parts:

* :mod:`.client` — the request path from a payload to an answer: generator backends by registration
  (``backends``), the request builder (the only home of sampling defaults), tokens and chat templates, the wire
  protocols (OpenAI chat, TGI Messages API, TGI ``/generate``) and the replica pool (``ReplicaPool.request``), each
  replica's adaptive in-flight window (``window``), fed by ``fleet`` (the pool's poller and the fleet record saved
  with the run) from what ``capacity`` reads off the servers (``/metrics``, TGI ``/info``, SGLang
  ``/get_server_info``);
* :mod:`.runner` — the lean inference runner that replaced datatrove's (its loop, admission, stat buffer,
  checkpoints, request cache and writer; datatrove's public surface and file formats);
* :mod:`.servers` — servers finephrase starts and supervises on this machine: llama.cpp and vLLM's CPU build
  (``embedded``, ``llama_server``, ``vllm_engine``, ``group_leader``, ``gguf_convert``), the engine choice, and their
  set-up (``llama_setup``, ``vllm_setup``);
* :mod:`.endpoints` — the endpoints file servers register in (locked appends and removals) and the one readiness
  probe (a 1-token generation), shared by the pool, ``finephrase serve`` and the server jobs.

What it may import: datatrove, aiohttp, orjson, the standard library, and from finephrase only
``finephrase.errors``, ``finephrase.lifetime``, ``finephrase.resources``, ``finephrase.progress`` (the runner
publishes its counters for the live display) and ``finephrase.prompts`` (the prompt model, for payloads).
Never ``finephrase.pipeline``, ``finephrase.report``, ``finephrase.run`` or ``finephrase.cli``: those use it.
The recipe's ``GeneratorConfig`` is a type only.
"""
