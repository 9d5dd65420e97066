"""The built-in engine's continuous batching: rows with different steering, positions and lengths share
forward passes, join and leave between steps, and each greedy row gets exactly what `steerlab.generate`
gives for its prompt alone; seeded sampled rows are the same alone and batched. Driven through the
engine seam (`EngineRequest` in, typed events out)."""

from __future__ import annotations

import threading
import time

import pytest
import torch

import steerlab as sl
from steerlab.serve.engines.base import (EngineRequest, Failed, Finished, QueueFull, SamplingSettings, ShuttingDown, TextDelta)
from steerlab.serve.engines.builtin import BuiltinEngine
from steerlab.serve.engines.builtin.rows import batch_terms
from steerlab.serve.resolve import SteeringRequestError, resolve
from steerlab.serve.text import TextTracker

PROMPTS = ["How was your weekend?", "Tell me about the sea.", "What is a good breakfast?", "Hi",
           "Explain gravity to a child in two sentences please."]


@pytest.fixture(scope="module")
def vectors(tiny_lm, vec_factory):
    return {"a": vec_factory(tiny_lm, [1, 2], seed=1, scale=4.0), "b": vec_factory(tiny_lm, [1, 2], seed=2, scale=4.0),
            "c": vec_factory(tiny_lm, [2], seed=3, scale=4.0)}


class Collector:
    def __init__(self):
        self.events, self.done, self.started = [], threading.Event(), threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if isinstance(event, TextDelta):
            self.started.set()
        if isinstance(event, (Finished, Failed)):
            self.done.set()

    @property
    def result(self) -> Finished:
        assert isinstance(self.events[-1], Finished), self.events[-1]
        return self.events[-1]

    @property
    def streamed(self):
        return "".join(e.text for e in self.events if isinstance(e, TextDelta))


class Req:
    """A request not yet submitted: `submit(engine)` queues it and keeps its handle."""

    def __init__(self, request, collector):
        self.request, self.collector, self.handle = request, collector, None

    def submit(self, engine):
        self.handle = engine.submit(self.request, self.collector)
        return self.handle

    def cancel(self):
        self.handle.cancel()


def job(lm, vectors, prompt, spec, n, sampling=None, stop=None):
    c = Collector()
    settings = SamplingSettings(n, stop=tuple(stop or ()), **(sampling or {}))
    return Req(EngineRequest.of(sl.encode(lm, [prompt], extra_tokens=n), "r", settings, resolve(spec, vectors, lm)), c), c


def solo(lm, vectors, prompt, spec, n, **kw):
    terms = [sl.Steering.from_vector(vectors[s["vector"]], s.get("strength"), s.get("layers"), s.get("positions"))
             for s in spec]
    return sl.generate(lm, [prompt], terms or None, max_new_tokens=n, **kw)[0]


CASES = [
    (PROMPTS[0], [], 6),
    (PROMPTS[1], [{"vector": "a", "strength": 5}], 9),
    (PROMPTS[2], [{"vector": "b", "strength": -4}], 4),
    (PROMPTS[3], [{"vector": "a", "strength": 2, "positions": "all"}], 7),
    (PROMPTS[4], [{"vector": "c", "strength": 3, "positions": "last_prompt"}], 10),
    (PROMPTS[1], [{"vector": "a", "strength": 3}, {"vector": "b", "strength": 2, "positions": "all"}], 5),
    (PROMPTS[2], [{"vector": "a", "strength": 4, "layers": [2]}], 3),
]


def test_mixed_rows_joining_and_leaving_match_solo(tiny_lm, vectors):
    """7 requests, max_batch 3, staggered arrivals: rows join a running batch and leave it at different
    steps, with unsteered / steered / several vectors / three policies / a layer subset / lengths 3-10."""
    sched = BuiltinEngine(tiny_lm, max_batch=3, window_s=0.0)
    jobs = [job(tiny_lm, vectors, p, spec, n) for p, spec, n in CASES]
    made = [c for _, c in jobs]
    try:
        # Arrivals keyed to progress, not to the clock (a loaded machine stretches sleeps): the first three
        # together, then each once the one two places earlier is decoding, so it joins a running batch.
        for i, (j, _) in enumerate(jobs):
            if i >= 3:
                assert made[i - 2].started.wait(60) or made[i - 2].done.wait(0)
            j.submit(sched)
        for c in made:
            assert c.done.wait(60)
    finally:
        sched.close(1)
    for (p, spec, n), c in zip(CASES, made):
        assert c.result.text == solo(tiny_lm, vectors, p, spec, n), (p, spec)
        assert c.result.completion_tokens == n and c.result.finish_reason == "length"
        assert c.streamed == c.result.text
    # shared forward passes: far fewer calls than one per row per token
    assert sched.forward_calls < sum(n for _, _, n in CASES) / 2


def test_steering_changes_the_output(tiny_lm, vectors):
    assert solo(tiny_lm, vectors, PROMPTS[1], [{"vector": "a", "strength": 5}], 6) != solo(tiny_lm, vectors, PROMPTS[1], [], 6)


