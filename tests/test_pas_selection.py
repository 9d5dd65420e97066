"""`run_pas` against a brute force: the same splits, the unsteered answers, the vector, every grid
point's validation accuracy and the chosen point's test accuracy recomputed with the naive scorer
(one full forward per setting) and letter probabilities summed over spellings by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from steerlab.pas.runs import (default_layers, default_strengths, evaluate_transfer, icl_prefix, run_pas,
                                   select_best)
from steerlab.pas.splits import make_splits
from steerlab.data.records import MCItem
from steerlab.encoding import format_prompt
from steerlab.engine import ScoringItem, Setting, score_naive
from steerlab.errors import DatasetError, PromptTooLongError, SteerlabError
from steerlab.methods.pas import PASExample, train_pas

WORDS = ["red", "blue", "green", "cat", "dog", "tree", "sun", "moon", "rain", "salt", "milk", "gold"]


def _items(n=20, source="toyset"):
    out = []
    for i in range(n):
        k = 2 + i % 3
        choices = tuple(f"{WORDS[(i + j) % len(WORDS)]} {j}" for j in range(k))
        out.append(MCItem(f"Question {i}: which one?", choices, (i * 7) % k, source=source, index=i))
    return out


def _letter_logp(lm, shown, settings, prefix=""):
    """[settings, items, letters] log p(letter) = log(p('X') + p(' X')) normalised over letters, by hand."""
    prompts = []
    for it, order in shown:
        text = prefix + "\n".join([it.question] + [f"{'ABCD'[k]}: {it.choices[i]}" for k, i in enumerate(order)]
                                  + ["Respond with a single letter.", "Answer:"])
        prompts.append(format_prompt(lm, text))
    items = [ScoringItem(p, tuple("ABCD"[:len(o)]) + tuple(" " + c for c in "ABCD"[:len(o)]))
             for p, (_, o) in zip(prompts, shown)]
    lp = score_naive(lm, items, settings).logprobs.double()
    out = torch.full((len(settings), len(shown), 4), -math.inf, dtype=torch.float64)
    for i, (_, o) in enumerate(shown):
        n = len(o)
        out[:, i, :n] = torch.logaddexp(lp[:, i, :n], lp[:, i, n:2 * n])
    return out - torch.logsumexp(out, -1, keepdim=True)


def _acc(logp, shown):
    gold = torch.tensor([o.index(it.gold) for it, o in shown])
    return (logp.argmax(-1) == gold).double().mean(1), logp.gather(2, gold[None, :, None].expand(
        logp.shape[0], -1, 1)).squeeze(2).exp().mean(1)


def test_selection_matches_brute_force_with_naive_scoring(tiny_lm):
    lm, items, layers, strengths = tiny_lm, _items(30), [1, 2], [-8.0, 2.0, 8.0]
    res = run_pas(lm, items, "ipas-wo", seeds=[3], layers=layers, strengths=strengths)
    run = res.runs[0]
    got = run.methods["ipas-wo"]

    splits = make_splits(items, 3)  # what run_pas used for seed 3
    assert run.sizes == {"train": 18, "val": 6, "test": 6} == splits.sizes
    train_lp = _letter_logp(lm, splits.train, [Setting.unsteered()])
    preds = [o[int(j)] for (_, o), j in zip(splits.train, train_lp[0].argmax(-1))]
    assert run.train_accuracy == pytest.approx(float(_acc(train_lp, splits.train)[0][0]))
    vec = train_pas(lm, [PASExample(it, o, p) for (it, o), p in zip(splits.train, preds)], "ipas-wo", layers)
    grid = [(l, s) for l in layers for s in strengths]
    val_lp = _letter_logp(lm, splits.val, [Setting.unsteered()] + [Setting.single(vec, l, s, "last_prompt")
                                                                   for l, s in grid])
    acc, gold_p = _acc(val_lp, splits.val)
    flat = [v for row in got.grid_accuracy for v in row]
    assert flat == pytest.approx([float(a) for a in acc[1:]])
    best = max(range(len(grid)), key=lambda k: (float(acc[1 + k]), float(gold_p[1 + k]), -abs(grid[k][1]), -grid[k][0]))
    assert (got.layer, got.strength) == grid[best]
    assert run.val_unsteered == pytest.approx(float(acc[0])) and got.val_accuracy == pytest.approx(float(acc[1 + best]))

    test_lp = _letter_logp(lm, splits.test, [Setting.unsteered(), Setting.single(vec, *grid[best], "last_prompt")])
    tacc, _ = _acc(test_lp, splits.test)
    assert run.test_unsteered == pytest.approx(float(tacc[0]))
    assert got.test_accuracy == pytest.approx(float(tacc[1]))
    assert got.delta == pytest.approx(float(tacc[1] - tacc[0]))
    torch.testing.assert_close(got.vector[got.layer], vec[got.layer], atol=1e-6, rtol=1e-6)
    e = got.vector.meta
    assert (list(e.selected_layers), e.strength, e.positions) == ([got.layer], got.strength, "last_prompt")

    # the saved vector is the best-validation seed's, with the selection summary attached
    v = res.vector("ipas-wo")
    assert v.meta.extra["selection_summary"]["n_seeds"] == 1
    assert v.meta.extra["selection_summary"]["delta"]["ci_low"] is None  # one seed: no interval, valid JSON
    json.loads(v.meta.to_json(), parse_constant=lambda c: pytest.fail(f"{c} in vector metadata"))
    tr = evaluate_transfer(lm, v, _items(10, "other"), cap=6)
    assert tr.layer == got.layer and tr.strength == got.strength and tr.n_items == 6


def test_tie_breaks():
    # equal accuracy: higher gold probability wins; then smaller |strength|; then the lower layer
    assert select_best([0.5, 0.5], [0.3, 0.4], [1, 2], [1, 1]) == 1
    assert select_best([0.5, 0.5, 0.5], [0.4, 0.4, 0.4], [2, 1, 1], [-1, 4, 1]) == 2
    assert select_best([0.5, 0.5], [0.4, 0.4], [3, 2], [4, 4]) == 1
    with pytest.raises(SteerlabError):
        select_best([], [], [], [])


def test_default_grid_scales_the_papers():
    assert default_layers(32) == [8, 11, 13, 14, 15, 16, 17, 19, 22, 25]
    assert default_layers(30) == [8, 10, 12, 13, 14, 15, 16, 18, 21, 23]
    assert default_layers(4) == [1, 2, 3]
    s = default_strengths()
    assert len(s) == 28 and s[14:] == [0.25, 0.5, 0.75, 1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 32]
    assert s[:14] == [-x for x in reversed(s[14:])]


def test_icl_and_several_methods(make_tiny, tiny_lm):
    with pytest.raises(PromptTooLongError, match=r"toyset item \d+: prompt \(\d+ tokens\)"):
        run_pas(tiny_lm, _items(25), "pasf", layers=[2], strengths=[1.0], icl_k=2)  # context of 128 tokens
    res = run_pas(make_tiny(max_positions=512), _items(25), ["pasf", "ipas-wo"], seeds=1, layers=[2], strengths=[1.0], icl_k=2)
    run = res.runs[0]
    assert len(run.icl_exemplars) == 2 and run.test_plain is not None
    assert run.sizes["train"] == 15  # splits are as without ICL; the exemplars then leave the training set
    assert run.methods["pasf"].n_positive + run.methods["pasf"].n_negative == 13
    ex = [it for it in _items(25) if it.index in run.icl_exemplars]
    order = tuple(range(len(ex[0].choices)))
    assert icl_prefix([(ex[0], order)]) == (ex[0].question + "\n" + "\n".join(
        f"{'ABCD'[k]}: {c}" for k, c in enumerate(ex[0].choices)) + "\nRespond with a single letter.\nAnswer: "
        + "ABCD"[ex[0].gold] + "\n\n")
    assert "Delta" in res.summary_table()


def test_model_right_on_every_training_item_is_named(tiny_lm):
    items = _items(10)
    # rewrite the gold answers to whatever the model picks, so it is right everywhere
    shown = [(it, tuple(range(len(it.choices)))) for it in items]
    picks = _letter_logp(tiny_lm, shown, [Setting.unsteered()])[0].argmax(-1)
    easy = [MCItem(it.question, it.choices, int(p), source="easy", index=it.index) for it, p in zip(items, picks)]
    with pytest.raises(DatasetError, match=r"easy seed 0: the unsteered model answers all 6 training items "
                                           r"correctly, so pasf has no negatives"):
        run_pas(tiny_lm, easy, ["pasf", "ipas-wo"], layers=[1], strengths=[1.0], choice_shuffle="none")


def test_bad_configuration(tiny_lm):
    with pytest.raises(DatasetError, match=r"toyset: 4 items give train/validation/test splits of 4/0/0; PAS needs "
                                           r"at least 2/1/1, i.e. 5 items"):
        run_pas(tiny_lm, _items(4), layers=[1], strengths=[1.0])
    with pytest.raises(SteerlabError, match="unknown position policy"):
        run_pas(tiny_lm, _items(), positions="first")
    with pytest.raises(SteerlabError, match="finite"):
        run_pas(tiny_lm, _items(), layers=[1], strengths=[float("nan")])
    with pytest.raises(SteerlabError, match="number of seeds"):
        run_pas(tiny_lm, _items(), seeds=0)


def test_fixed_choice_orders_reuse_outputs_across_seeds(tiny_lm):
    items = _items(20)
    fixed = run_pas(tiny_lm, items, ["pasf", "ipas-wo"], seeds=[0, 1], layers=[1], strengths=[2.0], choice_seed=5)
    alone = run_pas(tiny_lm, items, ["pasf", "ipas-wo"], seeds=[1], layers=[1], strengths=[2.0], choice_seed=5)
    a, b = fixed.runs[1], alone.runs[0]  # seed 1 after seed 0 (memo warm) equals seed 1 alone (memo cold)
    assert (a.train_accuracy, a.val_unsteered, a.test_unsteered) == (b.train_accuracy, b.val_unsteered, b.test_unsteered)
    for m in ("pasf", "ipas-wo"):
        torch.testing.assert_close(a.methods[m].vector[1], b.methods[m].vector[1], atol=1e-5, rtol=1e-5)
        assert a.methods[m].grid_accuracy == b.methods[m].grid_accuracy
    s0, s1 = make_splits(items, 0, choice_seed=5), make_splits(items, 1, choice_seed=5)
    orders0 = {it.index: o for part in (s0.train, s0.val, s0.test) for it, o in part}
    assert all(orders0[it.index] == o for part in (s1.train, s1.val, s1.test) for it, o in part)
