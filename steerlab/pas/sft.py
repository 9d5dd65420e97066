"""PAS on a supervised fine-tuned model: a small LoRA fine-tune on the answer letter, merged for steering.

`finetune_lora(lm, shown, SFTConfig())` copies the model, attaches LoRA adapters (peft; rank 8 on the
attention projections by default), and trains them for a few hundred steps at most on the
**answer-letter loss**: -log p(gold letter) at the last prompt token of the PAS prompt, with
p(letter) = p("A") + p(" A") as in the evaluation (`steerlab.pas.runs`). The adapters are then
merged into the weights (`merge_and_unload`) and the result is an ordinary `LoadedModel`, so
capture, steering and the scoring engine work on it unchanged. The base model is never modified.

`run_sft_comparison` compares, per seed and on the same splits: the base model, base + PAS, the
tuned model alone, and tuned + PAS (the vector built and its layer/strength chosen on the tuned model).
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch

from ..activations import last_logits_only, position_ids_for
from ..data.prompts import LETTERS
from ..data.records import MCItem
from ..encoding import encode
from ..errors import SteerlabError
from ..layers import find_decoder_blocks
from ..methods.pas import mc_prompt, normalize_method
from ..models import LoadedModel
from .runs import run_pas
from .letters import SPELLINGS
from .splits import DEFAULT_CAP, Shown, make_splits
from .stats import SeedSummary, summarize


@dataclass(frozen=True)
class SFTConfig:
    """LoRA fine-tuning settings (kept small: CPU minutes, not hours)."""

    steps: int = 100
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    lr: float = 5e-4
    batch_size: int = 8
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 2000:
            raise SteerlabError(f"SFT steps must be in 1..2000, got {self.steps}")
        if self.rank < 1 or self.batch_size < 1 or not self.lr > 0:
            raise SteerlabError("SFT rank, batch size and learning rate must be positive")


def letter_token_ids(lm: LoadedModel, n: int) -> list[list[int]]:
    """For each of the first n letters, the first token id of each spelling ("A", " A")."""
    tok = lm.tokenizer
    out = []
    for j in range(n):
        ids = []
        for sp in SPELLINGS:
            t = tok(sp + LETTERS[j], add_special_tokens=False).input_ids
            if t and t[0] not in ids:
                ids.append(t[0])
        out.append(ids)
    return out


def finetune_lora(lm: LoadedModel, shown: Sequence[Shown], config: SFTConfig = SFTConfig(), *, seed: int = 0,
                  chat_template: bool | None = None, log=None) -> tuple[LoadedModel, dict]:
    """A merged LoRA fine-tune of `lm` on the answer letters of `shown`; returns (model, training info)."""
    from peft import LoraConfig, get_peft_model

    shown = list(shown)
    if not shown:
        raise SteerlabError("no training items for the fine-tune")
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    model = copy.deepcopy(lm.model)
    model.requires_grad_(False)
    peft_cfg = LoraConfig(r=config.rank, lora_alpha=config.alpha, lora_dropout=config.dropout, bias="none",
                          target_modules=list(config.target_modules))
    pm = get_peft_model(model, peft_cfg)
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr)
    prompts = [mc_prompt(lm, it, order, chat_template=chat_template) for it, order in shown]
    max_n = max(len(it.choices) for it, _ in shown)
    ids_per_letter = letter_token_ids(lm, max_n)
    gold_ids = [ids_per_letter[order.index(it.gold)] for it, order in shown]
    rng = random.Random(f"sft-{seed}")
    order = []
    losses = []
    device = lm.device
    for step in range(config.steps):
        if len(order) < config.batch_size:
            perm = list(range(len(shown)))
            rng.shuffle(perm)
            order += perm
        idx, order = order[: config.batch_size], order[config.batch_size:]
        batch = encode(lm, [prompts[i] for i in idx]).to(device)
        out = pm(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                 position_ids=position_ids_for(batch.attention_mask), use_cache=False,
                 **last_logits_only(lm.model, batch.input_ids.shape[1]))
        logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        loss = -torch.stack([torch.logsumexp(logp[r, gold_ids[i]], 0) for r, i in enumerate(idx)]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if log is not None and (step + 1) % max(1, config.steps // 5) == 0:
            log(f"  sft step {step + 1}/{config.steps}: loss {sum(losses[-10:]) / len(losses[-10:]):.3f}")
    merged = pm.merge_and_unload()
    merged.eval()
    merged.requires_grad_(False)
    tuned = LoadedModel(merged, lm.tokenizer, f"{lm.model_id}+lora-sft", find_decoder_blocks(merged),
                        lm.use_chat_template, source=lm.source, extra={"sft": asdict(config), "sft_seed": seed})
    info = {"losses": losses, "wall_s": time.perf_counter() - t0, "n_train": len(shown), **asdict(config)}
    return tuned, info


@dataclass
class SFTSeed:
    """One seed: accuracies on the same test split (base, base+PAS, tuned, tuned+PAS) and timings."""

    seed: int
    base: float
    base_pas: float
    sft: float
    sft_pas: float
    base_choice: tuple
    sft_choice: tuple
    sft_info: dict = field(default_factory=dict)
    wall_s: float = 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sft_info"] = {k: v for k, v in self.sft_info.items() if k != "losses"}
        d["sft_info"]["first_loss"] = self.sft_info.get("losses", [None])[0]
        d["sft_info"]["last_loss"] = self.sft_info.get("losses", [None])[-1]
        return d


@dataclass
class SFTComparison:
    """`run_sft_comparison`'s result: per seed, and Delta summaries over seeds."""

    dataset: str
    method: str
    seeds: list[SFTSeed]

    def summaries(self) -> dict[str, SeedSummary]:
        s = self.seeds
        return {
            "pas_on_base": summarize([x.base_pas - x.base for x in s]),
            "sft_alone": summarize([x.sft - x.base for x in s]),
            "pas_on_sft": summarize([x.sft_pas - x.sft for x in s]),
            "sft_pas_vs_base_pas": summarize([x.sft_pas - x.base_pas for x in s]),
        }

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "method": self.method, "seeds": [x.to_dict() for x in self.seeds],
                "summary": {k: v.to_dict() for k, v in self.summaries().items()}}

    def summary_table(self) -> str:
        mean = lambda xs: 100 * sum(xs) / len(xs)  # noqa: E731
        s = self.seeds
        lines = [f"{self.dataset} {self.method}, {len(s)} seed(s), test accuracy (%):",
                 f"  base {mean([x.base for x in s]):.1f} | base+PAS {mean([x.base_pas for x in s]):.1f} | "
                 f"SFT {mean([x.sft for x in s]):.1f} | SFT+PAS {mean([x.sft_pas for x in s]):.1f}"]
        for k, v in self.summaries().items():
            lines.append(f"  {k}: {v.format()} pp")
        return "\n".join(lines)


