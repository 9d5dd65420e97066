"""EPO's search settings (`EPOConfig`) and the vocabulary filter of the tokens a sequence may use."""

from __future__ import annotations

import math
import weakref
from dataclasses import asdict, dataclass, fields
from typing import Sequence

import torch

from ..errors import SteerlabError

VOCABS: tuple[str, ...] = ("ascii", "all")
FAST_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}


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
