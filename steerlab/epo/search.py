"""Evolutionary prompt optimisation (EPO; Thompson et al., arXiv 2402.01702) against a steered model.

EPO searches token sequences that raise a target log-probability (e.g. of the answer a steering
vector pushes away from) while trading off their cross-entropy (how unnatural they read):

* a population of P sequences, slot k with fluency weight lambda_k, log-spaced in
  [lambda_min, lambda_max];
* each iteration, the gradient of `-target + lambda_k * xent` with respect to one-hot token inputs
  of slot k's sequence; `children` children per slot, each changing one random position to a
  token drawn uniformly from the `top_k` tokens of most negative gradient (allowed tokens only);
* every slot then keeps the argmax of `target - lambda_k * xent` over the pooled population and
  children (so a slot never gets worse between restarts);
* every `restart_every` iterations all slots restart from the best evaluated sequence under the
  objective of a randomly drawn slot;
* the result is the Pareto frontier (high target, low cross-entropy) of every evaluated sequence.

Everything random comes from one generator seeded with `seed`, so a run is reproducible. The target
and cross-entropy come from `EPOObjective` (see `objective`), with the steering terms active in
every pass. Settings: `config`; results: `result`; the behaviour study: `attack` (`steerlab attack`).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ..errors import SteerlabError
from ..steering import Steering
from .config import FAST_DTYPES, EPOConfig, allowed_tokens
from .objective import EPOObjective, Prefixes, TargetItem, check_objective_inputs
from .result import EPOResult, EPOStep, FrontierPoint

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel


def pareto_frontier(targets: Sequence[float], xents: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats on both axes (higher target, lower xent), sorted by xent.

    Ties: among equal (xent, target) points the first index is kept.
    """
    order = sorted(range(len(targets)), key=lambda i: (xents[i], -targets[i], i))
    keep, best = [], -math.inf
    for i in order:
        if targets[i] > best:
            keep.append(i)
            best = targets[i]
    return keep


def select_per_slot(targets: torch.Tensor, xents: torch.Tensor, lambdas: torch.Tensor) -> torch.Tensor:
    """For each slot k, the index of the candidate maximising `target - lambda_k * xent` (first on ties)."""
    value = targets[None, :] - lambdas[:, None] * xents[None, :]  # [P, candidates]
    return value.argmax(dim=1)


def swap_children(parent: torch.Tensor, grad: torch.Tensor, allowed: torch.Tensor, n: int, top_k: int,
                  generator: torch.Generator) -> torch.Tensor:
    """`n` children of `parent` [S]: each changes one uniformly drawn position to a token drawn uniformly
    from the `top_k` allowed tokens with the most negative gradient at that position (`grad` [S, V])."""
    S = parent.shape[0]
    g = grad.masked_fill(~allowed[None, :], math.inf)
    k = min(top_k, int(allowed.sum()))
    top = torch.topk(-g, k, dim=1).indices  # [S, k]
    pos = torch.randint(0, S, (n,), generator=generator)
    pick = torch.randint(0, k, (n,), generator=generator)
    kids = parent[None, :].repeat(n, 1)
    kids[torch.arange(n), pos] = top[pos, pick]
    return kids


