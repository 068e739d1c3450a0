"""TGI's validation, as the real router does it, and finephrase's requests passing it.

(a) tests/tgi_server.py refuses what TGI refuses (router/src/validation.rs ``Validation::validate``,
    router/src/lib.rs ``ChatRequest::try_into_generate``, serde/axum body rules), with TGI's status and
    message, on both routes (``/generate`` and ``/v1/chat/completions``);
(b) every packaged prompt, with its own sampling parameters, goes through both TGI routes — and through the
    plain ``openai`` protocol pointed at TGI — via finephrase's ReplicaPool and gets an answer, not a 422;
(c) ``Protocol.sent_params``: what each protocol puts on the wire, and that ``prepare`` sends exactly that.

One strict test server process (real SmolLM2 generation) serves the whole module.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request

import orjson
import pytest

import tgi_server
from finephrase.prompts import list_packaged_prompts
from finephrase.inference.servers.embedded import default_gguf_path
from finephrase.inference.client.protocols import CHAT_NAMES, OpenAIChat, TGIChat, TGIGenerate, make_protocol

MAX_INPUT, MAX_TOTAL = 900, 1000  # the longest packaged prompt is ~610 tokens with DOCUMENT
DOCUMENT = ("The collections module implements specialized container datatypes providing alternatives to "
            "Python's general purpose built-in containers, dict, list, set, and tuple. A deque is a list-like "
            "container with fast appends and pops on either end.")


@pytest.fixture(scope="module")
def tgi(tmp_path_factory):
    """One strict TGI test server (a real process on a free loopback port) for the module."""
    log = tmp_path_factory.mktemp("tgi") / "tgi.log"
    proc, url = tgi_server.start(log_path=str(log), max_input_tokens=MAX_INPUT, max_total_tokens=MAX_TOTAL)
    yield url
    proc.kill()
    proc.wait()


def call(url: str, body, content_type: str | None = "application/json", method: str = "POST"):
    """(status, JSON body or text, content type)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    req = urllib.request.Request(url, data=data if method == "POST" else None, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, raw, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
    if ctype.startswith("application/json"):
        return status, json.loads(raw), ctype
    return status, raw.decode(), ctype


def generate(url, parameters: dict | None = None, inputs: str = "Hello, how are you?", **body):
    req = {"inputs": inputs, **body}
    if parameters is not None:
        req["parameters"] = parameters
    return call(f"{url}/generate", req)


def chat(url, content: str = "Hello, how are you?", **fields):
    return call(f"{url}/v1/chat/completions", {"messages": [{"role": "user", "content": content}], **fields})


def refused(message: str) -> dict:
    return {"error": f"Input validation error: {message}", "error_type": "validation"}


# ------------------------------------------------------------------------------------------------ (a) the rules
TOP_P = "`top_p` must be > 0.0 and < 1.0"
TEMPERATURE = "`temperature` must be strictly positive"


@pytest.mark.parametrize("top_p", [1.0, 1, 0.0, -0.5, 1.5, 0.99999999])  # 0.99999999 is 1.0 as an f32
def test_top_p_out_of_range_is_refused_on_both_routes(tgi, top_p):
    status, body, _ = generate(tgi, {"max_new_tokens": 2, "top_p": top_p})
    assert (status, body) == (422, refused(TOP_P))
    status, body, _ = chat(tgi, max_tokens=2, top_p=top_p)  # the Messages API passes top_p through as it is
    assert (status, body) == (422, refused(TOP_P))


def test_top_p_inside_the_range_is_accepted_on_both_routes(tgi):
    status, body, _ = generate(tgi, {"max_new_tokens": 2, "top_p": 0.9, "details": True})
    assert status == 200 and body["details"]["generated_tokens"] >= 1
    status, body, _ = chat(tgi, max_tokens=2, top_p=0.9)
    assert status == 200 and body["usage"]["completion_tokens"] >= 1


@pytest.mark.parametrize("temperature", [0, 0.0, -1.0])
def test_generate_refuses_a_temperature_that_is_not_positive(tgi, temperature):
    status, body, _ = generate(tgi, {"max_new_tokens": 2, "temperature": temperature})
    assert (status, body) == (422, refused(TEMPERATURE))


def test_chat_temperature_zero_is_greedy_and_negative_is_refused(tgi):
    # lib.rs try_into_generate: `Some(0.0) => (false, None)`: greedy, so two answers are the same
    answers = []
    for _ in range(2):
        status, body, _ = chat(tgi, "Name a fruit.", max_tokens=6, temperature=0)
        assert status == 200
        answers.append(body["choices"][0]["message"]["content"])
    assert answers[0] == answers[1] and answers[0]
    status, body, _ = chat(tgi, max_tokens=2, temperature=-0.5)
    assert (status, body) == (422, refused(TEMPERATURE))


def test_generate_greedy_and_sampled_seeds(tgi):
    # /generate: no do_sample and no warper is greedy (details.seed null); a sampled request reports its seed
    status, body, _ = generate(tgi, {"max_new_tokens": 3, "details": True, "do_sample": False})
    assert status == 200 and body["details"]["seed"] is None
    status, body, _ = generate(tgi, {"max_new_tokens": 3, "details": True, "do_sample": True, "seed": 7})
    assert status == 200 and body["details"]["seed"] == 7
    # do_sample false but a warper (top_p < 1) samples all the same (tokens.py HeterogeneousNextTokenChooser)
    status, body, _ = generate(tgi, {"max_new_tokens": 3, "details": True, "top_p": 0.5, "seed": 11})
    assert status == 200 and body["details"]["seed"] == 11


@pytest.mark.parametrize("parameters, message", [
    ({"top_k": 0}, "`top_k` must be strictly positive"),
    ({"top_k": -3}, "`top_k` must be strictly positive"),
    ({"typical_p": 1.0}, "`typical_p` must be > 0.0 and < 1.0"),
    ({"typical_p": 0}, "`typical_p` must be > 0.0 and < 1.0"),
    ({"repetition_penalty": 0}, "`repetition_penalty` must be strictly positive"),
    ({"frequency_penalty": 2.5}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ({"frequency_penalty": -2.01}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
    ({"best_of": 2}, "you must use sampling when `best_of` is > 1"),
    ({"best_of": 3, "do_sample": True}, "`best_of` must be > 0 and <= 2. Given: 3"),
    ({"best_of": 2, "do_sample": True, "seed": 1}, "`seed` must not be set when `best_of` > 1"),
    ({"top_n_tokens": 6}, "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
    ({"truncate": 0}, f"`truncate` must be strictly positive and less than {MAX_INPUT}. Given: 0"),
    ({"truncate": MAX_INPUT + 1},
     f"`truncate` must be strictly positive and less than {MAX_INPUT}. Given: {MAX_INPUT + 1}"),
    # checked in Validation::validate's order: temperature before top_p
    ({"temperature": 0, "top_p": 1.0}, TEMPERATURE),
])
def test_generate_parameter_rules(tgi, parameters, message):
    status, body, _ = generate(tgi, {"max_new_tokens": 2, **parameters})
    assert (status, body) == (422, refused(message))


def test_generate_empty_inputs(tgi):
    status, body, _ = generate(tgi, {"max_new_tokens": 2}, inputs="")
    assert (status, body) == (422, refused("`inputs` cannot be empty"))


@pytest.mark.parametrize("fields, message", [
    ({"max_tokens": 2, "presence_penalty": -2.0}, "`repetition_penalty` must be strictly positive"),  # + 2.0
    ({"max_tokens": 2, "frequency_penalty": 3}, "`frequency_penalty` must be >= -2.0 and <= 2.0"),
    ({"max_tokens": 2, "stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
    ({"max_tokens": 2, "top_logprobs": 6}, "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
    ({"max_tokens": 0}, "`max_new_tokens` must be strictly positive"),
    ({"max_completion_tokens": 0}, "`max_new_tokens` must be strictly positive"),  # serde alias of max_tokens
])
def test_chat_parameter_rules(tgi, fields, message):
    status, body, _ = chat(tgi, **fields)
    assert (status, body) == (422, refused(message))


def _token_count(url, inputs: str, chat: bool = False) -> int:
    if chat:  # the templated conversation, as TGI's /chat_tokenize counts it
        status, tokenized, _ = call(f"{url}/chat_tokenize", {"messages": [{"role": "user", "content": inputs}]})
        assert status == 200 and tokenized["templated_text"].endswith("<|im_start|>assistant\n")
        return len(tokenized["tokenize_response"])
    status, tokens, _ = call(f"{url}/tokenize", {"inputs": inputs})
    assert status == 200
    return len(tokens)


def _long_text(url, low: int, high: int, chat: bool = False) -> tuple[str, int]:
    """A text of between ``low`` and ``high`` tokens (as the route counts them)."""
    words = "the quick brown fox jumps over the lazy dog".split()
    n_words = low
    for _ in range(20):
        text = " ".join(words[i % len(words)] for i in range(n_words))
        n = _token_count(url, text, chat)
        if low < n < high:
            return text, n
        n_words += (low + high) // 2 - n
    raise AssertionError("no text of the wanted length")


def test_generate_input_too_long_messages(tgi):
    long_text, n = _long_text(tgi, MAX_INPUT, MAX_TOTAL - 8)
    # inputs + max_new_tokens fit max_total_tokens: the input length check refuses it
    status, body, _ = generate(tgi, {"max_new_tokens": 8}, inputs=long_text)
    assert (status, body) == (422, refused(f"`inputs` must have less than {MAX_INPUT} tokens. Given: {n}"))
    # MaxTotalTokens is checked first (validation.rs validate_input)
    status, body, _ = generate(tgi, {"max_new_tokens": 300}, inputs=long_text)
    assert (status, body) == (422, refused(f"`inputs` tokens + `max_new_tokens` must be <= {MAX_TOTAL}. Given: "
                                           f"{n} `inputs` tokens and 300 `max_new_tokens`"))
    # one scheduled generation asks for at most 1024 tokens (DEFAULT_GENERATION_LENGTH): that is what is checked
    short = "Hello there"
    status, body, _ = generate(tgi, {"max_new_tokens": 5000}, inputs=short)
    m = _token_count(tgi, short)
    assert (status, body) == (422, refused(f"`inputs` tokens + `max_new_tokens` must be <= {MAX_TOTAL}. Given: "
                                           f"{m} `inputs` tokens and 1024 `max_new_tokens`"))
    # truncate keeps the last `truncate` tokens, and then it fits
    status, body, _ = generate(tgi, {"max_new_tokens": 4, "truncate": 100, "details": True}, inputs=long_text)
    assert status == 200 and body["details"]["generated_tokens"] >= 1


def test_chat_input_too_long_message(tgi):
    long_text, n = _long_text(tgi, MAX_INPUT, MAX_TOTAL - 8, chat=True)
    status, body, _ = chat(tgi, long_text, max_tokens=8)
    assert (status, body) == (422, refused(f"`inputs` must have less than {MAX_INPUT} tokens. Given: {n}"))
    status, body, _ = chat(tgi, long_text, max_tokens=300)
    assert (status, body) == (422, refused(f"`inputs` tokens + `max_new_tokens` must be <= {MAX_TOTAL}. Given: "
                                           f"{n} `inputs` tokens and 300 `max_new_tokens`"))
    # without max_tokens TGI asks for what is left of max_total_tokens: never a MaxTotalTokens refusal
    status, body, _ = chat(tgi, "Say OK.", max_tokens=None, temperature=0)
    assert status == 200


@pytest.mark.parametrize("route, body, status, text", [
    ("/generate", {"parameters": {}}, 422,
     "Failed to deserialize the JSON body into the target type: missing field `inputs`"),
    ("/generate", {"inputs": "x", "parameters": {"top_p": "0.5"}}, 422,
     'Failed to deserialize the JSON body into the target type: parameters.top_p: invalid type: string "0.5", '
     "expected f32"),
    ("/generate", {"inputs": "x", "parameters": {"max_new_tokens": 1.5}}, 422,
     "Failed to deserialize the JSON body into the target type: parameters.max_new_tokens: invalid type: "
     "floating point `1.5`, expected u32"),
    ("/generate", {"inputs": "x", "parameters": None}, 422,
     "Failed to deserialize the JSON body into the target type: parameters: invalid type: null, "
     "expected struct GenerateParameters"),
    ("/generate", {"inputs": "x", "parameters": {"stop": None}}, 422,
     "Failed to deserialize the JSON body into the target type: parameters.stop: invalid type: null, "
     "expected a sequence"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "seed": -1}, 422,
     "Failed to deserialize the JSON body into the target type: seed: invalid value: integer `-1`, expected u64"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "stop": "END"}, 422,
     'Failed to deserialize the JSON body into the target type: stop: invalid type: string "END", '
     "expected a sequence"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 5}}, 422,
     "Failed to deserialize the JSON body into the target type: logit_bias: invalid type: map, expected a sequence"),
    ("/v1/chat/completions", {"messages": [{"role": "user"}]}, 422,
     "Failed to deserialize the JSON body into the target type: messages[0]: data did not match any variant of "
     "untagged enum MessageBody"),
    ("/v1/chat/completions", {"max_tokens": 3}, 422,
     "Failed to deserialize the JSON body into the target type: missing field `messages`"),
])
def test_bodies_are_read_as_serde_reads_them(tgi, route, body, status, text):
    got_status, got, ctype = call(f"{tgi}{route}", body)
    assert (got_status, got) == (status, text) and ctype.startswith("text/plain")


def test_duplicate_fields_bad_json_and_content_type(tgi):
    raw = b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "max_completion_tokens": 3}'
    assert call(f"{tgi}/v1/chat/completions", raw)[:2] == (
        422, "Failed to deserialize the JSON body into the target type: duplicate field `max_tokens`")
    status, text, _ = call(f"{tgi}/generate", b'{"inputs": ')
    assert status == 400 and text.startswith("Failed to parse the request body as JSON: ")
    status, text, _ = call(f"{tgi}/generate", {"inputs": "x"}, content_type="text/plain")
    assert (status, text) == (415, "Expected request with `Content-Type: application/json`")


def test_unknown_and_unused_fields_are_ignored(tgi):
    # no #[serde(deny_unknown_fields)] anywhere; `n` is UNUSED by TGI (one choice)
    status, body, _ = chat(tgi, max_tokens=2, n=3, user="someone", foo={"bar": 1}, model="tgi")
    assert status == 200 and len(body["choices"]) == 1 and body["model"] == tgi_server.MODEL_ID
    status, body, _ = generate(tgi, {"max_new_tokens": 2, "foo": 1}, extra=True)
    assert status == 200


def test_chat_answer_shape(tgi):
    status, body, _ = chat(tgi, "Say OK.", max_tokens=3, temperature=0, model="my-model")
    assert status == 200
    assert body["object"] == "chat.completion" and body["model"] == "my-model"
    assert body["system_fingerprint"] == f"{tgi_server.VERSION}-native"
    choice = body["choices"][0]
    assert choice["finish_reason"] in ("length", "stop") and choice["message"]["role"] == "assistant"
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]


def test_not_implemented_features_are_refused_not_ignored(tgi):
    status, body, _ = chat(tgi, max_tokens=2, stream=True)
    assert status == 501 and body["error_type"] == "not_implemented"
    status, body, _ = generate(tgi, {"max_new_tokens": 2, "best_of": 2, "do_sample": True})
    assert status == 501 and body["error_type"] == "not_implemented"


def test_refusals_are_counted_per_route(tgi):
    call(f"{tgi}/_test/reset", {})
    generate(tgi, {"max_new_tokens": 2, "top_p": 1.0})
    chat(tgi, max_tokens=2, top_p=1.0)
    chat(tgi, max_tokens=2, seed=-1)
    status, stats, _ = call(f"{tgi}/_test/stats", None, content_type=None, method="GET")
    assert stats["generate:422"] == 1 and stats["chat:422"] == 2


# --------------------------------------------------------------------- (b) every packaged prompt, both routes
PROTOCOLS = ("tgi-chat", "tgi", "openai")  # TGI's Messages API, TGI's /generate, the plain OpenAI protocol on TGI


def test_every_packaged_prompt_passes_tgi_validation(tmp_path, tgi):
    """Each packaged prompt with its own sampling parameters (max_new_tokens cut to 8), sent as a run sends it
    (the Rephrase step's payload and ReplicaPool) through each protocol: an answer every time, no 422."""
    from finephrase.pipeline.rephrase import Rephrase

    prompts = list_packaged_prompts()
    assert len(prompts) >= 20
    steps = {name: Rephrase(prompts, output_folder=str(tmp_path / name), endpoints=[tgi], protocol=name,
                            tokenizer=default_gguf_path(), generation_params={"max_new_tokens": 8},
                            model=tgi_server.MODEL_ID) for name in PROTOCOLS}
    step = steps["tgi-chat"]
    payloads = [step.payload(p, DOCUMENT, step.params_for(p)) for p in prompts]
    # the prompts' own sampling parameters are what TGI used to refuse: top_p 1.0 (with temperature 1.0 or 0.5)
    assert {(p.get("temperature"), p.get("top_p")) for p in payloads} >= {(1.0, 1.0), (0.5, 0.9)}
    call(f"{tgi}/_test/reset", {})

    async def go():
        pools = {name: s.make_server(0) for name, s in steps.items()}
        try:
            for pool in pools.values():  # no ``async with``: the first request starts the pool (it used to hang)
                assert await pool.is_ready()
            assert pools["openai"].protocol.tgi, "the openai protocol recognises TGI from GET /info"
            results = {name: [] for name in pools}
            # prompt by prompt, so that the server's KV cache carries the prompt from one protocol to the next
            for payload in payloads:
                for name, pool in pools.items():
                    try:
                        results[name].append(await pool.request(payload))
                    except Exception as e:  # noqa: BLE001 - reported below with the prompt's name
                        results[name].append(e)
            return pools, results
        finally:
            for pool in pools.values():
                await pool.server_cleanup()

    pools, results = asyncio.run(go())
    failures = {f"{name} {p.ref}": str(r)[:300] for name, rs in results.items() for p, r in zip(prompts, rs)
                if isinstance(r, Exception)}
    assert not failures, failures
    for name, rs in results.items():
        for prompt, result in zip(prompts, rs):
            assert result["choices"][0]["finish_reason"] in ("length", "stop"), (name, prompt.ref)
            assert 0 < result["usage"]["completion_tokens"] <= 8, (name, prompt.ref)
            sent = pools[name].protocol.sent_params(steps[name].params_for(prompt))
            assert sent.get("top_p", 0.5) < 1 and sent["max_new_tokens"] == 8, (name, prompt.ref)
    status, stats, _ = call(f"{tgi}/_test/stats", None, content_type=None, method="GET")
    assert stats.get("chat:422", 0) == 0 and stats.get("generate:422", 0) == 0
    # and each route answered every prompt (plus the pools' 1-token health generations)
    assert stats["chat:200"] >= 2 * len(prompts) and stats["generate:200"] >= len(prompts)


# ------------------------------------------------------------------------------------------ (c) sent_params
def _chat_body(protocol, payload) -> dict:
    return orjson.loads(protocol.prepare(payload)[0])


def _as_payload(params: dict) -> dict:
    payload = {"messages": [{"role": "user", "content": "x"}], "model": "m"}
    payload.update({CHAT_NAMES[k]: v for k, v in params.items()})
    return payload


PARAMS = [
    {"max_new_tokens": 2048, "temperature": 1.0, "top_p": 1.0},
    {"max_new_tokens": 2048, "temperature": 0.5, "top_p": 0.9},
    {"max_new_tokens": 24, "temperature": 0.0, "top_p": 0.9, "seed": 0},
    {"max_new_tokens": 24, "temperature": 0, "seed": 3},
    {"max_new_tokens": 16},
    {"max_new_tokens": 16, "top_p": 0.95, "stop": ["\n\n"]},
]


@pytest.mark.parametrize("params", PARAMS)
def test_openai_protocol_sends_the_parameters_unchanged(params):
    protocol = make_protocol("openai")
    assert protocol.sent_params(params) == params
    payload = _as_payload(params)
    assert _chat_body(protocol, payload) == payload


def test_sent_params_leaves_out_what_is_not_sent():
    protocol = make_protocol("openai")
    assert protocol.sent_params({"max_new_tokens": 5, "temperature": None, "top_p": None, "other": 1}) == {
        "max_new_tokens": 5}


@pytest.mark.parametrize("params, sent", [
    (PARAMS[0], {"max_new_tokens": 2048, "temperature": 1.0}),  # top_p 1.0: TGI's own default, and refused
    (PARAMS[1], {"max_new_tokens": 2048, "temperature": 0.5, "top_p": 0.9}),
    (PARAMS[2], {"max_new_tokens": 24, "temperature": 0.0, "seed": 0}),  # greedy: top_p would make TGI sample
    (PARAMS[3], {"max_new_tokens": 24, "temperature": 0.0, "seed": 3}),
    (PARAMS[4], {"max_new_tokens": 16}),
    (PARAMS[5], {"max_new_tokens": 16, "top_p": 0.95, "stop": ["\n\n"]}),
    ({"max_new_tokens": 8, "top_p": 0.99999999}, {"max_new_tokens": 8}),  # 1.0 as TGI's f32
    ({"max_new_tokens": 8, "top_p": 0.0, "temperature": -1.0}, {"max_new_tokens": 8, "top_p": 0.0,
                                                                 "temperature": -1.0}),  # invalid: TGI says so
])
def test_tgi_chat_sent_params_and_body(params, sent):
    protocol = make_protocol("tgi-chat")
    assert isinstance(protocol, TGIChat)
    assert protocol.sent_params(params) == sent
    payload = _as_payload(params)
    body = _chat_body(protocol, payload)
    assert body == {"messages": payload["messages"], "model": "m", **{CHAT_NAMES[k]: v for k, v in sent.items()}}


@pytest.mark.parametrize("params, sent, wire", [
    (PARAMS[0], {"max_new_tokens": 2048, "temperature": 1.0},
     {"max_new_tokens": 2048, "temperature": 1.0, "do_sample": True}),
    (PARAMS[1], {"max_new_tokens": 2048, "temperature": 0.5, "top_p": 0.9},
     {"max_new_tokens": 2048, "temperature": 0.5, "do_sample": True, "top_p": 0.9}),
    (PARAMS[2], {"max_new_tokens": 24, "temperature": 0.0, "seed": 0},
     {"max_new_tokens": 24, "do_sample": False, "seed": 0}),  # /generate refuses temperature 0: greedy is this
    (PARAMS[4], {"max_new_tokens": 16}, {"max_new_tokens": 16}),
    ({"temperature": 0.7}, {"max_new_tokens": 1024, "temperature": 0.7},
     {"max_new_tokens": 1024, "temperature": 0.7, "do_sample": True}),
])
def test_tgi_generate_sent_params_and_body(params, sent, wire):
    protocol = make_protocol("tgi", tokenizer=default_gguf_path())
    assert isinstance(protocol, TGIGenerate)
    assert protocol.sent_params(params) == sent
    body = orjson.loads(protocol.prepare(_as_payload(params))[0])
    assert body["parameters"] == {**wire, "details": True}
    assert body["inputs"].startswith("<|im_start|>")


def test_openai_protocol_on_tgi_sends_what_tgi_chat_sends(tgi):
    protocol = OpenAIChat()

    async def health():
        import aiohttp

        async with aiohttp.ClientSession() as session:
            return await protocol.health(session, tgi)

    assert not protocol.tgi
    ok, info = asyncio.run(health())
    assert ok and protocol.tgi
    assert info["max_input_tokens"] == MAX_INPUT and info["model_sha"]
    tgi_chat = make_protocol("tgi-chat")
    for params in PARAMS:
        assert protocol.sent_params(params) == tgi_chat.sent_params(params)
        assert protocol.prepare(_as_payload(params)) == tgi_chat.prepare(_as_payload(params))
