"""PAS splits, letter scoring, statistics and the letter-bias control against plain references
(scipy for the t-interval and test, hand-counted weights, the engine for the fused pass)."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch
from scipy import stats

from steerlab.pas.bias import balanced_weights, letter_bias_report
from steerlab.pas.letters import answer_and_capture, letter_logprobs, score_letters
from steerlab.pas.splits import choice_orders, make_splits, split_sizes
from steerlab.pas.stats import summarize
from steerlab.activations import capture
from steerlab.data.prompts import gold_letter
from steerlab.data.records import MCItem
from steerlab.engine import Setting
from steerlab.errors import DatasetError, SteerlabError


def _items(n, k=4, gold=0, source="tqa"):
    return [MCItem(f"Q{i}?", tuple(f"c{i}-{j}" for j in range(k)), gold, source=source, index=i) for i in range(n)]


# ------------------------------------------------------------------------------------------- splits


def test_splits_are_60_20_20_capped_disjoint_and_reproducible():
    items = _items(103)
    s = make_splits(items, 7, cap=50)
    assert s.sizes == {"train": 30, "val": 10, "test": 10} and split_sizes(103) == (63, 20, 20)
    ids = [it.index for part in (s.train, s.val, s.test) for it, _ in part]
    assert len(set(ids)) == 50
    assert make_splits(items, 7, cap=50) == s
    other = make_splits(items, 8, cap=50)
    assert [it.index for it, _ in other.train] != [it.index for it, _ in s.train]


def test_choices_are_shuffled_per_question_not_per_size():
    items = _items(400)  # gold always stored first: only the shuffle moves it
    letters = Counter(gold_letter(it, o) for it, o in zip(items, choice_orders(items, 0)))
    assert set(letters) == set("ABCD") and max(letters.values()) < 0.33 * 400
    # the PAS reference code's re-seeding: one permutation for every 4-choice question
    ref = {gold_letter(it, o) for it, o in zip(items, choice_orders(items, 0, "per-size"))}
    assert len(ref) == 1


def test_bad_items_are_named():
    with pytest.raises(DatasetError, match=r"tqa: 4 items give .* PAS needs at least 2/1/1, i.e. 5 items"):
        make_splits(_items(4), 0)
    bad = _items(10)
    object.__setattr__(bad[3], "gold", 9)  # bypass MCItem's own check, as a hand-built record might
    with pytest.raises(DatasetError, match=r"mine item 3: gold index 9 out of range for 4 choices"):
        make_splits(bad, 0, dataset="mine")
    dup = _items(10)
    object.__setattr__(dup[5], "choices", ("x", "y", "x"))
    with pytest.raises(DatasetError, match=r"tqa item 5: duplicate choice 'x'"):
        make_splits(dup, 0)
    many = _items(10, k=27)
    with pytest.raises(DatasetError, match=r"tqa item 0: 27 choices but only 26 answer letters"):
        make_splits(many, 0)
    with pytest.raises(DatasetError, match="fractions"):
        make_splits(_items(10), 0, fractions=(0.5, 0.5, 0.5))


# ------------------------------------------------------------------------------------------- letters


def test_letter_logprobs_sum_both_spellings():
    lp = torch.log(torch.tensor([[[0.1, 0.2, 0.3, 0.05, 0.05, 0.1], [0.4, 0.1, 0.2, 0.3, float("nan"), float("nan")]]]))
    out = letter_logprobs(lp, [3, 2])
    torch.testing.assert_close(out[0, 0].exp(), torch.tensor([0.15, 0.25, 0.4], dtype=torch.float64))
    torch.testing.assert_close(out[0, 1, :2].exp(), torch.tensor([0.6, 0.4], dtype=torch.float64))
    assert out[0, 1, 2] == -math.inf


def test_fused_answer_and_capture_equals_engine_and_capture(tiny_lm):
    items = [MCItem(f"Which {i}?", ("yes", "no", "maybe")[: 2 + i % 2], i % 2, source="t", index=i) for i in range(7)]
    shown = list(zip(items, choice_orders(items, 1)))
    scores, acts, prompts = answer_and_capture(tiny_lm, shown, [1, 3], batch_size=3)
    ref = score_letters(tiny_lm, shown, [Setting.unsteered()], batch_size=4)
    torch.testing.assert_close(scores.logp, ref.logp, atol=1e-5, rtol=1e-5)
    cap = capture(tiny_lm, prompts, [1, 3], "last")
    for layer in (1, 3):
        torch.testing.assert_close(acts[layer], cap[layer], atol=1e-5, rtol=1e-5)


def test_letters_are_single_tokens_in_both_spellings(tokenizer):
    for sp in ("", " "):
        assert all(len(tokenizer(sp + c, add_special_tokens=False).input_ids) == 1 for c in "ABCDEFGH")


# ------------------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("values", [[0.02, 0.05, -0.01, 0.04, 0.03], [0.1, 0.3], [-0.2, -0.1, -0.15, 0.0]])
def test_t_interval_and_one_sided_test_match_scipy(values):
    s = summarize(values)
    lo, hi = stats.t.interval(0.95, len(values) - 1, loc=sum(values) / len(values), scale=stats.sem(values))
    assert (s.ci_low, s.ci_high) == pytest.approx((lo, hi))
    assert s.p_greater == pytest.approx(stats.ttest_1samp(values, 0.0, alternative="greater").pvalue)
    assert s.std == pytest.approx(stats.tstd(values)) and s.n == len(values)


def test_degenerate_seed_sets_never_divide_by_zero():
    one = summarize([0.1])
    assert one.mean == 0.1 and math.isnan(one.ci_low) and math.isnan(one.p_greater) and one.format() == "+10.0"
    same = summarize([0.05, 0.05, 0.05])
    assert (same.ci_low, same.ci_high, same.p_greater) == pytest.approx((0.05, 0.05, 0.0)) and same.sem == 0
    assert math.isnan(summarize([0.0, 0.0]).p_greater) and summarize([-0.1, -0.1]).p_greater == 1.0
    assert summarize([]).n == 0
    with pytest.raises(SteerlabError):
        summarize([float("nan"), 1.0])


# ------------------------------------------------------------------------------------------- letter bias


def test_balanced_weights_make_each_gold_letter_weigh_the_same():
    gold = ["A", "A", "A", "B", "A", "C"]
    n = [2, 2, 2, 2, 3, 3]
    w = balanced_weights(gold, n)
    assert w == pytest.approx([4 / 6, 4 / 6, 4 / 6, 2.0, 1.0, 1.0]) and sum(w) == pytest.approx(6)
    by = Counter()
    for g, k, x in zip(gold, n, w):
        by[(k, g)] += x
    assert by[(2, "A")] == pytest.approx(by[(2, "B")])


def test_a_letter_only_vector_is_exposed():
    # gold leans to A (the reference code's fault); the "vector" just makes the model answer A
    gold = ["A"] * 8 + ["B", "C"]
    unsteered = ["B", "A", "C", "B", "A", "C", "B", "A", "B", "C"]
    steered = ["A"] * 10
    r = letter_bias_report(gold, unsteered, steered, [3] * 10, train_gold=["A"] * 7 + ["B"] * 3)
    assert r.delta == pytest.approx(0.8 - 0.5)
    # uniform gold letter: A, B, C each weigh 1/3; steered is right on all A items only
    assert r.balanced_steered == pytest.approx(1 / 3)
    assert r.balanced_unsteered == pytest.approx((3 / 8) / 3 + 1 / 3 + 1 / 3)
    assert r.balanced_delta < 0 and r.surviving < 0
    assert r.majority_letter == "A" and r.majority_train == r.majority_test == pytest.approx(0.8)
    assert r.top_letter_share_steered == 1.0 and r.pred_steered == {"A": 1.0}
    assert r.pred_shift == pytest.approx(0.7)
    assert r.accuracy_by_letter_steered == {"A": 1.0, "B": 0.0, "C": 0.0}
    with pytest.raises(SteerlabError):
        letter_bias_report([], [], [], [], [])


def test_fused_pass_shares_a_long_common_prefix_exactly(make_tiny):
    lm = make_tiny(max_positions=512)
    items = [MCItem(f"Which {i}?", ("yes", "no", "maybe")[: 2 + i % 2], i % 2, source="t", index=i) for i in range(5)]
    shown = list(zip(items, choice_orders(items, 2)))
    prefix = "Example: Is water wet?\nA: yes\nB: no\nRespond with a single letter.\nAnswer: A\n\n"
    scores, acts, prompts = answer_and_capture(lm, shown, [2], prefix=prefix, batch_size=2)
    assert scores.info["shared_prefix_tokens"] > 40
    ref = score_letters(lm, shown, [Setting.unsteered()], prefix=prefix)
    torch.testing.assert_close(scores.logp, ref.logp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(acts[2], capture(lm, prompts, [2], "last")[2], atol=1e-5, rtol=1e-5)
