"""Letter scoring for PAS: p(letter) over both spellings, through the scoring engine.

The prediction for a PAS prompt is the argmax over its choice letters of
p(letter) = p("A") + p(" A"): the chat template makes the bare letter the natural first assistant
token, a raw prompt ending in "Answer:" makes " A" natural, and summing both spellings (each a
single token for SmolLM2/Llama tokenizers; longer spellings are scored exactly by the engine) gives
one rule for both. Letter log-probabilities are normalised over the item's letters.

`score_letters` scores prompts under many steering settings with one `engine.score` call.
`answer_and_capture` is the unsteered special case fused with the PAS capture: one forward per
batch gives the letter scores *and* the last-token activations at the requested layers (the PASf
prompts are the prompts being answered), and the token prefix all prompts share (chat header, ICL
exemplars) runs once; it equals `score_letters` + `capture` (tested) and falls back to them when a
spelling is more than one token.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch

from ..activations import last_logits_only, position_ids_for
from ..data.prompts import LETTERS
from ..encoding import Prompt, common_prefix_len, pad_left
from ..engine import ScoringItem, Setting, score, tokenize_items
from ..engine.cache import is_plain, select_rows
from ..forward_cache import cache_keyword, output_cache
from ..errors import PromptTooLongError
from ..layers import block_hidden
from ..methods.pas import mc_prompt
from .splits import Shown

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel

SPELLINGS = ("", " ")  # "A" and " A"




def letter_items(prompts: Sequence[Prompt], n_choices: Sequence[int]) -> list[ScoringItem]:
    """Engine items scoring every letter of each prompt in both spellings ("A".."X", then " A".." X")."""
    return [ScoringItem(p, tuple(sp + LETTERS[j] for sp in SPELLINGS for j in range(n)))
            for p, n in zip(prompts, n_choices)]


def letter_logprobs(logprobs: torch.Tensor, n_choices: Sequence[int]) -> torch.Tensor:
    """[settings, items, max letters] log p(letter) summed over spellings; -inf beyond an item's letters.

    `logprobs` is a ScoreTable's [settings, items, candidates] for `letter_items`.
    """
    S, I = logprobs.shape[:2]
    m = max(n_choices)
    out = torch.full((S, I, m), -math.inf, dtype=torch.float64)
    lp = logprobs.double()
    by_n: dict[int, list[int]] = {}
    for i, n in enumerate(n_choices):
        by_n.setdefault(int(n), []).append(i)
    k = len(SPELLINGS)
    for n, rows in by_n.items():
        idx = torch.tensor(rows)
        parts = lp[:, idx, : k * n].reshape(S, len(rows), k, n)
        out[:, idx, :n] = torch.logsumexp(parts, dim=2)
    return out


def _gold_positions(shown: Sequence[Shown]) -> torch.Tensor:
    return torch.tensor([order.index(item.gold) for item, order in shown])


@dataclass
class LetterScores:
    """Letter log-probabilities of `shown` items under `settings` (normalised over each item's letters)."""

    settings: list[Setting]
    shown: list[Shown]
    logp: torch.Tensor  # [settings, items, max letters], normalised log-probabilities (float64)
    info: dict = field(default_factory=dict)

    @property
    def pred_positions(self) -> torch.Tensor:
        """[settings, items] index of the most probable letter."""
        return self.logp.argmax(-1)

    @property
    def correct(self) -> torch.Tensor:
        """[settings, items] 1.0 where the most probable letter is the gold one."""
        return (self.pred_positions == _gold_positions(self.shown)[None, :]).double()

    @property
    def accuracy(self) -> torch.Tensor:
        return self.correct.mean(1)

    @property
    def gold_prob(self) -> torch.Tensor:
        """[settings] mean probability of the gold letter."""
        g = _gold_positions(self.shown)
        return self.logp.gather(2, g[None, :, None].expand(self.logp.shape[0], -1, 1)).squeeze(2).exp().mean(1)

    def pred_letters(self, s: int) -> list[str]:
        return [LETTERS[int(j)] for j in self.pred_positions[s]]

    def pred_choices(self, s: int) -> list[int]:
        """Predicted choice index (into item.choices) per item under setting s."""
        return [order[int(j)] for (_, order), j in zip(self.shown, self.pred_positions[s])]


def rows_for_budget(lm: LoadedModel, longest_prompt: int, budget_bytes: float = 1.5e9) -> int:
    """Engine `max_rows` that keeps the per-row KV-cache copies of a steered chunk under `budget_bytes`."""
    per_row = max(1, longest_prompt) * lm.kv_bytes_per_token
    return int(max(8, min(512, budget_bytes // per_row)))


def score_letters(lm: LoadedModel, shown: Sequence[Shown], settings: Sequence[Setting], *, prefix: str = "",
                  chat_template: bool | None = None, batch_size: int = 16, max_rows: int | None = None,
                  progress: bool = False, dataset: str = "") -> LetterScores:
    """Score the PAS prompts of `shown` (after `prefix`) under `settings` with one engine call."""
    shown = list(shown)
    prompts = [mc_prompt(lm, it, order, prefix=prefix, chat_template=chat_template) for it, order in shown]
    n_choices = [len(it.choices) for it, _ in shown]
    items = letter_items(prompts, n_choices)
    if max_rows is None:
        longest = max(len(p.text) for p in prompts) // 3 + 8  # a cheap upper estimate of tokens
        max_rows = rows_for_budget(lm, longest)
    try:
        table = score(lm, items, list(settings), batch_size=batch_size, max_rows=max_rows, progress=progress)
    except PromptTooLongError as e:
        raise _rename_too_long(e, shown, dataset) from None
    lp = letter_logprobs(table.logprobs, n_choices)
    lp = lp - torch.logsumexp(lp, dim=-1, keepdim=True)
    return LetterScores(list(settings), shown, lp, dict(table.info))


def _rename_too_long(e: PromptTooLongError, shown: Sequence[Shown], dataset: str) -> PromptTooLongError:
    m = re.match(r"item (\d+): (.*)", str(e))
    if not m:
        return e
    it = shown[int(m.group(1))][0]
    return PromptTooLongError(f"{dataset or it.source or 'dataset'} item {it.index}: {m.group(2)}")


def answer_and_capture(lm: LoadedModel, shown: Sequence[Shown], layers: Sequence[int], *, prefix: str = "",
                       chat_template: bool | None = None, batch_size: int = 16,
                       dataset: str = "") -> tuple[LetterScores, dict[int, torch.Tensor], list[Prompt]] | None:
    """Unsteered letter scores of the PAS prompts of `shown` and their last-token activations at `layers`
    ({layer: [n, hidden]}; `layers` may be empty), or None when some spelling is not a single token.

    The token prefix every prompt shares (the chat template's header, plus the in-context exemplars
    of an ICL run) is run once and its KV cache reused by every batch (pads then sit between the
    shared prefix and each prompt's own tokens, masked; positions continue from the prefix).
    """
    shown = list(shown)
    prompts = [mc_prompt(lm, it, order, prefix=prefix, chat_template=chat_template) for it, order in shown]
    n_choices = [len(it.choices) for it, _ in shown]
    items = letter_items(prompts, n_choices)
    try:
        tok = tokenize_items(lm, items)
    except PromptTooLongError as e:
        raise _rename_too_long(e, shown, dataset) from None
    if any(len(c) != 1 for t in tok for c in t.candidate_ids):
        return None
    layers = sorted({lm.blocks.check_layer(l) for l in layers})
    max_c = max(len(it.candidates) for it in items)
    logprobs = torch.full((1, len(items), max_c), float("nan"))
    acts = {l: torch.empty(len(items), lm.hidden_size) for l in layers}
    grabbed: dict[int, torch.Tensor] = {}

    def hook_for(layer):
        def hook(module, args, output):
            grabbed[layer] = block_hidden(output)[:, -1].detach().float().cpu()
        return hook

    device = lm.device
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    P = common_prefix_len([t.prompt_ids for t in tok])
    shared = None
    if P > 0:
        with torch.no_grad():
            out = lm.model(input_ids=torch.tensor([tok[0].prompt_ids[:P]], device=device), use_cache=True,
                           **last_logits_only(lm.model, P))
        shared = output_cache(out) if is_plain(output_cache(out), lm.n_layers) else None
        if shared is None:
            P = 0
    order = sorted(range(len(items)), key=lambda i: tok[i].n_prompt)
    handles = [lm.blocks[l].register_forward_hook(hook_for(l)) for l in layers]
    try:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            ids, mask = pad_left([tok[i].prompt_ids[P:] for i in idx], pad_id)
            pos = position_ids_for(mask) + P
            kwargs = {}
            if shared is not None:
                kwargs[cache_keyword(lm.model)] = select_rows(shared, torch.zeros(len(idx), dtype=torch.long))
                mask = torch.cat([torch.ones(len(idx), P, dtype=mask.dtype), mask], dim=1)
            with torch.no_grad():
                out = lm.model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                               use_cache=shared is not None, **kwargs, **last_logits_only(lm.model, ids.shape[1]))
            lp = torch.log_softmax(out.logits[:, -1].float(), dim=-1).cpu()
            for r, i in enumerate(idx):
                firsts = [c[0] for c in tok[i].candidate_ids]
                logprobs[0, i, : len(firsts)] = lp[r, firsts]
                for l in layers:
                    acts[l][i] = grabbed[l][r]
    finally:
        for h in handles:
            h.remove()
    lp = letter_logprobs(logprobs, n_choices)
    lp = lp - torch.logsumexp(lp, dim=-1, keepdim=True)
    return LetterScores([Setting.unsteered()], shown, lp, {"fused": True, "shared_prefix_tokens": P}), acts, prompts


class PromptMemo:
    """Unsteered outputs already computed for a model, by prompt text: normalised letter
    log-probabilities and last-token activations per layer.

    `run_pas` keeps one across its seeds, so a prompt that recurs (the same question with the same
    choice order, or an iPAS question + answer text, which has no choice order) is run once. Exact:
    the same text gives the same ids and the same outputs.
    """

    def __init__(self) -> None:
        self.letters: dict[str, torch.Tensor] = {}
        self.acts: dict[str, dict[int, torch.Tensor]] = {}

    def add_acts(self, texts: Sequence[str], acts: dict[int, torch.Tensor]) -> None:
        """Remember rows of {layer: [n, hidden]} for `texts`."""
        for k, t in enumerate(texts):
            slot = self.acts.setdefault(t, {})
            for layer, a in acts.items():
                slot[layer] = a[k]

    def answer(self, lm, shown: Sequence[Shown], layers: Sequence[int], *, prefix: str = "",
               chat_template: bool | None = None, batch_size: int = 16, dataset: str = "",
               read: bool = True) -> LetterScores:
        """Unsteered letter scores of `shown` (after `prefix`); prompts not seen yet are run, fused with
        reading their activations at `layers` when `read` (see `answer_and_capture`)."""
        shown = list(shown)
        prompts = [mc_prompt(lm, it, order, prefix=prefix, chat_template=chat_template) for it, order in shown]
        need = lambda t: t not in self.letters or (read and not all(l in self.acts.get(t, {}) for l in layers))  # noqa: E731
        todo = [k for k, p in enumerate(prompts) if need(p.text)]
        if todo:
            sub = [shown[k] for k in todo]
            fused = answer_and_capture(lm, sub, layers if read else [], prefix=prefix, chat_template=chat_template,
                                       batch_size=batch_size, dataset=dataset)
            if fused is not None:
                scores, acts, _ = fused
                if read:
                    self.add_acts([prompts[k].text for k in todo], acts)
            else:
                scores = score_letters(lm, sub, [Setting.unsteered()], prefix=prefix, chat_template=chat_template,
                                       batch_size=batch_size, dataset=dataset)
            for r, k in enumerate(todo):
                n = len(shown[k][0].choices)
                self.letters[prompts[k].text] = scores.logp[0, r, :n].clone()
        m = max(len(it.choices) for it, _ in shown)
        logp = torch.full((1, len(shown), m), -math.inf, dtype=torch.float64)
        for i, p in enumerate(prompts):
            row = self.letters[p.text]
            logp[0, i, : len(row)] = row
        return LetterScores([Setting.unsteered()], shown, logp, {"run": len(todo), "reused": len(shown) - len(todo)})
