"""The server as a client meets it: real uvicorn on a free loopback port, the official `openai` client.

Steered differs from unsteered, every output equals `steerlab.generate` for that request alone (also
inside bursts with disconnects and malformed requests), streaming gives the same text, bad input is a
4xx naming the problem (never a 500), the key guards every route but /health, vectors are registered
and deleted at run time, and the server is healthy afterwards."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import time

import pytest

import steerlab as sl

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")
from steerlab.serve import create_app  # noqa: E402
from steerlab.serve.engines import build_engine  # noqa: E402

# The engines these server tests run against: STEERLAB_TEST_ENGINES="builtin,vllm" runs every test that takes
# `engine_name` once per engine (the vLLM one in the steerlab[vllm] venv); engine-internal tests stay builtin.
TEST_ENGINES = [e.strip() for e in os.environ.get("STEERLAB_TEST_ENGINES", "builtin").split(",") if e.strip()]


def make_app(engine_name: str, lm, vectors, *, max_batch: int = 32, max_queue: int = 256, window_s: float = 0.01,
             **app_kw):
    """`create_app` on engine `engine_name` built for `lm` (`window_s` is the built-in engine's own knob)."""
    options = {"max_batch": max_batch, "max_queue": max_queue}
    if engine_name == "builtin":
        options["window_s"] = window_s
    return create_app(build_engine(engine_name, lm, **options), vectors, **app_kw)


@pytest.fixture(scope="module", params=TEST_ENGINES)
def engine_name(request):
    return request.param


@pytest.fixture(scope="module")
def tiny_lm(engine_name, make_tiny):
    """The served tiny model: vLLM's CPU attention needs heads of 32 or more dimensions, so its copy is wider."""
    return make_tiny() if engine_name == "builtin" else make_tiny(hidden=128)

KEY = "test-key"
PROMPTS = ["How was your weekend?", "Tell me about the sea.", "What is a good breakfast?", "Hi there"]


class Served:
    """A uvicorn server in a thread, on a free port."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = app
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        _SERVERS.append(self)
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "server did not start"
            time.sleep(0.02)

    def client(self, key=KEY, **kw):
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0, **kw)

    def http(self, method, path, key=KEY, **kw):
        headers = kw.pop("headers", {})
        if key:
            headers["authorization"] = f"Bearer {key}"
        return httpx.request(method, self.url + path, headers=headers, timeout=kw.pop("timeout", 60), **kw)

    def idle(self, timeout=30):
        s = self.app.state.engine
        deadline = time.monotonic() + timeout
        while s.active or s.queued:
            assert time.monotonic() < deadline, "engine still busy"
            time.sleep(0.01)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)
        _SERVERS.remove(self)


@pytest.fixture(scope="module")
def vectors(tiny_lm, vec_factory):
    pas = vec_factory.make(tiny_lm, {2: vec_factory(tiny_lm, [2], seed=3, scale=4.0).directions[2]},
                           selected_layers=[2], strength=-3.0, positions="last_prompt")
    return {"a": vec_factory(tiny_lm, [1, 2], seed=1, scale=4.0), "b": vec_factory(tiny_lm, [1, 2], seed=2, scale=4.0),
            "pas": pas}


@pytest.fixture(scope="module")
def served(engine_name, tiny_lm, vectors):
    s = Served(make_app(engine_name, tiny_lm, dict(vectors), api_key=KEY, max_new_tokens_limit=64, max_batch=8,
                          max_body_bytes=64 << 10, max_upload_bytes=1 << 20))
    yield s
    s.stop()


@pytest.fixture(autouse=True)
def settle(request):
    """Each test leaves the server idle (so no steering hooks are mid-step when hooks are checked)."""
    yield
    if "served" in request.fixturenames:
        request.getfixturevalue("served").idle()


_SERVERS: list = []


def solo(lm, vectors, prompt, steering=None, n=6):
    """steerlab.generate alone, once every test server is idle (it runs the same model object, and a
    server's steering hooks stay installed until its rows are dropped, just after it answers)."""
    for s in _SERVERS:
        s.idle()
    specs = [] if steering is None else (steering if isinstance(steering, list) else [steering])
    terms = [dataclasses.replace(sl.Steering.from_vector(vectors[s["vector"]], s.get("strength"), s.get("layers"),
                                                      s.get("positions")), schedule=s.get("schedule", "constant"))
             for s in specs]
    return sl.generate(lm, [prompt], terms or None, max_new_tokens=n)[0]


def chat(client, lm, prompt, steering=None, n=6, **kw):
    extra = {"steering": steering} if steering is not None else None
    return client.chat.completions.create(model=lm.model_id, messages=[{"role": "user", "content": prompt}],
                                          max_tokens=n, temperature=0, extra_body=extra, **kw)


# -- the OpenAI surface -----------------------------------------------------------------------------
def test_models_health_and_steered_chat(served, tiny_lm, vectors):
    c = served.client()
    assert [m.id for m in c.models.list().data] == [tiny_lm.model_id]
    steer = {"vector": "a", "strength": 5}
    expected_plain, expected_steered = solo(tiny_lm, vectors, PROMPTS[0]), solo(tiny_lm, vectors, PROMPTS[0], steer)
    assert expected_plain != expected_steered
    plain, steered = chat(c, tiny_lm, PROMPTS[0]), chat(c, tiny_lm, PROMPTS[0], steer)
    assert plain.choices[0].message.content == expected_plain
    assert steered.choices[0].message.content == expected_steered
    assert steered.choices[0].finish_reason == "length" and steered.usage.completion_tokens == 6
    assert steered.usage.prompt_tokens == len(sl.encode(tiny_lm, [PROMPTS[0]]).input_ids[0])
    assert steered.model_extra["steering"] == [{"vector": "a", "strength": 5.0, "layers": [1, 2], "positions": "after_user"}]
    h = httpx.get(served.url + "/health").json()  # no key needed
    assert h["status"] == "ok" and h["model"] == tiny_lm.model_id


def test_vector_metadata_defaults_and_several_vectors(served, tiny_lm, vectors):
    c = served.client()
    pas = chat(c, tiny_lm, PROMPTS[1], {"vector": "pas"})
    assert pas.model_extra["steering"][0] == {"vector": "pas", "strength": -3.0, "layers": [2], "positions": "last_prompt"}
    assert pas.choices[0].message.content == solo(tiny_lm, vectors, PROMPTS[1], {"vector": "pas"})
    two = [{"vector": "a", "strength": 2}, {"vector": "b", "strength": -2, "layers": [1], "positions": "all"}]
    assert chat(c, tiny_lm, PROMPTS[2], two).choices[0].message.content == solo(tiny_lm, vectors, PROMPTS[2], two)


def test_a_strength_schedule_steers_as_steerlab_generate(served, engine_name, tiny_lm, vectors):
    c = served.client()
    first = {"vector": "a", "strength": 5, "schedule": "first:3"}
    constant = solo(tiny_lm, vectors, PROMPTS[1], {"vector": "a", "strength": 5}, n=8)
    expected = solo(tiny_lm, vectors, PROMPTS[1], first, n=8)
    assert expected != constant  # the schedule changes the text: the comparison below could fail
    r = chat(c, tiny_lm, PROMPTS[1], first, n=8)
    assert r.choices[0].message.content == expected
    assert r.model_extra["steering"][0]["schedule"] == "first:3"
    decay = [{"vector": "a", "strength": 4, "schedule": "Decay:2"}, {"vector": "b", "strength": -3, "layers": [1],
                                                                     "schedule": "decay:2"}]
    assert chat(c, tiny_lm, PROMPTS[2], decay, n=8).choices[0].message.content == \
        solo(tiny_lm, vectors, PROMPTS[2], decay, n=8)
    mixed = [first, {"vector": "b", "strength": 2}]
    if engine_name == "builtin":
        assert chat(c, tiny_lm, PROMPTS[3], mixed, n=8).choices[0].message.content == \
            solo(tiny_lm, vectors, PROMPTS[3], mixed, n=8)
    else:  # the plugin adds one weight per token: refused before the engine sees it
        r = served.http("POST", "/v1/chat/completions", json=_chat_body(tiny_lm, steering=mixed))
        assert r.status_code == 400 and "same schedule and positions" in r.json()["error"]["message"], r.text


def test_a_conversation_steers_after_the_last_user_message(served, tiny_lm, vectors):
    from steerlab.serve.openai_schema import ChatMessage
    from steerlab.serve.prompts import chat_prompt

    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Tell me about the sea."}]
    prompt = chat_prompt(tiny_lm, [ChatMessage(**m) for m in msgs])
    assert prompt.text[prompt.user_start:prompt.user_end] == "Tell me about the sea."
    steer = {"vector": "a", "strength": 5}
    served.idle()
    expected = sl.generate(tiny_lm, [prompt], sl.Steering.from_vector(vectors["a"], 5.0), max_new_tokens=6)[0]
    r = served.client().chat.completions.create(model=tiny_lm.model_id, messages=msgs, max_tokens=6, temperature=0,
                                                extra_body={"steering": steer})
    assert r.choices[0].message.content == expected


def test_stream_equals_non_stream(served, tiny_lm):
    c = served.client()
    steer = {"vector": "b", "strength": -4}
    full = chat(c, tiny_lm, PROMPTS[2], steer, n=12).choices[0].message.content
    chunks = list(chat(c, tiny_lm, PROMPTS[2], steer, n=12, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == full
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 12 and not chunks[-1].choices
    # legacy completions, raw prompt: stream = non-stream = steerlab.generate on the raw Prompt
    raw = sl.encoding.format_prompt(tiny_lm, "Once upon a time", chat_template=False)
    served.idle()
    expected = sl.generate(tiny_lm, [raw], max_new_tokens=7)[0]
    r = c.completions.create(model=tiny_lm.model_id, prompt="Once upon a time", max_tokens=7, temperature=0)
    assert r.choices[0].text == expected
    s = c.completions.create(model=tiny_lm.model_id, prompt="Once upon a time", max_tokens=7, temperature=0, stream=True)
    assert "".join(ch.choices[0].text for ch in s if ch.choices) == expected


def test_sse_wire_format(served, tiny_lm):
    body = {"model": tiny_lm.model_id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
            "temperature": 0, "stream": True}
    r = served.http("POST", "/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [e for e in r.text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    assert json.loads(events[1][6:])["object"] == "chat.completion.chunk"


def test_seeded_sampling_reproduces(served, tiny_lm):
    c = served.client()
    kw = dict(model=tiny_lm.model_id, messages=[{"role": "user", "content": PROMPTS[3]}], max_tokens=8,
              temperature=0.9, top_p=0.95, seed=1234)
    a = c.chat.completions.create(**kw).choices[0].message.content
    assert c.chat.completions.create(**kw).choices[0].message.content == a


# -- auth and errors ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method,path", [("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                                         ("POST", "/v1/completions"), ("GET", "/v1/vectors"), ("GET", "/metrics"),
                                         ("GET", "/v1/vectors/a"), ("DELETE", "/v1/vectors/a"), ("POST", "/v1/vectors")])
def test_every_route_but_health_needs_the_key(served, method, path):
    for key in (None, "wrong"):
        r = served.http(method, path, key=key)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", (method, path, key)
    assert "a" in {v["id"] for v in served.http("GET", "/v1/vectors").json()["data"]}  # nothing was deleted
    with pytest.raises(openai.AuthenticationError):
        served.client("wrong").models.list()


def _chat_body(lm, **kw):
    return {"model": lm.model_id, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0,
            **kw}


BAD = [
    ({"steering": {"vector": "nope"}}, 404, "no vector named 'nope'"),
    ({"steering": {"vector": "a", "layers": []}}, 400, "'layers' is empty"),
    ({"steering": {"vector": "a", "layers": [3]}}, 400, "has no layers [3]"),
    ({"steering": {"vector": "a", "positions": "everywhere"}}, 400, "unknown positions"),
    ({"steering": {"vector": "a", "strength": 1e30}}, 400, "finite"),
    ({"steering": {"vector": "a", "strength": "strong"}}, 400, "strength"),
    ({"steering": {"vector": "a", "colour": "red"}}, 400, "colour"),
    ({"steering": {"vector": "a", "schedule": "slowly"}}, 400, "unknown strength schedule"),
    ({"steering": [{"vector": "a"}] * 9}, 400, "at most 8"),
    ({"seed": 2 ** 70, "temperature": 1.0}, 400, "seed"),
    ({"seed": -1}, 400, "seed"),
    ({"n": 2}, 400, "n=1"),
    ({"max_tokens": 65}, 400, "limit of 64"),
    ({"max_tokens": 0}, 400, "max_tokens"),
    ({"temperature": -1}, 400, "temperature"),
    ({"top_p": 0}, 400, "top_p"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ({"logprobs": True}, 400, "logprobs"),
    ({"model": "gpt-4"}, 404, "not served"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "system", "content": "x"}]}, 400, "role 'user'"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, 400, "role"),
    ({"messages": [{"role": "user", "content": "word " * 200}]}, 400, "context window"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "content"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "content"),
    ({"steering": "cheerful"}, 400, "steering"),
    ({"steering": {"vector": "a", "layers": [10 ** 30]}}, 400, "has no layers"),

    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 60, "steering": None,
      "stream": "yes please"}, 400, "stream"),
]


