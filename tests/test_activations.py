"""Capture and encoding against references: each prompt run alone (no padding) with
`output_hidden_states`, positions found independently from the prompt text; the capture pass stops
after the deepest requested block and computes no logits."""

from __future__ import annotations

import pytest
import torch

import steerlab as sl
from steerlab.activations import capture_batch
from steerlab.encoding import format_prompt
from steerlab.errors import LayerError, PromptTooLongError, SteerlabError

USERS = ["Hi", "Tell me a short story about a dragon and a knight.", "What is 2+2?"]


def _prompts(lm):
    return [format_prompt(lm, USERS[0]), format_prompt(lm, USERS[1]), format_prompt(lm, USERS[2], "(A")]


def _alone(lm, prompt):
    """(hidden_states, user token start) of one prompt run alone; the start is found from the text."""
    tok = lm.tokenizer
    ids = tok(prompt.text, add_special_tokens=not prompt.templated, return_tensors="pt").input_ids
    head = tok(prompt.text[:prompt.user_start], add_special_tokens=not prompt.templated).input_ids
    with torch.no_grad():
        hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    return hs, len(head)


def test_encoding_boundaries(tiny_lm):
    lm = tiny_lm
    prompts = _prompts(lm)
    batch = sl.encode(lm, prompts)
    tok = lm.tokenizer
    width = batch.input_ids.shape[1]
    assert batch.pad.tolist() == [width - int(n) for n in batch.lengths] and int(batch.pad.min()) == 0
    for i, p in enumerate(prompts):
        ids = batch.input_ids[i, int(batch.pad[i]):].tolist()
        assert batch.attention_mask[i].tolist() == [0] * int(batch.pad[i]) + [1] * len(ids)
        assert tok.decode(ids) == p.text
        u, a = int(batch.user_start[i]), int(batch.assistant_start[i])
        assert tok.decode(ids[:u]) == p.text[:p.user_start]
        assert tok.decode(ids[u:]).startswith(USERS[i])
        assert tok.decode(ids[a:]) == p.text[p.assistant_start:]
        # the user's text ends right before the end-of-turn token: "after_user" steering starts there
        e = int(batch.user_end[i])
        assert tok.decode(ids[u:e]) == USERS[i] and p.text[p.user_start:p.user_end] == USERS[i]
        assert tok.decode(ids[e:a]) == "<|im_end|>\n<|im_start|>assistant\n"
        assert int(batch.after_user_start[i]) == e
    assert int(batch.assistant_start[0]) == int(batch.lengths[0])  # no prefix: the turn starts after the prompt
    assert tok.decode(batch.input_ids[2, int(batch.pad[2] + batch.assistant_start[2]):]) == "(A"
    raw = format_prompt(lm, "Question?", " Answer", chat_template=False)
    assert (raw.text, raw.user_start, raw.assistant_start) == ("Question? Answer", 0, len("Question?"))
    assert raw.user_end == len("Question?")
    # raw text with no assistant prefix: "after_user" still steers the last prompt token, which predicts
    # the first generated (or answer) token
    bare = sl.encode(lm, [format_prompt(lm, "Question?", chat_template=False)])
    assert int(bare.user_end[0]) == int(bare.lengths[0]) and int(bare.after_user_start[0]) == int(bare.lengths[0]) - 1


