"""Methods against plain references: activations of each prompt run alone (`output_hidden_states`),
differences and means in float64, PCA from an eigendecomposition in numpy; vector arithmetic."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import steerlab as sl
from steerlab.data.records import ContrastPair
from steerlab.encoding import format_prompt
from steerlab.errors import DatasetError, LayerError, SteerlabError, VectorError
from steerlab.methods import mean_difference, pca_direction

PAIRS = [
    ContrastPair("Would you help a stranger? (A) Yes (B) No", "(A", "(B"),
    ContrastPair("Do you like rain?", "(B", "(A"),
    ContrastPair("Pick a fruit: (A) apple (B) pear", "(A", "(B"),
    ContrastPair("Is the sky green?", " Yes", " No"),
    ContrastPair("Short one", "(A", "(B"),
]


def _last_alone(lm, prompt, layer):
    """Layer activation at the last token of `prompt` run alone, in float64."""
    ids = lm.tokenizer(prompt.text, add_special_tokens=not prompt.templated, return_tensors="pt").input_ids
    with torch.no_grad():
        hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    return hs[layer + 1][0, -1].double()


def _reference_differences(lm, pairs, layer):
    return torch.stack([
        _last_alone(lm, format_prompt(lm, p.prompt, p.positive), layer)
        - _last_alone(lm, format_prompt(lm, p.prompt, p.negative), layer)
        for p in pairs
    ])


@pytest.fixture(scope="module")
def ref_diffs(tiny_lm):
    return {layer: _reference_differences(tiny_lm, PAIRS, layer) for layer in (1, 2)}


# --------------------------------------------------------------------------------------------------
# CAA
# --------------------------------------------------------------------------------------------------

def test_caa_is_the_mean_of_pair_differences(tiny_lm, ref_diffs):
    lm = tiny_lm
    vec = sl.train_caa(lm, PAIRS, layers=[2, 1], batch_size=2)
    assert vec.layers == (1, 2)
    for layer in (1, 2):
        torch.testing.assert_close(vec[layer].double(), ref_diffs[layer].mean(0), atol=1e-5, rtol=1e-5)
    m = vec.meta
    assert (m.method, m.n_train, m.position, m.model_id, m.family, m.hidden_size, m.n_layers, m.template) == (
        "caa", len(PAIRS), "last", lm.model_id, "llama", 32, 4, "chat")
    again = sl.train_caa(lm, PAIRS, layers=[1])
    assert torch.equal(again[1], sl.train_caa(lm, PAIRS, layers=[1])[1])  # deterministic
    assert again.meta.data_hash == m.data_hash != sl.train_caa(lm, PAIRS[:4], layers=[1]).meta.data_hash
    assert sl.train_caa(lm, PAIRS[:2]).layers == tuple(range(lm.n_layers))  # default: every layer


def test_mean_difference_accumulates_in_float64():
    g = torch.Generator().manual_seed(0)
    pos = 3e4 + torch.randn(1000, 8, generator=g)
    neg = 3e4 + torch.randn(1000, 8, generator=g)
    ref = (pos.double() - neg.double()).mean(0)
    got = mean_difference(pos, neg)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, atol=1e-6, rtol=1e-6)
    with pytest.raises(SteerlabError, match="shapes differ"):
        mean_difference(pos, neg[:-1])


def test_method_bad_input(tiny_lm):
    lm = tiny_lm
    with pytest.raises(DatasetError, match="no contrast pairs"):
        sl.train_caa(lm, [], layers=[1])
    with pytest.raises(DatasetError, match="no contrast pairs"):
        sl.train_pca(lm, [], layers=[1])
    with pytest.raises(DatasetError, match="at least 2"):
        sl.train_pca(lm, PAIRS[:1], layers=[1])
    with pytest.raises(LayerError, match="layer 9 is out of range"):
        sl.train_caa(lm, PAIRS, layers=[9])
    with pytest.raises(SteerlabError, match="unknown reading position"):
        sl.train_caa(lm, PAIRS, layers=[1], position="first")
    with pytest.raises(DatasetError, match="two non-empty prompts"):
        sl.train_actadd(lm, "Love", "  ")
    with pytest.raises(DatasetError, match="identical"):
        ContrastPair("q", "(A", "(A")


# --------------------------------------------------------------------------------------------------
# PCA
# --------------------------------------------------------------------------------------------------

def _pca_reference(d: np.ndarray, center: bool = True) -> np.ndarray:
    """The mean difference projected on the top eigenvector of the (centred) scatter matrix."""
    x = d - d.mean(0, keepdims=True) if center else d
    w, e = np.linalg.eigh(x.T @ x)
    u = e[:, np.argmax(w)]
    return u * (d.mean(0) @ u)  # the mean difference projected on the axis: the same for u and -u


@pytest.mark.parametrize("center", [True, False])
def test_pca_direction_matches_eigendecomposition(center):
    g = torch.Generator().manual_seed(1)
    axis = torch.randn(16, generator=g)
    d = torch.randn(40, 1, generator=g) * 3 * axis + 0.3 * torch.randn(40, 16, generator=g) + 0.5 * axis
    got = pca_direction(d, center=center)
    torch.testing.assert_close(got.double(), torch.from_numpy(_pca_reference(d.double().numpy(), center)),
                               atol=1e-5, rtol=1e-5)
    assert float(d.double().mean(0) @ got.double()) > 0  # positive projection of the mean difference
    assert torch.equal(pca_direction(d, center=center), got)  # deterministic
    # flipping every pair flips the direction (PCA alone could not tell)
    torch.testing.assert_close(pca_direction(-d, center=center), -got, atol=1e-6, rtol=1e-5)


def test_pca_sign_follows_mean_whatever_svd_returns():
    """The top component of these differences is ±e0; the sign comes only from the mean difference."""
    for sign in (1.0, -1.0):
        d = torch.zeros(6, 4)
        d[:, 0] = torch.tensor([5.0, -4.0, 6.0, -5.0, 4.5, -3.0]) * sign
        d[:, 1] = 0.01 * torch.arange(6.0)
        got = pca_direction(d)
        assert got[0] * sign > 0 and got[0] * d[:, 0].mean() > 0


def test_train_pca_reference_and_flipped_pairs(tiny_lm, ref_diffs):
    lm = tiny_lm
    vec = sl.train_pca(lm, PAIRS, layers=[1, 2])
    for layer in (1, 2):
        ref = _pca_reference(ref_diffs[layer].numpy())
        torch.testing.assert_close(vec[layer].double(), torch.from_numpy(ref), atol=1e-5, rtol=1e-4)
        assert float(ref_diffs[layer].mean(0) @ vec[layer].double()) > 0
    flipped = sl.train_pca(lm, [ContrastPair(p.prompt, p.negative, p.positive) for p in PAIRS], layers=[1, 2])
    for layer in (1, 2):
        torch.testing.assert_close(flipped[layer], -vec[layer], atol=1e-5, rtol=1e-4)
    assert vec.meta.method == "pca" and vec.meta.extra["centered"] is True


# --------------------------------------------------------------------------------------------------
# ActAdd
# --------------------------------------------------------------------------------------------------

def test_actadd_is_the_positionwise_difference_from_the_prompt_start(tiny_lm):
    lm = tiny_lm
    tok = lm.tokenizer
    positive, negative = "Love you all", "Hate"
    vec = sl.train_actadd(lm, positive, negative, layers=[0, 2])
    ids_p = tok(positive, add_special_tokens=False).input_ids
    ids_n = tok(negative, add_special_tokens=False).input_ids
    space = tok(" ", add_special_tokens=False).input_ids[-1]
    width = max(len(ids_p), len(ids_n))
    assert len(ids_p) > len(ids_n)  # the negative prompt gets right-padded with spaces
    rows = [ids_p + [space] * (width - len(ids_p)), ids_n + [space] * (width - len(ids_n))]
    with torch.no_grad():
        hp = lm.model(input_ids=torch.tensor([rows[0]]), output_hidden_states=True).hidden_states
        hn = lm.model(input_ids=torch.tensor([rows[1]]), output_hidden_states=True).hidden_states
    for layer in (0, 2):
        assert vec[layer].shape == (width, lm.hidden_size)
        torch.testing.assert_close(vec[layer], hp[layer + 1][0] - hn[layer + 1][0], atol=1e-5, rtol=1e-5)
    assert vec.per_position and vec.meta.method == "actadd" and vec.meta.template == "raw"
    assert (vec.meta.extra["positive"], vec.meta.extra["negative"]) == (positive, negative)


# --------------------------------------------------------------------------------------------------
# Vector arithmetic
# --------------------------------------------------------------------------------------------------

def test_vector_arithmetic(tiny_lm, vec_factory):
    lm = tiny_lm
    g = torch.Generator().manual_seed(3)
    x1, x2, y2, y3 = (torch.randn(32, generator=g) for _ in range(4))
    a = vec_factory.make(lm, {1: x1, 2: x2})
    b = vec_factory.make(lm, {2: y2, 3: y3})

    s = a + b
    assert s.layers == (1, 2, 3)
    assert torch.equal(s[1], x1) and torch.equal(s[2], x2 + y2) and torch.equal(s[3], y3)
    assert s.meta.method == "(test + test)" and s.meta.n_train == 0 and s.meta.layers == (1, 2, 3)
    d = a - b
    assert torch.equal(d[2], x2 - y2) and torch.equal(d[3], -y3) and torch.equal(d[1], x1)
    assert torch.equal((-a)[1], -x1)
    for k in (2.5, -1, 0):
        assert torch.equal((a * k)[2], x2 * float(k)) and torch.equal((k * a)[1], x1 * float(k))
    torch.testing.assert_close((a / 4)[1], x1 / 4)
    torch.testing.assert_close(a.normalized()[1].norm(), torch.tensor(1.0))
    assert a.norms()[1] == pytest.approx(float(x1.norm()))
    assert a.select([2]).layers == (2,) and torch.equal(a.select([2])[2], x2)
    assert torch.equal(a[1], x1)  # the operands are unchanged
    # per-position (ActAdd) directions combine with directions of the same shape only
    p = vec_factory.make(lm, {1: torch.ones(3, 32)})
    assert torch.equal((p + p)[1], 2 * torch.ones(3, 32))
    with pytest.raises(VectorError, match="shapes"):
        a + p

    assert (a + vec_factory(lm, [1], seed=0)).layers == (1, 2)  # another vector of the same model: fine
    with pytest.raises(VectorError, match="no direction for layer 3"):
        a[3]
    with pytest.raises(VectorError, match="no direction for layer 0"):
        a.select([0])
    with pytest.raises(VectorError, match="non-zero"):
        a / 0
    with pytest.raises(VectorError, match="finite"):
        a * float("nan")
    with pytest.raises(VectorError, match="finite"):
        float("inf") * a
    with pytest.raises(TypeError):
        a + 1


def test_vectors_of_different_models_refuse_to_combine(tiny_lm, make_tiny, vec_factory):
    a = vec_factory(tiny_lm, [1], seed=0)
    wide = vec_factory(make_tiny(hidden=48), [1], seed=0)
    qwen = vec_factory(make_tiny(family="qwen2"), [1], seed=0)
    deeper = vec_factory(make_tiny(layers=6), [1], seed=0)
    for other, what in ((wide, "hidden 48"), (qwen, "qwen2"), (deeper, "different models")):
        with pytest.raises(VectorError, match=what):
            a + other
        with pytest.raises(VectorError, match="different models"):
            other - a


def test_vector_construction_is_validated(tiny_lm, vec_factory):
    lm = tiny_lm
    with pytest.raises(VectorError, match="NaN"):
        vec_factory.make(lm, {1: torch.full((32,), float("nan"))})
    with pytest.raises(VectorError, match="inf"):
        vec_factory.make(lm, {1: torch.tensor([float("inf")] + [0.0] * 31)})
    with pytest.raises(VectorError, match="expected \\(32,\\)"):
        vec_factory.make(lm, {1: torch.zeros(31)})
    with pytest.raises(VectorError, match="expected \\(32,\\)"):
        vec_factory.make(lm, {1: torch.zeros(2, 2, 32)})
    with pytest.raises(VectorError, match="layer 4 is out of range"):
        vec_factory.make(lm, {4: torch.zeros(32)})
    with pytest.raises(VectorError, match="at least one layer"):
        vec_factory.make(lm, {})
    v = vec_factory.make(lm, {2: torch.arange(32, dtype=torch.float64)})
    assert v[2].dtype == torch.float32  # stored as float32 whatever came in
