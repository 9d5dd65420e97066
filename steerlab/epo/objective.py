"""What EPO optimises: a target log-probability and the cross-entropy of an inserted token sequence.

An attack inserts a sequence of `seq_len` free tokens into the user's text of one or more prompts (as
a suffix after the user's text, or as a prefix before it). For a candidate sequence `x` and target
items `i = 1..I` (each: ids before the sequence, ids after it up to the end of the prompt, and the
scored continuation):

    target(x) = mean_i  sum_k log p(answer_i[k] | head_i + x + tail_i + answer_i[:k])
                (with `normalise`: log p(answer_i[0]) - logsumexp_j log p(alternative_ij), e.g. the
                log of p(not-matching letter) / (p(A) + p(B)))
    xent(x)   = mean_i  mean_k -log p(x[k] | head_i + x[:k])

`xent` is the model's own next-token cross-entropy of the inserted tokens in the context where they
sit: how unnatural the sequence is. Both come from the same forward pass, run with the steering terms
active; with positions "after_user" or "last_prompt" nothing up to the end of the user's text (where
the sequence sits) is steered, so `xent` equals the unsteered model's.

Cost. The ids before the sequence (`head`) never change, so their keys and values are computed once
(steered) and every candidate only runs its sequence, the tail and the answer tokens on a copy of that
cache. Gradients are taken with respect to one-hot token inputs (`one_hot @ embedding matrix` fed as
`inputs_embeds`), as in GCG/EPO; `xent`'s gradient includes the one-hot's role as the label.
The target items themselves (where the sequence goes) come from `targets`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch

from ..activations import last_logits_only, position_ids_for, takes_logits_to_keep
from ..encoding import EncodedBatch, pad_left
from ..engine.cache import cache_of, filled_layer
from ..forward_cache import output_cache, with_cache
from ..errors import PromptTooLongError, SteerlabError
from ..steering import Steering, apply_steering
from .targets import TargetItem

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel


@dataclass
class Scores:
    """Per sequence and item: target and cross-entropy ([n_sequences, n_items] each)."""

    target: torch.Tensor
    xent: torch.Tensor

    def mean(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The objective's values: means over items ([n_sequences] each)."""
        return self.target.mean(1), self.xent.mean(1)


