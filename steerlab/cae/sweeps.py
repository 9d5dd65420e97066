"""CAE sweeps over the scoring engine: layer, strength (both signs), training-sample count, CAA vs ActAdd.

A sweep is first a `SweepPlan` (its steered settings and what they are); `run_plans` scores one or
several plans on the same items in ONE `steerlab.engine.score` call (the unsteered model first, so
every plan shares the base pass) and splits the table back into one `Sweep` per plan (per-item and
per-setting results). `write_sweep` saves a Sweep as ``NAME.csv`` (one row per setting x item),
``NAME.json`` (per setting: score and effect with bootstrap intervals, plus the configuration) and
``NAME.png`` (the effect with its paired bootstrap band vs the swept value).

Strengths are raw (``h <- h + alpha * v``) or *relative*: r means alpha * ||v_L|| = r * mean ||h_L||,
the typical residual norm at layer L (read at the answer token, see `behaviour.residual_norms`), so
the same r is comparable across layers and vectors. Both numbers are kept in every result row.

The sample-count sweep builds CAA vectors from nested prefixes of the training pairs (10 inside 20
inside 40 ...) from activations extracted once (`engine.PairActivations.caa_vector`), and applies
them all with the same raw strength (the full-training vector's alpha for the requested relative
strength), as the paper applies one alpha to every vector. With few pairs the mean difference is
noisier and longer, so each row also reports the vector's norm (`vector_norm`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..data.records import BehaviourItem, ContrastPair
from ..engine import PairActivations, ScoreTable, Setting, extract_pair_activations, score
from ..errors import SteerlabError
from ..vector import SteeringVector
from .. import results
from .prompts import scoring_items
from .scoring import BehaviourResult
from .strengths import direction_norm, raw_strength, steering_terms

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel

SWEEP_KINDS: tuple[str, ...] = ("layer", "strength", "sample_count", "method")


@dataclass
class Sweep:
    """One sweep's results.

    Attributes:
        kind: "layer", "strength", "sample_count" or "method".
        result: scores per setting and item (`BehaviourResult`); meta of each setting holds the
            swept values (layer, strength, relative, method, n_train, vector_norm).
        config: what was swept and how (for the JSON file and reports).
        seconds: wall time of the scoring call.
    """

    kind: str
    result: BehaviourResult
    config: dict = field(default_factory=dict)
    seconds: float = 0.0

    def summary_rows(self) -> list[dict]:
        return self.result.summary_rows()

    def steered_rows(self) -> list[dict]:
        return [r for r in self.summary_rows() if r.get("method") is not None]

    def best(self, key: str = "effect", **match) -> dict:
        """The steered row with the largest `key` among rows whose fields equal `match`."""
        rows = [r for r in self.steered_rows() if all(_same(r.get(k), v) for k, v in match.items())]
        if not rows:
            raise SteerlabError(f"no {self.kind} sweep rows match {match}")
        return max(rows, key=lambda r: r[key])

    def to_json(self) -> dict:
        return {"kind": self.kind, "config": self.config, "seconds": self.seconds,
                "unsteered": self.result.unsteered().row(), "rows": self.summary_rows()}


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return a is not None and b is not None and abs(float(a) - float(b)) < 1e-9
    return a == b


def _strength_pair(value: float, relative: bool, vector: SteeringVector, layer: int,
                   norms: dict[int, float] | None) -> tuple[float, float | None]:
    """(raw alpha, relative r or None) for a requested strength."""
    if not relative:
        return float(value), None
    if norms is None or layer not in norms:
        raise SteerlabError(f"relative strengths need the residual norm at layer {layer}")
    return raw_strength(value, vector, layer, norms[layer]), float(value)


def _meta(method: str, vector: SteeringVector, layer: int, alpha: float, rel: float | None, **extra) -> dict:
    return {"method": method, "layer": int(layer), "strength": float(alpha), "relative": rel,
            "n_train": int(vector.meta.n_train), "vector_norm": direction_norm(vector, layer), **extra}


@dataclass
class SweepPlan:
    """The settings of a sweep before scoring: steered settings, their meta, the sweep's config."""

    kind: str
    settings: list[Setting]
    meta: list[dict]
    config: dict