def test_capture_equals_output_hidden_states_real_model(real_lm):
    """Real SmolLM2, a left-padded batch: every layer and position equals the prompt run alone."""
    lm = real_lm
    prompts = [format_prompt(lm, "Hi"), format_prompt(lm, "Describe the colour of the sky at noon.")]
    layers = [0, 12, lm.n_layers - 2]
    last = capture_batch(lm, sl.encode(lm, prompts), layers, "last")
    user = capture_batch(lm, sl.encode(lm, prompts), layers, "user")
    for i, p in enumerate(prompts):
        hs, u = _alone(lm, p)
        for layer in layers:
            ref = hs[layer + 1][0]  # layer L = output of block L = hidden_states[L + 1]
            torch.testing.assert_close(last[layer][i], ref[-1], atol=1e-3, rtol=1e-4)
            torch.testing.assert_close(user[layer][i], ref[u:], atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("position", ["last", "mean", "user", "all"])
def test_capture_positions_under_left_padding(tiny_lm, position):
    lm = tiny_lm
    prompts = _prompts(lm)
    got = capture_batch(lm, sl.encode(lm, prompts), [0, 2], position)
    assert sorted(got) == [0, 2]
    for i, p in enumerate(prompts):
        hs, u = _alone(lm, p)
        for layer in (0, 2):
            h = hs[layer + 1][0]
            ref = {"last": h[-1], "mean": h[u:].double().mean(0).float(), "user": h[u:], "all": h}[position]
            torch.testing.assert_close(got[layer][i], ref, atol=1e-5, rtol=1e-5)


def test_capture_last_layer_is_before_the_final_norm(tiny_lm):
    """For the last layer, hidden_states[n] is the *normed* output; capture gives block n-1's raw output."""
    lm = tiny_lm
    p = _prompts(lm)[1]
    got = capture_batch(lm, sl.encode(lm, [p]), [-1], "all")[lm.n_layers - 1][0]
    hs, _ = _alone(lm, p)
    assert not torch.allclose(got, hs[lm.n_layers][0], atol=1e-3)
    with torch.no_grad():
        torch.testing.assert_close(lm.model.model.norm(got), hs[lm.n_layers][0], atol=1e-5, rtol=1e-5)


def test_capture_stops_after_deepest_layer(tiny_lm):
    lm = tiny_lm
    fired: list[str] = []
    watch = {"block0": lm.blocks[0], "block1": lm.blocks[1], "block2": lm.blocks[2], "block3": lm.blocks[3],
             "norm": lm.model.model.norm, "lm_head": lm.model.lm_head}
    handles = [m.register_forward_hook(lambda mod, a, o, name=name: fired.append(name)) for name, m in watch.items()]
    try:
        got = sl.capture(lm, USERS, [0, -3], "last")  # -3 is layer 1
    finally:
        for h in handles:
            h.remove()
    assert sorted(got) == [0, 1]
    assert fired == ["block0", "block1"]  # one batch; nothing after block 1, no norm, no logits


def test_capture_batches_keep_input_order(tiny_lm):
    lm = tiny_lm
    users = USERS + ["A", "Longer prompt number five, with words."]
    small = sl.capture(lm, users, [1], "user", batch_size=2)[1]
    assert len(small) == len(users)
    for i, u in enumerate(users):
        hs, s = _alone(lm, format_prompt(lm, u))
        torch.testing.assert_close(small[i], hs[2][0][s:], atol=1e-5, rtol=1e-5)
    big = sl.capture(lm, users, [1], "last", batch_size=16)[1]
    two = sl.capture(lm, users, [1], "last", batch_size=2)[1]
    assert big.shape == (len(users), lm.hidden_size)
    torch.testing.assert_close(two, big, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(big, torch.stack([t[-1] for t in small]), atol=1e-5, rtol=1e-5)


def test_capture_bad_input(tiny_lm):
    lm = tiny_lm
    with pytest.raises(LayerError, match="layer 4 is out of range.*4 decoder blocks"):
        sl.capture(lm, USERS, [4])
    with pytest.raises(LayerError, match="layer -5 is out of range"):
        sl.capture(lm, USERS, [-5])
    with pytest.raises(LayerError, match="integer"):
        sl.capture(lm, USERS, ["two"])
    with pytest.raises(SteerlabError, match="no layers"):
        sl.capture(lm, USERS, [])
    with pytest.raises(SteerlabError, match="no prompts"):
        sl.capture(lm, [], [1])
    with pytest.raises(SteerlabError, match="no prompts"):
        sl.encode(lm, [])
    with pytest.raises(SteerlabError, match="unknown reading position 'first'"):
        sl.capture(lm, USERS, [1], "first")
    with pytest.raises(PromptTooLongError, match="prompt 1 has .* tokens, more than the model's context window of 128"):
        sl.capture(lm, ["Hi", "word " * 200], [1], batch_size=1)
    with pytest.raises(SteerlabError, match="prompts must be strings"):
        sl.capture(lm, ["Hi", None], [1])


def test_package_functions_are_not_shadowed_by_their_submodules():
    """`sl.capture`, `sl.steer`, `sl.generate` stay the functions once their submodules are imported (no
    submodule shares a name with a function the package exports)."""
    import importlib.util
    import subprocess
    import sys

    for name in sl.__all__:
        assert importlib.util.find_spec(f"steerlab.{name}") is None, f"steerlab.{name} is both a module and a name"
    code = ("import steerlab as sl, steerlab.activations, steerlab.steering, steerlab.generation, sys\n"
            "for n, m in (('capture', 'activations'), ('steer', 'steering'), ('generate', 'generation')):\n"
            "    assert getattr(sl, n) is getattr(sys.modules['steerlab.' + m], n), (n, getattr(sl, n))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
