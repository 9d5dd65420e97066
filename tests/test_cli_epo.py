"""`steerlab attack` (EPO) from the shell, on tiny random models over the real tokenizer.

End to end with tiny iteration counts: files written, overwrite refused without --force, the
target-string mode; bad input gives one line and exit 1 before any computation (the model is never
run, and is not even loaded when the model is not needed for the check); the options reach
`run_attack` as given.
"""

from __future__ import annotations

import importlib
import json

import pytest
from typer.testing import CliRunner

from steerlab.epo import EPOConfig, EPOResult
from steerlab.epo import runs as epo_runs
from steerlab.cli import app

cli_epo = importlib.import_module("steerlab.cli.epo")

runner = CliRunner()
TINY = ["--iterations", "2", "--population", "2", "--children", "2", "--top-k", "8", "--seq-len", "3",
        "--restart-every", "0", "--quiet"]
BEHAVIOUR = ["--behaviour", "power-seeking-inclination", "--layer", "1", "--strength", "4", "--n-train", "3",
             "--n-attack", "2", "--n-test", "2", "--n-sign", "2", "--eval-points", "2"]


def _has_data() -> bool:
    from steerlab.data import default_data_root

    return default_data_root() is not None


@pytest.fixture(scope="module")
def tiny(make_tiny):
    return make_tiny(layers=2, max_positions=1024, seed=9)


@pytest.fixture()
def loaded(monkeypatch, tiny):
    """Replace the CLI's model loader by the tiny model; records loads and forward passes."""
    calls = {"load": 0, "forward": 0}

    def load(model):
        calls["load"] += 1
        return tiny

    handle = tiny.model.register_forward_pre_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1))
    monkeypatch.setattr(cli_epo, "load_model", load)
    yield calls
    handle.remove()


def _one_line_error(r, match: str) -> None:
    assert r.exit_code == 1, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and match in lines[0], r.output


def test_defaults_match_the_config_and_the_options():
    import dataclasses

    import typer

    d = EPOConfig()
    cmd = typer.main.get_command(app).commands["attack"]
    cli = {p.name: p.default for p in cmd.params}
    for name in ("seq_len", "population", "lambda_min", "lambda_max", "children", "top_k", "iterations",
                 "restart_every", "seed", "vocab", "chunk_rows", "fast_dtype"):
        assert cli[name] == getattr(d, name), name
    opts = epo_runs.AttackOptions()
    for f in dataclasses.fields(opts):
        if f.name in cli and f.name not in ("separator", "out", "force", "threads", "auto_sign"):
            assert cli[f.name] == getattr(opts, f.name), f.name
    assert cli["auto_sign"] is opts.auto_sign is True


@pytest.mark.skipif(not _has_data(), reason="no data root")
def test_attack_behaviour_writes_a_run_directory(loaded, tmp_path):
    out = tmp_path / "run"
    r = runner.invoke(app, ["attack", *BEHAVIOUR, *TINY, "--positions", "all", "--out", str(out)])
    assert r.exit_code == 0, r.output
    for f in ("epo.json", "epo_frontier.png", "vector.safetensors"):
        assert (out / f).is_file(), f
    res = EPOResult.load(out)
    assert res.config.iterations == 2 and res.config.children == 2 and len(res.history) == 3
    assert res.meta["layer"] == 1 and abs(res.meta["strength"]) == 4.0 and res.meta["positions"] == "all"
    assert res.evaluation["n_items"] == 2 and "natural_xent" in res.reference
    assert "frontier" in r.output and "natural prompts" in r.output
    before = (out / "epo.json").read_text()
    loads = loaded["load"]
    again = runner.invoke(app, ["attack", *BEHAVIOUR, *TINY, "--out", str(out)])
    _one_line_error(again, "--force")
    assert loaded["load"] == loads and (out / "epo.json").read_text() == before  # refused before loading
    forced = runner.invoke(app, ["attack", *BEHAVIOUR, *TINY, "--seed", "1", "--out", str(out), "--force"])
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / "epo.json").read_text())["config"]["seed"] == 1
    # re-evaluation of the saved run, and the vector file as --vector
    re = runner.invoke(app, ["attack", "--reevaluate", str(out), "--eval-points", "2", "--quiet"])
    assert re.exit_code == 0, re.output
    out2 = tmp_path / "run2"
    v = runner.invoke(app, ["attack", *BEHAVIOUR, *TINY, "--vector", str(out / "vector.safetensors"),
                            "--no-auto-sign", "--out", str(out2)])
    assert v.exit_code == 0, v.output
    assert EPOResult.load(out2).meta["strength"] == 4.0 and "sign_check" not in EPOResult.load(out2).meta