def run_plans(lm: LoadedModel, items: Sequence[BehaviourItem], plans: Sequence[SweepPlan], **kw) -> list[Sweep]:
    """Score several sweeps on the same items in ONE engine call (one shared unsteered base pass).

    Keyword arguments go to `behaviour.score_behaviour` (n_boot, seed, batch_size, progress, ...).
    """
    import time

    from .scoring import summarize

    if not plans:
        raise SteerlabError("no sweeps to run")
    settings, meta, spans = [Setting.unsteered()], [{}], []
    for p in plans:
        spans.append((len(settings), len(settings) + len(p.settings)))
        settings += p.settings
        meta += p.meta
    n_boot, seed = kw.pop("n_boot", 2000), kw.pop("seed", 0)
    allow_multi = kw.pop("allow_multi_token", False)
    if len({it.kind for it in items}) > 1:
        raise SteerlabError("items mix A/B and Yes/No questions; score each set on its own")
    t0 = time.perf_counter()
    whole = score(lm, scoring_items(lm, items, allow_multi_token=allow_multi), settings, **kw)
    seconds = time.perf_counter() - t0
    out = []
    for p, (a, b) in zip(plans, spans):
        idx = [0, *range(a, b)]
        table = ScoreTable(whole.logprobs[idx], [settings[i] for i in idx], whole.items,
                           {**whole.info, "shared_call_settings": len(settings)})
        result = summarize(table, items, [meta[i] for i in idx], n_boot=n_boot, seed=seed)
        out.append(Sweep(p.kind, result, {**p.config, "scored_with": [q.kind for q in plans]}, seconds))
    return out


def _steered(vector, layer, alpha, kind, positions, label) -> Setting:
    return Setting(steering_terms(vector, layer, alpha, kind, positions), label)


def layer_plan(vector: SteeringVector, kind: str, layers: Sequence[int], strengths: Sequence[float], *,
               relative: bool = False, norms: dict[int, float] | None = None, positions: str = "answer",
               method: str = "caa") -> SweepPlan:
    """Settings of a layer sweep: one single-layer setting per (layer, strength)."""
    if not len(layers) or not len(strengths):
        raise SteerlabError("a layer sweep needs at least one layer and one strength")
    settings, meta = [], []
    for layer in layers:
        for s in strengths:
            if float(s) == 0.0:
                continue
            alpha, rel = _strength_pair(s, relative, vector, layer, norms)
            settings.append(_steered(vector, layer, alpha, kind, positions,
                                     f"{method} L{layer} {'r' if relative else 'a'}={s:+g}"))
            meta.append(_meta(method, vector, layer, alpha, rel, positions=positions))
    config = {"layers": list(map(int, layers)), "strengths": list(map(float, strengths)), "relative": relative,
              "positions": positions, "method": method}
    return SweepPlan("layer", settings, meta, config)


def strength_plan(vector: SteeringVector, kind: str, layer: int, strengths: Sequence[float], *,
                  relative: bool = False, norms: dict[int, float] | None = None, positions: str = "answer",
                  method: str = "caa") -> SweepPlan:
    """Settings of a strength sweep at one layer (0 is skipped: the unsteered setting is always scored)."""
    if not len(strengths):
        raise SteerlabError("a strength sweep needs at least one strength")
    plan = layer_plan(vector, kind, [layer], strengths, relative=relative, norms=norms, positions=positions,
                      method=method)
    config = {"layer": int(layer), "strengths": list(map(float, strengths)), "relative": relative,
              "positions": positions, "method": method}
    return SweepPlan("strength", plan.settings, plan.meta, config)


