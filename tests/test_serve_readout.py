"""Read-out through the server (the `openai` client, `extra_body`): `"readout": [NAME | {vector, layer, stop_above,
stop_tokens}]` returns each token's projection (prompt and generation, raw and cosine) equal to `steerlab.readout`
on the same prompt, in the final object and, chunk by chunk, in the stream; the stop rule ends a request with
`content_filter` exactly where `steerlab.readout`'s does; read-out rows share a batch with plain rows, which answer
exactly as alone; bad read-out input is one clear 4xx."""

from __future__ import annotations

import json
import threading

import pytest

import steerlab as sl
from steerlab.encoding import format_prompt

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from steerlab.serve import create_app  # noqa: E402
from steerlab.serve.engines.builtin import BuiltinEngine  # noqa: E402
from test_serve_api import KEY, PROMPTS, Served, _SERVERS, make_app  # noqa: E402

N = 8


@pytest.fixture(scope="module")
def vectors(tiny_lm, vec_factory):
    return {"a": vec_factory(tiny_lm, [1, 2], seed=11, scale=4.0),
            "b": vec_factory(tiny_lm, [1, 3], seed=12, scale=4.0),
            "sel": vec_factory.make(tiny_lm, {1: vec_factory(tiny_lm, [1], seed=13).directions[1],
                                              3: vec_factory(tiny_lm, [3], seed=14).directions[3]},
                                    selected_layers=[3])}


@pytest.fixture(scope="module")
def served(tiny_lm, vectors):
    # a window wide enough that requests sent together are prefilled together
    s = Served(make_app("builtin", tiny_lm, dict(vectors), api_key=KEY, max_new_tokens_limit=32, max_batch=8,
                        window_s=0.3))
    yield s
    s.stop()


def reference(lm, prompt, vec, *, layer=None, steering=None, stop=None, n=N) -> sl.Readout:
    """`steerlab.readout` alone, once every test server is idle (it runs the same model object)."""
    for s in _SERVERS:
        s.idle()
    return sl.readout(lm, [prompt], vec, layer=layer, steering=steering, stop=stop, max_new_tokens=n)[0]


def chat(served, lm, prompt, readout=None, steering=None, **kw):
    extra = {k: v for k, v in (("readout", readout), ("steering", steering)) if v is not None}
    return served.client().chat.completions.create(model=lm.model_id, messages=[{"role": "user", "content": prompt}],
                                                   max_tokens=kw.pop("n", N), temperature=0, extra_body=extra, **kw)


def assert_values(got: dict, ref: sl.Readout) -> None:
    assert len(got["raw"]) == len(got["cosine"]) == len(ref.raw) == ref.n_prompt + len(ref.generated_ids)
    assert got["raw"] == pytest.approx(ref.raw, rel=1e-4, abs=1e-4)
    assert got["cosine"] == pytest.approx(ref.cosine, rel=1e-4, abs=1e-5)


def test_projections_equal_sl_readout(served, tiny_lm, vectors):
    steer = {"vector": "a", "strength": 5}
    steering = sl.Steering.from_vector(vectors["a"], 5.0)
    r = chat(served, tiny_lm, PROMPTS[0], ["a", {"vector": "b", "layer": 1}, "sel"], steer)
    out = r.model_extra["readout"]
    assert sorted(out) == ["a", "b", "sel"]
    ref_a = reference(tiny_lm, PROMPTS[0], vectors["a"], steering=steering)
    assert r.choices[0].message.content == ref_a.text and r.choices[0].finish_reason == ref_a.finish_reason
    assert len(out["a"]["raw"]) == r.usage.prompt_tokens + r.usage.completion_tokens
    assert_values(out["a"], ref_a)  # the default layer is steerlab.readout's (the middle of 1, 2: 2)
    assert_values(out["b"], reference(tiny_lm, PROMPTS[0], vectors["b"], layer=1, steering=steering))
    assert_values(out["sel"], reference(tiny_lm, PROMPTS[0], vectors["sel"], steering=steering))  # selected: 3
    # the steered stream is what is read: unsteered, the same request reads other values
    plain = chat(served, tiny_lm, PROMPTS[0], ["a"]).model_extra["readout"]["a"]
    assert plain["raw"] != pytest.approx(out["a"]["raw"], rel=1e-3)
    assert_values(plain, reference(tiny_lm, PROMPTS[0], vectors["a"]))


