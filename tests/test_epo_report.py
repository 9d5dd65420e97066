"""`steerlab.epo.report`: markdown tables from a saved epo.json, no model needed."""

from __future__ import annotations

from steerlab.epo import EPOConfig, EPOResult, EPOStep, FrontierPoint
from steerlab.epo.report import main, run_markdown


def _result() -> EPOResult:
    ci = {"mean": -0.05, "low": -0.09, "high": -0.01, "n": 30}
    pts = [FrontierPoint([1, 2], "calm | text", -1.5, 4.8, 3,
                         {"score_steered": 0.52, "change_vs_steered": ci, "change_vs_unsteered": ci,
                          "score_steered_attack_items": 0.4}),
           FrontierPoint([3, 4], "odd\ntext", -1.0, 9.5, 7,
                         {"score_steered": 0.50, "change_vs_steered": ci, "change_vs_unsteered": ci,
                          "score_steered_text": 0.51, "score_unsteered_text": 0.49})]
    cfg = EPOConfig(seq_len=2, iterations=7, children=4)
    return EPOResult(cfg, cfg.lambdas().tolist(), pts, [EPOStep(0, [[1, 2]], [-1.5], [4.8], -1.5, 1, 0.1)], seconds=14.0,
                     n_evaluated=9, reference={"natural_xent": 4.5, "natural_target": -2.0, "natural_snippet_xents": [4.5]},
                     evaluation={"n_items": 30, "natural_unsteered": 0.5, "natural_steered": 0.57,
                                 "steering_effect": {"mean": 0.07, "low": 0.01, "high": 0.13, "n": 30},
                                 "evaluated_points": [0, 1], "question_xent_mean": 3.6, "seconds": 5.0,
                                 "attack_items": {"n_items": 2, "natural_unsteered": 0.4, "natural_steered": 0.45}},
                     meta={"behaviour": "toy", "layer": 11, "strength": 12.0, "positions": "all", "n_attack": 2,
                           "loadavg_before_search": [1.0, 2.0, 3.0], "torch_threads": 1})


def test_markdown_has_the_numbers(tmp_path, capsys):
    md = run_markdown(_result())
    assert "layer 11, strength +12, positions `all`" in md
    assert "unsteered 0.500, steered 0.570" in md and "+0.070 [+0.010, +0.130]" in md
    assert "| 4.80 | -1.500 | 0.520 | -0.050 [-0.090, -0.010] |" in md
    assert "`calm \\| text`" in md and "`odd\\ntext`" in md  # table-safe
    assert "steered 0.510, unsteered 0.490" in md
    assert "4.80–9.50 (2 points)" in md and "same slot 4.50" in md and "prompt 3.60" in md
    assert "2.0 s/iteration" in md and "1.0/2.0/3.0" in md
    _result().save(tmp_path / "run", plot=False)
    assert main([str(tmp_path / "run")]) == 0
    assert "#### toy" in capsys.readouterr().out


def test_plot_takes_sequences_with_math_characters(tmp_path):
    """Found sequences are arbitrary tokens; one with "$" once crashed the frontier plot (matplotlib math mode)."""
    res = _result()
    res.frontier[0].text = ' TuscaCOSa("^$cows+^$", //'  # found on the 1.5B model
    res.save(tmp_path / "run")
    assert (tmp_path / "run" / "epo_frontier.png").stat().st_size > 1000