def test_seeded_sampling_is_the_same_alone_and_batched(tiny_lm, vectors):
    def run(batched: bool):
        sched = BuiltinEngine(tiny_lm, max_batch=8, window_s=0.05)
        try:
            j, c = job(tiny_lm, vectors, PROMPTS[0], [{"vector": "a", "strength": 2}], 8, dict(temperature=1.0, top_p=0.9, seed=7, top_k=50))
            others = []
            if batched:
                for p in PROMPTS[1:4]:
                    o, oc = job(tiny_lm, vectors, p, [{"vector": "b", "strength": 1}], 6, dict(temperature=0.8, top_p=1.0, seed=3))
                    others.append((o, oc))
            for o, _ in others[:2]:
                o.submit(sched)
            j.submit(sched)
            for o, _ in others[2:]:
                o.submit(sched)
            assert c.done.wait(60)
            return c.result.text
        finally:
            sched.close(2)

    alone = run(False)
    assert run(True) == alone
    # and it is what steerlab.generate samples for that prompt with that seed
    assert alone == solo(tiny_lm, vectors, PROMPTS[0], [{"vector": "a", "strength": 2}], 8, do_sample=True,
                         temperature=1.0, top_p=0.9, seed=7)


def test_cancel_frees_the_row_and_others_finish(tiny_lm, vectors):
    sched = BuiltinEngine(tiny_lm, max_batch=4, window_s=0.0)
    try:
        long_job, long_c = job(tiny_lm, vectors, PROMPTS[0], [], 80)
        short_job, short_c = job(tiny_lm, vectors, PROMPTS[1], [{"vector": "a", "strength": 5}], 6)
        long_job.submit(sched)
        short_job.submit(sched)
        long_job.cancel()
        assert long_c.done.wait(30) and short_c.done.wait(30)
    finally:
        sched.close(1)  # before steerlab.generate runs the same model
    assert long_c.result.finish_reason == "cancelled" and long_c.result.completion_tokens < 80
    assert short_c.result.text == solo(tiny_lm, vectors, PROMPTS[1], [{"vector": "a", "strength": 5}], 6)


def test_queue_limit_and_shutdown(tiny_lm, vectors):
    sched = BuiltinEngine(tiny_lm, max_batch=1, max_queue=1, window_s=0.0)
    first, c1 = job(tiny_lm, vectors, PROMPTS[0], [], 40)
    first.submit(sched)
    while sched.active == 0:  # the first is running; the next one waits
        time.sleep(0.005)
    waiting, c2 = job(tiny_lm, vectors, PROMPTS[1], [], 3)
    waiting.submit(sched)
    with pytest.raises(QueueFull):
        job(tiny_lm, vectors, PROMPTS[2], [], 3)[0].submit(sched)
    sched.close(grace_s=30)  # graceful: both finish
    assert c1.result.completion_tokens == 40 and c2.result.completion_tokens == 3
    with pytest.raises(ShuttingDown):
        job(tiny_lm, vectors, PROMPTS[2], [], 3)[0].submit(sched)


def test_admission_counts_the_queue_beyond_free_slots(tiny_lm, vectors):
    """A burst of 40 with 32 free slots and max_queue 8 is taken whole (32 run, 8 wait); the 41st is refused.
    The 1 s batching window keeps the whole burst waiting when it arrives."""
    sched = BuiltinEngine(tiny_lm, max_batch=32, max_queue=8, window_s=1.0)
    burst = [job(tiny_lm, vectors, PROMPTS[i % len(PROMPTS)], [], 2) for i in range(41)]
    try:
        for j, _ in burst[:40]:
            j.submit(sched)
        assert sched.queued == 40 and sched.active == 0
        with pytest.raises(QueueFull):
            burst[40][0].submit(sched)
        for _, c in burst[:40]:
            assert c.done.wait(60)
    finally:
        sched.close(1)
    assert all(c.result.completion_tokens == 2 for _, c in burst[:40])


def test_shutdown_without_grace_cancels_with_an_error(tiny_lm, vectors):
    sched = BuiltinEngine(tiny_lm, max_batch=1, window_s=0.0)
    j, c = job(tiny_lm, vectors, PROMPTS[0], [], 80)
    j.submit(sched)
    sched.close(grace_s=0)
    assert c.done.wait(10)
    assert isinstance(c.events[-1], Failed) and c.events[-1].status == 503


def test_stop_strings_cut_the_text(tiny_lm, vectors):
    full = solo(tiny_lm, vectors, PROMPTS[1], [{"vector": "a", "strength": 5}], 8)
    stop = full[3:5]
    sched = BuiltinEngine(tiny_lm, max_batch=2, window_s=0.0)
    try:
        j, c = job(tiny_lm, vectors, PROMPTS[1], [{"vector": "a", "strength": 5}], 8, stop=[stop])
        j.submit(sched)
        assert c.done.wait(30)
    finally:
        sched.close(1)
    assert c.result.text == full[:full.find(stop)] and c.result.finish_reason == "stop"
    assert c.streamed == c.result.text


