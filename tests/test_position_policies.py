"""The position policies' one definition (steerlab/position_policies.py) against the policies written out by hand,
on ints, numpy arrays (the vLLM planner) and torch tensors (the hooks), pads included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from steerlab.errors import SteerlabError
from steerlab.position_policies import POLICIES, run_start, steered

PROMPT, AFTER_USER = 9, 6  # a 9-token prompt whose user message ends before position 6


def _by_hand(policy: str, p: int, after_user: int = AFTER_USER, prompt: int = PROMPT) -> bool:
    if p < 0:  # a pad
        return False
    return {"all": True, "after_user": p >= after_user, "last_prompt": p == prompt - 1}[policy]


@pytest.mark.parametrize("policy", POLICIES)
def test_steered_positions_match_the_policy_written_out(policy):
    positions = list(range(-3, PROMPT + 4))  # three pads, the prompt, four generated tokens
    want = [_by_hand(policy, p) for p in positions]
    bounds = {"after_user_start": AFTER_USER, "prompt_len": PROMPT}
    assert [bool(steered(policy, p, **bounds)) for p in positions] == want
    assert steered(policy, np.array(positions), **bounds).tolist() == want
    # the hooks' shapes: positions [rows, width] against per-row bounds [rows, 1]
    # the hooks' shapes: positions [rows, width] against per-row bounds [rows, 1]; the second row's prompt is
    # two tokens shorter (two more pads)
    rows = torch.tensor([positions, [p - 2 for p in positions]])
    t = steered(policy, rows, after_user_start=torch.tensor([[AFTER_USER], [AFTER_USER - 2]]),
                prompt_len=torch.tensor([[PROMPT], [PROMPT - 2]]))
    assert t[0].tolist() == want
    assert t[1].tolist() == [_by_hand(policy, p - 2, AFTER_USER - 2, PROMPT - 2) for p in positions]


@pytest.mark.parametrize("policy", POLICIES)
def test_a_schedule_counts_from_the_first_steered_position(policy):
    bounds = {"after_user_start": AFTER_USER, "prompt_len": PROMPT}
    first = next(p for p in range(PROMPT + 4) if _by_hand(policy, p))
    assert run_start(policy, **bounds) == first
    assert run_start(policy, after_user_start=torch.tensor([[AFTER_USER]]), prompt_len=torch.tensor([[PROMPT]])) == first


def test_an_unknown_policy_is_named():
    for call in (lambda: steered("middle", 3), lambda: run_start("middle")):
        with pytest.raises(SteerlabError, match="unknown position policy 'middle': choose one of all, after_user, last_prompt"):
            call()