class _Memo:
    """Every evaluated sequence: (target, xent, first iteration), by token ids."""

    def __init__(self) -> None:
        self.index: dict[tuple[int, ...], int] = {}
        self.ids: list[tuple[int, ...]] = []
        self.target: list[float] = []
        self.xent: list[float] = []
        self.first: list[int] = []

    def missing(self, rows: torch.Tensor) -> torch.Tensor:
        """The rows not evaluated yet (each once)."""
        return rows[self.missing_rows(rows)].reshape(-1, rows.shape[1])

    def missing_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Indices of the rows not evaluated yet (first occurrence of each)."""
        seen, out = set(), []
        for n, r in enumerate(rows.tolist()):
            key = tuple(r)
            if key not in self.index and key not in seen:
                seen.add(key)
                out.append(n)
        return torch.tensor(out, dtype=torch.long)

    def add(self, rows: torch.Tensor, target: torch.Tensor, xent: torch.Tensor, iteration: int) -> None:
        for r, t, x in zip(rows.tolist(), target.tolist(), xent.tolist()):
            key = tuple(r)
            if key in self.index:
                continue
            self.index[key] = len(self.ids)
            self.ids.append(key)
            self.target.append(float(t))
            self.xent.append(float(x))
            self.first.append(iteration)

    def values(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        idx = [self.index[tuple(r)] for r in rows.tolist()]
        return torch.tensor([self.target[i] for i in idx]), torch.tensor([self.xent[i] for i in idx])

    def best_for(self, lam: float) -> tuple[int, ...]:
        value = [t - lam * x for t, x in zip(self.target, self.xent)]
        return self.ids[max(range(len(value)), key=lambda i: (value[i], -i))]


def _initial_population(config: EPOConfig, allowed: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    P, S = config.population, config.seq_len
    if config.init_ids is not None:
        return torch.tensor(config.init_ids, dtype=torch.long)[None, :].repeat(P, 1)
    pool = allowed.nonzero().squeeze(1)
    return pool[torch.randint(0, pool.numel(), (P, S), generator=generator)]


ProgressFn = Callable[[EPOStep], None]


def epo_search(objective: EPOObjective, config: EPOConfig, allowed: torch.Tensor, *,
               progress: ProgressFn | None = None) -> tuple[list[FrontierPoint], list[EPOStep], float, int]:
    """Run EPO on a ready objective. Returns (frontier, history, seconds, n_evaluated).

    `allowed` is the token mask of `allowed_tokens`; `progress` is called after every iteration.
    """
    config.validate()
    if config.seq_len != objective.seq_len:
        raise SteerlabError(f"config.seq_len ({config.seq_len}) differs from the objective's ({objective.seq_len})")
    if allowed.shape[0] != objective.vocab_size or not bool(allowed.any()):
        raise SteerlabError("the vocabulary filter leaves no allowed tokens")
    if config.init_ids is not None:
        bad = [t for t in config.init_ids if not (0 <= t < objective.vocab_size and allowed[t])]
        if bad:
            raise SteerlabError(f"init_ids uses tokens the vocabulary filter forbids: {bad[:5]}")
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(int(config.seed))
    lambdas = config.lambdas()
    P, C = config.population, config.children
    memo = _Memo()
    pop = _initial_population(config, allowed, gen)

    def evaluate(rows: torch.Tensor, iteration: int) -> None:
        new = memo.missing(rows)
        if new.shape[0]:
            t, x = objective.evaluate(new, exact=False)
            memo.add(new, t, x, iteration)

    evaluate(pop, 0)
    t, x = memo.values(pop)
    history = [EPOStep(0, pop.tolist(), t.tolist(), x.tolist(), max(memo.target), len(memo.ids),
                       time.perf_counter() - start)]
    if progress:
        progress(history[-1])
    # per slot: (its sequence, gradient [S, V] of its own objective, reusable prefix)
    grads: list[tuple[tuple[int, ...], torch.Tensor, Prefixes] | None] = [None] * P
    for it in range(1, config.iterations + 1):
        stale = [k for k in range(P) if grads[k] is None or grads[k][0] != tuple(pop[k].tolist())]
        if stale:
            g = objective.gradient(pop[stale], lambdas[stale])
            for j, k in enumerate(stale):
                grads[k] = (tuple(pop[k].tolist()), g.grad[j], g.prefixes.select([j]))
        kids = torch.cat([swap_children(pop[k], grads[k][1], allowed, C, config.top_k, gen) for k in range(P)])
        parent_of = torch.arange(P).repeat_interleave(C)
        fresh = memo.missing_rows(kids)
        if fresh.numel():
            parents = Prefixes.stack([grads[k][2] for k in range(P)])
            sc = objective.children_scores(parents, parent_of[fresh], kids[fresh], exact=False)
            t, x = sc.mean()
            memo.add(kids[fresh], t, x, it)
        pool = torch.cat([pop, kids])
        pt, px = memo.values(pool)
        pop = pool[select_per_slot(pt, px, lambdas)]
        restarted = False
        if config.restart_every and it % config.restart_every == 0 and it < config.iterations:
            j = int(torch.randint(0, P, (1,), generator=gen))
            pop = torch.tensor(memo.best_for(float(lambdas[j])), dtype=torch.long)[None, :].repeat(P, 1)
            evaluate(pop, it)
            restarted = True
        t, x = memo.values(pop)
        history.append(EPOStep(it, pop.tolist(), t.tolist(), x.tolist(), max(memo.target), len(memo.ids),
                               time.perf_counter() - start, restarted))
        if progress:
            progress(history[-1])
    seconds = time.perf_counter() - start
    tok = objective.lm.tokenizer
    frontier = [FrontierPoint(list(memo.ids[i]), tok.decode(list(memo.ids[i])), memo.target[i], memo.xent[i], memo.first[i])
                for i in pareto_frontier(memo.target, memo.xent)]
    return frontier, history, seconds, len(memo.ids)


def rescore_exactly(objective: EPOObjective, points: Sequence[FrontierPoint]) -> list[FrontierPoint]:
    """Re-score points in the model's own dtype and keep those still on the Pareto frontier."""
    if not points:
        return []
    t, x = objective.evaluate(torch.tensor([p.ids for p in points], dtype=torch.long), exact=True)
    fresh = [FrontierPoint(p.ids, p.text, float(a), float(b), p.iteration, dict(p.heldout))
             for p, a, b in zip(points, t.tolist(), x.tolist())]
    return [fresh[i] for i in pareto_frontier([p.target for p in fresh], [p.xent for p in fresh])]