def sample_count_plan(lm: LoadedModel,
                      acts: PairActivations, kind: str, counts: Sequence[int], layer: int, strength: float, *,
                      relative: bool = False, norms: dict[int, float] | None = None,
                      positions: str = "answer") -> SweepPlan:
    """Settings of a sample-count sweep: CAA vectors from the first n training pairs, one raw strength.

    With `relative`, the raw strength is the full-training-set vector's alpha for relative `strength`.
    """
    counts = sorted({int(c) for c in counts})
    if not counts or counts[0] < 1 or counts[-1] > len(acts):
        raise SteerlabError(f"sample counts must lie in 1..{len(acts)} (the extracted training pairs), got {counts}")
    full = acts.caa_vector(lm, layers=[layer])
    alpha, rel = _strength_pair(strength, relative, full, layer, norms)
    settings, meta = [], []
    for n in counts:
        vec = acts.caa_vector(lm, n, [layer])
        settings.append(_steered(vec, layer, alpha, kind, positions, f"caa n={n} L{layer} a={alpha:+.3g}"))
        meta.append(_meta("caa", vec, layer, alpha, rel, positions=positions))
    config = {"layer": int(layer), "counts": counts, "strength": float(alpha), "relative_strength": rel,
              "relative": False, "positions": positions, "n_available": len(acts)}
    return SweepPlan("sample_count", settings, meta, config)


def method_plan(vectors: dict[str, SteeringVector], kind: str, layer: int, strengths: Sequence[float], *,
                relative: bool = True, norms: dict[int, float] | None = None, positions: str = "answer") -> SweepPlan:
    """Settings comparing vectors (e.g. {"caa": ..., "actadd": ...}) at one layer and the same strengths.

    Relative strengths (the default) match the vectors' norms: each gets alpha * ||v|| = r * ||h_L||.
    """
    if not vectors:
        raise SteerlabError("no vectors to compare")
    settings, meta = [], []
    for name, vec in vectors.items():
        plan = layer_plan(vec, kind, [layer], strengths, relative=relative, norms=norms, positions=positions,
                          method=name)
        settings += plan.settings
        meta += plan.meta
    config = {"layer": int(layer), "methods": list(vectors), "strengths": list(map(float, strengths)),
              "relative": relative, "positions": positions,
              "vectors": {k: {"method": v.meta.method, "n_train": v.meta.n_train, **{
                  x: v.meta.extra[x] for x in ("positive", "negative") if x in v.meta.extra}} for k, v in vectors.items()}}
    return SweepPlan("method", settings, meta, config)


def _kind(items: Sequence[BehaviourItem]) -> str:
    if not items:
        raise SteerlabError("no items to score")
    return items[0].kind


def layer_sweep(lm: LoadedModel, vector: SteeringVector, items: Sequence[BehaviourItem], layers: Sequence[int],
                strengths: Sequence[float], *, relative: bool = False, norms: dict[int, float] | None = None,
                positions: str = "answer", method: str = "caa", **kw) -> Sweep:
    """Behaviour score at each layer (single-layer steering) for each strength (e.g. +r and -r)."""
    plan = layer_plan(vector, _kind(items), layers, strengths, relative=relative, norms=norms, positions=positions,
                      method=method)
    return run_plans(lm, items, [plan], **kw)[0]


def strength_sweep(lm: LoadedModel, vector: SteeringVector, items: Sequence[BehaviourItem], layer: int,
                   strengths: Sequence[float], *, relative: bool = False, norms: dict[int, float] | None = None,
                   positions: str = "answer", method: str = "caa", **kw) -> Sweep:
    """Behaviour score at one layer across strengths of both signs."""
    plan = strength_plan(vector, _kind(items), layer, strengths, relative=relative, norms=norms,
                         positions=positions, method=method)
    return run_plans(lm, items, [plan], **kw)[0]


def sample_count_sweep(lm: LoadedModel,
                       acts: PairActivations, items: Sequence[BehaviourItem], counts: Sequence[int], layer: int,
                       strength: float, *, relative: bool = False, norms: dict[int, float] | None = None,
                       positions: str = "answer", **kw) -> Sweep:
    """Behaviour score of CAA vectors from nested training subsets (see `sample_count_plan`)."""
    plan = sample_count_plan(lm, acts, _kind(items), counts, layer, strength, relative=relative, norms=norms,
                             positions=positions)
    return run_plans(lm, items, [plan], **kw)[0]


def method_comparison(lm: LoadedModel, vectors: dict[str, SteeringVector], items: Sequence[BehaviourItem], layer: int,
                      strengths: Sequence[float], *, relative: bool = True, norms: dict[int, float] | None = None,
                      positions: str = "answer", **kw) -> Sweep:
    """Several vectors on the same items, layer and strengths (see `method_plan`)."""
    plan = method_plan(vectors, _kind(items), layer, strengths, relative=relative, norms=norms, positions=positions)
    return run_plans(lm, items, [plan], **kw)[0]


