"""The shipped demo contrast moves the embedded model the trained way, in both directions.

Measured, not assumed: a CAA vector from the first 40 demo pairs (mean reading position, layer 12)
must raise log p(cheerful) - log p(gloomy) on the 8 held-apart pairs at +6 and lower it at -6, with
the 95% interval of the paired per-item change excluding zero. (Probe over layers 3-24: see
docs/findings.md.)
"""

from __future__ import annotations

import pytest

import steerlab as sl
from steerlab.data.demo import DEMO_LAYER, DEMO_TRAIN, demo_pairs
from steerlab.effect import EffectReport


@pytest.fixture(scope="module")
def demo_vector(real_lm):
    return sl.train_caa(real_lm, demo_pairs()[:DEMO_TRAIN], [DEMO_LAYER], position="mean")


def test_demo_vector_effect_has_the_trained_sign_both_ways(real_lm, demo_vector):
    held = demo_pairs()[DEMO_TRAIN:]
    rep = sl.measure_effect(real_lm, demo_vector, held, strengths=[-6.0, 6.0], positions="after_user")
    assert rep.shift(6.0) > 0.2 and rep.shift_ci(6.0)[0] > 0
    assert rep.shift(-6.0) < -0.2 and rep.shift_ci(-6.0)[1] < 0
    assert rep.direction == "as trained" and rep.monotonic


def test_effect_report_arithmetic():
    rep = EffectReport(layers=(3,), positions="all", strengths=[-1.0, 0.0, 1.0],
                       gaps={-1.0: [0.0, 1.0], 0.0: [1.0, 2.0], 1.0: [3.0, 2.0]})
    assert rep.mean_gap(0.0) == 1.5 and rep.shift(1.0) == 1.0 and rep.shift(-1.0) == -1.0
    lo, hi = rep.shift_ci(1.0)  # per-item changes 2 and 0: mean 1, sd sqrt(2)
    assert lo == pytest.approx(1 - 1.96) and hi == pytest.approx(1 + 1.96)
    assert rep.monotonic and rep.direction == "unclear"  # the +1 interval includes zero
    rev = EffectReport(layers=(3,), positions="all", strengths=[0.0, 1.0], gaps={0.0: [1.0, 1.0], 1.0: [0.0, 0.1]})
    assert rev.direction == "reversed"
