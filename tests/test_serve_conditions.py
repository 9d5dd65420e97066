"""Conditional steering through the server (the `openai` client, `extra_body`): a condition is a registered
vector named in a steering term (or an and/or/not tree of names); it is decided at prefill from each request's
own prompt, the echo says whether it fired and with what score, and a request whose condition does not fire
gets exactly the unsteered answer while a firing one in the same batch is steered."""

from __future__ import annotations

import json
import threading

import pytest

import steerlab as sl
from steerlab.condition import ConditionVector, train_condition
from steerlab.data.prompt_sets import load_condition_harmful

openai = pytest.importorskip("openai")
pytest.importorskip("uvicorn")

from test_serve_api import KEY, Served, _SERVERS, make_app  # noqa: E402

pytestmark = pytest.mark.slow
N = 8


@pytest.fixture(scope="module")
def setup(real_lm, vec_factory):
    train, test = load_condition_harmful("train"), load_condition_harmful("test")
    cond = train_condition(real_lm, train.harmful[:40], train.harmless[:40], [12, 18, 24], readings=("last",))
    leaf = ConditionVector(cond, "harmful")
    checks = leaf.check(real_lm, test.harmful[:8] + test.harmless[:8])
    loud = next(c.prompt for c in checks[:8] if c.fired)
    quiet = next(c.prompt for c in checks[8:] if not c.fired)
    vec = vec_factory(real_lm, [10], seed=5, scale=2.0)
    top = vec_factory(real_lm, [28], seed=6, scale=2.0)
    served = Served(make_app("builtin", real_lm, {"v": vec, "top": top, "harmful": cond}, api_key=KEY,
                             max_new_tokens_limit=32, max_batch=8))
    yield served, {"v": vec, "top": top}, leaf, loud, quiet
    served.stop()


@pytest.fixture(autouse=True)
def settle(request):
    """Each test leaves the server idle: its steering hooks stay on the model until the rows it answered are
    dropped, just after the answer, and the hook-leak check runs right after the test."""
    yield
    if "setup" in request.fixturenames:
        request.getfixturevalue("setup")[0].idle()


def solo(lm, prompt, vec=None):
    for s in _SERVERS:
        s.idle()
    return sl.generate(lm, [prompt], sl.Steering(vec, 4.0) if vec is not None else None, max_new_tokens=N)[0]


def ask(served, lm, prompt, steering, **kw):
    return served.client().chat.completions.create(model=lm.model_id, messages=[{"role": "user", "content": prompt}],
                                                   max_tokens=N, temperature=0, extra_body={"steering": steering},
                                                   **kw)


@pytest.mark.parametrize("name", ["v", "top"])
def test_condition_decides_per_request_in_one_batch(setup, real_lm, name):
    """"v" steers layer 10, below the condition's layers (decided by the prefill's look-ahead); "top" steers layer 28,
    above them (decided on the steered prefill's way up)."""
    served, vectors, leaf, loud, quiet = setup
    vec = vectors[name]
    expected = {loud: solo(real_lm, loud, vec), quiet: solo(real_lm, quiet)}
    assert solo(real_lm, loud) != expected[loud]
    spec = {"vector": name, "strength": 4, "condition": "harmful"}
    got: dict = {}
    threads = [threading.Thread(target=lambda p=p: got.__setitem__(p, ask(served, real_lm, p, spec)))
               for p in (loud, quiet, loud, quiet)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for p, r in got.items():
        assert r.choices[0].message.content == expected[p]
        echo = r.model_extra["steering"][0]
        assert echo["condition"] == "harmful" and echo["fired"] is (p == loud)
        score = echo["condition_scores"]["harmful"]
        assert score == pytest.approx(leaf.check(real_lm, [p])[0].score, abs=1e-4)


def test_trees_and_streaming(setup, real_lm):
    served, vectors, leaf, loud, quiet = setup
    vec = vectors["v"]
    r = ask(served, real_lm, quiet, {"vector": "v", "strength": 4, "condition": {"not": "harmful"}})
    assert r.model_extra["steering"][0]["fired"] is True
    assert r.choices[0].message.content == solo(real_lm, quiet, vec)
    r = ask(served, real_lm, loud, {"vector": "v", "strength": 4,
                                    "condition": {"and": ["harmful", {"not": "harmful"}]}})
    assert r.model_extra["steering"][0]["fired"] is False
    assert r.choices[0].message.content == solo(real_lm, loud)
    stream = ask(served, real_lm, loud, {"vector": "v", "strength": 4, "condition": "harmful"}, stream=True)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == solo(real_lm, loud, vec)
    last = [c for c in chunks if c.choices and c.choices[0].finish_reason][-1]
    assert last.model_extra["steering"][0]["fired"] is True


def test_decide_modes_share_a_batch(setup, real_lm):
    """"decide": "first_token" and "exact" requests for the same vector below the condition's layer, admitted
    together: each gets what `sl.generate` gives it alone in its mode (first_token: the prompt positions below the
    condition's layer unsteered), and the echo names the mode."""
    served, vectors, leaf, loud, quiet = setup
    vec = vectors["v"]
    want = {}
    for mode in ("exact", "first_token"):
        term = sl.Steering(vec, 4.0, condition=leaf, decide=mode)
        for p in (loud, quiet):
            want[p, mode] = sl.generate(real_lm, [p], term, max_new_tokens=N)[0]
    assert want[loud, "exact"] != want[loud, "first_token"]  # the modes differ on a firing prompt
    assert want[quiet, "exact"] == want[quiet, "first_token"] == solo(real_lm, quiet)
    for s in _SERVERS:
        s.idle()
    got: dict = {}
    jobs = [(p, m) for p in (loud, quiet) for m in ("exact", "first_token")]
    threads = [threading.Thread(target=lambda p=p, m=m: got.__setitem__(
        (p, m), ask(served, real_lm, p, {"vector": "v", "strength": 4, "condition": "harmful", "decide": m})))
        for p, m in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for (p, m), r in got.items():
        assert r.choices[0].message.content == want[p, m], (p == loud, m)
        echo = r.model_extra["steering"][0]
        assert echo["decide"] == m and echo["fired"] is (p == loud)


@pytest.mark.parametrize("extra, words", [
    ({"condition": "harmful", "decide": "later"}, "unknown decide mode 'later'"),
    ({"decide": "first_token"}, "give a 'condition' too"),
])
def test_bad_decide_is_400(setup, real_lm, extra, words):
    r = setup[0].http("POST", "/v1/chat/completions", json={
        "model": real_lm.model_id, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}],
        "steering": {"vector": "v", "strength": 1, **extra}})
    assert r.status_code == 400, r.text
    assert words in json.loads(r.text)["error"]["message"]


@pytest.mark.parametrize("condition, status, words", [
    ("nope", 404, "no condition vector named 'nope'"),
    ("v", 400, "not a condition vector"),
    ({"xor": ["harmful"]}, 400, "a condition is a vector name"),
    ({"and": []}, 400, "non-empty list"),
])
def test_bad_conditions_are_4xx(setup, real_lm, condition, status, words):
    served = setup[0]
    r = served.http("POST", "/v1/chat/completions", json={
        "model": real_lm.model_id, "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}],
        "steering": {"vector": "v", "strength": 1, "condition": condition}})
    assert r.status_code == status, r.text
    assert words in json.loads(r.text)["error"]["message"]