def flatten_point(sweep_json: dict) -> dict:
    """Where a sample-count curve's gains flatten.

    The smallest count n whose effect, and the effect of every larger count, is at least the largest
    count's effect minus that effect's 95% half-interval. None (with the reason) when the largest
    count's effect is not distinguishable from zero: there is no gain to flatten.
    """
    rows = sorted([r for r in sweep_json["rows"] if r.get("method") is not None], key=lambda r: r["n_train"])
    if not rows:
        return {"n": None, "reason": "no rows"}
    last = rows[-1]
    if last["effect_low"] <= 0.0 <= last["effect_high"]:
        return {"n": None, "reason": f"no effect at n={last['n_train']} (95% interval "
                                     f"[{last['effect_low']:+.3f}, {last['effect_high']:+.3f}] contains 0)"}
    sign = 1.0 if last["effect"] > 0 else -1.0
    tol = (last["effect_high"] - last["effect_low"]) / 2.0
    floor = sign * last["effect"] - tol
    for k, r in enumerate(rows):
        if all(sign * q["effect"] >= floor for q in rows[k:]):
            return {"n": int(r["n_train"]), "reason": f"effect within {tol:.3f} of n={last['n_train']}'s "
                                                      f"{last['effect']:+.3f} from here on"}
    return {"n": int(last["n_train"]), "reason": "only the largest count"}


# ---------------------------------------------------------------------------------------------
# Vectors
# ---------------------------------------------------------------------------------------------


def actadd_vectors(lm: LoadedModel, positive: str, negative: str, layers: Sequence[int]) -> dict[str, SteeringVector]:
    """Two one-pair ActAdd vectors from (`positive`, `negative`), e.g. ("Love", "Hate").

    "actadd": the CAE formula with a single pair — the difference of the last-token activations of the
    two words given as the assistant's answer (as CAA reads its pairs); a [hidden] direction steered
    at the same positions as CAA. "actadd-pp": Turner et al.'s per-position vector
    (`steerlab.train_actadd`), added from the first token of the user's text.
    """
    from ..methods import train_actadd

    acts = extract_pair_activations(lm, [ContrastPair("", positive, negative)], list(layers))
    one = acts.caa_vector(lm)
    one = SteeringVector(one.directions, replace(one.meta, method="actadd-last",
                                                 extra={"positive": positive, "negative": negative}))
    return {"actadd": one, "actadd-pp": train_actadd(lm, positive, negative, list(layers))}


def answer_balanced_vector(lm: LoadedModel, acts: PairActivations, items: Sequence[BehaviourItem],
                           layers: Sequence[int] | None = None) -> SteeringVector:
    """CAA with the matching answers weighted equally: the mean of the per-answer mean differences.

    Plain CAA averages h(match) − h(not match) over the pairs; when more pairs match with "Yes" (or
    "A") than with "No" ("B"), the average keeps a share of the answer tokens' own difference, and the
    vector pushes that token rather than the behaviour. Averaging the mean difference of each
    matching-answer group with equal weights removes that share. `items` are the pairs' source items,
    in `acts` order.
    """
    if len(items) != len(acts):
        raise SteerlabError(f"{len(items)} items for {len(acts)} extracted pairs")
    groups: dict[str, list[int]] = {}
    for k, it in enumerate(items):
        groups.setdefault(it.matching, []).append(k)
    if len(groups) < 2:
        raise SteerlabError(f"every item matches with {next(iter(groups))!r}: there is nothing to balance")
    layers = list(acts.layers) if layers is None else list(layers)
    directions = {}
    for l in layers:
        means = [acts.mean_difference(l, idx).double() for idx in groups.values()]
        directions[l] = torch.stack(means).mean(0).float()
    base = acts.caa_vector(lm, layers=layers)
    meta = replace(base.meta, method="caa-balanced",
                   extra={**base.meta.extra, "groups": {a: len(i) for a, i in sorted(groups.items())}})
    return SteeringVector(directions, meta)


# ---------------------------------------------------------------------------------------------
# Files and plots
# ---------------------------------------------------------------------------------------------