def check_epo_inputs(lm: LoadedModel,
                     targets: Sequence[TargetItem], config: EPOConfig, normalise: bool = False) -> torch.Tensor:
    """Validate everything before any computation; returns the allowed-token mask."""
    if not isinstance(config, EPOConfig):
        raise SteerlabError(f"config must be an EPOConfig, got {type(config).__name__}")
    config.validate()
    limit = lm.max_context
    if limit is not None and config.seq_len >= limit:
        raise SteerlabError(f"a {config.seq_len}-token sequence does not fit the model's context window of {limit}")
    check_objective_inputs(lm, list(targets), config.seq_len, normalise, config.chunk_rows)
    vocab = int(lm.model.get_input_embeddings().weight.shape[0])
    allowed = allowed_tokens(lm.tokenizer, vocab, vocab=config.vocab, exclude_special=config.exclude_special,
                             allowed_ids=config.allowed_ids)
    if not bool(allowed.any()):
        raise SteerlabError(
            f"the vocabulary filter (vocab={config.vocab!r}, exclude_special={config.exclude_special}, "
            f"allowed_ids={'given' if config.allowed_ids is not None else 'none'}) leaves no allowed tokens"
        )
    if config.init_ids is not None:
        bad = [t for t in config.init_ids if not (0 <= t < vocab and allowed[t])]
        if bad:
            raise SteerlabError(f"init_ids uses tokens the vocabulary filter forbids: {bad[:5]}")
    return allowed


def run_epo(lm: LoadedModel, targets: Sequence[TargetItem], steering: Steering | Sequence[Steering] = (),
            config: EPOConfig | None = None, *, normalise: bool = False, progress: ProgressFn | None = None,
            meta: dict | None = None) -> EPOResult:
    """EPO against `lm` with `steering` active: sequences that raise the mean target of `targets`.

    Args:
        targets: from `behaviour_targets` (reverse a behaviour) or `string_target` (any string).
        steering: the steering terms the attack must defeat (active in gradient and evaluation passes).
        config: search settings (default `EPOConfig()`).
        normalise: target = log of the answer's probability among its alternatives (e.g. A/B).
        progress: called with each iteration's `EPOStep`.
        meta: stored in the result as is.

    Bad input (empty target, iteration budget <= 0, a sequence longer than the context, a vocabulary
    filter that allows nothing, ...) raises SteerlabError before any computation.
    """
    config = config or EPOConfig()
    allowed = check_epo_inputs(lm, targets, config, normalise)
    t0 = time.perf_counter()
    objective = EPOObjective(lm, targets, steering, seq_len=config.seq_len, normalise=normalise,
                             chunk_rows=config.chunk_rows,
                             fast_dtype=FAST_DTYPES[config.fast_dtype] if config.fast_dtype else None)
    setup = time.perf_counter() - t0
    frontier, history, seconds, n_eval = epo_search(objective, config, allowed, progress=progress)
    if config.fast_dtype:
        frontier = rescore_exactly(objective, frontier)
    return EPOResult(config=config, lambdas=config.lambdas().tolist(), frontier=frontier, history=history,
                     seconds=seconds, setup_seconds=setup, n_evaluated=n_eval, meta=dict(meta or {}))