def test_attack_target_string(loaded, tmp_path):
    out = tmp_path / "s"
    r = runner.invoke(app, ["attack", "--target", " Paris", "--prompt", "Name a city.", "--separator", "\\n",
                            *TINY, "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = EPOResult.load(out)
    assert res.meta["target"] == " Paris" and res.meta["separator"] == "\n" and res.frontier
    assert (out / "epo_frontier.png").is_file()


@pytest.mark.parametrize("args,match,needs_model", [
    (["--target", "", "--prompt", "Hi"], "target string is empty", False),
    (["--target", "x", "--prompt", "Hi", "--iterations", "0"], "iteration budget", False),
    (["--target", "x", "--prompt", "Hi", "--iterations", "-5"], "iteration budget", False),
    ([*BEHAVIOUR, "--iterations", "0"], "iteration budget", False),
    (["--target", "x", "--prompt", "Hi", "--seq-len", "0"], "seq_len", False),
    (["--target", "x", "--prompt", "Hi", "--vocab", "klingon"], "vocabulary filter", False),
    (["--target", "x"], "--prompt", False),
    (["--prompt", "Hi"], "either --behaviour", False),
    (["--reevaluate", "no-such-dir"], "no EPO result", False),
    ([*BEHAVIOUR, "--target", "x"], "not both", False),
    (["--behaviour", "power-seeking-inclination", "--layer", "1"], "--strength", False),
    (["--behaviour", "no-such-behaviour", "--layer", "1", "--strength", "4"], "no-such-behaviour", False),
    (["--target", "x", "--prompt", "Hi", "--allowed-ids", "1,a"], "token ids", False),
    (["--target", "x", "--prompt", "Hi", "--vector", "missing.safetensors", "--layer", "1", "--strength", "2"],
     "not found", False),
    (["--target", "x", "--prompt", "Hi", "--threads", "0"], "threads", False),
    # checks that need the tokenizer / the context size: the model is loaded, never run
    (["--target", "x", "--prompt", "Hi", "--seq-len", "2000"], "context window", True),
    (["--target", "x", "--prompt", "Hi", "--seq-len", "1020"], "context", True),  # fits alone, not with the prompt
    ([*BEHAVIOUR, "--seq-len", "2000"], "context window", True),
    (["--target", "x", "--prompt", "Hi", "--allowed-ids", "0,1,2"], "no allowed tokens", True),  # specials only
    ([*BEHAVIOUR, "--allowed-ids", "0,1,2"], "no allowed tokens", True),
    (["--target", "x", "--prompt", "Hi", "--vocab", "all", "--allowed-ids", "999999999"], "no allowed tokens", True),
    ([*BEHAVIOUR, "--n-attack", "0"], "empty", True),
])
def test_bad_input_fails_with_one_line_before_computation(loaded, tmp_path, args, match, needs_model):
    if "power-seeking-inclination" in args and not _has_data():
        pytest.skip("no data root")
    r = runner.invoke(app, ["attack", *args, "--out", str(tmp_path / "run")])
    _one_line_error(r, match)
    assert loaded["forward"] == 0, "the model ran before the error"
    if not needs_model:
        assert loaded["load"] == 0, "the model was loaded for a check that needs none"
    assert not (tmp_path / "run" / "epo.json").exists()


def test_cli_builds_the_options_it_is_given(monkeypatch, tmp_path):
    seen = []

    def fake(opts, **kw):
        seen.append(opts)
        raise epo_runs.SteerlabError("stop here")

    monkeypatch.setattr(epo_runs, "run_attack", fake)
    args = [*BEHAVIOUR, "--positions", "all", "--iterations", "7", "--children", "3", "--fast-dtype", "bfloat16",
            "--allowed-ids", "5,6,7", "--separator", "\\n", "--threads", "1", "--out", str(tmp_path / "r")]
    r = runner.invoke(app, ["attack", *args])
    _one_line_error(r, "stop here")
    (cli_opts,) = seen
    assert cli_opts.positions == "all" and cli_opts.threads == 1 and cli_opts.config.children == 3
    assert cli_opts.config.fast_dtype == "bfloat16" and str(cli_opts.out) == str(tmp_path / "r")
    assert cli_opts.config.allowed_ids == (5, 6, 7) and cli_opts.separator == "\n" and cli_opts.config.iterations == 7


def test_out_is_required_except_for_reevaluate(loaded):
    r = runner.invoke(app, ["attack", "--target", "x", "--prompt", "Hi"])
    _one_line_error(r, "--out")
    assert loaded["load"] == 0