def write_sweep(sweep: Sweep, out_dir: str | Path, name: str | None = None, *, extra: dict | None = None) -> dict[str, Path]:
    """Write NAME.csv (per item), NAME.json (per setting + config) and NAME.png; returns the paths."""
    out = Path(out_dir)
    name = name or f"{sweep.kind}_sweep"
    data = sweep.to_json()
    if extra:
        data.update(extra)
    files = {"csv": results.write_csv(out / f"{name}.csv", sweep.result.per_item_rows()),
             "json": results.write_result(out / f"{name}.json", data)}
    files["png"] = plot_sweep(data, out / f"{name}.png")
    return files


def _band(ax, xs, rows, label, **style):
    y = np.array([r["effect"] for r in rows])
    lo = np.array([r["effect_low"] for r in rows])
    hi = np.array([r["effect_high"] for r in rows])
    line, = ax.plot(xs, y, marker="o", label=label, **style)
    ax.fill_between(xs, lo, hi, alpha=0.2, color=line.get_color())
    return line


def _by_answer(ax, xs, rows) -> None:
    """Thin dashed lines: the effect on items whose matching answer is A/Yes vs B/No (a vector that pushes
    one answer token shows up as lines of opposite sign)."""
    keys = sorted({k for r in rows for k in r if k.startswith("effect_if_")})
    for k in keys:
        ax.plot(xs, [r.get(k) for r in rows], ls="--", lw=0.8, alpha=0.8,
                label=f"items matching '{k[len('effect_if_'):]}'")


def plot_sweep(data: dict, path: str | Path, ax=None) -> Path | None:
    """The figure of a sweep's JSON (`Sweep.to_json()`): the effect on the behaviour score (steered −
    unsteered, paired bootstrap 95% band) vs the swept value.

    With `ax`, draws into it and returns None (for composite report figures).
    """
    own = ax is None
    if own:
        fig, ax = results.figure()
    kind = data["kind"]
    rows = [r for r in data["rows"] if r.get("method") is not None]
    base = data["unsteered"]

    def xval(r):
        return r["relative"] if r.get("relative") is not None else r["strength"]

    if kind == "layer":
        for s in sorted({xval(r) for r in rows}):
            sel = sorted([r for r in rows if _same(xval(r), s)], key=lambda r: r["layer"])
            _band(ax, [r["layer"] for r in sel], sel, f"{'r' if data['config'].get('relative') else 'alpha'}={s:+g}")
        ax.set_xlabel("layer")
        title = "effect vs layer"
    elif kind == "strength":
        sel = sorted(rows, key=xval)
        rel = data["config"].get("relative")
        xs = [r["relative"] if rel else r["strength"] for r in sel]
        _band(ax, xs, sel, f"layer {data['config']['layer']}")
        _by_answer(ax, xs, sel)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel("relative strength r (alpha·||v|| = r·mean||h||)" if rel else "strength alpha")
        title = "effect vs strength"
    elif kind == "sample_count":
        sel = sorted(rows, key=lambda r: r["n_train"])
        xs = [r["n_train"] for r in sel]
        _band(ax, xs, sel, f"layer {data['config']['layer']}, alpha={data['config']['strength']:.3g}")
        _by_answer(ax, xs, sel)
        ax.set_xscale("log")
        ax.set_xlabel("training pairs")
        title = "effect vs training-sample count"
    elif kind == "method":
        for m in data["config"]["methods"]:
            sel = sorted([r for r in rows if r["method"] == m], key=xval)
            _band(ax, [xval(r) for r in sel], sel, m)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel("relative strength r (norm-matched)" if data["config"].get("relative") else "strength alpha")
        title = "CAA vs ActAdd"
    else:
        raise SteerlabError(f"unknown sweep kind {kind!r}")
    ax.axhline(0.0, color="black", ls="--", lw=1)
    ax.set_ylabel("effect on p(match)/(p(match)+p(not match))", fontsize=8)
    ax.set_title(data.get("title", f"{title} (unsteered score {base['score']:.3f}, n={base['n_items']})"), fontsize=9)
    ax.legend(fontsize=7)
    if own:
        return results.save_figure(fig, path)
    return None
