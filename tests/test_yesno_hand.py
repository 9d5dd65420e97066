"""The whole Yes/No CAA path on the real embedded model, against a plain hand computation with transformers.

For MWE persona items (``../shared/data/mwe/persona/agreeableness.jsonl``, one item matching with
" Yes" and one with " No") this checks, with nothing from steerlab but the loaded model:

1. the texts: the chat template with an empty assistant turn, then the answer word *without* its
   leading space ("Yes" = one token, not " Yes", which is another token);
2. which token each reading position reads: "answer" (steerlab's default) reads the answer token
   itself; the token before it (the template's last token, the one that *predicts* the answer) is
   the same token with the same prefix on both sides, so its difference is exactly zero;
3. the sign: v = h(text + matching answer) - h(text + other answer), at output_hidden_states[L + 1];
4. where the vector is added ("answer" positions = "after_user": from the first token after the
   user's message, i.e. the end-of-turn token, the assistant header and with it the last prompt token,
   which predicts the answer; "last_prompt": that token only) and what the score reads:
   p(match) / (p(Yes) + p(No)) from the logits at the last prompt token.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from steerlab.cae import behaviour as bh
from steerlab.cae.readings import train_activations
from steerlab.data import load_mwe

pytestmark = pytest.mark.slow

PERSONA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mwe" / "persona" / "agreeableness.jsonl"
LAYER = 12


@pytest.fixture(scope="module")
def items():
    if not PERSONA.exists():
        pytest.skip(f"no evaluation data at {PERSONA}")
    all_items = load_mwe(PERSONA)
    yes = next(it for it in all_items if it.matching == "Yes")
    no = next(it for it in all_items if it.matching == "No")
    return [yes, no]


def _hand_text(tok, question: str, answer: str = "") -> str:
    head = tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)
    return head + answer


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def _hidden(lm, ids: list[int], layer: int) -> torch.Tensor:
    with torch.no_grad():
        out = lm.model(torch.tensor([ids]), output_hidden_states=True)
    return out.hidden_states[layer + 1][0].float()  # [seq, hidden]: output of block `layer`


def test_tokens_read_by_each_position(real_lm, items):
    tok = real_lm.tokenizer
    yes_id, no_id = _ids(tok, "Yes"), _ids(tok, "No")
    assert len(yes_id) == 1 and len(no_id) == 1
    assert _ids(tok, " Yes") != yes_id  # the leading space makes another token: MWE's " Yes" is normalised
    for it in items:
        assert it.matching in ("Yes", "No") and it.not_matching in ("Yes", "No")
        head = _ids(tok, _hand_text(tok, it.question))
        for answer, want in ((it.matching, it.matching), (it.not_matching, it.not_matching)):
            ids = _ids(tok, _hand_text(tok, it.question, answer))
            assert ids[:-1] == head  # the answer is one token appended to the unchanged prompt
            assert tok.decode([ids[-1]]) == want  # "answer" reading: the answer token itself
            assert tok.decode(ids[-4:-1]) == "assistant\n" and tok.decode([ids[-2]]) == "\n"  # the token before: the template's last, "\n"
        # steerlab's scoring prompt is exactly the hand text with an empty assistant turn
        assert bh.behaviour_prompt(real_lm, it).text == _hand_text(tok, it.question)
        assert bh.behaviour_candidates(real_lm, it) == (it.matching, it.not_matching)


def test_vector_sign_and_reading_match_hand_computation(real_lm, items):
    tok = real_lm.tokenizer
    hand_diffs, before_diffs = [], []
    for it in items:
        pos = _hidden(real_lm, _ids(tok, _hand_text(tok, it.question, it.matching)), LAYER)
        neg = _hidden(real_lm, _ids(tok, _hand_text(tok, it.question, it.not_matching)), LAYER)
        hand_diffs.append(pos[-1] - neg[-1])  # matching minus not matching, at the answer token
        before_diffs.append(pos[-2] - neg[-2])  # the answer-predicting token: the same on both sides
    acts = train_activations(real_lm, items, [LAYER])
    for k in range(len(items)):
        torch.testing.assert_close(acts.differences(LAYER)[k], hand_diffs[k], atol=2e-3, rtol=1e-3)
    vec = acts.caa_vector(real_lm)
    torch.testing.assert_close(vec[LAYER].float(), torch.stack(hand_diffs).mean(0), atol=2e-3, rtol=1e-3)
    # A Yes-matching and a No-matching item: their differences point roughly opposite ways (the
    # answer token's identity, h(Yes) - h(No), dominates both with opposite signs).
    cos = torch.nn.functional.cosine_similarity(hand_diffs[0], hand_diffs[1], dim=0)
    assert cos < 0
    # Reading at the token before the answer gives nothing to train on: a causal model has not seen
    # the answer there.
    for d in before_diffs:
        assert float(d.abs().max()) < 1e-4


def _hand_score(lm, it, vec: torch.Tensor, alpha: float, layer: int, where: str) -> float:
    """p(match)/(p(Yes)+p(No)) at the last prompt token with alpha*vec added to block `layer`'s output."""
    tok = lm.tokenizer
    ids = _ids(tok, _hand_text(tok, it.question))
    n = len(ids)
    # the first token after the user's message: the end-of-turn token closing the question, found by hand
    end_of_user = next(k for k in range(n) if tok.decode(ids[: k + 1]).endswith(it.question + "<|im_end|>"))
    positions = {"predicting": [n - 1], "after_user": list(range(end_of_user, n)), "none": []}[where]
    if where == "after_user":
        assert tok.decode(ids[end_of_user:]) == "<|im_end|>\n<|im_start|>assistant\n"

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h.clone()
        for p in positions:
            h[:, p] += alpha * vec.to(h.dtype)
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = lm.blocks[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = lm.model(torch.tensor([ids])).logits[0, -1].float()
    finally:
        handle.remove()
    lp = torch.log_softmax(logits, -1)
    m, o = _ids(tok, it.matching)[0], _ids(tok, it.not_matching)[0]
    pm, po = float(lp[m].exp()), float(lp[o].exp())
    return pm / (pm + po)


def test_steering_and_score_match_hand_computation(real_lm, items):
    acts = train_activations(real_lm, items, [LAYER])
    vec = acts.caa_vector(real_lm)
    v = vec[LAYER].float()
    alphas = [-4.0, 4.0]
    cases = [(a, pos) for pos in ("answer", "last_prompt") for a in alphas]
    settings = [bh.behaviour_setting(vec, LAYER, a, "yesno", positions=pos) for a, pos in cases]
    res = bh.score_behaviour(real_lm, items, settings, n_boot=10)
    p = res.p_match  # [settings (unsteered first), items]
    for i, it in enumerate(items):
        assert p[0, i] == pytest.approx(_hand_score(real_lm, it, v, 0.0, LAYER, "none"), abs=1e-4)
        for s, (a, pos) in enumerate(cases, start=1):
            # "answer" = from the first token after the user's message; "last_prompt" = the
            # answer-predicting token only; adding there by hand gives the same score
            where = "after_user" if pos == "answer" else "predicting"
            assert p[s, i] == pytest.approx(_hand_score(real_lm, it, v, a, LAYER, where), abs=1e-4)
    # steering moves the score (the vector is added where the score is read)
    assert np.abs(p[1:] - p[0]).max() > 1e-3
