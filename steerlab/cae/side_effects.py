"""What steering costs: perplexity on a fixed corpus subset and KL divergence of next-token distributions.

The corpus (by default WikiText-2 test) is tokenized and cut into `n_windows` consecutive windows of
`window` tokens from a fixed start, so every strength sees exactly the same tokens. For each window
the model predicts tokens 1..window-1 from their prefixes (token 0 only gives context).

* perplexity = exp(mean negative log-likelihood over all predicted tokens), per strength;
* KL = mean over the same positions of KL(p_unsteered || p_steered) of the full next-token
  distributions, in nats (the steered model's divergence from what the model would say on neutral
  text), with a bootstrap interval over windows.

Steering is applied at every position ("all") of one layer: the window has no user turn or answer,
so this is the cost of leaving the vector on. Strengths are raw or relative, as in `sweeps`.
Accumulated sums are written after every batch of windows (`partial_path`), so a long run that
stops keeps what it measured.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch

from ..data.ood import load_corpus
from ..errors import DatasetError, SteerlabError
from ..steering import Steering, steer
from ..vector import SteeringVector
from .. import results
from .sites import Site, as_site, site_layers
from .stats import bootstrap_ci

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel


@dataclass(frozen=True)
class CorpusWindows:
    """Token windows cut from a corpus: ids [n_windows, window], and where they came from."""

    ids: torch.Tensor
    source: str
    start_token: int

    @property
    def n_windows(self) -> int:
        return int(self.ids.shape[0])

    @property
    def window(self) -> int:
        return int(self.ids.shape[1])

    @property
    def n_predicted(self) -> int:
        """Tokens scored: every window position but the first."""
        return self.n_windows * (self.window - 1)


def corpus_windows(lm: LoadedModel, path: str | Path, *, n_tokens: int = 2048, window: int = 256,
                   start_token: int = 0) -> CorpusWindows:
    """The first `n_tokens` tokens of the corpus after `start_token`, as windows of `window` tokens.

    DatasetError if the file is empty or holds fewer than one window of tokens.
    """
    if window < 2:
        raise SteerlabError(f"a perplexity window needs at least 2 tokens, got {window}")
    if n_tokens < window:
        raise SteerlabError(f"n_tokens ({n_tokens}) must be at least one window ({window})")
    if lm.max_context is not None and window > lm.max_context:
        raise SteerlabError(f"window of {window} tokens exceeds the model's context of {lm.max_context}")
    need = start_token + n_tokens
    chars = max(4096, need * 8)
    text = load_corpus(path)  # DatasetError for empty or whitespace-only files
    while True:  # tokenize only as much text as needed
        ids = lm.tokenizer(text[:chars], add_special_tokens=False).input_ids
        if len(ids) >= need + 1 or chars >= len(text):
            break
        chars *= 2
    ids = ids[start_token:start_token + n_tokens]
    n_windows = len(ids) // window
    if n_windows == 0:
        raise DatasetError(f"{path}: only {len(ids)} tokens after token {start_token}, fewer than one window of {window}")
    tensor = torch.tensor(ids[: n_windows * window], dtype=torch.long).view(n_windows, window)
    return CorpusWindows(tensor, str(path), start_token)


@dataclass
class CostRow:
    """Perplexity and KL at one strength.

    Attributes:
        strength, relative: raw alpha and the relative strength it came from (None if raw).
        nll: mean negative log-likelihood (nats/token); perplexity = exp(nll).
        perplexity_ratio: perplexity / unsteered perplexity.
        kl, kl_low, kl_high: mean KL(unsteered || steered) per token and its bootstrap interval over windows.
        n_tokens: tokens scored.
    """

    strength: float
    relative: float | None
    nll: float
    perplexity: float
    perplexity_ratio: float
    kl: float
    kl_low: float
    kl_high: float
    n_tokens: int


@dataclass
class SideEffects:
    """The cost curve of one vector at one layer (or band).

    Attributes:
        layer, positions: where the vector was applied (a band: a tuple of layers).
        rows: one CostRow per strength, the unsteered one (strength 0) first.
        config: corpus, windows, tokens.
        per_window: {strength: {"nll": [...], "kl": [...]}} per-window means (for intervals and checks).
        seconds: wall time.
    """

    layer: Site
    positions: str
    rows: list[CostRow]
    config: dict = field(default_factory=dict)
    per_window: dict = field(default_factory=dict)
    seconds: float = 0.0
    complete: bool = True

    def to_json(self) -> dict:
        return {"kind": "side_effects", "layer": self.layer, "positions": self.positions, "config": self.config,
                "seconds": self.seconds, "complete": self.complete, "rows": [asdict(r) for r in self.rows],
                "per_window": {str(k): v for k, v in self.per_window.items()}}

    def row_at(self, strength: float) -> CostRow:
        for r in self.rows:
            if abs(r.strength - strength) < 1e-9 or (r.relative is not None and abs(r.relative - strength) < 1e-9):
                return r
        raise SteerlabError(f"no side-effect row at strength {strength}")


def _next_token_logprobs(lm: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    """log p(. | prefix) at positions 0..T-2, [rows, T-1, vocab] float32."""
    with torch.no_grad():
        logits = lm.model(input_ids=ids.to(lm.device), use_cache=False).logits[:, :-1]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def measure_side_effects(lm: LoadedModel, vector: SteeringVector, layer: Site, strengths: Sequence[float],
                         windows: CorpusWindows, *, relative: Sequence[float | None] | None = None,
                         positions: str = "all", schedule: str = "constant", batch_size: int = 2, n_boot: int = 2000,
                         seed: int = 0,
                         partial_path: str | Path | None = None,
                         on_batch: Callable[[int, int], None] | None = None) -> SideEffects:
    """Perplexity and KL(unsteered || steered) on `windows` for each strength (0 = unsteered is added).

    Args:
        layer: one layer, or a band (a tuple of layers, `sites`) steered at all of them at each strength.
        strengths: raw alphas (convert relative ones with `strengths.raw_strength`, or `sites.site_steering`).
        relative: optional relative strength for each entry of `strengths`, recorded in the rows.
        positions: steering positions ("all" by default; the windows have no chat turns).
        schedule: the strength schedule (`steerlab.schedules`), counted from each window's first steered token:
            the cost on text written under it.
        partial_path: a JSON file updated after every batch with the sums so far.
        on_batch: progress callback (batches done, batches total).
    """
    t0 = time.perf_counter()
    layer = as_site(layer)
    for l in site_layers(layer):
        lm.blocks.check_layer(l)
        if l not in vector.directions:
            raise SteerlabError(f"the vector has no direction for layer {l} (it has {list(vector.layers)})")
    rel = list(relative) if relative is not None else [None] * len(strengths)
    if len(rel) != len(strengths):
        raise SteerlabError(f"{len(rel)} relative strengths for {len(strengths)} strengths")
    pairs = [(0.0, 0.0)] + [(float(s), r) for s, r in zip(strengths, rel) if float(s) != 0.0]
    alphas = [a for a, _ in pairs]
    n_w = windows.n_windows
    nll_w = np.zeros((len(alphas), n_w))
    kl_w = np.zeros((len(alphas), n_w))
    ids = windows.ids
    batches = list(range(0, n_w, batch_size))
    done = 0
    config = {"corpus": windows.source, "start_token": windows.start_token, "n_windows": n_w, "window": windows.window,
              "n_tokens": windows.n_predicted, "batch_size": batch_size}
    if schedule != "constant":
        config["schedule"] = schedule
    for b, s0 in enumerate(batches):
        chunk = ids[s0:s0 + batch_size]
        target = chunk[:, 1:]
        base = _next_token_logprobs(lm, chunk)
        for k, alpha in enumerate(alphas):
            if alpha == 0.0:
                lp = base
            else:
                with steer(lm, [Steering(vector, alpha, site_layers(layer), positions, schedule=schedule)]):
                    lp = _next_token_logprobs(lm, chunk)
            nll = -lp.gather(2, target[..., None]).squeeze(2).double()  # [rows, T-1]
            kl = (base.exp() * (base - lp)).sum(-1).double()  # KL(base || steered) per position
            nll_w[k, s0:s0 + len(chunk)] = nll.mean(1).numpy()
            kl_w[k, s0:s0 + len(chunk)] = kl.mean(1).numpy()
        done = s0 + len(chunk)
        if partial_path is not None:
            results.write_json(partial_path, {"kind": "side_effects_partial", "layer": layer, "config": config,
                                          "windows_done": done, "strengths": alphas,
                                          "nll_per_window": nll_w[:, :done].tolist(),
                                          "kl_per_window": kl_w[:, :done].tolist()})
        if on_batch is not None:
            on_batch(b + 1, len(batches))
    rows = []
    base_ppl = math.exp(float(nll_w[0].mean()))
    for k, (alpha, r) in enumerate(pairs):
        nll = float(nll_w[k].mean())  # windows have equal length: the mean of means is the token mean
        lo, hi = (0.0, 0.0) if alpha == 0.0 else bootstrap_ci(kl_w[k], n_boot=n_boot, seed=seed)
        ppl = math.exp(nll)
        rows.append(CostRow(alpha, r, nll, ppl, ppl / base_ppl, float(kl_w[k].mean()), lo, hi, windows.n_predicted))
    per_window = {alpha: {"nll": nll_w[k].tolist(), "kl": kl_w[k].tolist()} for k, alpha in enumerate(alphas)}
    return SideEffects(layer, positions, rows, config, per_window, time.perf_counter() - t0)


def write_side_effects(result: SideEffects, out_dir: str | Path, name: str = "side_effects") -> dict[str, Path]:
    """NAME.json, NAME.csv (one row per strength) and NAME.png (perplexity and KL vs strength)."""
    out = Path(out_dir)
    data = result.to_json()
    files = {"json": results.write_result(out / f"{name}.json", data),
             "csv": results.write_csv(out / f"{name}.csv", [asdict(r) for r in result.rows])}
    files["png"] = plot_side_effects(data, out / f"{name}.png")
    return files


def _x(row: dict) -> float:
    return row["relative"] if row.get("relative") is not None else row["strength"]


def plot_side_effects(data: dict, path: str | Path) -> Path:
    """Perplexity (left axis) and KL (right axis) vs strength."""
    fig, ax = results.figure()
    rows = sorted(data["rows"], key=_x)
    rel = any(r.get("relative") is not None for r in rows if r["strength"] != 0)
    xs = [_x(r) for r in rows]
    ax.plot(xs, [r["perplexity"] for r in rows], marker="o", color="tab:red", label="perplexity")
    ax.set_yscale("log")
    ax.set_ylabel("perplexity (log scale)", color="tab:red")
    ax2 = ax.twinx()
    ax2.plot(xs, [r["kl"] for r in rows], marker="s", color="tab:purple", label="KL(unsteered || steered)")
    ax2.fill_between(xs, [r["kl_low"] for r in rows], [r["kl_high"] for r in rows], color="tab:purple", alpha=0.15)
    ax2.set_ylabel("KL, nats/token", color="tab:purple")
    ax.set_xlabel("relative strength r" if rel else "strength alpha")
    ax.set_title(f"cost of steering at layer {data['layer']} ({data['config']['n_tokens']} tokens, positions {data['positions']})")
    return results.save_figure(fig, path)
