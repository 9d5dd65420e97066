"""steerlab's vLLM plugin without vLLM: the request spec, the vector store, the per-step plan (checked
against the position policies' one definition, `engines.base.steering_positions`), and the prefix-cache
salt. The plugin inside vLLM is tested in tests/test_vllm_parity.py and tests/test_vllm_serve.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from steerlab.serve.engines.base import steering_positions
from steerlab.vllm_plugin import spec as S
from steerlab.vllm_plugin.plan import Row, StepPlanner
from steerlab.vllm_plugin.store import VectorStore

from conftest import make_vector  # tests/ is on sys.path under pytest

H, N_LAYERS = 8, 4


class _Shape:  # what make_vector needs of a model
    model_id, family, hidden_size, n_layers = "tiny", "llama", H, N_LAYERS


def vec(seed, layers=(1, 2)):
    g = torch.Generator().manual_seed(seed)
    return make_vector(_Shape, {l: torch.randn(H, generator=g) for l in layers})


@pytest.fixture
def store(tmp_path):
    s = VectorStore(tmp_path)
    s.put(vec(1), "a")
    s.put(vec(2), "b")
    return s


# -- the spec ------------------------------------------------------------------------------------------
def test_spec_round_trip():
    x = S.xargs([{"vector": "a", "strength": 4, "layers": [2, 1, 2], "positions": "all"}], after_user=7)
    spec = S.decode(x[S.KEY])
    assert spec.terms == (S.TermSpec("a", 4.0, (1, 2), "all"),) and spec.after_user == 7
    assert S.decode(spec.encode()) == spec
    assert S.of_extra_args({S.KEY: json.dumps({"terms": []})}) is None and S.of_extra_args(None) is None


def test_a_schedule_travels_in_the_spec_and_constant_encodes_as_before():
    x = S.xargs([{"vector": "a", "strength": 2, "schedule": " Decay:8 "}, {"vector": "b", "schedule": "decay:8"}])
    spec = S.decode(x[S.KEY])
    assert [t.schedule for t in spec.terms] == ["decay:8", "decay:8"] and spec.schedule == "decay:8"
    assert S.decode(spec.encode()) == spec
    plain = S.xargs([{"vector": "a", "strength": 2}])[S.KEY]
    assert "schedule" not in plain and S.decode(plain).schedule is None
    assert S.xargs([{"vector": "a", "strength": 2, "schedule": "constant"}])[S.KEY] == plain


@pytest.mark.parametrize("bad, message", [
    ("{", "not valid JSON"),
    ({"terms": "x"}, "'terms' list"),
    ({"terms": [], "colour": 1}, "unknown field"),
    ({"terms": [{"vector": "a", "strength": float("nan")}]}, "finite number"),
    ({"terms": [{"vector": "../a"}]}, "registered vector's name"),
    ({"terms": [{"vector": "a", "positions": "first"}]}, "unknown position policy"),
    ({"terms": [{"vector": "a", "layers": []}]}, "non-empty list"),
    ({"terms": [{"vector": "a", "layers": [True]}]}, "non-empty list"),
    ({"terms": [], "after_user": -1}, "non-negative"),
    ({"terms": [{"vector": "a", "schedule": "first:0"}]}, "unknown strength schedule"),
    ({"terms": [{"vector": "a", "schedule": 8}]}, "unknown strength schedule"),
    ({"terms": [{"vector": "a", "schedule": "first:8"}, {"vector": "b"}]}, "same schedule and positions"),
    ({"terms": [{"vector": "a", "schedule": "decay:8"}, {"vector": "b", "schedule": "decay:8", "positions": "all"}]},
     "same schedule and positions"),
])
def test_spec_errors_name_the_problem(bad, message):
    with pytest.raises(S.SpecError, match=message):
        S.decode(bad)


def test_salt_changes_with_what_changes_the_kv():
    a = S.decode(S.xargs([{"vector": "a", "strength": 4}])[S.KEY])
    b = S.decode(S.xargs([{"vector": "a", "strength": 5}])[S.KEY])
    assert S.salt(a, ["d1"]) == S.salt(a, ["d1"])
    assert len({S.salt(a, ["d1"]), S.salt(b, ["d1"]), S.salt(a, ["d2"]), S.salt(a, ["d1"], "client")}) == 4


# -- the store -----------------------------------------------------------------------------------------
def test_store_reads_by_name_and_checks_the_digest(store, tmp_path):
    v, digest = store.get("a")
    assert torch.equal(v.directions[1], vec(1).directions[1])
    assert store.get("a", digest[:12])[1] == digest
    with pytest.raises(S.SpecError, match="digest"):
        store.get("a", "0" * 16)
    with pytest.raises(S.SpecError, match="unknown steering vector 'zz'"):
        store.get("zz")
    store.put(vec(3), "a")  # rewritten: a new reader sees the new content, by digest
    assert store.get("a")[1] != digest and torch.equal(store.get("a")[0].directions[2], vec(3).directions[2])
    (tmp_path / "broken.safetensors").write_bytes(b"not a vector")
    with pytest.raises(S.SpecError, match="could not be read"):
        store.get("broken")


def test_store_without_a_directory_says_how_to_set_one(monkeypatch):
    monkeypatch.delenv("STEERLAB_VLLM_VECTORS", raising=False)
    with pytest.raises(S.SpecError, match="STEERLAB_VLLM_VECTORS"):
        VectorStore().get("a")


# -- the plan: what the hooks add, against a plain per-token computation --------------------------------
def hand_weight(schedule: str, k: int) -> float:
    """A schedule's weight of the k-th steered position, written out (`steerlab.schedules` states it)."""
    if schedule == "constant":
        return 1.0
    kind, span = schedule.split(":")
    return float(k < int(span)) if kind == "first" else 0.5 ** (k / int(span))


