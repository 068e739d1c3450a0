"""How finephrase reaches a model: the request path from a payload to an answer.

What lives here:

* :mod:`~finephrase.inference.backends` — the generator backends by registration (``embedded``, ``openai``,
  ``tgi``): required settings, request addressing, runtime (the embedded replicas start here), card facts;
* :mod:`~finephrase.inference.request_builder` — sampling parameters, token budget and payload of a request
  (the only home of the defaults); :mod:`~finephrase.inference.tokens` and
  :mod:`~finephrase.inference.chat_template` — counting tokens and rendering the model's chat template;
* :mod:`~finephrase.inference.protocols` — the wire protocols (OpenAI chat, TGI Messages API, TGI ``/generate``);
* :mod:`~finephrase.inference.pool` — the client-side replica pool: ``ReplicaPool.request(payload)``, the one
  coroutine that sends a request, with typed refusals (``InputTooLong``, ``RequestRejected``, ``RequestFailed``);
* :mod:`~finephrase.inference.runner` — the lean inference runner: a datatrove step that owns its loop (datatrove's
  public surface only), with :mod:`~finephrase.inference.admission` (requests and documents in flight),
  :mod:`~finephrase.inference.stat_buffer` (stats folded in batches), :mod:`~finephrase.inference.checkpoints`
  (chunked checkpoints and resume), :mod:`~finephrase.inference.request_cache` (the sqlite request cache) and
  :mod:`~finephrase.inference.writer` (the output writer); their files are datatrove's;
* :mod:`~finephrase.inference.embedded` and :mod:`~finephrase.inference.llama_server` — supervised llama.cpp
  replicas on this machine; :mod:`~finephrase.inference.vllm_engine` the same on vLLM's CPU build, in the dtype
  :mod:`~finephrase.inference.cpu_dtype` finds this CPU executes; :mod:`~finephrase.inference.engine_choice` which
  engine (``auto``: on :mod:`~finephrase.inference.calibration`, both engines measured on this machine, cached).

What it may import: datatrove, aiohttp, orjson, the standard library, and from finephrase only
``finephrase.errors``, ``finephrase.lifetime``, ``finephrase.resources``, ``finephrase.embedded_setup``,
``finephrase.progress`` (the runner publishes its counters for the live display) and ``finephrase.prompts``
(the prompt model, for payloads). Never ``finephrase.steps``, ``finephrase.pipeline``, ``finephrase.report``, ``finephrase.run``
or ``finephrase.cli``: those use it. The recipe's ``GeneratorConfig`` is a type only (see ``backends``).
"""
