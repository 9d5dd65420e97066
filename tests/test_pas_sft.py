"""LoRA fine-tune on the answer letter: the loss is the hand-computed -log(p('X') + p(' X')) and falls,
the merged model is a plain LoadedModel PAS runs on, and the base model is untouched."""

from __future__ import annotations

import pytest
import torch

from steerlab.pas.sft import SFTConfig, finetune_lora, letter_token_ids, run_sft_comparison
from steerlab.pas.splits import choice_orders
from steerlab.data.records import MCItem
from steerlab.errors import SteerlabError


def _items(n=20):
    return [MCItem(f"Is {i} even?", ("yes", "no", "unsure")[: 2 + i % 2], i % 2, source="even", index=i)
            for i in range(n)]


def test_lora_learns_the_letters_and_leaves_the_base_alone(tiny_lm):
    items = _items(8)
    shown = list(zip(items, choice_orders(items, 0)))
    before = {k: v.clone() for k, v in tiny_lm.model.state_dict().items()}
    tuned, info = finetune_lora(tiny_lm, shown, SFTConfig(steps=12, lr=2e-2, batch_size=8), seed=0)
    losses = info["losses"]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    # the first loss is the plain answer-letter loss of the untrained (LoRA B = 0) model
    ids = letter_token_ids(tiny_lm, 3)
    ref = []
    for it, order in shown:
        from steerlab.methods.pas import mc_prompt

        p = mc_prompt(tiny_lm, it, order)
        x = tiny_lm.tokenizer(p.text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            lp = torch.log_softmax(tiny_lm.model(input_ids=x).logits[0, -1].double(), -1)
        ref.append(-torch.logsumexp(lp[ids[order.index(it.gold)]], 0))
    assert losses[0] == pytest.approx(float(torch.stack(ref).mean()), abs=1e-4)
    assert all(torch.equal(before[k], v) for k, v in tiny_lm.model.state_dict().items())
    assert not any("lora" in n for n, _ in tuned.model.named_modules())
    assert tuned.model_id == f"{tiny_lm.model_id}+lora-sft" and tuned.n_layers == tiny_lm.n_layers
    changed = [k for k, v in tuned.model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(any(t in k for t in ("q_proj", "k_proj", "v_proj", "o_proj")) for k in changed)
    assert ids[0] == [tiny_lm.tokenizer("A", add_special_tokens=False).input_ids[0],
                      tiny_lm.tokenizer(" A", add_special_tokens=False).input_ids[0]]


def test_sft_comparison_runs_pas_on_the_tuned_model(tiny_lm):
    res = run_sft_comparison(tiny_lm, _items(20), "ipas-wo", seeds=[0], layers=[1, 2], strengths=[-2.0, 2.0],
                             sft=SFTConfig(steps=4, batch_size=4))
    s = res.seeds[0]
    for v in (s.base, s.base_pas, s.sft, s.sft_pas):
        assert 0.0 <= v <= 1.0
    assert s.sft_choice[0] in (1, 2) and set(res.summaries()) == {"pas_on_base", "sft_alone", "pas_on_sft",
                                                                   "sft_pas_vs_base_pas"}
    assert res.to_dict()["seeds"][0]["sft_info"]["steps"] == 4 and "SFT+PAS" in res.summary_table()
    # a matching run_pas result supplies the base numbers; a mismatching one is refused
    from steerlab.pas.runs import run_pas

    base = run_pas(tiny_lm, _items(20), "ipas-wo", seeds=[0], layers=[1, 2], strengths=[-2.0, 2.0])
    again = run_sft_comparison(tiny_lm, _items(20), "ipas-wo", seeds=[0], layers=[1, 2], strengths=[-2.0, 2.0],
                               sft=SFTConfig(steps=4, batch_size=4), base=base.to_dict())
    assert (again.seeds[0].base, again.seeds[0].base_pas) == (s.base, s.base_pas)
    assert again.seeds[0].sft == pytest.approx(s.sft)
    with pytest.raises(SteerlabError, match="base result was run with cap=4000, not 10"):
        run_sft_comparison(tiny_lm, _items(20), "ipas-wo", seeds=[0], cap=10, layers=[1, 2], strengths=[-2.0, 2.0],
                           sft=SFTConfig(steps=1), base=base)
    with pytest.raises(SteerlabError, match="steps"):
        SFTConfig(steps=0)
