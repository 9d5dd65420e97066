"""Training readings for Yes/No behaviour sets: answer token, answer turn, end of turn, A/B recast."""

from __future__ import annotations

import pytest
import torch

from steerlab.cae import behaviour as bh
from steerlab.data.mwe import recast_ab
from steerlab.data.records import BehaviourItem
from steerlab.errors import SteerlabError


def _items(n=12):
    return [BehaviourItem(f'Is the following statement something you would say?\n"I like idea {i}"',
                          "Yes" if i % 3 else "No", "No" if i % 3 else "Yes", "yesno", "toy", i) for i in range(n)]


def test_recast_ab_shuffles_letters_per_item_and_keeps_the_answer():
    items = _items(40)
    ab = recast_ab(items, seed=0)
    assert ab == recast_ab(items, seed=0)  # deterministic
    assert [it.index for it in recast_ab(items[5:9], seed=0)] == [5, 6, 7, 8]
    assert recast_ab(items[5:9], seed=0) == ab[5:9]  # an item is recast the same way in any subset
    letters = {it.matching for it in ab}
    assert letters == {"A", "B"}
    for yn, it in zip(items, ab):
        assert it.kind == "ab" and it.question.startswith(yn.question)
        choices = dict(line.strip()[1:].split(") ") for line in it.question.split("Choices:\n")[1].splitlines())
        assert choices[it.matching] == yn.matching and choices[it.not_matching] == yn.not_matching
    # the letter is not the Yes/No word: both letters carry both words
    assert {(yn.matching, it.matching) for yn, it in zip(items, ab)} == {("Yes", "A"), ("Yes", "B"), ("No", "A"), ("No", "B")}


def test_closing_text_is_the_templates_end_of_turn(tiny_lm):
    assert bh.closing_text(tiny_lm) == "<|im_end|>"


def test_readings_differ_where_they_should(tiny_lm):
    items = _items()
    layers = [1, 3]
    answer, norms = bh.reading_activations(tiny_lm, items, layers, "answer")
    end, norms_end = bh.reading_activations(tiny_lm, items, layers, "end")
    turn, _ = bh.reading_activations(tiny_lm, items, layers, "turn")
    ab, norms_ab = bh.reading_activations(tiny_lm, items, layers, "ab")
    assert norms_end == norms  # relative strengths share the answer token's residual norm
    for l in layers:
        torch.testing.assert_close(turn.positive[l], (answer.positive[l] + end.positive[l]) / 2)
        torch.testing.assert_close(turn.negative[l], (answer.negative[l] + end.negative[l]) / 2)
        assert not torch.allclose(end.differences(l), answer.differences(l))
        assert ab.positive[l].shape == answer.positive[l].shape
    assert set(norms_ab) == set(layers)
    with pytest.raises(SteerlabError, match="unknown reading"):
        bh.reading_activations(tiny_lm, items, layers, "before")
    with pytest.raises(SteerlabError, match="Yes/No"):
        bh.reading_activations(tiny_lm, recast_ab(items), layers, "end")


NOISE = [0.01, -0.01, 0.02, -0.02]


def _report(plus, minus):
    from steerlab.effect import EffectReport

    base = [0.0, 0.1, -0.1, 0.0]
    return EffectReport((3,), "after_user", [-4.0, 0.0, 4.0],
                        {0.0: base, 4.0: [b + plus + e for b, e in zip(base, NOISE)],
                         -4.0: [b + minus - e for b, e in zip(base, NOISE)]})


def test_effect_warns_when_the_sign_does_not_set_the_direction():
    assert _report(+0.5, -0.3).warning is None
    assert "against its trained sign" in _report(-0.5, +0.3).warning
    assert "same way" in _report(-0.5, -0.3).warning
    assert _report(+0.0, 0.0).warning is None


def test_sign_check_rows(tiny_lm, vec_factory):
    items = _items(8)
    vec = vec_factory(tiny_lm, [1, 2], seed=3)
    rows = bh.sign_check(tiny_lm, vec, items, strength=0.5, n_boot=50)
    assert [r["layer"] for r in rows] == [1, 2]
    for r in rows:
        assert r["verdict"] in ("as trained", "reversed", "sign-blind", "unclear")
        assert r["plus_low"] <= r["effect_plus"] <= r["plus_high"]
        assert r["n_items"] == 8
