"""Last-position logits reach the output layer as a contiguous tensor (a strided slice makes a CPU
bfloat16 linear layer copy its whole weight per row), with the same numbers as the full logits."""

from __future__ import annotations

import torch

import steerlab as sl
from steerlab.activations import contiguous_head_input, last_logits_only


def _watch_head(lm, seen):
    return lm.model.get_output_embeddings().register_forward_pre_hook(
        lambda m, args: seen.append(args[0].is_contiguous()))


def test_last_logits_only_keeps_the_last_columns_contiguously(tiny_lm):
    enc = tiny_lm.tokenizer(["Hello there, how are you?", "Hi"], return_tensors="pt", padding=True)
    width = enc["input_ids"].shape[1]
    seen: list[bool] = []
    handle = _watch_head(tiny_lm, seen)
    try:
        with torch.no_grad():
            full = tiny_lm.model(**enc).logits
            kept = tiny_lm.model(**enc, **last_logits_only(tiny_lm.model, width, keep=2)).logits
    finally:
        handle.remove()
    assert kept.shape[1] == 2 and seen == [True, True]
    torch.testing.assert_close(kept, full[:, -2:])


def test_last_logits_only_is_empty_for_a_forward_without_the_argument():
    class Plain(torch.nn.Module):
        def forward(self, input_ids):
            return input_ids

    assert last_logits_only(Plain(), 5) == {}


def test_generation_hands_the_head_a_contiguous_input_and_removes_its_hook(tiny_lm):
    head = tiny_lm.model.get_output_embeddings()
    enc = tiny_lm.tokenizer(["Hello there, how are you?", "Hi"], return_tensors="pt", padding=True)
    seen: list[bool] = []
    with contiguous_head_input(tiny_lm.model):
        handle = _watch_head(tiny_lm, seen)  # registered after the fix, so it sees the fixed input
        try:
            with torch.no_grad():
                tiny_lm.model(**enc, logits_to_keep=1)  # transformers' own strided slice
        finally:
            handle.remove()
    assert seen == [True] and not head._forward_pre_hooks
    plain = sl.generate(tiny_lm, ["Hello there"], None, max_new_tokens=4)
    assert plain == sl.generate(tiny_lm, ["Hello there"], None, max_new_tokens=4) and not head._forward_pre_hooks
