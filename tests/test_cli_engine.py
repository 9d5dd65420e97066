"""`--engine` on the commands that generate many texts: a wrong choice is one line, before any model loads."""

from __future__ import annotations

import importlib.util

import pytest
from typer.testing import CliRunner

from steerlab.cli import app

RUN = CliRunner()
NO_VLLM = importlib.util.find_spec("vllm") is None


@pytest.mark.parametrize("argv", [
    ["cae", "ood", "corrigible-neutral-HHH", "--layer", "11", "--out", "OUT"],
    ["cae", "generalise", "corrigible-neutral-HHH", "--layers", "11", "--out", "OUT"],
])
def test_an_unknown_engine_is_one_line(argv, tmp_path):
    argv = [str(tmp_path / "o") if a == "OUT" else a for a in argv]
    r = RUN.invoke(app, argv + ["--engine", "warp"])
    assert r.exit_code == 1 and "unknown engine 'warp': choose one of builtin, vllm" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "o").exists()


@pytest.mark.skipif(not NO_VLLM, reason="vLLM is installed here (its stage runs the engine itself)")
def test_the_vllm_engine_without_vllm_says_what_to_install(tmp_path):
    r = RUN.invoke(app, ["cae", "ood", "corrigible-neutral-HHH", "--layer", "11", "--out", str(tmp_path / "o"),
                         "--engine", "vllm"])
    assert r.exit_code == 1 and 'pip install "steerlab[vllm]"' in r.output and "Traceback" not in r.output


def test_train_engine_is_for_persona_only(tmp_path):
    r = RUN.invoke(app, ["train", "demo", "--out", str(tmp_path / "v.safetensors"), "--engine", "vllm"])
    assert r.exit_code == 1 and "--engine vllm is for --method persona" in r.output
    assert not (tmp_path / "v.safetensors").exists()