def test_readout_is_the_plain_projection(served, tiny_lm, vectors):
    """Independently of `steerlab.readout`: one forward pass over prompt + generated tokens, the block's output
    (transformers' hidden_states[layer + 1]) dotted with the unit vector, and divided by its norm."""
    import torch

    r = chat(served, tiny_lm, PROMPTS[1], [{"vector": "b", "layer": 1}])
    got = r.model_extra["readout"]["b"]
    served.idle()
    prompt = sl.encode(tiny_lm, [PROMPTS[1]]).input_ids
    with torch.no_grad():  # transformers' own greedy decoding (the tiny model has no end-of-sequence token)
        ids = tiny_lm.model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=N,
                                     do_sample=False)[0].tolist()
    assert tiny_lm.tokenizer.decode(ids[prompt.shape[1]:], skip_special_tokens=True) == r.choices[0].message.content
    assert len(ids) == len(got["raw"])
    with torch.no_grad():
        h = tiny_lm.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0].double()
    u = vectors["b"].directions[1].double()
    raw = h @ (u / u.norm())
    assert got["raw"] == pytest.approx(raw.tolist(), rel=1e-4, abs=1e-4)
    assert got["cosine"] == pytest.approx((raw / h.norm(dim=-1)).tolist(), rel=1e-4, abs=1e-5)


def test_stream_chunks_add_up_to_the_read_out(served, tiny_lm, vectors):
    ref = reference(tiny_lm, PROMPTS[1], vectors["b"], layer=3)
    chunks = list(chat(served, tiny_lm, PROMPTS[1], [{"vector": "b", "layer": 3}], stream=True))
    deltas = [c for c in chunks if c.choices and not c.choices[0].finish_reason]
    streamed = {"raw": [], "cosine": []}
    for c in deltas:
        for kind in streamed:
            streamed[kind] += (c.model_extra.get("readout") or {}).get("b", {}).get(kind, [])
    first = next(c for c in deltas if c.model_extra.get("readout"))
    assert len(first.model_extra["readout"]["b"]["raw"]) == ref.n_prompt + 1  # the prompt, then token by token
    assert_values(streamed, ref)
    last = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    assert last.model_extra["readout"]["b"]["raw"] == streamed["raw"]  # the final chunk: the whole read-out
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == ref.text
    # the legacy completions route reads out as well (a raw prompt, no chat template)
    raw = format_prompt(tiny_lm, "Once upon a time", chat_template=False)
    r = served.client().completions.create(model=tiny_lm.model_id, prompt="Once upon a time", max_tokens=5,
                                           temperature=0, extra_body={"readout": "a"})
    assert_values(r.model_extra["readout"]["a"], reference(tiny_lm, raw, vectors["a"], n=5))


