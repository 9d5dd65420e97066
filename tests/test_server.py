"""The HTTP server: each response equals `steerlab.generate` for that request alone, requests that
arrive together share one batch, and bad requests get a clear 4xx naming the problem."""

from __future__ import annotations

import threading

import pytest

import steerlab as sl
from steerlab.errors import SteerlabError
from steerlab.server import BatchingGenerator, _Job, create_app, load_vectors, parse_vector_spec

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

PROMPTS = ["How was your weekend?", "Tell me about the sea.", "What is a good breakfast?"]
T = 6


@pytest.fixture(scope="module")
def served(tiny_lm, vec_factory):
    a = vec_factory(tiny_lm, [1, 2], seed=1, scale=4.0)
    b = vec_factory(tiny_lm, [1, 2], seed=2, scale=4.0)
    pas = vec_factory.make(tiny_lm, {2: vec_factory(tiny_lm, [2], seed=3, scale=4.0).directions[2]},
                           selected_layers=[2], strength=-3.0, positions="last_prompt")
    return {"a": a, "b": b, "pas": pas}


@pytest.fixture()
def client(tiny_lm, served):
    with TestClient(create_app(tiny_lm, served, max_new_tokens_limit=16, window_s=0.05)) as c:
        yield c


def solo(lm, prompts, vec=None, strength=None, layers=None, positions=None):
    steering = None if vec is None else sl.Steering.from_vector(vec, strength, layers, positions)
    return sl.generate(lm, prompts, steering, max_new_tokens=T)


def test_health_and_vectors(client, tiny_lm):
    h = client.get("/health").json()
    assert h["model"] == tiny_lm.model_id and h["n_layers"] == tiny_lm.n_layers
    v = client.get("/vectors").json()
    assert set(v) == {"a", "b", "pas"} and v["pas"]["strength"] == -3.0 and v["a"]["layers"] == [1, 2]


def test_unsteered_and_steered_match_generate(client, tiny_lm, served):
    r = client.post("/generate", json={"prompts": PROMPTS, "max_new_tokens": T})
    assert r.status_code == 200 and r.json()["completions"] == solo(tiny_lm, PROMPTS)
    r = client.post("/generate", json={"prompts": PROMPTS, "vector": "a", "strength": 5.0, "max_new_tokens": T})
    body = r.json()
    assert body["completions"] == solo(tiny_lm, PROMPTS, served["a"], 5.0)
    assert body["completions"] != solo(tiny_lm, PROMPTS)  # the vector does something on this model
    assert body["strength"] == 5.0 and body["positions"] == "after_user"


def test_recorded_choice_is_the_default(client, tiny_lm, served):
    """A PAS vector's recorded layer, strength and positions apply unless the request overrides them."""
    body = client.post("/generate", json={"prompts": PROMPTS[:1], "vector": "pas", "max_new_tokens": T}).json()
    assert (body["strength"], body["layers"], body["positions"]) == (-3.0, [2], "last_prompt")
    assert body["completions"] == solo(tiny_lm, PROMPTS[:1], served["pas"])


def test_concurrent_requests_share_a_batch_and_match_alone(tiny_lm, served):
    """Requests with different vectors and strengths, sent together, run as one per-row batch and each
    gets exactly what it would get alone."""
    requests = [("a", 5.0, PROMPTS[:2]), ("b", -4.0, PROMPTS[2:]), ("a", 2.0, PROMPTS[1:2])]
    expected = [solo(tiny_lm, p, served[n], s) for n, s, p in requests]
    worker = BatchingGenerator(tiny_lm, window_s=0.5, max_batch=32)
    try:
        futures = []
        for name, s, prompts in requests:
            st = sl.Steering.from_vector(served[name], s)
            futures.append(worker.submit(_Job(prompts, served[name], st.strength, None, st.positions, T, False, 1.0,
                                              1.0, None)))
        got = [f.result(timeout=60) for f in futures]
    finally:
        worker.close()
    assert got == expected
    assert worker.batches_run == 1 and worker.jobs_done == 3


def test_concurrent_http_requests(client, tiny_lm, served):
    results: dict[int, list[str]] = {}

    def send(i, name, s):
        results[i] = client.post("/generate", json={"prompts": [PROMPTS[i]], "vector": name, "strength": s,
                                                    "max_new_tokens": T}).json()["completions"]

    threads = [threading.Thread(target=send, args=(i, n, s)) for i, (n, s) in enumerate([("a", 5), ("b", -4), ("a", 1)])]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for i, (n, s) in enumerate([("a", 5), ("b", -4), ("a", 1)]):
        assert results[i] == solo(tiny_lm, [PROMPTS[i]], served[n], float(s))


@pytest.mark.parametrize("payload,status,fragment", [
    ({"prompts": ["hi"], "vector": "nope"}, 404, "no vector named 'nope'"),
    ({"prompts": ["hi"], "vector": "a", "positions": "everywhere"}, 400, "unknown positions"),
    ({"prompts": ["hi"], "vector": "a", "layers": [3]}, 400, "has no layers [3]"),
    ({"prompts": ["hi"], "strength": 2.0}, 400, "need a vector"),
    ({"prompts": []}, 422, "prompts"),
    ({"prompts": ["hi"], "max_new_tokens": 17}, 422, "max_new_tokens"),
    ({"prompts": ["word " * 200]}, 400, "context window"),
])
def test_bad_requests(client, payload, status, fragment):
    r = client.post("/generate", json=payload)
    assert r.status_code == status, r.text
    assert fragment in r.text


def test_vector_specs(tmp_path, tiny_lm, served):
    assert parse_vector_spec("x=/a/b.safetensors") == ("x", tmp_path.__class__("/a/b.safetensors"))
    assert parse_vector_spec("dir/calm.safetensors")[0] == "calm"
    served["a"].save(tmp_path / "calm.safetensors")
    assert list(load_vectors([str(tmp_path / "calm.safetensors")], tiny_lm)) == ["calm"]
    with pytest.raises(SteerlabError, match="two vectors are named 'calm'"):
        load_vectors([str(tmp_path / "calm.safetensors"), f"calm={tmp_path / 'calm.safetensors'}"], tiny_lm)
    with pytest.raises(SteerlabError, match="NAME=PATH"):
        parse_vector_spec("=x")
    with pytest.raises(SteerlabError, match="vector file not found"):
        load_vectors([str(tmp_path / "missing.safetensors")], tiny_lm)


def test_serve_cli_refuses_a_missing_vector_before_serving(tmp_path):
    from typer.testing import CliRunner

    from steerlab.cli import app

    r = CliRunner().invoke(app, ["serve", "--vector", f"calm={tmp_path / 'missing.safetensors'}"])
    assert r.exit_code == 1 and "vector file not found" in r.output and "Traceback" not in r.output