def test_text_tracker_streams_a_prefix_of_the_final_text(tokenizer):
    ids = tokenizer("Hello, wörld! ✨ It's  fine.\n\nOK", add_special_tokens=False)["input_ids"]
    t = TextTracker(tokenizer, ["fine"])
    streamed = "".join(t.add(i) for i in ids) + t.finish()
    assert t.stopped and streamed == t.text == "Hello, wörld! ✨ It's  "


@pytest.mark.parametrize("spec,status,fragment", [
    ([{"vector": "nope"}], 404, "no vector named 'nope'"),
    ([{"vector": "a", "layers": []}], 400, "'layers' is empty"),
    ([{"vector": "a", "layers": [3]}], 400, "has no layers [3]"),
    ([{"vector": "a", "positions": "everywhere"}], 400, "unknown positions"),
    ([{"vector": "a", "strength": float("inf")}], 400, "finite"),
    ([{"vector": "a", "strength": 1e30}], 400, "finite"),
    ([{"vector": "a"}] * 9, 400, "at most 8"),
])
def test_bad_steering_is_refused(tiny_lm, vectors, spec, status, fragment):
    with pytest.raises(SteeringRequestError) as e:
        resolve(spec, vectors, tiny_lm)
    assert e.value.status == status and fragment in str(e.value)


def test_batch_terms_group_rows_by_policy(tiny_lm, vectors):
    rows = [resolve(s, vectors, tiny_lm) for s in ([], [{"vector": "a"}], [{"vector": "b", "positions": "all"}],
                                                 [{"vector": "a"}, {"vector": "c", "positions": "all"}])]
    terms = batch_terms(rows)
    assert [t.positions for t in terms] == ["after_user", "all", "all"]
    assert [v is not None for v in terms[0].vector] == [False, True, False, True]
    assert batch_terms([[], []]) == []
    assert torch.equal(resolve([{"vector": "a", "layers": [2]}], vectors, tiny_lm)[0].vector.directions[2],
                       vectors["a"].directions[2])


@pytest.mark.slow
def test_embedded_model_batched_rows_equal_solo(real_lm, vec_factory):
    """On the real weights too: mixed rows in one batch give exactly their solo greedy output."""
    vecs = {"x": vec_factory(real_lm, [10], seed=5, scale=0.2), "y": vec_factory(real_lm, [12], seed=6, scale=0.2)}
    cases = [(PROMPTS[0], [{"vector": "x", "strength": 6}], 10), (PROMPTS[1], [], 7),
             (PROMPTS[2], [{"vector": "y", "strength": -6, "positions": "all"}], 10)]
    sched = BuiltinEngine(real_lm, max_batch=4, window_s=0.05)
    try:
        made = []
        for p, spec, n in cases:
            j, c = job(real_lm, vecs, p, spec, n)
            j.submit(sched)
            made.append(c)
        for c in made:
            assert c.done.wait(300)
    finally:
        sched.close(1)
    for (p, spec, n), c in zip(cases, made):
        assert c.result.text == solo(real_lm, vecs, p, spec, n)
    assert made[0].result.text != solo(real_lm, vecs, PROMPTS[0], [], 10)


def test_sliding_window_caches_run_in_cohorts_and_match_solo(tokenizer, vec_factory):
    """Gemma-3's cache has sliding-window layers, which cannot be spliced: new rows wait for the running
    batch to empty, and outputs are still each row's solo output."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from steerlab.layers import find_decoder_blocks
    from steerlab.serve.engines.builtin import kvcache

    cfg = Gemma3TextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=128,
                           sliding_window=6, pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=None,
                           layer_types=["sliding_attention", "full_attention"] * 2)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).eval().requires_grad_(False)
    model.generation_config.eos_token_id = None
    lm = sl.LoadedModel(model, tokenizer, "tiny-gemma3", find_decoder_blocks(model), True)
    assert not kvcache.can_splice(kvcache.new_cache(model))
    vecs = {"a": vec_factory(lm, [1, 2], seed=1, scale=4.0)}
    cases = [(PROMPTS[0], [{"vector": "a", "strength": 5}], 9), (PROMPTS[1], [], 4),
             (PROMPTS[2], [{"vector": "a", "strength": -3, "positions": "all"}], 6), (PROMPTS[3], [], 5)]
    sched = BuiltinEngine(lm, max_batch=2, window_s=0.0)
    try:
        made = []
        for p, spec, n in cases:
            j, c = job(lm, vecs, p, spec, n)
            j.submit(sched)
            made.append(c)
            time.sleep(0.01)
        for c in made:
            assert c.done.wait(60)
    finally:
        sched.close(1)
    for (p, spec, n), c in zip(cases, made):
        assert c.result.text == solo(lm, vecs, p, spec, n)
