"""`score`: log-probabilities of candidate continuations under many steering settings, reusing work.

What is computed. For item i with prompt ids P_i (n_i tokens) and candidate c with ids T (m tokens),
`logprob[s, i, c] = sum_k log p(T_k | P_i + T_<k)` under setting s, where setting s adds its
vectors exactly where `steerlab.steer` would on the full sequence P_i + T (with
`EncodedBatch.lengths` = n_i): "all" = every real token (candidate tokens included), "after_user" =
from the first token after the user's text on (`encoding.after_user_start`: the end-of-turn token and
assistant header, so the position predicting the first candidate token is steered; candidate tokens
included), "last_prompt" = token n_i - 1 only;
ActAdd (per-position) vectors from the user text's first token.

How it is computed, per batch of items (left-padded to W columns):

1. **Base pass** (once): the unsteered prompts with a KV cache. It gives the unsteered scores of
   every candidate's first token, the cache of every prompt position at every layer, and the
   output of the blocks just below each steered layer at the trailing columns that settings re-run.
2. **Base continuation** (only for candidates of 2+ tokens): the unsteered candidate tokens on the
   base cache; gives unsteered scores, and again the stream below each steered layer.
3. **Steered prompt suffix.** For a setting, f_i = the first position any of its terms steers
   (0 for "all", `after_user_start` for "after_user", n_i - 1 for "last_prompt"); nothing before
   f_i changes, so the run feeds only the last S = max_i(n_i - f_i) columns (at least 1) on a copy of
   the base cache's first W - S columns. Settings with the same S and the same lowest steered layer
   L share one forward: rows are (setting, item), each row with its own vector and strength
   (`steerlab.steer`'s per-row terms), chunked to `max_rows` rows. Blocks below L are skipped (see
   `engine.cache`): their output is the unsteered one, recorded in step 1. Only the last column's
   logits are computed: they score every candidate's first token, so candidates that differ in one
   token (A/B, Yes/No) cost nothing more.
4. **Steered continuation** (only for candidates of 2+ tokens): rows (setting, item, candidate)
   feed the candidate's tokens on a copy of the step-3 cache, blocks below L again skipped.

Cost per extra setting and item: "last_prompt" one token through blocks L..N-1; "after_user" the
end-of-turn token, assistant header and prefix (e.g. "(") through blocks L..N-1; "all" the whole prompt, but only
through blocks L..N-1. Exactness against a full forward per setting (`score_naive`) is tested to
1e-4 in float32, with left padding and mixed settings.

Memory. Every row of a steered forward carries its own copy of the prompt prefix's KV cache
(blocks >= L only), in buffers reused from chunk to chunk; `max_rows` and `memory_mb` bound a
chunk, and continuation rows are chunked so their logits fit `memory_mb` too.

Fallbacks, all exact, named in `ScoreTable.info["reuse"]`. Prefix reuse needs a cache of plain
full-attention `DynamicLayer`s (Llama, Qwen2/3, Mistral without sliding window, Phi-3, GPT-2, ...):
with sliding-window or recurrent layers (Gemma 2/3, Mistral v0.1, hybrids) every setting re-runs
the whole prompt through every block, still batched across settings. Block skipping also needs
blocks that return the hidden-state tensor itself; with blocks returning tuples (Bloom, Falcon)
the prefix is reused but every block runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import torch
from tqdm.auto import tqdm
from transformers.cache_utils import DynamicCache

from ..activations import last_logits_only, position_ids_for
from ..encoding import EncodedBatch, after_user_start, pad_left
from ..errors import SteerlabError
from ..layers import block_hidden
from ..per_row import batch_slots, slot_steering
from ..steering import Steering, apply_steering
from ..vector import SteeringVector
from ..forward_cache import output_cache, with_cache
from .cache import BufferPool, is_plain, prefix_cache, select_rows, skip_blocks
from .items import ScoringItem, Setting, TokenizedItem, tokenize_items
from .table import ScoreTable

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel

# ---------------------------------------------------------------------------------------------
# Settings as the runner sees them
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Term:
    vector: SteeringVector  # restricted to the layers it steers
    strength: float
    positions: str  # the position policy
    positional: bool
    schedule: str = "constant"  # `steerlab.schedules`


@dataclass(frozen=True)
class _Plan:
    index: int  # position in the caller's settings list
    terms: tuple[_Term, ...]
    low: int  # lowest steered layer


def _plan(lm: LoadedModel, index: int, setting: Setting) -> _Plan | None:
    if not isinstance(setting, Setting):
        raise SteerlabError(f"settings must be engine.Setting objects, got {type(setting).__name__}")
    terms = []
    for t in setting.steering:
        t = t.normalized(lm)  # layers as block indices (negative ones counted from the end), checked
        vec = t.vector
        if t.layers is not None and tuple(t.layers) != vec.layers:
            vec = vec.select(t.layers)
        for layer in vec.layers:
            lm.blocks.check_layer(layer)
        terms.append(_Term(vec, float(t.strength), t.positions, vec.per_position, t.schedule))
    if not terms:
        return None
    return _Plan(index, tuple(terms), min(min(t.vector.layers) for t in terms))


def _first_steered(term: _Term, item: TokenizedItem) -> int:
    if term.positional:  # ActAdd directions start at the user's text whatever the policy
        return item.user_start
    if term.positions == "all":
        return 0
    if term.positions == "after_user":
        return after_user_start(item.user_end, item.n_prompt)
    return item.n_prompt - 1  # last_prompt


def _suffix_len(plan: _Plan, items: Sequence[TokenizedItem], width: int) -> int:
    """Trailing prompt columns a setting must re-run for this batch (>= 1: the last one gives the logits)."""
    need = max(it.n_prompt - min(_first_steered(t, it) for t in plan.terms) for it in items)
    return int(min(width, max(1, need)))


def _row_terms(plans: Sequence[_Plan]) -> list[Steering]:
    """Per-row Steering terms for rows whose settings are `plans` (one plan per row).

    Terms are put in slots by kind (policy, per-position, schedule; `steerlab.per_row.batch_slots`, the
    regrouping the server's engine uses too); a row whose setting has fewer terms of a kind gets None
    (no steering) in the extra slots.
    """
    slots = batch_slots([p.terms for p in plans], lambda _k, term: term.positional)
    return [slot_steering(picked) for picked in slots]


# ---------------------------------------------------------------------------------------------
# Forward passes
# ---------------------------------------------------------------------------------------------


@dataclass
class _Batch:
    """A batch of items: left-padded prompts plus per-item token facts."""

    items: list[TokenizedItem]
    enc: EncodedBatch  # prompts, left-padded

    @property
    def width(self) -> int:
        return int(self.enc.input_ids.shape[1])

    def rows(self, item_of_row: torch.Tensor, input_ids: torch.Tensor) -> EncodedBatch:
        """The EncodedBatch steering needs for rows drawn from these items (lengths = prompt lengths)."""
        e = self.enc
        return EncodedBatch(input_ids, e.attention_mask[item_of_row], e.lengths[item_of_row],
                            e.user_start[item_of_row], e.assistant_start[item_of_row], e.user_end[item_of_row])


def _make_batch(lm: LoadedModel, items: list[TokenizedItem]) -> _Batch:
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    ids, mask = pad_left([it.prompt_ids for it in items], pad_id)
    enc = EncodedBatch(ids, mask, mask.sum(1), torch.tensor([it.user_start for it in items]),
                       torch.tensor([it.assistant_start for it in items]), torch.tensor([it.user_end for it in items]))
    return _Batch(items, enc)


class _Recorder:
    """Forward hooks that keep block outputs (trailing `cols` columns) and note their types."""

    def __init__(self, lm, layers: Sequence[int], cols: int | None):
        self.out: dict[int, torch.Tensor] = {}
        self.tensor_outputs = True
        self._handles = []
        self._cols = cols
        for l in sorted(set(layers)):
            self._handles.append(lm.blocks[l].register_forward_hook(self._hook(l)))
        if not layers:  # still learn the blocks' output type from block 0
            self._handles.append(lm.blocks[0].register_forward_hook(self._hook(None)))

    def _hook(self, layer: int | None):
        def hook(module, args, output):
            self.tensor_outputs = self.tensor_outputs and isinstance(output, torch.Tensor)
            if layer is not None:
                h = block_hidden(output)
                self.out[layer] = (h if self._cols is None else h[:, h.shape[1] - self._cols:]).detach().clone()

        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _forward(lm: LoadedModel, *, cache=None, **kwargs):
    if cache is not None:
        kwargs = with_cache(lm.model, cache, **kwargs)
    with torch.no_grad():
        return lm.model(**kwargs)


def _first_token_logprobs(logits_last: torch.Tensor, items: Sequence[TokenizedItem], item_of_row: torch.Tensor,
                          max_c: int) -> torch.Tensor:
    """[rows, max_c] log p(first token of candidate j | prompt), NaN for missing candidates."""
    lp = torch.log_softmax(logits_last.float(), dim=-1).cpu()
    out = torch.full((lp.shape[0], max_c), float("nan"))
    for r, i in enumerate(item_of_row.tolist()):
        firsts = [c[0] for c in items[i].candidate_ids]
        out[r, : len(firsts)] = lp[r, firsts]
    return out


@dataclass
class _Continuations:
    """Candidates of 2+ tokens of a batch: one row per (item, candidate), tokens right-padded."""

    item: torch.Tensor  # [C] item index in the batch
    cand: torch.Tensor  # [C] candidate index
    inputs: torch.Tensor  # [C, M] candidate tokens but the last (fed), right-padded
    targets: torch.Tensor  # [C, M] candidate tokens but the first (scored), right-padded
    mask: torch.Tensor  # [C, M] 1 on real tokens

    @classmethod
    def of(cls, items: Sequence[TokenizedItem], pad_id: int) -> "_Continuations | None":
        rows = [(i, j, c) for i, it in enumerate(items) for j, c in enumerate(it.candidate_ids) if len(c) > 1]
        if not rows:
            return None
        m = max(len(c) - 1 for _, _, c in rows)
        inputs = torch.full((len(rows), m), pad_id, dtype=torch.long)
        targets = torch.zeros((len(rows), m), dtype=torch.long)
        mask = torch.zeros((len(rows), m), dtype=torch.long)
        for r, (_, _, c) in enumerate(rows):
            inputs[r, : len(c) - 1] = torch.tensor(c[:-1])
            targets[r, : len(c) - 1] = torch.tensor(c[1:])
            mask[r, : len(c) - 1] = 1
        return cls(torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows]), inputs, targets, mask)

    def __len__(self) -> int:
        return int(self.item.shape[0])


def _continuation_logprobs(lm: LoadedModel, batch: _Batch, cache, cache_row: torch.Tensor, conts: _Continuations,
                           sel: torch.Tensor, *, plans: Sequence[_Plan] | None = None, low: int = 0,
                           hidden: torch.Tensor | None = None, record: Sequence[int] = ()):
    """Feed candidate tokens `conts[sel]` after the prompt rows `cache_row` of `cache`.

    Returns the summed log-probabilities of the scored tokens [len(sel)] and, for `record`, the
    block outputs at the fed positions. With `plans` (one per row) the rows are steered; with
    `hidden` the blocks below `low` are skipped and block low-1 outputs `hidden`.
    """
    device = lm.device
    item_of_row = conts.item[sel]
    inputs, targets, cmask = conts.inputs[sel], conts.targets[sel], conts.mask[sel]
    keep = int(cmask.sum(1).max())
    inputs, targets, cmask = inputs[:, :keep], targets[:, :keep], cmask[:, :keep]
    mask = torch.cat([batch.enc.attention_mask[item_of_row], cmask], dim=1)
    pos = position_ids_for(mask)[:, -keep:]
    rows_cache = select_rows(cache, cache_row)
    rec = _Recorder(lm, record, None)
    handle = None
    try:
        if plans is not None:
            handle = apply_steering(lm, _row_terms(plans), batch=batch.rows(item_of_row, inputs))
        with skip_blocks(lm, low if hidden is not None else 0, rows_cache,
                         hidden[:, :keep] if hidden is not None else None):
            out = _forward(lm, input_ids=inputs.to(device), attention_mask=mask.to(device), position_ids=pos.to(device),
                           cache=rows_cache, use_cache=True)
    finally:
        rec.remove()
        if handle is not None:
            handle.remove()
    lp = torch.log_softmax(out.logits.float(), dim=-1).cpu()
    tok = lp.gather(2, targets[..., None]).squeeze(2)
    return torch.where(cmask.bool(), tok, torch.zeros_like(tok)).sum(1), rec.out


# ---------------------------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Limits:
    """How big one forward may get: rows, and bytes of KV-cache copies or logits."""

    max_rows: int
    memory_bytes: int

    def settings_per_chunk(self, items: int, cache_bytes_per_row: int) -> int:
        by_memory = self.memory_bytes // max(1, items * cache_bytes_per_row)
        return max(1, min(self.max_rows // items, by_memory))

    def continuation_rows(self, tokens: int, vocab: int) -> int:
        # logits, their log-softmax and a float copy: ~3 x rows x tokens x vocab x 4 bytes
        return max(1, min(self.max_rows, self.memory_bytes // max(1, 12 * tokens * vocab)))


def _cache_bytes_per_row(cache, skip_below: int) -> int:
    """Bytes of one row's cached keys and values over the blocks that will run."""
    total = 0
    for l, layer in enumerate(cache.layers):
        if l >= skip_below and getattr(layer, "keys", None) is not None and layer.keys.dim() == 4:
            total += 2 * layer.keys[0].numel() * layer.keys.element_size()
    return total


def _check_inputs(items, settings, batch_size, max_rows) -> None:
    if len(items) == 0:
        raise SteerlabError("no items to score")
    if len(settings) == 0:
        raise SteerlabError("no settings to score under (use [Setting.unsteered()] for the plain model)")
    for k, it in enumerate(items):
        if not isinstance(it, ScoringItem):
            raise SteerlabError(f"item {k} is a {type(it).__name__}, not an engine.ScoringItem")
    if batch_size < 1 or max_rows < 1:
        raise SteerlabError("batch_size and max_rows must be positive")


def score(
    lm: LoadedModel,
    items: Sequence[ScoringItem],
    settings: Sequence[Setting],
    *,
    batch_size: int = 16,
    progress: bool | str = False,
    max_rows: int = 256,
    memory_mb: int = 2048,
    reuse: bool = True,
    skip_lower_layers: bool = True,
) -> ScoreTable:
    """Log-probabilities of every item's candidates under every setting (see the module docstring).

    Args:
        lm: a LoadedModel.
        items: prompts with their candidate continuations.
        settings: steering settings; include `Setting.unsteered()` for the plain model.
        batch_size: items per base pass.
        progress: show a progress bar (one step per item batch); a string is the bar's label, so a
            caller that scores for its own purpose (a judge) says so instead of "scoring".
        max_rows: most rows (setting x item, or x candidate) in one steered forward.
        memory_mb: rough bound on one forward's working memory beyond the model (each row carries a
            copy of its prompt's KV cache; continuations carry logits); chunks shrink to fit.
        reuse: False re-runs every prompt in full for every setting (still batched), for checks
            and timing comparisons.
        skip_lower_layers: skip the blocks below the steered layer (exact; disable to compare).

    Returns:
        A ScoreTable; `info["reuse"]` names the path that ran ("prefix+skip", "prefix", or
        "none (...)" with the reason) and `info["forwards"]` counts model calls.
    """
    items = list(items)
    settings = list(settings)
    _check_inputs(items, settings, batch_size, max_rows)
    if memory_mb <= 0:
        raise SteerlabError("memory_mb must be positive")
    tokenized = tokenize_items(lm, items)
    plans = [_plan(lm, k, s) for k, s in enumerate(settings)]
    steered = [p for p in plans if p is not None]
    max_c = max(len(it.candidates) for it in items)
    result = torch.full((len(settings), len(items), max_c), float("nan"))
    info = {"reuse": "prefix+skip" if reuse and skip_lower_layers else ("prefix" if reuse else "none (reuse=False)"),
            "fallback_candidates": sum(sum(t.fallback) for t in tokenized), "forwards": 0}
    limits = _Limits(max_rows, memory_mb * 2**20)

    order = sorted(range(len(items)), key=lambda i: tokenized[i].n_prompt)  # little padding per batch
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    pool = BufferPool()
    label = progress if isinstance(progress, str) else "scoring"
    for idx in tqdm(batches, desc=label, unit="batch", disable=not progress):
        run = _BatchRun(lm, [tokenized[i] for i in idx], torch.tensor(idx), result, info, limits, pool, pad_id)
        run.execute(settings, steered, reuse=reuse, skip=skip_lower_layers)
    return ScoreTable(result, settings, items, info)


class _BatchRun:
    """Everything `score` does for one batch of items (steps 1-4 of the module docstring)."""

    def __init__(self, lm, items: list[TokenizedItem], global_idx: torch.Tensor, result: torch.Tensor, info: dict,
                 limits: _Limits, pool: BufferPool, pad_id: int):
        self.lm, self.items, self.global_idx, self.result, self.info = lm, items, global_idx, result, info
        self.limits, self.pool = limits, pool
        self.batch = _make_batch(lm, items)
        self.conts = _Continuations.of(items, pad_id)
        self.B, self.W = len(items), self.batch.width

    # -- steps 1 and 2: unsteered ----------------------------------------------------------------
    def _base(self, record: list[int], rec_cols: int):
        lm, enc, device = self.lm, self.batch.enc, self.lm.device
        rec = _Recorder(lm, record, rec_cols)
        try:
            out = _forward(lm, input_ids=enc.input_ids.to(device), attention_mask=enc.attention_mask.to(device),
                           position_ids=position_ids_for(enc.attention_mask).to(device), use_cache=True,
                           **last_logits_only(lm.model, self.W))
        finally:
            rec.remove()
        self.info["forwards"] += 1
        first = _first_token_logprobs(out.logits[:, -1], self.items, torch.arange(self.B), self.result.shape[2])
        return output_cache(out), first, rec

    def _base_continuations(self, cache, record: list[int]):
        """Unsteered scores of candidates' later tokens [B, max_c], and block outputs there."""
        conts = self.conts
        sums = torch.zeros(self.B, self.result.shape[2])
        hidden: dict[int, torch.Tensor] = {}
        if conts is None:
            return sums, hidden
        width = conts.inputs.shape[1]
        step = self.limits.continuation_rows(width, _vocab(self.lm))
        parts: dict[int, list[torch.Tensor]] = {l: [] for l in record}
        for r0 in range(0, len(conts), step):
            sel = torch.arange(r0, min(len(conts), r0 + step))
            got, rec = _continuation_logprobs(self.lm, self.batch, cache, conts.item[sel], conts, sel, record=record)
            self.info["forwards"] += 1
            sums[conts.item[sel], conts.cand[sel]] = got
            for l in record:  # pad each part to the full width (sub-chunks may be narrower)
                h = rec[l]
                parts[l].append(torch.nn.functional.pad(h, (0, 0, 0, width - h.shape[1])))
        return sums, {l: torch.cat(p) for l, p in parts.items()}

    # -- steps 3 and 4: steered ------------------------------------------------------------------
    def execute(self, settings: list[Setting], steered: list[_Plan], *, reuse: bool, skip: bool) -> None:
        # Settings sharing (re-run columns S, lowest steered layer L) share forwards.
        groups: dict[tuple[int, int], list[_Plan]] = {}
        for p in steered:
            S = _suffix_len(p, self.items, self.W) if reuse else self.W
            groups.setdefault((S, p.low), []).append(p)
        want_skip = reuse and skip
        record = sorted({low - 1 for (_, low) in groups if low > 0}) if want_skip else []
        rec_cols = max((S for (S, _) in groups), default=1)

        base_cache, first, rec = self._base(record, rec_cols)
        plain = is_plain(base_cache, self.lm.n_layers)
        if reuse and not plain:  # the cache cannot be sliced: every setting re-runs the whole prompt
            self.info["reuse"] = "none (cache is not plain full-attention DynamicLayers)"
            groups = {}
            for p in steered:
                groups.setdefault((self.W, p.low), []).append(p)
        can_skip = want_skip and plain and rec.tensor_outputs
        if want_skip and plain and not rec.tensor_outputs:
            self.info["reuse"] = "prefix (blocks return tuples: no block skipping)"
        cont_sums, cont_hidden = self._base_continuations(base_cache, record if can_skip else [])
        for k, s in enumerate(settings):
            if s.is_unsteered:
                self.result[k, self.global_idx] = first + cont_sums

        for (S, low), plans in groups.items():
            use_skip = can_skip and low > 0
            skip_below = low if use_skip else 0
            row_bytes = _cache_bytes_per_row(base_cache, skip_below) if reuse and plain else 0
            per_chunk = self.limits.settings_per_chunk(self.B, row_bytes)
            for c0 in range(0, len(plans), per_chunk):
                self._steered_chunk(plans[c0:c0 + per_chunk], S, low, skip_below,
                                    base_cache if (reuse and plain) else None,
                                    rec.out.get(low - 1) if use_skip else None,
                                    cont_hidden.get(low - 1) if use_skip else None)

    def _steered_chunk(self, chunk: list[_Plan], S: int, low: int, skip_below: int, base_cache,
                       prompt_hidden: torch.Tensor | None, cont_hidden: torch.Tensor | None) -> None:
        lm, enc, device = self.lm, self.batch.enc, self.lm.device
        B, W, k = self.B, self.W, len(chunk)
        item_of_row = torch.arange(B).repeat(k)  # row r = (setting r // B, item r % B)
        P = W - S
        if base_cache is not None:
            cache = prefix_cache(base_cache, P, k, skip_below, room=S, pool=self.pool)
        else:
            cache = DynamicCache(config=lm.model.config)
        ids = enc.input_ids[:, P:].repeat(k, 1)
        mask = enc.attention_mask.repeat(k, 1)
        pos = position_ids_for(mask)[:, P:]
        hidden = prompt_hidden[:, prompt_hidden.shape[1] - S:].repeat(k, 1, 1) if skip_below else None
        handle = apply_steering(lm, _row_terms([p for p in chunk for _ in range(B)]),
                                batch=self.batch.rows(item_of_row, ids))
        try:
            with skip_blocks(lm, skip_below, cache, hidden):
                out = _forward(lm, input_ids=ids.to(device), attention_mask=mask.to(device),
                               position_ids=pos.to(device), cache=cache, use_cache=True,
                               **last_logits_only(lm.model, S))
        finally:
            handle.remove()
        self.info["forwards"] += 1
        scores = _first_token_logprobs(out.logits[:, -1], self.items, item_of_row, self.result.shape[2])

        conts = self.conts
        if conts is not None:  # rows (setting, item, candidate) for candidates of 2+ tokens
            n_c = len(conts)
            sel = torch.arange(n_c).repeat(k)
            setting_of = torch.arange(k).repeat_interleave(n_c)
            cache_row = setting_of * B + conts.item[sel]
            stage_cache = output_cache(out) if output_cache(out) is not None else cache
            step = self.limits.continuation_rows(conts.inputs.shape[1], _vocab(lm))
            for r0 in range(0, len(sel), step):
                part = slice(r0, r0 + step)
                sums, _ = _continuation_logprobs(
                    lm, self.batch, stage_cache, cache_row[part], conts, sel[part],
                    plans=[chunk[int(s)] for s in setting_of[part]], low=skip_below,
                    hidden=cont_hidden[sel[part]] if skip_below else None)
                self.info["forwards"] += 1
                scores[cache_row[part], conts.cand[sel[part]]] += sums
        for s_local, p in enumerate(chunk):
            self.result[p.index, self.global_idx] = scores[s_local * B:(s_local + 1) * B]


def _vocab(lm: LoadedModel) -> int:
    return int(lm.model.get_output_embeddings().weight.shape[0]) if lm.model.get_output_embeddings() is not None \
        else int(lm.model.config.vocab_size)
