"""The request client: from a payload to an answer, over a fleet of replicas.

* :mod:`.backends` — generator backends by registration (``embedded``, ``openai``, ``tgi``): settings, addressing,
  runtime, card facts; :mod:`.request_builder` — sampling parameters, token budget, payload;
* :mod:`.tokens`, :mod:`.chat_template` — counting tokens, rendering the model's chat template;
* :mod:`.protocols` — the wire protocols; :mod:`.pool` — ``ReplicaPool``: the one coroutine that sends a request.

What it may import: aiohttp, orjson, ``finephrase.errors``, ``finephrase.prompts`` and
``finephrase.inference.servers`` (``backends`` starts the embedded replicas). Never the runner or the pipeline.
"""