def test_stop_rule(served, tiny_lm, vectors):
    ref = reference(tiny_lm, PROMPTS[2], vectors["a"])
    gen = ref.raw[ref.n_prompt:]
    assert len(gen) == N and ref.finish_reason == "length"
    # fires on the 2nd and 3rd generated tokens: the raw projection above a threshold below both of them
    threshold = min(gen[1], gen[2]) - 1e-3
    k = next(i for i in range(1, N) if gen[i] > threshold and gen[i - 1] > threshold) + 1
    stopped = reference(tiny_lm, PROMPTS[2], vectors["a"], stop=sl.StopRule(threshold, 2))
    assert stopped.finish_reason == "content_filter" and len(stopped.generated_ids) == k < N
    r = chat(served, tiny_lm, PROMPTS[2], [{"vector": "a", "stop_above": threshold, "stop_tokens": 2}])
    assert r.choices[0].finish_reason == "content_filter"
    assert r.usage.completion_tokens == k and r.choices[0].message.content == stopped.text
    assert_values(r.model_extra["readout"]["a"], stopped)
    # streamed, the same end
    chunks = list(chat(served, tiny_lm, PROMPTS[2], [{"vector": "a", "stop_above": threshold, "stop_tokens": 2}],
                       stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"
    # below the threshold it never fires: the whole generation, as without the rule
    high = chat(served, tiny_lm, PROMPTS[2], [{"vector": "a", "stop_above": max(gen) + 1.0, "stop_tokens": 1}])
    assert high.choices[0].finish_reason == "length" and high.usage.completion_tokens == N
    assert high.choices[0].message.content == ref.text
    assert_values(high.model_extra["readout"]["a"], ref)


def _plain(lm, vectors, prompt, strength=None):
    for s in _SERVERS:
        s.idle()
    steering = sl.Steering.from_vector(vectors["b"], strength) if strength is not None else None
    return sl.generate(lm, [prompt], steering, max_new_tokens=N)[0]


def test_mixed_batch_plain_rows_unchanged(served, tiny_lm, vectors):
    ref = reference(tiny_lm, PROMPTS[3], vectors["a"])
    low = min(reference(tiny_lm, PROMPTS[1], vectors["a"]).raw) - 1.0  # every token is above it: stops at once
    stopped = reference(tiny_lm, PROMPTS[1], vectors["a"], stop=sl.StopRule(low, 1))
    expected = {"plain0": _plain(tiny_lm, vectors, PROMPTS[0]), "steered1": _plain(tiny_lm, vectors, PROMPTS[1], -4.0),
                "plain2": _plain(tiny_lm, vectors, PROMPTS[2])}
    batches = served.app.state.metrics.batch  # a cumulative histogram: counts[0] = forward calls on one row
    multi = lambda: batches.n - batches.counts[0]  # noqa: E731  (forward calls on more than one row)
    before = multi()
    calls = {
        "plain0": lambda: chat(served, tiny_lm, PROMPTS[0]),
        "read3": lambda: chat(served, tiny_lm, PROMPTS[3], ["a"]),
        "steered1": lambda: chat(served, tiny_lm, PROMPTS[1], steering={"vector": "b", "strength": -4}),
        "stop1": lambda: chat(served, tiny_lm, PROMPTS[1], [{"vector": "a", "stop_above": low}]),
        "plain2": lambda: chat(served, tiny_lm, PROMPTS[2], stream=True),
    }
    got: dict = {}
    threads = [threading.Thread(target=lambda k=k, f=f: got.__setitem__(k, f())) for k, f in calls.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(got) == sorted(calls)
    # at least one forward call ran more than one row (the burst shared batches)
    assert multi() > before
    for key in ("plain0", "steered1"):
        assert got[key].choices[0].message.content == expected[key]
        assert "readout" not in got[key].model_extra
    plain2 = list(got["plain2"])
    assert "".join(c.choices[0].delta.content or "" for c in plain2 if c.choices) == expected["plain2"]
    assert all("readout" not in c.model_extra for c in plain2)
    assert got["read3"].choices[0].message.content == ref.text
    assert_values(got["read3"].model_extra["readout"]["a"], ref)
    assert got["stop1"].choices[0].finish_reason == "content_filter" == stopped.finish_reason
    assert got["stop1"].usage.completion_tokens == len(stopped.generated_ids) == 1
    assert_values(got["stop1"].model_extra["readout"]["a"], stopped)


@pytest.mark.parametrize("readout, status, param, words", [
    (["nope"], 404, "readout[0].vector", "no vector named 'nope'"),
    ({"vector": "a", "layer": 3}, 400, "readout.layer", "vector 'a' has no direction at layer 3"),
    ({"vector": "a", "layer": 9}, 400, "readout.layer", "layer 9 is out of range"),
    ({"vector": "a", "layer": "1"}, 400, "readout.layer", "'layer' must be an integer"),
    ({"vector": "a", "stop_above": "high"}, 400, "readout.stop_above", "'stop_above' must be a finite number"),
    ({"vector": "a", "stop_above": 1.0, "stop_tokens": 0}, 400, "readout.stop_tokens", "integer >= 1"),
    ({"vector": "a", "stop_tokens": 2}, 400, "readout.stop_tokens", "'stop_tokens' needs 'stop_above'"),
    ({"vector": "a", "threshold": 2}, 400, "readout", "unknown read-out field(s) ['threshold']"),
    (["a", "a"], 400, "readout[1].vector", "read out twice"),
    ([3], 400, "readout[0]", "a read-out is a vector name or"),
    (["a"] * 9, 400, "readout", "at most 8 read-out vectors"),
])
def test_bad_readout_is_4xx(served, tiny_lm, readout, status, param, words):
    r = served.http("POST", "/v1/chat/completions", json={
        "model": tiny_lm.model_id, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}],
        "readout": readout})
    assert r.status_code == status, r.text
    err = json.loads(r.text)["error"]
    assert words in err["message"] and err["param"] == param


class _SteeringOnlyEngine(BuiltinEngine):
    """The built-in engine declaring fewer features, as an engine without read-out (vLLM's today) does."""

    features = frozenset({"conditions"})


def test_an_engine_without_readout_refuses_it(tiny_lm, vectors):
    s = Served(create_app(_SteeringOnlyEngine(tiny_lm, max_batch=2), dict(vectors), api_key=KEY))
    try:
        r = s.http("POST", "/v1/chat/completions", json={
            "model": tiny_lm.model_id, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}],
            "readout": ["a"]})
        assert r.status_code == 400, r.text
        err = json.loads(r.text)["error"]
        assert "--engine builtin" in err["message"] and err["param"] == "readout"
        assert err["code"] == "unsupported_on_engine"
        ok = s.http("POST", "/v1/chat/completions", json={
            "model": tiny_lm.model_id, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]})
        assert ok.status_code == 200 and "readout" not in ok.json()
    finally:
        s.stop()
