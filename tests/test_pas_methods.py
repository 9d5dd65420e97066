"""PAS vectors against a hand-written reference: each prompt written out by hand, run alone, the
activation read from `output_hidden_states[L + 1]` (the output of block L, where PAS adds it: no
off-by-one), means and differences in float64 over exactly the items each variant uses."""

from __future__ import annotations

import pytest
import torch

from steerlab.data.records import MCItem
from steerlab.errors import DatasetError, SteerlabError
from steerlab.methods.pas import (PAS_METHODS, PASExample, normalize_method, pas_activations, pas_contrast,
                                  train_pas)

ITEMS = [
    MCItem("Who was rude?", ("The doctor", "The nurse", "Unknown"), 2, context="Two people met.", source="toy", index=0),
    MCItem("Which is a fruit?", ("Apple", "Chair"), 0, source="toy", index=1),
    MCItem("Pick the larger number.", ("3", "12", "7", "1"), 1, source="toy", index=2),
    MCItem("Is ice cold?", ("Yes", "No"), 0, source="toy", index=3),
    MCItem("Who can't swim?", ("The child", "The adult", "Cannot tell"), 2, context="A child and an adult swam.",
           source="toy", index=4),
]
ORDERS = [(2, 0, 1), (1, 0), (0, 1, 2, 3), (0, 1), (1, 2, 0)]
PREDICTED = [2, 1, 3, 0, 0]  # right, wrong, wrong, right, wrong


def _examples():
    return [PASExample(it, o, p) for it, o, p in zip(ITEMS, ORDERS, PREDICTED)]


def _chat(lm, user: str, assistant: str = "") -> str:
    msgs = [{"role": "user", "content": user}]
    return lm.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) + assistant


def _mc_text(item, order) -> str:
    lines = ([item.context] if item.context else []) + [item.question]
    lines += [f"{'ABCD'[k]}: {item.choices[i]}" for k, i in enumerate(order)]
    return "\n".join(lines + ["Respond with a single letter.", "Answer:"])


def _qa_text(item, choice) -> tuple[str, str]:
    q = (item.context + "\n" if item.context else "") + item.question
    return q, item.choices[choice]


def _last(lm, text: str, layer: int) -> torch.Tensor:
    ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    return hs[layer + 1][0, -1].double()


def _reference(lm, method: str, layer: int) -> torch.Tensor:
    right = [k for k in range(len(ITEMS)) if PREDICTED[k] == ITEMS[k].gold]
    wrong = [k for k in range(len(ITEMS)) if PREDICTED[k] != ITEMS[k].gold]
    mc = lambda k: _last(lm, _chat(lm, _mc_text(ITEMS[k], ORDERS[k])), layer)  # noqa: E731
    qa = lambda k, c: _last(lm, _chat(lm, *_qa_text(ITEMS[k], c)), layer)  # noqa: E731
    if method == "pasf":
        return torch.stack([mc(k) for k in right]).mean(0) - torch.stack([mc(k) for k in wrong]).mean(0)
    if method == "ipas-a":
        return (torch.stack([qa(k, ITEMS[k].gold) for k in right]).mean(0)
                - torch.stack([qa(k, PREDICTED[k]) for k in wrong]).mean(0))
    return torch.stack([qa(k, ITEMS[k].gold) - qa(k, PREDICTED[k]) for k in wrong]).mean(0)


@pytest.mark.parametrize("method", PAS_METHODS)
def test_vectors_equal_hand_written_mean_differences(tiny_lm, method):
    vec = train_pas(tiny_lm, _examples(), method, layers=[0, 2])
    assert vec.layers == (0, 2)
    for layer in (0, 2):
        torch.testing.assert_close(vec[layer].double(), _reference(tiny_lm, method, layer), atol=2e-5, rtol=1e-4)
    m = vec.meta
    assert (m.method, m.position, m.n_train, m.template) == (method, "last", 5, "chat")
    assert (m.extra["n_correct"], m.extra["n_wrong"]) == (2, 3)
    assert m.extra["paired"] == (method == "ipas-wo")
    assert (m.extra["n_positive"], m.extra["n_negative"]) == {"pasf": (2, 3), "ipas-a": (2, 3), "ipas-wo": (3, 3)}[method]


def test_one_capture_serves_every_variant(tiny_lm):
    acts = pas_activations(tiny_lm, _examples(), ["pasf", "ipas-a", "ipas-wo"], [1])
    # pasf: 5 MC prompts; iPAS: gold text of all 5 items + predicted text of the 3 wrong ones, shared
    assert acts.info["distinct_prompts"] == 5 + 5 + 3
    for m in PAS_METHODS:
        torch.testing.assert_close(acts.vector(tiny_lm, m, n_train=5)[1],
                                   train_pas(tiny_lm, _examples(), m, layers=[1])[1], atol=1e-6, rtol=1e-6)


def test_raw_prompts_without_template(tiny_lm):
    c = pas_contrast(tiny_lm, _examples(), "ipas-wo", chat_template=False)
    assert [p.text for p in c.positive[::2]] == ["Which is a fruit? Apple", "A child and an adult swam.\nWho can't swim? Cannot tell"]
    assert c.negative[0].text == "Which is a fruit? Chair" and not c.positive[0].templated
    f = pas_contrast(tiny_lm, _examples(), "pasf", chat_template=False)
    assert f.positive[0].text == _mc_text(ITEMS[0], ORDERS[0])
    assert train_pas(tiny_lm, _examples(), "pasf", [1], chat_template=False).meta.template == "raw"


def test_method_names():
    assert normalize_method("iPASwo") == "ipas-wo" and normalize_method("PASf") == "pasf"
    assert normalize_method("ipas_a") == "ipas-a"
    with pytest.raises(SteerlabError, match="unknown PAS method 'caa'"):
        normalize_method("caa")


def test_missing_sides_are_named(tiny_lm):
    all_right = [PASExample(it, o, it.gold) for it, o in zip(ITEMS, ORDERS)]
    for m in PAS_METHODS:
        with pytest.raises(DatasetError, match=r"bbq-x: the unsteered model answers all 5 training items correctly, "
                                               rf"so {m} has no negatives"):
            pas_contrast(tiny_lm, all_right, m, dataset="bbq-x")
    all_wrong = [PASExample(it, o, (it.gold + 1) % len(it.choices)) for it, o in zip(ITEMS, ORDERS)]
    with pytest.raises(DatasetError, match="toy: .* none of the 5 training items correctly, so pasf has no positives; use ipas-wo"):
        pas_contrast(tiny_lm, all_wrong, "pasf")
    c = pas_contrast(tiny_lm, all_wrong, "ipas-a")  # falls back to iPASwo's positives, and says so
    assert "no correctly answered training item" in c.fallback and len(c.positive) == len(c.negative) == 5
    v = train_pas(tiny_lm, all_wrong, "ipas-a", [1])
    assert v.meta.extra["fallback"] == c.fallback
    assert pas_contrast(tiny_lm, all_wrong, "ipas-wo").paired
    with pytest.raises(DatasetError, match="no training items"):
        pas_contrast(tiny_lm, [], "ipas-wo", dataset="d")
    with pytest.raises(DatasetError, match=r"toy item 1: predicted choice 5 is not one of its 2 choices"):
        PASExample(ITEMS[1], (0, 1), 5)