def _base_from(base, seed: int, method: str, config: dict):
    """(unsteered, steered, (layer, strength)) of `seed` from a `run_pas` result (PASResult or its
    results.json dict) whose configuration matches `config`; None when that seed is not in it."""
    d = base.to_dict() if hasattr(base, "to_dict") else base
    cfg = d["config"]
    for k, v in config.items():
        if cfg.get(k) != v:
            raise SteerlabError(f"the base result was run with {k}={cfg.get(k)!r}, not {v!r}: its splits or grid differ")
    for r in d["runs"]:
        if r["seed"] == seed and method in r["methods"]:
            m = r["methods"][method]
            if m.get("skipped"):
                return r["test_unsteered"], r["test_unsteered"], (None, None)
            return r["test_unsteered"], m["test_accuracy"], (m["layer"], m["strength"])
    return None


def run_sft_comparison(lm: LoadedModel,
                       items: Sequence[MCItem], method: str = "ipas-wo", *, seeds: int | Sequence[int] = 1,
                       cap: int | None = DEFAULT_CAP, sft: SFTConfig = SFTConfig(), layers=None, strengths=None,
                       chat_template: bool | None = None, choice_seed: int | None = None, dataset: str = "",
                       base=None, log=None) -> SFTComparison:
    """Per seed: LoRA-tune on the training split, then PAS on the tuned model vs tuned alone vs base + PAS.

    `base`: a `run_pas` result (or its results.json as a dict) of the same data, cap, grid and choice
    seed; its seeds' base and base + PAS accuracies are reused instead of recomputed.
    """
    from .runs import default_layers, default_strengths

    method = normalize_method(method)
    items = list(items)
    name = dataset or (items[0].source if items else "") or "dataset"
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    grid_layers = default_layers(lm.n_layers) if layers is None else sorted({int(l) for l in layers})
    grid_strengths = default_strengths() if strengths is None else [float(x) for x in strengths]
    expect = {"dataset": name, "cap": cap, "layers": grid_layers, "strengths": grid_strengths, "choice_seed": choice_seed}
    out = []
    for seed in seed_list:
        t0 = time.perf_counter()
        splits = make_splits(items, seed, cap=cap, choice_seed=choice_seed, dataset=name)
        kw = dict(seeds=[seed], cap=cap, layers=grid_layers, strengths=grid_strengths, chat_template=chat_template,
                  choice_seed=choice_seed, dataset=name, keep_vectors=False)
        got = _base_from(base, seed, method, expect) if base is not None else None
        if got is None:
            b = run_pas(lm, items, method, **kw).runs[0]
            m = b.methods[method]
            got = (b.test_unsteered, b.test_unsteered if m.skipped else m.test_accuracy, (m.layer, m.strength))
        tuned, info = finetune_lora(lm, splits.train, sft, seed=seed, chat_template=chat_template, log=log)
        on_tuned = run_pas(tuned, items, method, **kw).runs[0]
        t = on_tuned.methods[method]
        rec = SFTSeed(seed, got[0], got[1], on_tuned.test_unsteered,
                      t.test_accuracy if not t.skipped else on_tuned.test_unsteered, tuple(got[2]),
                      (t.layer, t.strength), info, time.perf_counter() - t0)
        out.append(rec)
        if log is not None:
            log(f"{name} seed {seed}: base {100 * rec.base:.1f}% base+PAS {100 * rec.base_pas:.1f}% "
                f"SFT {100 * rec.sft:.1f}% SFT+PAS {100 * rec.sft_pas:.1f}% ({rec.wall_s:.0f}s, "
                f"fine-tune {info['wall_s']:.0f}s)")
        del tuned
    return SFTComparison(name, method, out)