def first_steered(policy: str, prompt_tokens: int, after_user: int) -> int:
    return {"all": 0, "after_user": after_user, "last_prompt": prompt_tokens - 1}[policy]


def reference(rows, stores_vectors, total):
    """Per layer, the [total, H] delta each flattened token gets: for each term whose policy steers the
    token's absolute position, schedule weight * strength * direction, summed in term order."""
    out = torch.zeros(N_LAYERS, total, H)
    for row in rows:
        if row.spec is None:
            continue
        for j in range(row.count):
            pos = row.computed + j
            for t in row.spec.terms:
                after = row.spec.after_user_start(row.prompt_tokens)
                if not steering_positions(t.positions, pos, prompt_tokens=row.prompt_tokens, after_user=after):
                    continue
                v = stores_vectors[t.vector]
                w = hand_weight(t.schedule, pos - first_steered(t.positions, row.prompt_tokens, after))
                for layer in (t.layers or v.layers):
                    out[layer, row.start + j] += w * t.strength * v.directions[layer]
    return out


def spec(*terms, after_user=None):
    return S.RequestSpec(tuple(S.TermSpec(*t) for t in terms), after_user)


def check_steps(store, vectors, rows_of_steps):
    """Each step's add equals `reference`; after `finish`, every buffer is back to unsteered."""
    planner = StepPlanner(N_LAYERS, H, max_tokens=16, max_rows=12, device="cpu", dtype=torch.float32, store=store)
    for rows in rows_of_steps:
        total = sum(r.count for r in rows)
        planner.prepare(rows)
        residual = torch.randn(total, H)
        want = reference(rows, vectors, total)
        for layer in range(N_LAYERS):
            torch.testing.assert_close(planner.add(layer, residual) - residual, want[layer], atol=1e-6, rtol=0)
        planner.finish()
        assert torch.equal(planner.scale, torch.ones_like(planner.scale))  # cleared with the slots
        for layer in range(N_LAYERS):  # cleared: vLLM's dummy and warm-up runs are unsteered
            assert torch.equal(planner.add(layer, residual), residual)


def test_plan_matches_the_policies_through_chunked_prefill_and_decode(store):
    vectors = {"a": vec(1), "b": vec(2)}
    steered = spec(("a", 2.0, (1, 2), "after_user"), ("b", -1.5, (2,), "all"), ("a", 3.0, (1,), "last_prompt"),
                   after_user=5)
    rows_of_steps = [
        # step 1: a prefill chunk (positions 0..5 of a 9-token prompt) beside an unsteered decode row
        [Row(steered, 9, 0, 6, 0), Row(None, 4, 6, 1, 7)],
        # step 2: the rest of the prompt (6..8), then one decode token of the same request in step 3
        [Row(None, 4, 0, 1, 8), Row(steered, 9, 1, 3, 6)],
        [Row(steered, 9, 0, 1, 9), Row(spec(("b", 1.0, None, "last_prompt")), 3, 1, 3, 0)],
    ]
    check_steps(store, vectors, rows_of_steps)


