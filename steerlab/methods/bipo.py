"""BiPO (Cao et al. 2024, arXiv 2406.00045): a steering vector optimised by gradient, the model frozen.

For a prompt q with a behaviour-matching completion m and a non-matching one o, and a direction
d in {+1, -1}, the vector v added at layer L (as d * v) is trained with the DPO-style loss

    margin_d = d * beta * [ (log p_{d v}(m | q) - log p_0(m | q)) - (log p_{d v}(o | q) - log p_0(o | q)) ]
    loss     = - log sigmoid(margin_d)

where log p_{x}(c | q) is the summed log-probability of the completion's tokens with x added to the
output of block L, and p_0 is the unsteered model (the frozen reference). With d = +1 the loss raises
the matching completion's likelihood over the other one's relative to the reference; with d = -1 it
does the reverse under -v. The paper draws d at random per example; steerlab averages the loss over
both signs for every example (the expectation over d, without its sampling noise), so each example
is four rows of one batched forward pass: (m, +v), (o, +v), (m, -v), (o, -v).

Training: v starts at zero (where every margin is 0 and the loss is log 2), Adam on v only,
minibatches of pairs shuffled per epoch with `seed`; the validation loss (pairs held apart from
training, `val_fraction`) is measured before training and every `eval_every` steps, the best v is
kept, and training stops after `patience` evaluations without improvement or `max_steps`. v is
added from the first token after the user's message on (steerlab's "after_user" policy, where CAA
vectors are applied) or at every position (`positions="all"`, as the paper). Only the logits of the
completion positions are computed; the backward pass runs through blocks L..end only (nothing below
L depends on v). The vector records its steps, time per step and total time in its metadata, and
strength 1 (the trained v is used as it is).

Most of each row never sees v, so most of the model's work is done once per minibatch (`cache_prefix`):
- *the prompt*: under "after_user" nothing before the end of the user's message is steered, and no token
  there depends on the completion, so each row is cut there. The prompt part runs once (with the frozen
  reference, and once per pair: its four rows share it) and is kept as its attention keys and values; every
  step runs only the rest of the row (the template's assistant header and the completion: 10-30% of an MWE
  row's tokens) against them.
- *the blocks below L*: nothing below block L depends on v either, so block L's unsteered output over the rest
  of the row is kept from the reference pass and replayed: blocks 0..L are swapped for stand-ins that return
  it, and only blocks L+1..end run.
Before training, two pairs' rows check, with a random v at each layer, that this reproduces the plain
whole-model computation's log-probabilities (`completion_logprobs`); where it does not (a model whose blocks share state within a pass, a
cache this transformers version lays out differently), or the kept tensors would exceed `PREFIX_CACHE_BYTES`,
every step runs the whole model over the whole row, with a warning.

Every layer trained on the same pairs shares one reference pass (`train_bipo_layers`): the unsteered
log-probabilities do not depend on the layer, and the one pass records each layer's block output to replay.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..activations import last_logits_only, position_ids_for
from ..data.records import BehaviourItem, ContrastPair
from ..encoding import EncodedBatch, encode
from ..errors import DatasetError
from ..layers import block_hidden
from ..vector import SteeringVector
from .bipo_split import (CachedPrefix, KeptPrompt, SplitRows, add_vector, kept_bytes, prompt_pass, reference_pass,
                         rest_logprobs, split_rows, summed_logprobs)
from .common import make_meta, pairs_hash
from .multiformat import item_texts
from .responses import response_prompt

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel

BIPO_POSITIONS: tuple[str, ...] = ("after_user", "all")

#: The most bytes of kept prompt keys/values and block-L outputs a BiPO run holds (all minibatches and layers
#: together); above it every step runs the whole model, with a warning. The prompt parts are kept once per pair: at
#: 1.5B in float32, 40 pairs of corrigible's or power-seeking's MWE questions and three layers take 0.37 GiB (1.1
#: GiB with one copy per row).
PREFIX_CACHE_BYTES: int = 2 << 30


@dataclass(frozen=True)
class BiPOConfig:
    """Hyper-parameters of a BiPO run (defaults: see the module docstring).

    Attributes:
        beta: the DPO temperature (the paper's 0.1).
        lr: Adam's learning rate. The paper uses 5e-4 over 20 epochs of thousands of pairs; with the few
            hundred pairs and few steps a CPU affords, 1e-2 reaches a useful norm in tens of steps.
        batch_size: contrast pairs per step (each is 4 rows of the forward pass).
        max_steps: the most optimiser steps.
        eval_every: steps between validation measurements (0: once per epoch).
        patience: validation measurements without improvement before stopping.
        val_fraction: share of the pairs held apart for validation (at least one pair).
        seed: the split and the minibatch order.
        positions: "after_user" (where steerlab applies CAA vectors) or "all".
        cache_prefix: run the unsteered prompt and blocks 0..L once per minibatch and only the rest at every
            step (the same numbers, checked on two pairs before training; see the module docstring).
    """

    beta: float = 0.1
    lr: float = 1e-2
    batch_size: int = 8
    max_steps: int = 200
    eval_every: int = 0
    patience: int = 3
    val_fraction: float = 0.2
    seed: int = 0
    positions: str = "after_user"
    cache_prefix: bool = True

    def __post_init__(self) -> None:
        if not self.beta > 0 or not self.lr > 0:
            raise DatasetError("BiPO's beta and learning rate must be > 0")
        if self.batch_size < 1 or self.max_steps < 1 or self.eval_every < 0 or self.patience < 1:
            raise DatasetError("BiPO needs batch_size >= 1, max_steps >= 1, eval_every >= 0 and patience >= 1")
        if not 0 < self.val_fraction < 1:
            raise DatasetError(f"val_fraction must lie strictly between 0 and 1, got {self.val_fraction}")
        if self.positions not in BIPO_POSITIONS:
            raise DatasetError(f"BiPO positions must be one of {', '.join(BIPO_POSITIONS)}, got {self.positions!r}")


@dataclass
class EncodedPairs:
    """A batch of contrast pairs as the four rows per pair BiPO scores.

    Attributes:
        batch: left-padded rows, ordered (m, o) per pair for +v, then the same for -v.
        completion_start: row-relative index of each row's first completion token.
        signs: +1 / -1 per row (which sign of v the row carries).
        n_pairs: contrast pairs in the batch.
    """

    batch: EncodedBatch
    completion_start: torch.Tensor
    signs: torch.Tensor
    n_pairs: int


def encode_pairs(lm: LoadedModel, pairs: Sequence[ContrastPair]) -> EncodedPairs:
    """The rows of `pairs` (see `EncodedPairs`): each completion as the assistant turn after its prompt."""
    prompts = []
    for p in pairs:
        prompts += [response_prompt(lm, p.prompt, p.positive), response_prompt(lm, p.prompt, p.negative)]
    prompts = prompts + prompts
    batch = encode(lm, prompts)
    if bool((batch.assistant_start >= batch.lengths).any()):
        raise DatasetError("a completion has no tokens of its own")
    n = len(pairs)
    signs = torch.tensor([1.0] * (2 * n) + [-1.0] * (2 * n))
    return EncodedPairs(batch, batch.assistant_start.clone(), signs, n)


def completion_logprobs(lm: LoadedModel, enc: EncodedPairs, vector: torch.Tensor | None, layer: int,
                        positions: str = "after_user") -> torch.Tensor:
    """Summed log-probability of each row's completion [rows], with `sign * vector` added to the output
    of block `layer` at the policy's positions (None: unsteered). Differentiable in `vector`.

    The plain computation: the whole model over the whole rows. Training runs the same numbers through
    `SplitRows` (the prompt and blocks 0..layer run once) and checks them against this."""
    batch = enc.batch.to(lm.device)
    width = batch.input_ids.shape[1]
    pad = batch.pad
    cols = torch.arange(width, device=lm.device)
    pos = cols[None, :] - pad[:, None]  # row-relative positions; pads are negative
    start = batch.user_end if positions == "after_user" else torch.zeros_like(pad)
    steer_mask = (pos >= start[:, None]).float()
    keep = int((batch.lengths - enc.completion_start.to(lm.device)).max()) + 1
    with contextlib.ExitStack() as stack:
        if vector is not None:
            stack.callback(add_vector(lm, layer, vector, enc.signs.to(lm.device)[:, None] * steer_mask).remove)
        out = lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                       position_ids=position_ids_for(batch.attention_mask), use_cache=False,
                       **last_logits_only(lm.model, width, keep))
    target_pos = pos[:, width - keep + 1:]
    in_completion = (target_pos >= enc.completion_start.to(lm.device)[:, None]).float()
    return summed_logprobs(out.logits[:, -keep:, :], batch.input_ids[:, width - keep + 1:], in_completion)


def bipo_objective(steered: torch.Tensor, reference: torch.Tensor, n_pairs: int, beta: float) -> torch.Tensor:
    """The mean BiPO loss over both signs (see the module docstring) from the rows' summed log-probs,
    steered and reference, ordered as `EncodedPairs`."""
    r = (steered - reference).view(2, n_pairs, 2)  # [sign, pair, (m, o)]
    d = torch.tensor([1.0, -1.0], device=steered.device)[:, None]
    margin = d * beta * (r[..., 0] - r[..., 1])
    return -F.logsigmoid(margin).mean()


def completion_pairs(items: Sequence[BehaviourItem]) -> list[ContrastPair]:
    """BiPO's pairs from MWE items: an A/B item's stem completed by its matching vs its other choice text
    (free text, not a letter), a Yes/No item's question answered with its matching vs other word. Items
    whose choices cannot be read are skipped."""
    out = []
    for it in items:
        t = item_texts(it)
        if t is not None:
            out.append(ContrastPair(t.stem, t.matching, t.other))
    if not out:
        raise DatasetError("no contrast pairs could be built from these items")
    return out


def _batches(items: Sequence, size: int):
    return [items[s:s + size] for s in range(0, len(items), size)]


@dataclass
class _Chunk:
    """One minibatch at one layer: its rows, the unsteered reference, and (fast path) what is kept of it."""

    enc: EncodedPairs
    reference: torch.Tensor
    rows: SplitRows | None = None  # None: every step runs the whole model over the whole rows
    cache: KeptPrompt | None = None  # the prompt parts' keys and values (shared by the layers)
    prefix: CachedPrefix | None = None  # block L's output over the rest of the rows


def _prepare(lm: LoadedModel, groups: Sequence[Sequence[ContrastPair]], layers: Sequence[int], size: int,
             positions: str, cache_prefix: bool = False, bar: tqdm | None = None) -> list[dict[int, list[_Chunk]]]:
    """Per group of pairs (validation, training), each layer's minibatches with their unsteered reference
    log-probs, from one pass of the model (the reference does not depend on the layer); with `cache_prefix`, the
    prompt parts' keys and values and each layer's block output to replay (see the module docstring), checked
    per layer against the plain computation (`_layers_reproduced`)."""
    encs = [[encode_pairs(lm, part) for part in _batches(list(g), size)] for g in groups]
    split = [[split_rows(e.batch, e.completion_start, positions) for e in es] for es in encs] if cache_prefix else []
    need = kept_bytes(lm, [r for rs in split for r in rs], len(layers)) if cache_prefix else 0
    fast = cache_prefix and need <= PREFIX_CACHE_BYTES
    if cache_prefix and not fast:
        warnings.warn(f"BiPO: keeping the prompt parts and block outputs would take {need / 2**20:.0f} MiB (more than "
                      f"PREFIX_CACHE_BYTES, {PREFIX_CACHE_BYTES / 2**20:.0f} MiB); every step runs the whole model",
                      stacklevel=3)
    out: list[dict[int, list[_Chunk]]] = []
    with torch.no_grad():
        for g, es in enumerate(encs):
            chunks: dict[int, list[_Chunk]] = {l: [] for l in layers}
            for i, enc in enumerate(es):
                if fast:
                    rows = split[g][i]
                    cache = prompt_pass(lm, rows)
                    ref, captured = reference_pass(lm, rows, cache, layers)
                    for l in layers:
                        chunks[l].append(_Chunk(enc, ref, rows, cache, captured[l]))
                else:
                    ref = completion_logprobs(lm, enc, None, layers[0], positions)
                    for l in layers:
                        chunks[l].append(_Chunk(enc, ref))
                if bar is not None:
                    bar.update(1)
            out.append(chunks)
        reproduced = _layers_reproduced(lm, [p for g in groups for p in g][:2], layers, positions) if fast else set()
        plain: dict[int, torch.Tensor] = {}  # the whole model's reference, per minibatch: one for all layers
        for l in layers:
            if fast and l not in reproduced:
                warnings.warn(f"BiPO: running the prompt and blocks 0..{l} once does not reproduce this model's "
                              "whole forward pass; every step at that layer runs the whole model", stacklevel=3)
                for group in out:
                    for c in group[l]:
                        if id(c.enc) not in plain:
                            plain[id(c.enc)] = completion_logprobs(lm, c.enc, None, l, positions)
                    group[l] = [_Chunk(c.enc, plain[id(c.enc)]) for c in group[l]]
    return out


def _close(a: torch.Tensor, b: torch.Tensor, dtype: torch.dtype) -> bool:
    # summed log-probs of tens of tokens: float32 agrees to ~1e-4, bfloat16 to a few hundredths; a cut or a
    # steering mask in the wrong place moves them by whole nats
    low = dtype in (torch.bfloat16, torch.float16)
    return bool(torch.allclose(a, b, rtol=1e-2 if low else 1e-4, atol=0.25 if low else 1e-3))


def _layers_reproduced(lm: LoadedModel, pairs: Sequence[ContrastPair], layers: Sequence[int],
                       positions: str) -> set[int]:
    """The layers at which the split rows give the plain computation's log-probs, for the first two pairs' rows
    (prompts of different lengths: the left padding of the kept part is exercised) with a random v: the cut, the
    kept keys/values, the replay and the steering mask are all checked. A fraction of one minibatch's cost."""
    enc = encode_pairs(lm, list(pairs[:2]))
    rows = split_rows(enc.batch, enc.completion_start, positions)
    g = torch.Generator().manual_seed(0)
    ok = set()
    try:
        cache = prompt_pass(lm, rows)
        _, captured = reference_pass(lm, rows, cache, layers)
    except Exception:  # a cache or model this path cannot drive
        return ok
    for l in layers:
        v = torch.randn(lm.hidden_size, generator=g).to(lm.device)
        v = v * (0.5 * float(block_hidden(captured[l].template).float().norm(dim=-1).mean()) / float(v.norm()))
        try:
            fast = rest_logprobs(lm, rows, cache, enc.signs, v, l, prefix=captured[l])
        except Exception:  # a model whose loop reads something off its blocks that the stand-ins lack
            continue
        if _close(fast, completion_logprobs(lm, enc, v, l, positions), lm.dtype):
            ok.add(l)
    return ok


def _logprobs(lm: LoadedModel, chunk: _Chunk, v: torch.Tensor | None, layer: int, positions: str) -> torch.Tensor:
    if chunk.rows is None:
        return completion_logprobs(lm, chunk.enc, v, layer, positions)
    return rest_logprobs(lm, chunk.rows, chunk.cache, chunk.enc.signs, v, layer, prefix=chunk.prefix)


def _loss(lm: LoadedModel, chunks: Sequence[_Chunk], v: torch.Tensor, layer: int, cfg: BiPOConfig) -> float:
    total, n = 0.0, 0
    with torch.no_grad():
        for c in chunks:
            lp = _logprobs(lm, c, v, layer, cfg.positions)
            total += float(bipo_objective(lp, c.reference, c.enc.n_pairs, cfg.beta)) * c.enc.n_pairs
            n += c.enc.n_pairs
    return total / n


def bipo_loss(lm: LoadedModel, pairs: Sequence[ContrastPair], vector: torch.Tensor, layer: int,
              config: BiPOConfig | None = None) -> float:
    """The mean BiPO loss of `vector` (a [hidden] direction at `layer`) on `pairs` (no gradient)."""
    cfg = config or BiPOConfig()
    layer = lm.blocks.check_layer(layer)
    chunks = _prepare(lm, [pairs], [layer], cfg.batch_size, cfg.positions, cfg.cache_prefix)[0][layer]
    return _loss(lm, chunks, vector.to(lm.device).float(), layer, cfg)


@dataclass
class BiPOResult:
    """A BiPO run.

    Attributes:
        vector: the trained vector (the best by validation loss).
        history: {"step", "train_loss", "val_loss"} per validation measurement (step 0: v = 0).
        steps: optimiser steps taken; best_step: the step whose v was kept.
        seconds_per_step: mean wall time of one step (forward, backward, Adam).
        total_seconds: the reference pass (shared by the layers trained together, see `train_bipo_layers`) plus
            this layer's training; reference_seconds: that pass alone.
    """

    vector: SteeringVector
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    best_step: int = 0
    seconds_per_step: float = 0.0
    total_seconds: float = 0.0
    reference_seconds: float = 0.0


def _split(pairs: Sequence[ContrastPair], fraction: float, seed: int) -> tuple[list, list]:
    order = list(range(len(pairs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(fraction * len(pairs)))
    return [pairs[i] for i in order[n_val:]], [pairs[i] for i in order[:n_val]]


def planned_rows(lm: LoadedModel, pairs: Sequence[ContrastPair], config: BiPOConfig | None = None) -> list[SplitRows]:
    """The split rows of every minibatch a run on `pairs` makes (validation first), without running the model: what
    the kept tensors (`kept_bytes`) and a step's cost depend on."""
    cfg = config or BiPOConfig()
    train, val = _split(pairs, cfg.val_fraction, cfg.seed)
    return [split_rows(e.batch, e.completion_start, cfg.positions)
            for group in (val, train) for e in (encode_pairs(lm, part) for part in _batches(group, cfg.batch_size))]


def check_bipo_pairs(pairs: Sequence[ContrastPair]) -> None:
    """DatasetError unless there are enough pairs for a training and a validation split."""
    if len(pairs) < 2:
        raise DatasetError(f"BiPO needs at least 2 contrast pairs (one to train, one to validate), got {len(pairs)}")


def train_bipo_layers(lm: LoadedModel, pairs: Sequence[ContrastPair], layers: Sequence[int],
                      config: BiPOConfig | None = None, *, progress: bool = False,
                      on_result: Callable[[BiPOResult], None] | None = None) -> dict[int, BiPOResult]:
    """One BiPO run per layer of `layers` on the same pairs, sharing one unsteered reference pass (at 1.5B on a
    CPU that pass is most of a layer's cost after its steps). Each layer's result equals `train_bipo_detailed`'s
    at that layer alone; `on_result` receives each as it finishes (to save it before the next layer starts)."""
    cfg = config or BiPOConfig()
    check_bipo_pairs(pairs)
    layers = list(dict.fromkeys(lm.blocks.check_layer(l) for l in layers))
    if not layers:
        raise DatasetError("BiPO needs at least one layer")
    t0 = time.perf_counter()
    train, val = _split(pairs, cfg.val_fraction, cfg.seed)
    if not train:
        raise DatasetError(f"val_fraction {cfg.val_fraction} leaves no training pairs of {len(pairs)}")
    # the unsteered reference pass runs the whole model over every pair once: minutes on a CPU at 1.5B
    n_chunks = math.ceil(len(val) / cfg.batch_size) + math.ceil(len(train) / cfg.batch_size)
    where = f"layer {layers[0]}" if len(layers) == 1 else "layers " + ", ".join(map(str, layers))
    with tqdm(total=n_chunks, desc=f"BiPO at {where}: reference pass", disable=not progress,
              unit="batch") as ref_bar:
        val_chunks, train_chunks = _prepare(lm, [val, train], layers, cfg.batch_size, cfg.positions,
                                            cfg.cache_prefix, ref_bar)
    reference_seconds = time.perf_counter() - t0
    results = {}
    frozen = [p for p in lm.model.parameters() if p.requires_grad]
    for p in frozen:  # the model is frozen: gradients for v only
        p.requires_grad_(False)
    try:
        for layer in layers:
            res = _train_layer(lm, pairs, len(train), len(val), layer, train_chunks[layer], val_chunks[layer], cfg,
                               progress, reference_seconds)
            results[layer] = res
            if on_result is not None:
                on_result(res)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return results


def _train_layer(lm: LoadedModel, pairs: Sequence[ContrastPair], n_train: int, n_val: int, layer: int,
                 train_chunks: Sequence[_Chunk], val_chunks: Sequence[_Chunk], cfg: BiPOConfig, progress: bool,
                 reference_seconds: float) -> BiPOResult:
    t0 = time.perf_counter()
    rng = random.Random(cfg.seed)
    v = torch.zeros(lm.hidden_size, device=lm.device, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.Adam([v], lr=cfg.lr)
    eval_every = cfg.eval_every or len(train_chunks)
    best = _loss(lm, val_chunks, v.detach(), layer, cfg)
    history = [{"step": 0, "train_loss": math.log(2.0), "val_loss": best}]
    best_v, best_step, bad, step, step_time = v.detach().clone(), 0, 0, 0, 0.0
    running: list[float] = []
    with tqdm(total=cfg.max_steps, desc=f"BiPO at layer {layer}", disable=not progress, unit="step") as bar:
        while step < cfg.max_steps and bad < cfg.patience:
            order = list(range(len(train_chunks)))
            rng.shuffle(order)
            for i in order:
                c = train_chunks[i]
                s = time.perf_counter()
                with torch.enable_grad():
                    loss = bipo_objective(_logprobs(lm, c, v, layer, cfg.positions), c.reference,
                                          c.enc.n_pairs, cfg.beta)
                    opt.zero_grad()
                    loss.backward()
                opt.step()
                step_time += time.perf_counter() - s
                step += 1
                running.append(float(loss.detach()))
                bar.update(1)
                if step % eval_every == 0 or step == cfg.max_steps:
                    val_loss = _loss(lm, val_chunks, v.detach(), layer, cfg)
                    history.append({"step": step, "train_loss": sum(running) / len(running), "val_loss": val_loss})
                    running = []
                    bar.set_postfix(val_loss=f"{val_loss:.4f}")
                    if val_loss < best:
                        best, best_v, best_step, bad = val_loss, v.detach().clone(), step, 0
                    else:
                        bad += 1
                if step >= cfg.max_steps or bad >= cfg.patience:
                    break
    total = reference_seconds + time.perf_counter() - t0
    per_step = step_time / max(step, 1)
    meta = make_meta(lm, method="bipo", layers=[layer], position=cfg.positions, data_hash=pairs_hash(pairs),
                     n_train=n_train, strength=1.0, positions=cfg.positions, n_val=n_val, beta=cfg.beta,
                     lr=cfg.lr, batch_size=cfg.batch_size, seed=cfg.seed, steps=step, best_step=best_step,
                     best_val_loss=best, seconds_per_step=round(per_step, 4), total_seconds=round(total, 2),
                     reference_seconds=round(reference_seconds, 2), replayed_prefix=train_chunks[0].prefix is not None,
                     history=[{k: round(x, 5) if isinstance(x, float) else x for k, x in h.items()} for h in history])
    vec = SteeringVector({layer: best_v.cpu()}, meta)
    return BiPOResult(vec, history, step, best_step, per_step, total, reference_seconds)


#: What each layer's run records in a joined vector's extra["per_layer"].
PER_LAYER_KEYS = ("steps", "best_step", "seconds_per_step", "total_seconds", "reference_seconds", "replayed_prefix")


def join_layer_runs(runs: Sequence[SteeringVector]) -> SteeringVector:
    """One vector from single-layer runs (each layer trained alone, e.g. by `train_bipo_layers`): their directions,
    the first run's metadata listing every layer, and each run's steps and timings in extra["per_layer"]."""
    if not runs:
        raise DatasetError("no BiPO runs to join")
    meta = runs[0].meta
    per_layer = {str(r.layers[0]): {k: r.meta.extra.get(k) for k in PER_LAYER_KEYS} for r in runs}
    return SteeringVector({r.layers[0]: r[r.layers[0]] for r in runs},
                          replace(meta, layers=tuple(sorted(r.layers[0] for r in runs)),
                                  extra=dict(meta.extra, per_layer=per_layer)))


def train_bipo_detailed(lm: LoadedModel, pairs: Sequence[ContrastPair], layer: int, config: BiPOConfig | None = None,
                        *, progress: bool = False) -> BiPOResult:
    """`train_bipo`, also returning the loss history and timings."""
    layer = lm.blocks.check_layer(layer)
    return train_bipo_layers(lm, pairs, [layer], config, progress=progress)[layer]


def train_bipo(lm: LoadedModel, pairs: Sequence[ContrastPair], layer: int, config: BiPOConfig | None = None, *,
               progress: bool = False) -> SteeringVector:
    """A BiPO vector at `layer` from contrast pairs (prompt, matching completion, other completion).

    See the module docstring for the objective and the training loop; `config` holds its settings.
    The vector's metadata records steps, best step, seconds per step, total seconds and the loss history.
    """
    return train_bipo_detailed(lm, pairs, layer, config, progress=progress).vector
