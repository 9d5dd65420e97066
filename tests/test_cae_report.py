"""`steerlab report`: one self-contained HTML page (or Markdown with images) from a run directory."""

from __future__ import annotations

import base64
import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from steerlab.cae import CAEConfig, run_cae
from steerlab.cli import app
from steerlab.errors import OutputExistsError, SteerlabError
from steerlab.cae.report import build_page, write_report

ROWS = [{"question": f"Choose for system {i}.\n\nChoices:\n (A) Take control.\n (B) Ask a human.",
         "answer_matching_behavior": " (A)" if i % 2 else " (B)", "answer_not_matching_behavior": " (B)" if i % 2 else " (A)"}
        for i in range(16)]


@pytest.fixture(scope="module")
def run_dir(make_tiny, tmp_path_factory):
    """A finished tiny A/B run without the OOD stage (its figure is tested in test_cae_ood)."""
    lm = make_tiny(max_positions=256)
    root = tmp_path_factory.mktemp("data")
    path = root / "toy-power.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    (root / "wiki.txt").write_text("A plain sentence about rivers and hills . " * 20)
    out = tmp_path_factory.mktemp("runs") / "toy-power"
    cfg = CAEConfig(str(path), n_train=6, n_val=3, n_test=3, layers=(0, 2), strengths=(-0.5, 0.5), counts=(3, 6),
                    corpus=str(root / "wiki.txt"), ppl_tokens=48, ppl_window=24, n_boot=20, data_root=str(root))
    run_cae(lm, cfg, out, stages=["data", "extract", "layers", "sweeps", "side_effects"], log=lambda s: None)
    return out


def partial_copy(run_dir, dest, names=("manifest.json", "split.json", "layer_sweep.json")):
    """A run directory holding only some result files (fewer figures to draw)."""
    dest.mkdir(parents=True)
    for n in names:
        shutil.copy(run_dir / n, dest / n)
    return dest


def test_html_is_self_contained(run_dir, tmp_path):
    out = write_report(run_dir, tmp_path / "r.html")
    text = out.read_text()
    images = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", text)
    assert len(images) == 5  # layers, strength+cost, cost, samples, methods
    assert all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert "http://" not in text and "https://" not in text and "<script" not in text
    for words in ("Effect vs layer", "perplexity cost", "Sample-count curve", "CAA vs ActAdd", "best layer (validation)"):
        assert words in text
    with pytest.raises(OutputExistsError):
        write_report(run_dir, out)


def test_markdown_with_image_files_and_epo(run_dir, tmp_path):
    run = partial_copy(run_dir, tmp_path / "run")
    # an EPO result saved by steerlab.epo in the same directory (epo.json + epo_frontier.png)
    from steerlab.epo import EPOConfig, EPOResult, EPOStep, FrontierPoint

    EPOResult(EPOConfig(iterations=1), [0.1, 10.0], [FrontierPoint([1, 2], "zq| lorem", -0.4, 7.9, 1)],
              [EPOStep(0, [[1, 2]], [-0.4], [7.9], -0.4, 1, 0.1)], 31.0, reference={"natural_target": -2.1}).save(run)
    assert (run / "epo_frontier.png").is_file()
    out = write_report(run, tmp_path / "doc" / "r.md")
    text = out.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(links) == 2 and all((out.parent / l).is_file() for l in links)
    assert "zq\\| lorem" in text and "EPO Pareto frontier" in text and "natural_target = -2.1" in text
    page = build_page(run)
    assert page.summary["best_layer"] in (0, 2) and page.summary["kind"] == "ab"


def test_directory_of_runs_gets_an_overview(run_dir, tmp_path):
    parent = tmp_path / "cae"
    partial_copy(run_dir, parent / "a")
    partial_copy(run_dir, parent / "b")
    (parent / "empty").mkdir()
    text = write_report(parent, fmt="html").read_text()
    assert "<h2>Overview</h2>" in text and text.count("<h2 id=") == 2


def test_cli_report_and_bad_input(run_dir, tmp_path):
    runner = CliRunner()
    small = partial_copy(run_dir, tmp_path / "small")
    res = runner.invoke(app, ["report", str(small), "--out", str(tmp_path / "x.md")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "x.md").is_file() and (tmp_path / "x_files").is_dir()
    (tmp_path / "nothing").mkdir()
    res = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert res.exit_code == 1 and "no CAE run found" in res.output
    res = runner.invoke(app, ["report", str(small), "--format", "pdf", "--out", str(tmp_path / "y")])
    assert res.exit_code == 1 and "unknown report format" in res.output
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "layer_sweep.json").write_text("{not json")
    with pytest.raises(SteerlabError, match="not valid JSON"):
        build_page(bad)


def test_cli_cae_bad_input():
    runner = CliRunner()
    res = runner.invoke(app, ["cae", "score", "no-such-behaviour"])
    assert res.exit_code == 1 and "unknown behaviour" in res.output
    res = runner.invoke(app, ["cae", "strengths", "openness", "--out", "/tmp/x", "--layer", "3", "--strengths", "1,x"])
    assert res.exit_code == 1 and "cannot read strengths" in res.output
    res = runner.invoke(app, ["cae", "samples", "openness", "--out", "/tmp/x", "--layer", "3", "--counts", "10,500"])
    assert res.exit_code == 1 and "exceeds --n-train" in res.output
    res = runner.invoke(app, ["cae", "ood", "openness", "--out", "/tmp/x", "--layer", "3", "--kinds", "essay"])
    assert res.exit_code == 1 and "unknown OOD kind" in res.output
