"""The command line: the train → info → export → generate flow, and one clear line for bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from steerlab.cli import app
from steerlab.cli.common import parse_layers
from steerlab.errors import SteerlabError
from steerlab.vector import SteeringVector

runner = CliRunner()


def run(*args):
    res = runner.invoke(app, [str(a) for a in args])
    text = res.output + (getattr(res, "stderr", "") if res.stderr_bytes is not None else "")
    return res.exit_code, text


@pytest.fixture(scope="module")
def model_dirs(save_tiny):
    """Two tiny checkpoints on disk (hidden 32 and 48) that the CLI loads with --model."""
    return {hidden: save_tiny(hidden=hidden) for hidden in (32, 48)}


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


# --- checks that come before the model load, messages that speak CLI -------------------------------

@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if any command loads a model (the checks under test must come first)."""
    import steerlab.models

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(steerlab.models, "load_model", refuse)


def _bad_vectors(tmp_path, tiny_lm, vec_factory):
    vec = tmp_path / "v.safetensors"
    vec_factory(tiny_lm, [1], 0).save(vec)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(vec.read_bytes()[: vec.stat().st_size // 2])
    tensors = load_file(vec)
    tensors["layer.1"][0] = math.nan
    from safetensors import safe_open

    with safe_open(str(vec), "pt") as f:
        meta = f.metadata()
    nan = tmp_path / "nan.safetensors"
    save_file(tensors, str(nan), metadata=meta)
    return {"truncated": (truncated, "not a readable safetensors"), "nan": (nan, "NaN")}


def test_bad_vector_files_fail_before_the_model_load(tmp_path, pairs_file, model_dirs, tiny_lm, vec_factory,
                                                    no_model_load):
    mc = tmp_path / "mc.jsonl"
    mc.write_text("".join(json.dumps({"question": f"Q{i}?", "choices": ["a", "b"], "answer": i % 2}) + "\n"
                          for i in range(6)))
    yn = tmp_path / "yn.jsonl"
    yn.write_text("".join(json.dumps({"question": f"Say {i}?", "answer_matching_behavior": " Yes",
                                      "answer_not_matching_behavior": " No"}) + "\n" for i in range(6)))
    for name, (bad, message) in _bad_vectors(tmp_path, tiny_lm, vec_factory).items():
        for cmd in (["generate", "Hi", "--vector", bad], ["effect", bad, "demo"],
                    ["pas-transfer", bad, "--data", mc],
                    ["cae", "strengths", yn, "--out", tmp_path / "o", "--layer", "1", "--vector", bad,
                     "--n-train", "3", "--n-test", "3"]):
            code, out = run(*cmd, "--model", model_dirs[32])
            assert code == 1 and message in out and "Traceback" not in out, (name, cmd, out)


def test_layer_strings_fail_before_the_model_load(tmp_path, pairs_file, model_dirs, no_model_load):
    vec = tmp_path / "v.safetensors"
    for cmd in (["train", pairs_file, "--out", vec], ["generate", "Hi", "--vector", "x.safetensors"],
                ["effect", "x.safetensors", "demo"], ["pas", "--data", pairs_file, "--out", tmp_path / "o"],
                ["pas-sft", "--data", pairs_file, "--out", tmp_path / "o"]):
        code, out = run(*cmd, "--layers", "abc", "--model", model_dirs[32])
        assert code == 1 and "cannot read layers 'abc'" in out, (cmd, out)
    code, out = run("effect", "x.safetensors", "demo", "--strengths", "4,big", "--model", model_dirs[32])
    assert code == 1 and "cannot read strengths '4,big'" in out


def test_position_policies_fail_before_the_model_load(model_dirs, no_model_load):
    for cmd in (["generate", "Hi", "--vector", "x.safetensors"], ["effect", "x.safetensors", "demo"]):
        code, out = run(*cmd, "--positions", "middle", "--model", model_dirs[32])
        assert code == 1 and "unknown position policy 'middle': choose one of all, after_user, last_prompt" in out, (cmd, out)


def test_threads_on_every_model_command(tmp_path, pairs_file, model_dirs, monkeypatch):
    """--threads 0 is refused before the model load; --threads N reaches torch (2-core machines crawl without it)."""
    import steerlab.models

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(steerlab.models, "load_model", refuse)
    for cmd in (["train", pairs_file, "--out", tmp_path / "v.safetensors"], ["generate", "Hi"], ["effect", "x", "demo"],
                ["demo"], ["serve"], ["pas", "--data", pairs_file, "--out", tmp_path / "o"],
                ["pas-sft", "--data", pairs_file, "--out", tmp_path / "o"], ["pas-transfer", "x", "--data", pairs_file]):
        code, out = run(*cmd, "--threads", "0")
        assert code == 1 and "--threads must be at least 1" in out and "Traceback" not in out, (cmd, out)
    monkeypatch.undo()
    before = torch.get_num_threads()
    try:
        code, out = run("generate", "Hi", "--max-new-tokens", "2", "--threads", "1", "--model", model_dirs[32])
        assert code == 0, out
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_serve_without_fastapi_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn -> ImportError
    monkeypatch.setitem(sys.modules, "fastapi", None)
    code, out = run("serve")
    assert code == 1 and 'pip install "steerlab[server]"' in out, out


def test_markup_in_messages_and_outputs_is_printed_literally(tmp_path, model_dirs, monkeypatch):
    from steerlab.cli.common import cli_words

    assert cli_words("x already exists; pass force=True (--force) to overwrite it") == \
        "x already exists; pass --force to overwrite it"
    code, out = run("train", tmp_path / "[bold]missing[/].jsonl", "--out", tmp_path / "v.safetensors")
    assert code == 1 and "[bold]missing[/].jsonl" in out, out
    import importlib

    monkeypatch.setattr(importlib.import_module("steerlab.generation"), "generate", lambda lm, prompts, *a, **k: ["see [red]note[/red] [server]"] * len(prompts))
    code, out = run("generate", "What is [b]this[/b]?", "--model", model_dirs[32])
    assert code == 0 and "[red]note[/red] [server]" in out and "[b]this[/b]" in out, out


def test_export_gguf_speaks_cli(tmp_path, pairs_file, model_dirs):
    vec = tmp_path / "v.safetensors"
    assert run("train", pairs_file, "--out", vec, "--layers", "1", "--model", model_dirs[32])[0] == 0
    (tmp_path / "v.gguf").write_bytes(b"keep")
    code, out = run("export-gguf", vec, tmp_path / "v.gguf")
    assert code == 1 and "pass --force" in out and "force=True" not in out, out
    code, out = run("train", pairs_file, "--out", vec, "--layers", "1", "--model", model_dirs[32])
    assert code == 1 and "pass --force" in out and "force=True" not in out, out


def test_effect_offset_holds_items_apart(tmp_path, pairs_file, model_dirs, monkeypatch):
    vec = tmp_path / "v.safetensors"
    assert run("train", pairs_file, "--out", vec, "--layers", "1", "--limit", "4", "--model", model_dirs[32])[0] == 0
    import importlib

    effect_mod = importlib.import_module("steerlab.effect")
    seen = []
    real = effect_mod.measure_effect
    monkeypatch.setattr(effect_mod, "measure_effect", lambda lm, v, pairs, **kw: seen.append(pairs) or real(lm, v, pairs, **kw))
    code, out = run("effect", vec, pairs_file, "--offset", "4", "--strengths", "-1,1", "--model", model_dirs[32])
    assert code == 0, out
    assert [p.prompt for p in seen[-1]] == ["Question 4?", "Question 5?"]
    code, out = run("effect", vec, pairs_file, "--offset", "3", "--limit", "2", "--strengths", "1", "--model", model_dirs[32])
    assert code == 0 and [p.prompt for p in seen[-1]] == ["Question 3?", "Question 4?"]
    for bad, message in ((["--offset", "6"], "leaves no pairs"), (["--offset", "-1"], "--offset must be")):
        code, out = run("effect", vec, pairs_file, *bad, "--model", model_dirs[32])
        assert code == 1 and message in out, out


def test_cae_layer_range_is_checked_from_the_config_before_the_load(tmp_path, model_dirs, no_model_load):
    yn = tmp_path / "yn.jsonl"
    yn.write_text("".join(json.dumps({"question": f"Say {i}?", "answer_matching_behavior": " Yes",
                                      "answer_not_matching_behavior": " No"}) + "\n" for i in range(8)))
    for cmd in (["cae", "layers", yn, "--out", tmp_path / "o", "--layers", "4", "--n-train", "4", "--n-test", "4"],
                ["cae", "run", "--behaviour", yn, "--out", tmp_path / "r", "--layers", "0,9", "--n-train", "4"]):
        code, out = run(*cmd, "--model", model_dirs[32])
        assert code == 1 and "out of range" in out and "4 decoder blocks" in out, (cmd, out)
