"""The seam's position policies mean what `steerlab.steering` means: for every prompt, position and
policy, `engines.base.steering_positions` (what an engine without steerlab's hooks, e.g. vLLM, uses on an
`EngineRequest`) agrees with the masks the hooks compute on a left-padded batch, for the prompt and for
generated tokens, in a prefill and in a decoding step."""

from __future__ import annotations

import pytest
import torch

import steerlab as sl
from steerlab.serve.engines.base import EngineRequest, SamplingSettings, steering_positions
from steerlab.position_policies import POLICIES
from steerlab.steering import _ForwardState, _policy_mask

PROMPTS = ["How was your weekend?", "Hi", "Tell me about the sea, the waves and the boats on it.", "Why?"]
GENERATED = 5  # decoded tokens after each prompt


def _masks(batch: sl.EncodedBatch, width: int, *, step: bool):
    """Per policy, the hooks' mask for a call of `width` columns over the batch's prompts plus GENERATED
    tokens (a prefill of everything, or the last decoding step alone), and the row-relative positions."""
    rows = len(batch)
    ones = torch.ones(rows, GENERATED, dtype=batch.attention_mask.dtype)
    mask = torch.cat([batch.attention_mask, ones], 1)
    ids = torch.zeros(rows, 1 if step else mask.shape[1], dtype=torch.long)
    state = _ForwardState(batch)
    state.update((), {"input_ids": ids, "attention_mask": mask})
    pos = state.cols[None, :] - state.pad[:, None]
    return {p: _policy_mask(p, pos, state) for p in POLICIES}, pos


@pytest.mark.parametrize("chat", [True, False], ids=["chat-template", "raw"])
@pytest.mark.parametrize("step", [False, True], ids=["prefill", "decode-step"])
def test_steering_positions_agree_with_the_hooks_masks(tiny_lm, chat, step):
    lm = tiny_lm if chat else _raw(tiny_lm)
    batch = sl.encode(lm, PROMPTS, extra_tokens=GENERATED)
    masks, pos = _masks(batch, batch.input_ids.shape[1] + GENERATED, step=step)
    if chat:  # the template puts the assistant header after the user's text: the three policies differ
        assert bool((batch.after_user_start < batch.lengths - 1).all())
    checked = 0
    for r, prompt in enumerate(PROMPTS):
        request = EngineRequest.of(sl.encode(lm, [prompt], extra_tokens=GENERATED), "r", SamplingSettings(GENERATED))
        assert request.prompt_tokens == int(batch.lengths[r])
        assert request.after_user == int(batch.after_user_start[r])
        for c in range(pos.shape[1]):
            p = int(pos[r, c])
            if p < 0:  # left padding: never steered
                assert not any(bool(m[r, c]) for m in masks.values())
                continue
            for policy, m in masks.items():
                want = steering_positions(policy, p, prompt_tokens=request.prompt_tokens, after_user=request.after_user)
                assert bool(m[r, c]) == want, (prompt, policy, p)
                checked += 1
    assert checked >= len(POLICIES) * len(PROMPTS) * (1 if step else GENERATED)


def test_steering_positions_refuses_an_unknown_policy():
    with pytest.raises(ValueError, match="unknown position policy"):
        steering_positions("everywhere", 0, prompt_tokens=3, after_user=1)


def _raw(lm):
    """`lm` without its chat template (raw prompts: after_user falls on the last prompt token)."""
    import dataclasses

    return dataclasses.replace(lm, use_chat_template=False)
