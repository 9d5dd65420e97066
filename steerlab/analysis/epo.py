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
and cross-entropy come from `EPOObjective` (see `epo_objective`), with the steering terms active in
every pass. Entry point for the behaviour study: `python -m steerlab.analysis.epo --help`
(`steerlab.analysis.epo_attack`).
"""

from __future__ import annotations

import json
import math
import time
import weakref
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import OutputExistsError, SteerlabError
from ..steer import Steering
from .epo_objective import EPOObjective, Prefixes, TargetItem, check_objective_inputs

VOCABS: tuple[str, ...] = ("ascii", "all")
FAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
RESULT_FILE = "epo.json"
PLOT_FILE = "epo_frontier.png"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class EPOConfig:
    """Search settings (defaults: the paper's, except the iteration budget; GUIDE §2).

    Attributes:
        seq_len: tokens in the inserted sequence.
        population: P, population slots (one fluency weight each).
        lambda_min, lambda_max: range of the log-spaced fluency weights.
        children: children per slot and iteration (single-token swaps).
        top_k: tokens of most negative gradient a swap draws from.
        iterations: the iteration budget.
        restart_every: restart all slots from the best every this many iterations (0 = never).
        seed: seeds every random choice (initial sequences, swap positions and tokens, restarts).
        vocab: "ascii" (tokens that decode to printable ASCII) or "all".
        exclude_special: never use special tokens (BOS, chat markers, ...).
        allowed_ids: optional allow-list intersected with the filter above.
        init_ids: optional initial sequence for every slot (default: random allowed tokens per slot).
        chunk_rows: rows (sequence × item) per forward pass.
        fast_dtype: e.g. "bfloat16": run the search's forward and backward passes under autocast to
            that dtype (about 2x faster on CPUs with bfloat16 matrix units; values then carry ~0.02-0.07
            nats of rounding error). The frontier is always re-scored exactly (in the model's dtype)
            at the end. None (default): every pass in the model's dtype.
    """

    seq_len: int = 12
    population: int = 8
    lambda_min: float = 0.1
    lambda_max: float = 10.0
    children: int = 32
    top_k: int = 512
    iterations: int = 100
    restart_every: int = 50
    seed: int = 0
    vocab: str = "ascii"
    exclude_special: bool = True
    allowed_ids: tuple[int, ...] | None = None
    init_ids: tuple[int, ...] | None = None
    chunk_rows: int = 32
    fast_dtype: str | None = None

    def __post_init__(self) -> None:
        for name in ("allowed_ids", "init_ids"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, tuple):
                object.__setattr__(self, name, tuple(int(t) for t in v))

    def validate(self) -> None:
        """Raise SteerlabError for any setting that cannot run."""
        def positive_int(name: str, allow_zero: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if allow_zero else 1):
                what = "non-negative" if allow_zero else "positive"
                raise SteerlabError(f"EPO {name} must be a {what} integer, got {v!r}")

        if isinstance(self.iterations, bool) or not isinstance(self.iterations, int) or self.iterations <= 0:
            raise SteerlabError(f"the EPO iteration budget must be a positive integer, got {self.iterations!r}")
        for name in ("seq_len", "population", "children", "top_k", "chunk_rows"):
            positive_int(name)
        positive_int("restart_every", allow_zero=True)
        positive_int("seed", allow_zero=True)
        for name in ("lambda_min", "lambda_max"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise SteerlabError(f"EPO {name} must be a finite number >= 0, got {v!r}")
        if self.lambda_min > self.lambda_max:
            raise SteerlabError(f"lambda_min ({self.lambda_min}) is larger than lambda_max ({self.lambda_max})")
        if self.lambda_min == 0 and self.lambda_max > 0 and self.population > 1:
            raise SteerlabError("log-spaced fluency weights need lambda_min > 0 (or lambda_min = lambda_max = 0)")
        if self.vocab not in VOCABS:
            raise SteerlabError(f"unknown vocabulary filter {self.vocab!r}: choose one of {', '.join(VOCABS)}")
        if self.fast_dtype is not None and self.fast_dtype not in FAST_DTYPES:
            raise SteerlabError(f"unknown fast_dtype {self.fast_dtype!r}: choose one of {', '.join(FAST_DTYPES)} or None")
        if self.init_ids is not None and len(self.init_ids) != self.seq_len:
            raise SteerlabError(f"init_ids has {len(self.init_ids)} tokens but seq_len is {self.seq_len}")

    def lambdas(self) -> torch.Tensor:
        """The fluency weight of each slot, log-spaced from lambda_min to lambda_max."""
        if self.lambda_max == 0:
            return torch.zeros(self.population)
        if self.population == 1:
            return torch.tensor([float(self.lambda_min)])
        return torch.logspace(math.log10(self.lambda_min), math.log10(self.lambda_max), self.population)

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("allowed_ids", "init_ids"):
            if d[name] is not None:
                d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "EPOConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known})


_ASCII_CACHE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _ascii_mask(tokenizer, n: int) -> torch.Tensor:
    """[n] whether each token decodes (alone) to non-empty printable ASCII; cached per tokenizer."""
    try:
        cached = _ASCII_CACHE.get(tokenizer)
    except TypeError:  # pragma: no cover - an unhashable tokenizer
        cached = None
    if cached is not None and cached.shape[0] == n:
        return cached
    texts = tokenizer.batch_decode([[i] for i in range(n)])
    mask = torch.tensor([bool(t) and t.isascii() and t.isprintable() for t in texts], dtype=torch.bool)
    try:
        _ASCII_CACHE[tokenizer] = mask
    except TypeError:  # pragma: no cover
        pass
    return mask


def allowed_tokens(tokenizer, vocab_size: int, *, vocab: str = "ascii", exclude_special: bool = True,
                   allowed_ids: Sequence[int] | None = None) -> torch.Tensor:
    """Boolean mask [vocab_size] of tokens a sequence may use.

    "ascii" keeps tokens whose text (decoded alone) is non-empty printable ASCII (spaces included,
    newlines and control characters not); "all" keeps every token the tokenizer knows. Ids beyond the
    tokenizer (embedding padding rows) are never allowed.
    """
    if vocab not in VOCABS:
        raise SteerlabError(f"unknown vocabulary filter {vocab!r}: choose one of {', '.join(VOCABS)}")
    n = min(len(tokenizer), vocab_size)
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[:n] = True
    if exclude_special:
        special = set(getattr(tokenizer, "all_special_ids", []) or [])
        for i, added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
            if getattr(added, "special", False):
                special.add(int(i))
        for i in special:
            if 0 <= i < vocab_size:
                mask[i] = False
    if vocab == "ascii":
        mask[:n] &= _ascii_mask(tokenizer, n)
    if allowed_ids is not None:
        keep = torch.zeros(vocab_size, dtype=torch.bool)
        ids = [int(i) for i in allowed_ids if 0 <= int(i) < vocab_size]
        if ids:
            keep[torch.tensor(ids)] = True
        mask &= keep
    return mask


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


@dataclass
class FrontierPoint:
    """One sequence on the Pareto frontier.

    Attributes:
        ids: its token ids; text: the ids decoded.
        target: the objective's target (mean over the attack items), higher = stronger attack.
        xent: its mean per-token cross-entropy (nats), lower = more natural.
        iteration: the iteration at which it was first evaluated (0 = initial population).
        heldout: filled by an evaluation (e.g. behaviour scores on held-apart items).
    """

    ids: list[int]
    text: str
    target: float
    xent: float
    iteration: int
    heldout: dict = field(default_factory=dict)


@dataclass
class EPOStep:
    """The population after one iteration (iteration 0 = the initial population)."""

    iteration: int
    ids: list[list[int]]
    target: list[float]
    xent: list[float]
    best_target: float
    n_evaluated: int
    seconds: float
    restarted: bool = False


@dataclass
class EPOResult:
    """What an EPO run found.

    Attributes:
        config: the search settings.
        lambdas: the fluency weight of each slot.
        frontier: Pareto frontier of every evaluated sequence, sorted by cross-entropy (ascending;
            the target then rises along it).
        history: the population after every iteration.
        seconds: wall time of the search (the objective's set-up excluded).
        setup_seconds: wall time of the objective's set-up (heads' KV cache).
        n_evaluated: distinct sequences evaluated.
        reference: reference values for reports, e.g. {"natural_target": ..., "natural_xent": ...}.
        evaluation: held-apart evaluation (see `epo_attack`), empty if none was run.
        meta: what was attacked (model, target, steering, placement...).
    """

    config: EPOConfig
    lambdas: list[float]
    frontier: list[FrontierPoint]
    history: list[EPOStep]
    seconds: float
    setup_seconds: float = 0.0
    n_evaluated: int = 0
    reference: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def seconds_per_iteration(self) -> float:
        return self.seconds / max(1, self.config.iterations)

    @property
    def best(self) -> FrontierPoint:
        """The frontier point with the highest target."""
        return max(self.frontier, key=lambda p: p.target)

    def best_target_curve(self) -> list[float]:
        """Best target found so far after each iteration (non-decreasing)."""
        return [s.best_target for s in self.history]

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "lambdas": list(self.lambdas),
            "frontier": [asdict(p) for p in self.frontier],
            "history": [asdict(s) for s in self.history],
            "seconds": self.seconds,
            "setup_seconds": self.setup_seconds,
            "seconds_per_iteration": self.seconds_per_iteration,
            "n_evaluated": self.n_evaluated,
            "reference": self.reference,
            "evaluation": self.evaluation,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "EPOResult":
        if d.get("format_version") != FORMAT_VERSION:
            raise SteerlabError(f"unsupported epo.json format version {d.get('format_version')!r}")
        return cls(
            config=EPOConfig.from_dict(d["config"]),
            lambdas=list(d["lambdas"]),
            frontier=[FrontierPoint(**p) for p in d["frontier"]],
            history=[EPOStep(**s) for s in d["history"]],
            seconds=float(d["seconds"]),
            setup_seconds=float(d.get("setup_seconds", 0.0)),
            n_evaluated=int(d.get("n_evaluated", 0)),
            reference=dict(d.get("reference", {})),
            evaluation=dict(d.get("evaluation", {})),
            meta=dict(d.get("meta", {})),
        )

    def save(self, run_dir: str | Path, *, force: bool = False, plot: bool = True) -> Path:
        """Write `epo.json` (and `epo_frontier.png`) into `run_dir`; returns the JSON path.

        Refuses to overwrite an existing `epo.json` unless `force`.
        """
        run_dir = Path(run_dir)
        path = run_dir / RESULT_FILE
        if path.exists() and not force:
            raise OutputExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        if plot:
            self.plot(run_dir / PLOT_FILE)
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> "EPOResult":
        """Read `epo.json` from a run directory (or the file itself)."""
        path = Path(run_dir)
        if path.is_dir():
            path = path / RESULT_FILE
        if not path.is_file():
            raise SteerlabError(f"{path}: no EPO result there")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SteerlabError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(data)

    def plot(self, path: str | Path) -> Path:
        """A PNG of the frontier (target vs cross-entropy) and, when evaluated, held-apart scores."""
        from .epo_plot import plot_result

        return plot_result(self, Path(path))


# ---------------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------------


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


def check_epo_inputs(lm, targets: Sequence[TargetItem], config: EPOConfig, normalise: bool = False) -> torch.Tensor:
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


def run_epo(lm, targets: Sequence[TargetItem], steering: Steering | Sequence[Steering] = (),
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


if __name__ == "__main__":  # pragma: no cover - `python -m steerlab.analysis.epo ...`
    from .epo_attack import main

    raise SystemExit(main())