class EPOObjective:
    """target(x) and xent(x) of token sequences x (see the module docstring), batched, with gradients.

    Construction runs the heads once (with steering) and keeps their KV cache; `scores` and
    `gradient` then only run the sequence and what follows it.

    Args:
        lm: a LoadedModel.
        items: the target items (their mean is the objective).
        steering: steering terms active in every pass (the attack must defeat the steered model).
        seq_len: length of the inserted sequence.
        normalise: target = log p(answer) − logsumexp over the alternatives (needs `alternatives`).
        chunk_rows: most rows (sequence × item) per forward pass; bounds memory (each row holds a
            copy of its head's KV cache).
        fast_dtype: e.g. torch.bfloat16: run the search's passes (`scores(..., exact=False)`,
            `gradient`) under autocast to that dtype (about 2.5x faster matrix products on CPUs with
            bfloat16 support); `scores(..., exact=True)` always runs in the model's own dtype. The
            heads are always computed exactly.
        record_heads: keep each head's token log-probabilities (`head_token_logprobs`, for
            `head_xent`: the cross-entropy of natural prompt text, e.g. the question).
    """

    def __init__(self, lm, items: Sequence[TargetItem], steering: Steering | Sequence[Steering] = (), *,
                 seq_len: int, normalise: bool = False, chunk_rows: int = 32,
                 fast_dtype: torch.dtype | None = None, record_heads: bool = False):
        self.lm = lm
        self.items = list(items)
        self.steering = [steering] if isinstance(steering, Steering) else list(steering)
        self.seq_len = int(seq_len)
        self.normalise = bool(normalise)
        self.chunk_rows = int(chunk_rows)
        self.fast_dtype = fast_dtype
        check_objective_inputs(lm, self.items, self.seq_len, self.normalise, self.chunk_rows)
        emb = lm.model.get_input_embeddings()
        self.record_heads = bool(record_heads)
        self._embedding = emb
        self._embed_scale = getattr(emb, "embed_scale", None)
        self.vocab_size = int(emb.weight.shape[0])
        self._keep_supported = takes_logits_to_keep(type(lm.model))
        self._layouts: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._layout()
        self._run_heads()

    # -- layout ---------------------------------------------------------------------------------
    def _layout(self) -> None:
        S = self.seq_len
        items = self.items
        pad = self.lm.tokenizer.pad_token_id if self.lm.tokenizer.pad_token_id is not None else 0
        self._pad_id = int(pad)
        self.n_items = len(items)
        self._head_len = torch.tensor([len(it.head_ids) for it in items])
        self._tail_len = torch.tensor([len(it.tail_ids) for it in items])
        self._ans_len = torch.tensor([len(it.answer_ids) for it in items])
        # after the sequence: tail + answer[:-1] (teacher forcing), right-padded to a common width; right
        # pads come after every scored position, so causal attention never lets them matter
        after = [list(it.tail_ids) + list(it.answer_ids[:-1]) for it in items]
        width = max(len(a) for a in after)
        self._after = torch.full((len(items), width), self._pad_id, dtype=torch.long)
        for i, a in enumerate(after):
            if a:
                self._after[i, : len(a)] = torch.tensor(a)
        amax = int(self._ans_len.max())
        self._ans_tok = torch.zeros((len(items), amax), dtype=torch.long)
        self._ans_mask = torch.zeros((len(items), amax))
        for i, it in enumerate(items):
            for k, t in enumerate(it.answer_ids):
                self._ans_tok[i, k] = t
                self._ans_mask[i, k] = 1.0
        nalt = max((len(it.alternatives) for it in items), default=0)
        self._alt = torch.zeros((len(items), max(nalt, 1)), dtype=torch.long)
        self._alt_mask = torch.zeros((len(items), max(nalt, 1)), dtype=torch.bool)
        for i, it in enumerate(items):
            for j, t in enumerate(it.alternatives):
                self._alt[i, j] = t
                self._alt_mask[i, j] = True
        self._user_start = torch.tensor([it.user_start for it in items])
        self._assistant = torch.tensor([len(it.head_ids) + S + it.assistant_start for it in items])
        self._user_end = torch.tensor([len(it.head_ids) + S + it.user_end for it in items])
        self._prompt_len = torch.tensor([it.prompt_length(S) for it in items])

    def _run_heads(self) -> None:
        """Heads → KV cache [I, heads, Lmax, d] per layer (left-padded) and log p(first sequence token)."""
        lm = self.lm
        ids, mask = pad_left([it.head_ids for it in self.items], self._pad_id)
        self._head_ids, self._head_mask = ids, mask
        keys: list[list[torch.Tensor]] = []
        values: list[list[torch.Tensor]] = []
        first = []
        self.head_token_logprobs: list[torch.Tensor] | None = [] if self.record_heads else None
        step = min(self.chunk_rows, 4) if self.record_heads else self.chunk_rows  # full logits are large
        width = ids.shape[1]
        for s in range(0, len(self.items), step):
            rows = torch.arange(s, min(s + step, len(self.items)))
            batch = self._batch(rows, ids[rows], mask[rows])
            handle = apply_steering(lm, self.steering, batch=batch) if self.steering else None
            try:
                with torch.no_grad():
                    out = lm.model(input_ids=ids[rows].to(lm.device), attention_mask=mask[rows].to(lm.device),
                                   position_ids=position_ids_for(mask[rows]).to(lm.device), use_cache=True,
                                   **(last_logits_only(lm.model, width) if not self.record_heads else {}))
            finally:
                if handle is not None:
                    handle.remove()
            cache = output_cache(out)
            layers = getattr(cache, "layers", None)
            if layers is None or any(not hasattr(l, "keys") or l.keys is None for l in layers):
                raise SteerlabError(f"EPO needs a plain key/value cache; {lm.family} models are not supported")
            for l, layer in enumerate(layers):
                if len(keys) <= l:
                    keys.append([])
                    values.append([])
                keys[l].append(layer.keys)
                values[l].append(layer.values)
            first.append(torch.log_softmax(out.logits[:, -1].float(), dim=-1))
            if self.head_token_logprobs is not None:
                lp = torch.log_softmax(out.logits[:, :-1].float(), dim=-1)
                got = lp.gather(2, ids[rows][:, 1:, None].to(lp.device)).squeeze(2).cpu()
                for r, i in enumerate(rows.tolist()):
                    n = int(self._head_len[i])
                    self.head_token_logprobs.append(got[r, width - n:])  # log p(head token t | <t), t = 1..n-1
        self._keys = [torch.cat(k) for k in keys]
        self._values = [torch.cat(v) for v in values]
        self._fast_kv: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self._first_logprobs = torch.cat(first)  # [I, V]: log p(sequence token 0 | head)

    def head_xent(self, from_user: bool = True) -> list[float]:
        """Per item: mean per-token cross-entropy (nats) of the head's tokens (from the user's text on
        when `from_user`; for a suffix the head is the question and the separator), as the model sees
        them in the prompt, under the steering. Needs `record_heads=True`."""
        if self.head_token_logprobs is None:
            raise SteerlabError("head_xent needs EPOObjective(..., record_heads=True)")
        out = []
        for it, lp in zip(self.items, self.head_token_logprobs):
            start = max(it.user_start, 1) if from_user else 1
            part = lp[start - 1:]  # lp[t - 1] = log p(head token t)
            out.append(float(-part.mean()) if part.numel() else float("nan"))
        return out

    def _batch(self, item_of_row: torch.Tensor, input_ids: torch.Tensor, mask: torch.Tensor) -> EncodedBatch:
        """The EncodedBatch the steering hooks need (row-relative boundaries of the full prompt)."""
        return EncodedBatch(
            input_ids=input_ids,
            attention_mask=mask,
            lengths=self._prompt_len[item_of_row],
            user_start=self._user_start[item_of_row],
            assistant_start=self._assistant[item_of_row],
            user_end=self._user_end[item_of_row],
        )

    # -- one chunk --------------------------------------------------------------------------------
    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids (as the model computes them from input_ids)."""
        return self._embedding(ids.to(self.lm.device))

    def embed_one_hot(self, one_hot: torch.Tensor) -> torch.Tensor:
        """`one_hot @ embedding matrix` (scaled like the embedding module, e.g. Gemma)."""
        w = self._embedding.weight
        e = one_hot.to(w.dtype) @ w
        if self._embed_scale is not None:
            e = e * self._embed_scale.to(e.dtype) if isinstance(self._embed_scale, torch.Tensor) else e * self._embed_scale
        return e

    def _autocast(self, exact: bool):
        """Autocast to `fast_dtype` for search passes; a no-op context for exact ones."""
        if exact or self.fast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.lm.device.type, dtype=self.fast_dtype)

    def _head_kv(self, exact: bool) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        if exact or self.fast_dtype is None:
            return self._keys, self._values
        if self._fast_kv is None:
            self._fast_kv = ([k.to(self.fast_dtype) for k in self._keys], [v.to(self.fast_dtype) for v in self._values])
        return self._fast_kv

    def _layout_for(self, c0: int, k_from: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Kept logit columns of a chunk that starts at sequence position `c0`.

        Returns (keep, xent_idx, ans_idx): `keep` chunk-relative columns whose logits are computed;
        `xent_idx[n]` indexes (into keep) the column predicting sequence token `k_from + n`;
        `ans_idx[i, a]` the column predicting answer token a of item i.
        """
        key = (c0, k_from)
        cached = self._layouts.get(key)
        if cached is not None:
            return cached
        S = self.seq_len
        xent_cols = [k - 1 - c0 for k in range(k_from, S)]
        ans_cols = {(i, a): S + int(self._tail_len[i]) - 1 + a - c0
                    for i in range(self.n_items) for a in range(int(self._ans_len[i]))}
        keep = sorted(set(xent_cols) | set(ans_cols.values()))
        where = {c: n for n, c in enumerate(keep)}
        ans_idx = torch.zeros((self.n_items, int(self._ans_len.max())), dtype=torch.long)
        for (i, a), c in ans_cols.items():
            ans_idx[i, a] = where[c]
        out = (torch.tensor(keep, dtype=torch.long), torch.tensor([where[c] for c in xent_cols], dtype=torch.long), ans_idx)
        self._layouts[key] = out
        return out

    def _forward(self, item_of_row: torch.Tensor, seq_ids: torch.Tensor, fed: torch.Tensor, c0: int, keep: torch.Tensor,
                 prefix: tuple[list[torch.Tensor], list[torch.Tensor]] | None, exact: bool):
        """One chunk: feed `fed` (embeddings of sequence positions c0..S-1) then the items' tails and
        answers, on the head cache (+ `prefix`: per-row keys/values of sequence positions < c0).

        Returns (log-probabilities at the kept columns [rows, n_keep, V], the cache after the call).
        """
        lm = self.lm
        dev = lm.device
        rows = int(item_of_row.shape[0])
        after = self._after[item_of_row]
        embeds = torch.cat([fed, self.embed(after).to(fed.dtype)], dim=1)
        n_fed = embeds.shape[1]
        head_mask = self._head_mask[item_of_row]
        mask = torch.cat([head_mask, torch.ones(rows, c0 + n_fed, dtype=head_mask.dtype)], dim=1)
        pos = (self._head_len[item_of_row] + c0)[:, None] + torch.arange(n_fed)[None, :]
        full_ids = torch.cat([self._head_ids[item_of_row], seq_ids.cpu(), after], dim=1)
        idx = item_of_row.to(dev)
        keys, values = self._head_kv(exact)
        layers = []
        for l, (k, v) in enumerate(zip(keys, values)):
            k, v = k.index_select(0, idx), v.index_select(0, idx)
            if prefix is not None and c0 > 0:
                k = torch.cat([k, prefix[0][l][:, :, :c0].to(k.dtype)], dim=2)
                v = torch.cat([v, prefix[1][l][:, :, :c0].to(v.dtype)], dim=2)
            layers.append(filled_layer(k, v))
        cache = cache_of(layers)
        handle = apply_steering(lm, self.steering, batch=self._batch(item_of_row, full_ids, mask)) if self.steering else None
        try:
            kwargs = {"logits_to_keep": keep.to(dev)} if self._keep_supported else {}
            with self._autocast(exact):
                out = lm.model(inputs_embeds=embeds, attention_mask=mask.to(dev), position_ids=pos.to(dev),
                               use_cache=True, **with_cache(lm.model, cache, **kwargs))
        finally:
            if handle is not None:
                handle.remove()
        logits = out.logits if self._keep_supported else out.logits[:, keep.to(dev)]
        return torch.log_softmax(logits.float(), dim=-1), output_cache(out)

    def _target(self, lp: torch.Tensor, item_of_row: torch.Tensor, ans_idx: torch.Tensor) -> torch.Tensor:
        """[rows] target from the kept log-probabilities."""
        dev = lp.device
        rows = torch.arange(lp.shape[0], device=dev)[:, None]
        idx = ans_idx[item_of_row].to(dev)
        tok = self._ans_tok[item_of_row].to(dev)
        got = lp[rows, idx, tok] * self._ans_mask[item_of_row].to(dev)
        value = got.sum(1)
        if self.normalise:
            first = lp[torch.arange(lp.shape[0], device=dev), idx[:, 0]]  # [rows, V]
            alt = first.gather(1, self._alt[item_of_row].to(dev))
            alt = alt.masked_fill(~self._alt_mask[item_of_row].to(dev), -math.inf)
            value = got[:, 0] - torch.logsumexp(alt, dim=1)
        return value

    # -- public -------------------------------------------------------------------------------------
    def _rows(self, n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(sequence index, item index) row chunks, item-major."""
        seq = torch.arange(n).repeat(self.n_items)
        item = torch.arange(self.n_items).repeat_interleave(n)
        return [(seq[s:s + self.chunk_rows], item[s:s + self.chunk_rows]) for s in range(0, seq.numel(), self.chunk_rows)]

    def check_ids(self, ids: torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long)
        if ids.dim() != 2 or ids.shape[1] != self.seq_len:
            raise SteerlabError(f"sequences must be [n, {self.seq_len}] token ids, got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise SteerlabError(f"token ids must lie in [0, {self.vocab_size})")
        return ids

    def _token_logprobs(self, lp: torch.Tensor, xent_idx: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """[rows, n] log p(tokens[:, n]) at the kept columns `xent_idx` (tokens: ids or one-hot)."""
        dev = lp.device
        picked = lp[:, xent_idx.to(dev)]
        if tokens.dim() == 3:  # one-hot rows
            return (tokens * picked).sum(-1)
        return picked.gather(2, tokens.to(dev)[..., None]).squeeze(2)

    def _first_term(self, item_of_row: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """[rows] log p(sequence token 0 | head) (token: ids [rows] or one-hot [rows, V])."""
        first = self._first_logprobs[item_of_row.to(self._first_logprobs.device)]
        if token.dim() == 2:
            return (token.to(first.device) * first).sum(-1)
        return first.gather(1, token.to(first.device)[:, None]).squeeze(1)

    @torch.no_grad()
    def scores(self, ids: torch.Tensor, exact: bool = True) -> Scores:
        """Target and cross-entropy of each sequence on each item ([n, I] each).

        exact=False runs under autocast to `fast_dtype` when one is set (the search's evaluations)."""
        ids = self.check_ids(ids)
        n, S = ids.shape
        target = torch.zeros(n, self.n_items)
        xent = torch.zeros(n, self.n_items)
        keep, xent_idx, ans_idx = self._layout_for(0, 1)
        for seq_idx, item_idx in self._rows(n):
            seq = ids[seq_idx]
            lp, _ = self._forward(item_idx, seq, self.embed(seq), 0, keep, None, exact)
            terms = self._first_term(item_idx, seq[:, 0])[:, None]
            if S > 1:
                terms = torch.cat([terms, self._token_logprobs(lp, xent_idx, seq[:, 1:])], dim=1)
            target[seq_idx, item_idx] = self._target(lp, item_idx, ans_idx).cpu()
            xent[seq_idx, item_idx] = (-terms.sum(1) / S).cpu()
        return Scores(target, xent)

    def evaluate(self, ids: torch.Tensor, exact: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(target [n], xent [n]): the objective's values, means over items."""
        return self.scores(ids, exact).mean()

    def gradient(self, ids: torch.Tensor, lambdas: torch.Tensor | Sequence[float]) -> "Gradients":
        """Gradient of `-target + lambda_m * xent` with respect to one-hot inputs, per sequence.

        Runs under autocast to `fast_dtype` when one is set (`one_hot @ embedding` itself stays in
        the model's dtype). Also returns what `children_scores` reuses (see `Gradients`).
        """
        ids = self.check_ids(ids)
        lam = torch.as_tensor(lambdas, dtype=torch.float32).reshape(-1)
        m, S = ids.shape
        if lam.numel() != m:
            raise SteerlabError(f"{lam.numel()} fluency weights for {m} sequences")
        dev = self.lm.device
        one_hot = torch.nn.functional.one_hot(ids, self.vocab_size).float().to(dev).requires_grad_(True)
        target = torch.zeros(m, self.n_items)
        terms_all = torch.zeros(m, self.n_items, S)
        pk: list[torch.Tensor] = []
        pv: list[torch.Tensor] = []
        keep, xent_idx, ans_idx = self._layout_for(0, 1)
        with torch.enable_grad():
            for seq_idx, item_idx in self._rows(m):
                oh = one_hot[seq_idx.to(dev)]
                lp, cache = self._forward(item_idx, ids[seq_idx], self.embed_one_hot(oh), 0, keep, None, exact=False)
                t = self._target(lp, item_idx, ans_idx)
                terms = self._first_term(item_idx, oh[:, 0])[:, None]
                if S > 1:
                    terms = torch.cat([terms, self._token_logprobs(lp, xent_idx, oh[:, 1:])], dim=1)
                x = -terms.sum(1) / S
                loss = ((-t + lam[seq_idx].to(dev) * x) / self.n_items).sum()
                loss.backward()
                target[seq_idx, item_idx] = t.detach().cpu()
                terms_all[seq_idx, item_idx] = terms.detach().cpu()
                width = self._head_mask.shape[1]
                for l, layer in enumerate(cache.layers):
                    kk = layer.keys[:, :, width:width + S].detach()
                    vv = layer.values[:, :, width:width + S].detach()
                    if len(pk) <= l:
                        pk.append(torch.zeros((m, self.n_items) + tuple(kk.shape[1:]), dtype=kk.dtype, device=kk.device))
                        pv.append(torch.zeros((m, self.n_items) + tuple(vv.shape[1:]), dtype=vv.dtype, device=vv.device))
                    pk[l][seq_idx.to(dev), item_idx.to(dev)] = kk
                    pv[l][seq_idx.to(dev), item_idx.to(dev)] = vv
        xent = -terms_all.sum(2) / S
        return Gradients(target.mean(1), xent.mean(1), one_hot.grad.detach().cpu(),
                         Prefixes(ids.clone(), pk, pv, terms_all))

    @torch.no_grad()
    def children_scores(self, parents: "Prefixes", parent_of: torch.Tensor, ids: torch.Tensor,
                        exact: bool = False) -> Scores:
        """Scores of children that differ from their parent in one position, reusing the parent's
        keys/values before that position (equal to `scores(ids, exact)` up to float rounding).

        Args:
            parents: from `gradient` (its sequences, per-item keys/values and token log-probs).
            parent_of: [n] index into `parents` of each child's parent.
            ids: [n, S] the children; each differs from its parent in at most one position.
        """
        ids = self.check_ids(ids)
        parent_of = torch.as_tensor(parent_of, dtype=torch.long)
        n, S = ids.shape
        par = parents.ids[parent_of]
        diff = ids != par
        if bool((diff.sum(1) > 1).any()):
            raise SteerlabError("children_scores: a child differs from its parent in more than one position")
        j = torch.where(diff.any(1), diff.float().argmax(1), torch.full((n,), S - 1))
        target = torch.zeros(n, self.n_items)
        xent = torch.zeros(n, self.n_items)
        for jj in sorted(set(j.tolist())):
            kids = (j == jj).nonzero().squeeze(1)
            c0, k_from = max(jj - 1, 0), max(jj, 1)
            keep, xent_idx, ans_idx = self._layout_for(c0, k_from)
            seq_all = kids.repeat(self.n_items)
            item_all = torch.arange(self.n_items).repeat_interleave(kids.numel())
            for s in range(0, seq_all.numel(), self.chunk_rows):
                cidx, iidx = seq_all[s:s + self.chunk_rows], item_all[s:s + self.chunk_rows]
                seq = ids[cidx]
                pidx = parent_of[cidx]
                dev = self.lm.device
                prefix = None
                if c0 > 0:
                    sel = (pidx.to(dev), iidx.to(dev))
                    prefix = ([k[sel] for k in parents.keys], [v[sel] for v in parents.values])
                lp, _ = self._forward(iidx, seq, self.embed(seq[:, c0:]), c0, keep, prefix, exact)
                terms = parents.terms[pidx, iidx].clone()  # [rows, S]; positions >= jj are replaced
                if jj == 0:
                    terms[:, 0] = self._first_term(iidx, seq[:, 0]).cpu()
                if k_from < S:
                    terms[:, k_from:] = self._token_logprobs(lp, xent_idx, seq[:, k_from:]).cpu()
                target[cidx, iidx] = self._target(lp, iidx, ans_idx).cpu()
                xent[cidx, iidx] = -terms.sum(1) / S
        return Scores(target, xent)


@dataclass
class Prefixes:
    """What children of some sequences reuse (from `EPOObjective.gradient`).

    Attributes:
        ids: [m, S] the sequences.
        keys, values: per layer [m, I, kv_heads, S, head_dim]: their keys/values at the sequence
            positions, on each item's head.
        terms: [m, I, S] log p(sequence token k | everything before it) per item.
    """

    ids: torch.Tensor
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    terms: torch.Tensor

    def select(self, rows: Sequence[int]) -> "Prefixes":
        idx = torch.as_tensor(list(rows), dtype=torch.long)
        dev = self.keys[0].device if self.keys else idx.device
        return Prefixes(self.ids[idx], [k[idx.to(dev)] for k in self.keys], [v[idx.to(dev)] for v in self.values],
                        self.terms[idx])

    @staticmethod
    def stack(parts: Sequence["Prefixes"]) -> "Prefixes":
        return Prefixes(torch.cat([p.ids for p in parts]),
                        [torch.cat([p.keys[l] for p in parts]) for l in range(len(parts[0].keys))],
                        [torch.cat([p.values[l] for p in parts]) for l in range(len(parts[0].values))],
                        torch.cat([p.terms for p in parts]))


@dataclass
class Gradients:
    """Result of `EPOObjective.gradient`.

    Attributes:
        target, xent: [m] the objective's values at the sequences.
        grad: [m, S, V] gradient of `-target + lambda_m * xent` with respect to the one-hot inputs.
        prefixes: the sequences' keys/values and token log-probs (for `children_scores`).
    """

    target: torch.Tensor
    xent: torch.Tensor
    grad: torch.Tensor
    prefixes: Prefixes


def check_objective_inputs(lm: LoadedModel,
                           items: Sequence[TargetItem], seq_len: int, normalise: bool, chunk_rows: int) -> None:
    """Every error an objective can raise, before any computation."""
    if len(items) == 0:
        raise SteerlabError("no target items: the target is empty")
    for k, it in enumerate(items):
        if not isinstance(it, TargetItem):
            raise SteerlabError(f"target item {k} is a {type(it).__name__}, not a TargetItem")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise SteerlabError(f"the sequence length must be a positive integer, got {seq_len!r}")
    if chunk_rows < 1:
        raise SteerlabError(f"chunk_rows must be positive, got {chunk_rows}")
    if normalise:
        bad = [k for k, it in enumerate(items) if len(it.alternatives) < 2]
        if bad:
            raise SteerlabError(f"a normalised target needs at least two alternatives per item (items {bad[:5]} have fewer)")
    limit = lm.max_context
    if limit is not None:
        for k, it in enumerate(items):
            need = it.total_length(seq_len)
            if need > limit:
                raise PromptTooLongError(
                    f"target item {k}: {len(it.head_ids) + len(it.tail_ids)} prompt tokens + a {seq_len}-token sequence "
                    f"+ {len(it.answer_ids)} answer tokens = {need}, more than the model's context window of {limit}"
                )
    vocab = int(lm.model.get_input_embeddings().weight.shape[0])
    for k, it in enumerate(items):
        for t in (*it.head_ids, *it.tail_ids, *it.answer_ids, *it.alternatives):
            if not 0 <= t < vocab:
                raise SteerlabError(f"target item {k}: token id {t} outside the model's vocabulary of {vocab}")
