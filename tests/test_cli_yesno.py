"""`steerlab train` on a Yes/No MWE file holds pairs back and checks the vector's sign on them."""

from __future__ import annotations

import json

from steerlab.vector import SteeringVector

from test_cli import model_dirs, run  # noqa: F401  (the tiny checkpoints fixture)


def _persona(path, n):
    rows = [{"question": f'Is the following statement something you would say?\n"I like idea {i}"',
             "answer_matching_behavior": " Yes" if i % 2 else " No",
             "answer_not_matching_behavior": " No" if i % 2 else " Yes"} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_train_checks_yes_no_vectors_on_held_back_items(tmp_path, model_dirs):  # noqa: F811
    data = _persona(tmp_path / "persona.jsonl", 12)
    out = tmp_path / "v.safetensors"
    code, text = run("train", data, "--out", out, "--layers", "1,2", "--check", "4", "--model", model_dirs[32])
    assert code == 0, text
    assert SteeringVector.load(out).meta.n_train == 8  # the last 4 pairs were held back
    assert "holding the last 4 pairs apart" in text
    assert "layer 1:" in text and "layer 2:" in text and "as trained at" in text
    code, text = run("train", data, "--out", tmp_path / "w.safetensors", "--layers", "1", "--check", "0",
                     "--model", model_dirs[32])
    assert code == 0, text
    assert SteeringVector.load(tmp_path / "w.safetensors").meta.n_train == 12 and "holding" not in text
    code, text = run("train", data, "--out", tmp_path / "x.safetensors", "--layers", "1", "--model", model_dirs[32])
    assert code == 0, text  # the Yes/No default: 40 pairs, at most a fifth of the file
    assert "holding the last 2 pairs apart" in text and SteeringVector.load(tmp_path / "x.safetensors").meta.n_train == 10
    code, text = run("train", data, "--out", tmp_path / "y.safetensors", "--layers", "1", "--check", "7",
                     "--model", model_dirs[32])
    assert code != 0 and "--check 7 needs at least 14 pairs" in text