@pytest.mark.parametrize("fields,status,fragment", BAD)
def test_bad_requests_get_a_4xx_naming_the_problem(served, tiny_lm, fields, status, fragment):
    r = served.http("POST", "/v1/chat/completions", json=_chat_body(tiny_lm, **fields))
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert fragment in err["message"] and err["type"]


@pytest.mark.parametrize("content,status", [
    (b"{not json", 400), (b"[]", 400), (b"null", 400), (b'{"model": 1e999}', 400), (b"\xff\xfe", 400),
    (b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "steering": {"vector": "a", "strength": NaN}}', 400),
    (b"x" * (65 << 10), 413),
    (b'{"model": "MODEL", "messages": [{"role": "user", "content": "\\ud800 lone surrogate"}]}', 400),
    (b'{"model": "MODEL", "messages": [{"role": "user", "content": "hi"}], "temperature": 1e400}', 400),
])
def test_malformed_bodies(served, tiny_lm, content, status):
    content = content.replace(b"MODEL", tiny_lm.model_id.encode())  # the served tiny model differs per engine
    r = served.http("POST", "/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert "error" in r.json()


@pytest.mark.parametrize("fields,fragment", [({"prompt": [1, 2, 3]}, "prompt"), ({"prompt": ["a", "b"]}, "one string"),
                                             ({"prompt": ""}, "empty"), ({"echo": True}, "echo"), ({}, "prompt")])
def test_bad_completion_requests(served, tiny_lm, fields, fragment):
    body = {"model": tiny_lm.model_id, "max_tokens": 3, **fields}
    if not fields:
        body.pop("prompt", None)
    else:
        body.setdefault("prompt", "hi")
    r = served.http("POST", "/v1/completions", json=body)
    assert r.status_code == 400 and fragment in r.json()["error"]["message"], r.text


def test_a_huge_prompt_is_refused_before_tokenizing(served, tiny_lm):
    from steerlab.serve.prompts import max_token_chars

    assert max_token_chars(tiny_lm.tokenizer) > 1
    r = served.http("POST", "/v1/chat/completions", json=_chat_body(tiny_lm, messages=[
        {"role": "user", "content": "x" * (60 << 10)}]))  # under the 64 KiB body limit, far over 128 tokens
    assert r.status_code == 400 and "characters, at least" in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "context_length_exceeded"


def test_oversized_body_without_content_length_is_413(served):
    def chunks():
        for _ in range(80):
            yield b"x" * 1024

    r = served.http("POST", "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_retired_and_unknown_routes(served):
    assert served.http("POST", "/generate", json={"prompts": ["hi"]}).status_code == 410
    r = served.http("GET", "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()


# -- vectors at run time ------------------------------------------------------------------------------
def _vector_bytes(vec) -> bytes:
    from safetensors.torch import save

    return save({f"layer.{l}": t for l, t in vec.directions.items()}, metadata={"steerlab": vec.meta.to_json()})


def test_register_fetch_use_and_delete_a_vector(served, tiny_lm, vec_factory, tmp_path):
    vec = vec_factory(tiny_lm, [1], seed=11, scale=5.0)
    served.idle()
    expected = sl.generate(tiny_lm, [PROMPTS[3]], sl.Steering(vec, 3.0, positions="after_user"), max_new_tokens=6)[0]
    r = served.http("POST", "/v1/vectors?name=new", content=_vector_bytes(vec))
    assert r.status_code == 201 and r.json()["layers"] == [1]
    assert served.http("POST", "/v1/vectors?name=new", content=_vector_bytes(vec)).status_code == 409
    assert served.http("POST", "/v1/vectors?name=new&overwrite=true", content=_vector_bytes(vec)).status_code == 201
    assert "new" in {v["id"] for v in served.http("GET", "/v1/vectors").json()["data"]}
    meta = served.http("GET", "/v1/vectors/new").json()
    assert meta["hidden_size"] == tiny_lm.hidden_size and set(meta["norms"]) == {"1"}
    f = tmp_path / "back.safetensors"
    f.write_bytes(served.http("GET", "/v1/vectors/new/file").content)
    assert sl.SteeringVector.load(f).directions[1].equal(vec.directions[1])
    out = chat(served.client(), tiny_lm, PROMPTS[3], {"vector": "new", "strength": 3.0})
    assert out.choices[0].message.content == expected
    assert served.http("DELETE", "/v1/vectors/new").json()["deleted"] is True
    assert served.http("DELETE", "/v1/vectors/new").status_code == 404
    with pytest.raises(openai.NotFoundError):
        chat(served.client(), tiny_lm, PROMPTS[3], {"vector": "new"})


def test_a_llamacpp_gguf_upload_round_trips(served, tiny_lm, vec_factory, tmp_path):
    from steerlab.vector import export_gguf

    vec = vec_factory(tiny_lm, [2, 3], seed=12)
    path = export_gguf(vec, tmp_path / "v.gguf")
    r = served.http("POST", "/v1/vectors?name=fromgguf", content=path.read_bytes())
    assert r.status_code == 201 and r.json()["layers"] == [2, 3]
    assert served.http("DELETE", "/v1/vectors/fromgguf").status_code == 200


def test_bad_uploads_are_refused_like_bad_files(served, tiny_lm, vec_factory, make_tiny):
    import torch

    good = vec_factory(tiny_lm, [1], seed=13)
    t = good.directions[1].clone()
    t[0] = float("nan")
    nan_vec = {"layer.1": t}
    from safetensors.torch import save

    nan = save(nan_vec, metadata={"steerlab": good.meta.to_json()})
    other = vec_factory(make_tiny(hidden=48), [1], seed=1)
    cases = [(b"", "empty"), (b"garbage" * 10, "not a readable"), (nan, "NaN"), (_vector_bytes(other), "hidden size"),
             (save({"layer.1": torch.zeros(32)}), "no steerlab metadata"), (b"GGUF" + b"\0" * 40, "not a readable")]
    for data, fragment in cases:
        r = served.http("POST", "/v1/vectors?name=bad", content=data)
        assert r.status_code == 400 and fragment in r.json()["error"]["message"], (fragment, r.text)
        assert "/tmp" not in r.text and "steerlab-upload" not in r.text  # never a server-side path
    for name in ("", "../etc", "a" * 65, "with space"):
        assert served.http("POST", f"/v1/vectors?name={name}", content=_vector_bytes(good)).status_code == 400
    assert served.http("POST", "/v1/vectors?name=big", content=b"x" * ((1 << 20) + 1)).status_code == 413
    assert "bad" not in {v["id"] for v in served.http("GET", "/v1/vectors").json()["data"]}


def test_metrics(served, tiny_lm):
    chat(served.client(), tiny_lm, PROMPTS[0], n=2)
    text = served.http("GET", "/metrics").text
    for name in ("steerlab_requests_total{", "steerlab_completion_tokens_total", "steerlab_batch_rows_bucket",
                 "steerlab_queue_depth", "steerlab_request_seconds_count", "steerlab_ttft_seconds_count",
                 "steerlab_registered_vectors 3"):
        assert name in text, name


# -- load: bursts, disconnects, malformed requests mixed in ------------------------------------------
@contextlib.contextmanager
def slowed(lm, seconds=0.01):
    """Each forward call takes at least `seconds` (so a disconnect lands mid-generation)."""
    h = lm.model.register_forward_pre_hook(lambda m, a: time.sleep(seconds))
    try:
        yield
    finally:
        h.remove()


def test_burst_with_disconnects_and_garbage_then_healthy(served, engine_name, tiny_lm, vectors):
    plan = [(PROMPTS[i % 4], s, 4 + 3 * (i % 4), i % 3 == 0) for i, s in enumerate(
        [None, {"vector": "a", "strength": 5}, {"vector": "b", "strength": -4}, {"vector": "a", "strength": 2},
         {"vector": "pas"}, None, [{"vector": "a", "strength": 1}, {"vector": "b", "strength": 1}], {"vector": "b", "strength": 3},
         {"vector": "a", "strength": 5, "positions": "all"}, None])]
    expected = [solo(tiny_lm, vectors, p, s, n) for p, s, n, _ in plan]
    results, errors = {}, []
    before, tokens_before = served.app.state.metrics.cancelled, served.app.state.metrics.completion_tokens

    def good(i, p, s, n, stream):
        try:
            c = served.client(timeout=120)
            if stream:
                results[i] = "".join(ch.choices[0].delta.content or "" for ch in chat(c, tiny_lm, p, s, n, stream=True)
                                     if ch.choices)
            else:
                results[i] = chat(c, tiny_lm, p, s, n).choices[0].message.content
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append((i, repr(e)))

    def leave_mid_stream():
        body = _chat_body(tiny_lm, max_tokens=60, stream=True)
        with httpx.stream("POST", served.url + "/v1/chat/completions", json=body,
                          headers={"authorization": f"Bearer {KEY}"}, timeout=60) as r:
            for _ in r.iter_bytes():
                break  # first event, then hang up

    def leave_while_waiting():
        with contextlib.suppress(httpx.TimeoutException):
            served.http("POST", "/v1/chat/completions", json=_chat_body(tiny_lm, max_tokens=60), timeout=0.3)

    def garbage(k):
        r = served.http("POST", "/v1/chat/completions", content=[b"{", b"[]", b'{"model": 3}'][k % 3],
                        headers={"content-type": "application/json"})
        if r.status_code != 400:
            errors.append(("garbage", r.status_code))

    threads = [threading.Thread(target=good, args=(i, *x)) for i, x in enumerate(plan)]
    threads += [threading.Thread(target=leave_mid_stream) for _ in range(2)]
    threads += [threading.Thread(target=leave_while_waiting) for _ in range(2)]
    threads += [threading.Thread(target=garbage, args=(k,)) for k in range(3)]
    t0 = time.monotonic()
    with slowed(tiny_lm):
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        served.idle()
    assert time.monotonic() - t0 < 90
    assert not errors, errors
    assert [results[i] for i in range(len(plan))] == expected
    # a client that left never got its row run to the end: only the good requests' tokens were delivered
    # (one that left before its body was read never became a job at all)
    delivered = served.app.state.metrics.completion_tokens - tokens_before
    if engine_name == "builtin":
        assert delivered == sum(n for _, _, n, _ in plan)
    else:  # vLLM runs the model in its own process, which `slowed` cannot slow: a leaver's 60 tokens may all be
        # generated before its client is seen to go, so they may count (never more than that)
        assert sum(n for _, _, n, _ in plan) <= delivered <= sum(n for _, _, n, _ in plan) + 2 * 60
    assert served.app.state.metrics.cancelled - before >= 2  # the two that left mid-stream
    h = httpx.get(served.url + "/health").json()
    assert (h["status"], h["active"], h["queued"]) == ("ok", 0, 0)
    assert chat(served.client(), tiny_lm, PROMPTS[0], n=3).choices[0].message.content == solo(tiny_lm, vectors, PROMPTS[0], n=3)


def test_queue_full_is_429_and_shutdown_503(engine_name, tiny_lm, vectors):
    s = Served(make_app(engine_name, tiny_lm, dict(vectors), max_batch=1, max_queue=1, window_s=0.0))
    try:
        results = {}

        def send(i):
            r = s.http("POST", "/v1/chat/completions", key=None, json=_chat_body(tiny_lm, max_tokens=40))
            results[i] = (r.status_code, r.headers.get("retry-after"))

        with slowed(tiny_lm):
            threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
            for t in threads:
                t.start()
                time.sleep(0.05)
            for t in threads:
                t.join(60)
        codes = sorted(c for c, _ in results.values())
        assert codes.count(200) >= 2 and 429 in codes, results
        assert all(ra == "1" for c, ra in results.values() if c == 429)
        s.idle()
        s.app.state.engine.begin_shutdown()
        r = s.http("POST", "/v1/chat/completions", key=None, json=_chat_body(tiny_lm))
        assert r.status_code == 503 and r.headers["retry-after"]
        assert httpx.get(s.url + "/health").json()["status"] == "shutting_down"
    finally:
        s.stop()


def test_a_burst_that_fits_the_free_slots_is_served(engine_name, tiny_lm, vectors):
    """40 requests at once, 32 free batch slots and --max-queue 8: every one is served (the queue limit counts
    only requests waiting beyond the free slots). The built-in engine's 1 s batching window holds the burst
    in its queue, as a loaded machine does."""
    s = Served(make_app(engine_name, tiny_lm, dict(vectors), max_batch=32, max_queue=8, window_s=1.0))
    try:
        codes: dict = {}

        def send(i):
            r = s.http("POST", "/v1/chat/completions", key=None, json=_chat_body(tiny_lm, max_tokens=2))
            codes[i] = r.status_code

        threads = [threading.Thread(target=send, args=(i,)) for i in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert sorted(codes.values()) == [200] * 40, codes
    finally:
        s.stop()


def test_graceful_shutdown_finishes_in_flight_requests(engine_name, tiny_lm, vectors):
    s = Served(make_app(engine_name, tiny_lm, dict(vectors), window_s=0.0, shutdown_grace_s=20))
    out = {}

    def send():
        out["r"] = s.http("POST", "/v1/chat/completions", key=None, json=_chat_body(tiny_lm, max_tokens=30))

    with slowed(tiny_lm, 0.02):
        t = threading.Thread(target=send)
        t.start()
        while s.app.state.engine.active == 0:
            time.sleep(0.01)
        s.stop()
        t.join(30)
    assert out["r"].status_code == 200 and out["r"].json()["usage"]["completion_tokens"] == 30


def test_serve_cli_refuses_a_missing_vector_before_serving(tmp_path):
    from typer.testing import CliRunner

    from steerlab.cli import app

    r = CliRunner().invoke(app, ["serve", "--vector", f"calm={tmp_path / 'missing.safetensors'}"])
    assert r.exit_code == 1 and "vector file not found" in r.output and "Traceback" not in r.output
    assert "--api-key" in CliRunner().invoke(app, ["serve", "--help"]).output


def test_serve_cli_names_an_unknown_or_missing_engine_in_one_line():
    import importlib.util

    from typer.testing import CliRunner

    from steerlab.cli import app

    r = CliRunner().invoke(app, ["serve", "--engine", "nope"])
    assert r.exit_code == 1 and "unknown engine 'nope'" in r.output and "Traceback" not in r.output
    if importlib.util.find_spec("vllm") is None:  # the steerlab[vllm] venv runs the engine instead
        r = CliRunner().invoke(app, ["serve", "--engine", "vllm"])
        assert r.exit_code == 1 and 'pip install "steerlab[vllm]"' in r.output and "Traceback" not in r.output
        assert len(r.output.strip().splitlines()) == 1, r.output


def test_parse_and_load_vector_specs(tmp_path, tiny_lm, vectors):
    from steerlab.errors import SteerlabError
    from steerlab.serve import load_vectors, parse_vector_spec

    assert parse_vector_spec("x=/a/b.safetensors")[0] == "x" and parse_vector_spec("d/calm.safetensors")[0] == "calm"
    vectors["a"].save(tmp_path / "calm.safetensors")
    assert list(load_vectors([str(tmp_path / "calm.safetensors")], tiny_lm)) == ["calm"]
    with pytest.raises(SteerlabError, match="two vectors are named 'calm'"):
        load_vectors([str(tmp_path / "calm.safetensors"), f"calm={tmp_path / 'calm.safetensors'}"], tiny_lm)
    with pytest.raises(SteerlabError, match="NAME=PATH"):
        parse_vector_spec("=x")
