"""The command line: the train → info → export → generate flow, and one clear line for bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from steerlab.cli import app, parse_layers
from steerlab.errors import SteerlabError
from steerlab.vector import SteeringVector

runner = CliRunner()


def run(*args):
    res = runner.invoke(app, [str(a) for a in args])
    text = res.output + (getattr(res, "stderr", "") if res.stderr_bytes is not None else "")
    return res.exit_code, text


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, make_tiny):
    """Two tiny checkpoints on disk (hidden 32 and 48) that the CLI loads with --model."""
    dirs = {}
    for hidden in (32, 48):
        d = tmp_path_factory.mktemp(f"tiny{hidden}")
        lm = make_tiny(hidden=hidden)
        lm.model.save_pretrained(d)
        lm.tokenizer.save_pretrained(d)
        dirs[hidden] = d
    return dirs


@pytest.fixture
def pairs_file(tmp_path):
    p = tmp_path / "pairs.jsonl"
    rows = [{"prompt": f"Question {i}?", "positive": f"Happy answer {i}", "negative": f"Sad answer {i}"} for i in range(6)]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return p


def test_train_info_export_generate(tmp_path, pairs_file, model_dirs):
    vec = tmp_path / "v.safetensors"
    code, out = run("train", pairs_file, "--out", vec, "--layers", "1-2", "--model", model_dirs[32])
    assert code == 0, out
    v = SteeringVector.load(vec)
    assert v.layers == (1, 2) and v.meta.method == "caa" and v.meta.n_train == 6
    code, out = run("info", vec)
    assert code == 0 and "caa" in out and "1 (" in out
    code, out = run("export-gguf", vec, tmp_path / "v.gguf")
    assert code == 0, out
    assert torch.equal(SteeringVector.load(tmp_path / "v.gguf")[2], v[2])
    code, out = run("generate", "Hello there", "--vector", vec, "--strength", "3", "--compare",
                    "--max-new-tokens", "4", "--model", model_dirs[32])
    assert code == 0, out
    assert "unsteered" in out and "steered" in out


def test_mwe_file_and_actadd(tmp_path, model_dirs):
    mwe = tmp_path / "mwe.jsonl"
    rows = [{"question": f"Q{i}\n\nChoices:\n (A) yes\n (B) no", "answer_matching_behavior": " (A)",
             "answer_not_matching_behavior": " (B)"} for i in range(4)]
    mwe.write_text("\n".join(json.dumps(r) for r in rows))
    code, out = run("train", mwe, "--out", tmp_path / "m.safetensors", "--layers", "0", "--model", model_dirs[32])
    assert code == 0, out
    code, out = run("train", "-", "--method", "actadd", "--positive", "Love", "--negative", "Hate",
                    "--out", tmp_path / "a.safetensors", "--layers", "1", "--model", model_dirs[32])
    assert code == 0, out
    assert SteeringVector.load(tmp_path / "a.safetensors").per_position


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "a", "positive": "b", "negative": "c"}\n{"prompt": "a", "positive": \n', "line 2"),
    ('{"prompt": "a", "positive": "b"}\n', "negative"),
    ("", "empty"),
])
def test_bad_datasets(tmp_path, model_dirs, content, message):
    data = tmp_path / "bad.jsonl"
    data.write_text(content)
    code, out = run("train", data, "--out", tmp_path / "v.safetensors", "--model", model_dirs[32])
    assert code == 1
    assert message in out and "Traceback" not in out
    assert not (tmp_path / "v.safetensors").exists()


def test_unknown_layer_and_missing_file(tmp_path, pairs_file, model_dirs):
    code, out = run("train", pairs_file, "--out", tmp_path / "v.safetensors", "--layers", "9", "--model", model_dirs[32])
    assert code == 1 and "out of range" in out
    code, out = run("train", tmp_path / "nope.jsonl", "--out", tmp_path / "v.safetensors")
    assert code == 1 and "not found" in out
    code, out = run("train", pairs_file, "--out", tmp_path / "v.safetensors", "--layers", "x-y")
    assert code == 1 and "cannot read layers" in out


def test_existing_output_is_not_overwritten(tmp_path, pairs_file, model_dirs):
    out_file = tmp_path / "v.safetensors"
    out_file.write_bytes(b"precious")
    code, out = run("train", pairs_file, "--out", out_file, "--layers", "1", "--model", model_dirs[32])
    assert code == 1 and "--force" in out
    assert out_file.read_bytes() == b"precious"
    code, out = run("train", pairs_file, "--out", out_file, "--layers", "1", "--model", model_dirs[32], "--force")
    assert code == 0 and SteeringVector.load(out_file).layers == (1,)
    gguf = tmp_path / "v.gguf"
    gguf.write_bytes(b"keep")
    code, out = run("export-gguf", out_file, gguf)
    assert code == 1 and gguf.read_bytes() == b"keep"


def test_nan_vector_and_vector_for_another_model(tmp_path, pairs_file, model_dirs):
    vec = tmp_path / "v.safetensors"
    assert run("train", pairs_file, "--out", vec, "--layers", "1", "--model", model_dirs[32])[0] == 0
    code, out = run("generate", "Hi", "--vector", vec, "--model", model_dirs[48], "--max-new-tokens", "2")
    assert code == 1 and "hidden size 32" in out
    tensors = load_file(vec)
    tensors["layer.1"][3] = math.nan
    from safetensors import safe_open

    with safe_open(str(vec), "pt") as f:
        meta = f.metadata()
    bad = tmp_path / "nan.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    for cmd in (["info", bad], ["generate", "Hi", "--vector", bad, "--model", model_dirs[32]]):
        code, out = run(*cmd)
        assert code == 1 and "NaN" in out and "Traceback" not in out


def test_over_long_prompt(model_dirs):
    code, out = run("generate", "word " * 400, "--model", model_dirs[32], "--max-new-tokens", "2")
    assert code == 1 and "context window" in out


def test_help_everywhere():
    for cmd in ([], ["train"], ["generate"], ["info"], ["export-gguf"], ["effect"], ["demo"]):
        code, out = run(*cmd, "--help")
        assert code == 0 and "Usage" in out


def test_parse_layers():
    assert parse_layers("10", 30) == [10]
    assert parse_layers("8,10, 12", 30) == [8, 10, 12]
    assert parse_layers("8-10", 30) == [8, 9, 10]
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers(None, 4) is None
    assert parse_layers("-1", 30) == [-1]
    with pytest.raises(SteerlabError):
        parse_layers("a", 30)
