"""Side effects of steering: perplexity and KL against direct float64 recomputations; bad corpora."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

import steerlab as sl
from steerlab.cae import side_effects as se
from steerlab.errors import DatasetError, SteerlabError

TEXT = ("The tower is 324 metres tall , about the same height as an 81 @-@ storey building , and the tallest "
        "structure in Paris . Its base is square , measuring 125 metres on each side . ") * 6


@pytest.fixture(scope="module")
def lm(make_tiny):
    return make_tiny(max_positions=256)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    p = tmp_path_factory.mktemp("corpus") / "wiki.txt"
    p.write_text(TEXT)
    return p


def reference(lm, ids: torch.Tensor, vec, layer: int, alpha: float):
    """Per window: mean NLL and mean KL(unsteered || steered), from float64 log-softmax of full forwards."""
    with torch.no_grad():
        base = lm.model(input_ids=ids).logits.double()
        with sl.steer(lm, vec, alpha, layers=[layer], positions="all"):
            steered = lm.model(input_ids=ids).logits.double()
    lp0 = torch.log_softmax(base[:, :-1], -1)
    lp1 = torch.log_softmax(steered[:, :-1], -1)
    nll = -lp1.gather(2, ids[:, 1:, None]).squeeze(2)
    # F.kl_div(input=log q, target=log p, log_target=True) = sum p (log p - log q) = KL(p || q)
    kl = F.kl_div(lp1, lp0, reduction="none", log_target=True).sum(-1)
    return nll.mean(1), kl.mean(1)


def test_perplexity_and_kl_match_direct_recomputation(lm, corpus, vec_factory, tmp_path):
    windows = se.corpus_windows(lm, corpus, n_tokens=70, window=32, start_token=5)
    assert windows.ids.shape == (2, 32) and windows.n_predicted == 2 * 31
    ids_all = lm.tokenizer(TEXT, add_special_tokens=False).input_ids
    assert windows.ids.flatten().tolist() == ids_all[5:69]
    vec = vec_factory(lm, [1], seed=2, scale=2.0)
    partial = tmp_path / "partial.json"
    res = se.measure_side_effects(lm, vec, 1, [-3.0, 3.0], windows, relative=[-0.5, 0.5], batch_size=1,
                                  partial_path=partial, n_boot=100)
    assert [r.strength for r in res.rows] == [0.0, -3.0, 3.0]
    assert json.loads(partial.read_text())["windows_done"] == 2
    for row in res.rows:
        nll, kl = reference(lm, windows.ids, vec, 1, row.strength)
        assert row.nll == pytest.approx(float(nll.mean()), abs=1e-4)
        assert row.perplexity == pytest.approx(math.exp(float(nll.mean())), rel=1e-4)
        assert row.kl == pytest.approx(float(kl.mean()), abs=1e-4)
        assert res.per_window[row.strength]["kl"] == pytest.approx(kl.tolist(), abs=1e-4)
    assert res.rows[0].kl == pytest.approx(0.0, abs=1e-6) and res.rows[0].perplexity_ratio == 1.0
    assert res.rows[2].relative == 0.5 and res.rows[2].kl > 0
    files = se.write_side_effects(res, tmp_path)
    assert files["png"].read_bytes()[:4] == b"\x89PNG"
    assert json.loads(files["json"].read_text())["rows"][1]["strength"] == -3.0


def test_bad_corpora(lm, tmp_path, vec_factory):
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n\n ")
    with pytest.raises(DatasetError, match="empty"):
        se.corpus_windows(lm, empty)
    short = tmp_path / "short.txt"
    short.write_text("just a few words")
    with pytest.raises(DatasetError, match="fewer than one window"):
        se.corpus_windows(lm, short, n_tokens=64, window=32)
    with pytest.raises(DatasetError, match="not found"):
        se.corpus_windows(lm, tmp_path / "missing.txt")
    with pytest.raises(SteerlabError, match="at least one window"):
        se.corpus_windows(lm, short, n_tokens=8, window=32)
    with pytest.raises(SteerlabError, match="context"):
        se.corpus_windows(lm, short, n_tokens=1024, window=512)
    windows = se.CorpusWindows(torch.zeros(1, 8, dtype=torch.long), "x", 0)
    with pytest.raises(SteerlabError, match="no direction for layer 3"):
        se.measure_side_effects(lm, vec_factory(lm, [1], seed=0), 3, [1.0], windows)
