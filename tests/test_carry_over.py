"""What predicts carry-over (steerlab.cae.carry_over): the read-out over unsteered responses only, Spearman ρ with
an interval that resamples behaviours, and the per-method rows, each against the computation by hand."""

from dataclasses import replace

import numpy as np
import pytest
from scipy.stats import spearmanr

from steerlab.cae.carry_over import carry_over_rows, carry_over_table, room_table, rooms, spearman_by_behaviour
from steerlab.cae.generalise_report import CellReport, unsteered_readout


def test_unsteered_readout_uses_the_unsteered_responses_of_every_kind_only():
    rng = np.random.default_rng(0)
    proj, judge = rng.normal(size=8), rng.normal(size=8)
    recs = [{"sign": "unsteered", "kind": "open-ended" if i % 2 else "choice-qa", "projection": float(a),
             "judge": float(b)} for i, (a, b) in enumerate(zip(proj, judge))]
    want = float(np.corrcoef(proj, judge)[0, 1])
    steered = [{"sign": s, "kind": "open-ended", "projection": 10.0 * k, "judge": 1.0 * k}
               for s in ("+r", "-r") for k in range(5)]
    empty = [{"sign": "unsteered", "kind": "open-ended", "projection": None, "judge": 0.9}]
    assert unsteered_readout(recs + steered + empty) == pytest.approx(want)
    assert unsteered_readout(recs[:2] + steered) is None  # too few unsteered responses
    assert unsteered_readout([{**r, "judge": 0.5} for r in recs]) is None  # a constant judge: no r


def test_spearman_by_behaviour_is_scipys_rho_with_behaviours_resampled_whole():
    rng = np.random.default_rng(1)
    behaviours = [f"b{i // 3}" for i in range(18)]  # 6 behaviours × 3 cells
    x = rng.normal(size=18)
    y = x + rng.normal(scale=0.7, size=18)
    rho, lo, hi = spearman_by_behaviour(behaviours, x, y)
    assert rho == pytest.approx(spearmanr(x, y)[0]) and lo <= rho <= hi and lo > 0
    # a perfectly monotone relation: every resample of behaviours gives 1
    assert spearman_by_behaviour(behaviours, x, 2 * x) == pytest.approx((1.0, 1.0, 1.0))
    assert spearman_by_behaviour(behaviours[:12], x[:12], y[:12]) is None  # 4 behaviours: too few
    assert spearman_by_behaviour(behaviours, x, np.ones(18)) is None


def _cell(behaviour, method, plus, minus, in_plus=0.1, in_minus=-0.1, readout=0.5, auc=0.9, seed=0, ppl=(1.2, 1.1)):
    return CellReport(behaviour, method, seed, 10, 0.5, auc, (in_plus, in_plus - 0.05, in_plus + 0.05),
                      (in_minus, in_minus - 0.05, in_minus + 0.05),
                      {"open-ended +r": plus, "open-ended -r": minus}, *ppl, readout_r=readout)


def test_carry_over_rows_by_hand():
    a = _cell("a", "caa", (0.10, 0.02, 0.20), (-0.10, -0.20, -0.01), in_plus=0.3, in_minus=-0.1, readout=0.6)
    b = _cell("b", "caa", (-0.08, -0.15, -0.01), (0.00, -0.05, 0.05), in_plus=0.1, in_minus=-0.3, readout=-0.4,
              ppl=(1.6, 1.0))
    c = _cell("c", "persona", (0.02, -0.05, 0.08), (0.06, 0.01, 0.12), readout=None)
    blind = _cell("d", "persona", (0.5, 0.4, 0.6), (-0.5, -0.6, -0.4), auc=0.7)  # judge cannot tell: left out
    rows = carry_over_rows([c, a, blind, b])
    assert [r.method for r in rows] == ["caa", "persona", "all"]
    caa, persona, every = rows
    assert (caa.cells, caa.behaviours) == (2, 2)
    assert caa.in_dist == pytest.approx(((0.3 + 0.1) / 2 + (0.1 + 0.3) / 2) / 2)
    assert caa.ood == pytest.approx(((0.10 + 0.10) / 2 + (-0.08 - 0.00) / 2) / 2)
    assert (caa.right_plus, caa.reversed_plus, caa.right_minus, caa.reversed_minus) == (1, 1, 1, 0)
    assert caa.readout == pytest.approx(0.1) and (caa.readout_cells, caa.readout_positive) == (2, 1)
    assert caa.rho_in_dist is None and caa.rho_readout is None  # two behaviours: no ρ
    assert (caa.ppl_plus, caa.ppl_minus) == pytest.approx((1.4, 1.05)) and (caa.over_cap_plus, caa.over_cap_minus) == (1, 0)
    assert caa.half_width == pytest.approx(np.median([0.09, 0.07, 0.095, 0.05]))
    assert persona.readout is None and persona.readout_cells == 0 and persona.reversed_minus == 1
    assert every.cells == 3 and every.readout_cells == 2
    line = carry_over_table([a, b]).splitlines()[2]
    assert line == "| caa | 2 (2) | +0.200 | +0.030 | 1 / 1 · 1 / 0 | – | +0.10 (1 of 2) | – | ×1.40 / 1.05 (1 / 0) | 0.080 |"
    # with five behaviours the ρ columns fill in, and equal scipy's over the cells
    many = [replace(a, behaviour=f"x{i}", readout_r=0.1 * i, in_plus=(0.1 * i, 0, 0),
                    ood={"open-ended +r": (0.02 * i, 0, 0), "open-ended -r": (-0.01 * i * i, 0, 0)}) for i in range(5)]
    row = carry_over_rows(many)[0]
    ood = [(0.02 * i + 0.01 * i * i) / 2 for i in range(5)]
    assert row.rho_readout[0] == pytest.approx(spearmanr([0.1 * i for i in range(5)], ood)[0]) == pytest.approx(1.0)
    assert row.rho_in_dist[0] == pytest.approx(1.0)


def test_rooms_place_the_unsteered_score_between_the_labelled_means():
    a = _cell("a", "caa", (0.1, 0.0, 0.2), (-0.1, -0.2, 0.0))
    # two run directories of one behaviour: their unsteered scores averaged once each, whatever their cell counts
    cells = [replace(a, labelled=(0.8, 0.4), unsteered_open=0.5), replace(a, seed=1, labelled=(0.8, 0.4), unsteered_open=0.5),
             replace(a, method="bipo", labelled=(0.8, 0.4), unsteered_open=0.7),
             replace(a, behaviour="blind", judge_auc=0.7, labelled=(0.6, 0.5), unsteered_open=0.55),  # judge cannot tell
             replace(a, behaviour="old", labelled=None, unsteered_open=0.5)]  # a run without its judge check
    (room,) = rooms(cells)
    assert (room.behaviour, room.not_matching, room.matching) == ("a", 0.4, 0.8)
    assert room.unsteered == pytest.approx(0.6)
    assert room_table(cells).splitlines()[2] == "| a | 0.90 | 0.40 | 0.60 | 0.80 | +0.20 / +0.20 |"