@pytest.mark.parametrize("schedule, policy", [("first:3", "after_user"), ("decay:2", "after_user"),
                                              ("decay:3", "all"), ("first:1", "last_prompt")])
def test_scheduled_plan_matches_the_hand_weights_through_chunked_prefill_and_decode(store, schedule, policy):
    vectors = {"a": vec(1), "b": vec(2)}
    steered = spec(("a", 2.0, (1, 2), policy, None, schedule), ("b", -1.5, (2,), policy, None, schedule),
                   after_user=5)
    other = spec(("b", 1.0, None, "all"))  # constant, in the same steps: its tokens keep weight 1
    rows_of_steps = [
        [Row(steered, 9, 0, 6, 0), Row(other, 4, 6, 1, 7)],  # prefill chunk 0..5 beside a decode row
        [Row(other, 4, 0, 1, 8), Row(steered, 9, 1, 3, 6)],  # the rest of the prompt, 6..8
        *[[Row(steered, 9, 0, 1, 9 + n)] for n in range(6)],  # six decode steps: the schedule runs on
    ]
    check_steps(store, vectors, rows_of_steps)


def test_a_single_scheduled_term_adds_what_the_hooks_add_bit_for_bit(store):
    # the hooks compute h + (delta * w) with delta = strength * direction and w cast to the model's dtype
    v = vec(1)
    planner = StepPlanner(N_LAYERS, H, max_tokens=8, max_rows=4, device="cpu", dtype=torch.bfloat16, store=store)
    planner.prepare([Row(spec(("a", 3.0, (1,), "all", None, "decay:3")), 6, 0, 6, 0)])
    residual = torch.randn(6, H).to(torch.bfloat16)
    delta = (3.0 * v.directions[1].float()).to(torch.bfloat16)
    w = torch.pow(0.5, torch.arange(6, dtype=torch.float32) / 3).to(torch.bfloat16)
    assert torch.equal(planner.add(1, residual), residual + delta[None, :] * w[:, None])


def test_unsteered_tokens_are_bit_identical(store):
    planner = StepPlanner(N_LAYERS, H, max_tokens=8, max_rows=4, device="cpu", dtype=torch.float32, store=store)
    planner.prepare([Row(None, 3, 0, 3, 0), Row(spec(("a", 4.0, (1,), "all")), 2, 3, 2, 0)])
    residual = torch.randn(5, H)
    out = planner.add(1, residual)
    assert torch.equal(out[:3], residual[:3]) and not torch.equal(out[3:], residual[3:])


def test_a_vector_removed_after_the_request_leaves_it_unsteered(store, tmp_path, caplog):
    planner = StepPlanner(N_LAYERS, H, max_tokens=8, max_rows=4, device="cpu", dtype=torch.float32, store=store)
    (tmp_path / "b.safetensors").unlink()
    planner.prepare([Row(spec(("b", 4.0, None, "all")), 2, 0, 2, 0)])
    residual = torch.randn(2, H)
    assert torch.equal(planner.add(2, residual), residual)
    assert "not steered" in caplog.text


def test_per_position_and_out_of_range_terms_are_refused(store, tmp_path):
    planner = StepPlanner(N_LAYERS, H, max_tokens=8, max_rows=4, device="cpu", dtype=torch.float32, store=store)
    with pytest.raises(S.SpecError, match="out of range"):
        planner.deltas(spec(("a", 1.0, (9,), "all")))
    with pytest.raises(S.SpecError, match="no direction for layer 3"):
        planner.deltas(spec(("a", 1.0, (3,), "all")))


def test_steered_offsets_are_absolute_positions():
    from steerlab.vllm_plugin.plan import steered_offsets

    s = spec(("a", 1.0, None, "after_user"), after_user=4)
    # a chunk covering positions 3..6 of a 10-token prompt: after_user steers 4.. → offsets 1, 2, 3
    assert steered_offsets(s, "after_user", Row(s, 10, 0, 4, 3)).tolist() == [1, 2, 3]
    assert steered_offsets(s, "last_prompt", Row(s, 10, 0, 4, 6)).tolist() == [3]
    assert steered_offsets(s, "last_prompt", Row(s, 10, 0, 1, 10)).tolist() == []
    assert np.array_equal(steered_offsets(s, "all", Row(s, 10, 0, 2, 12)), [0, 1])
