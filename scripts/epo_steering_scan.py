"""Which steering setting to attack with EPO: p(match) on training items per layer, strength and positions.

Trains CAA on the first `--n-train` items of the behaviour's split (the split `steerlab.epo`
uses: `split_items(items, n_train, n_test, seed)`; the training items do not depend on n_test), then
scores the first `--n-probe` training items with the scoring engine, unsteered and under every
(layer, strength) of the grid. On SmolLM2-135M some vectors act against their trained sign: read
the sign off this table (the EPO pipeline re-checks it, see `--n-sign` there).

    python scripts/epo_steering_scan.py power-seeking-inclination --layers 8 11 14 \
        --strengths -8 -4 4 8 --positions after_user --n-probe 32
"""

from __future__ import annotations

import argparse
import time

import torch

import steerlab as sl
from steerlab.data import load_mwe, resolve_behaviour, split_items
from steerlab.engine import ScoringItem, Setting, caa_vectors, score


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("behaviour")
    p.add_argument("--layers", type=int, nargs="+", required=True)
    p.add_argument("--strengths", type=float, nargs="+", required=True)
    p.add_argument("--positions", default="after_user", choices=["all", "after_user", "last_prompt"])
    p.add_argument("--n-train", type=int, default=150)
    p.add_argument("--n-probe", type=int, default=24)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    lm = sl.load_model()
    items = load_mwe(resolve_behaviour(a.behaviour))
    train, _ = split_items(items, a.n_train, None, seed=a.split_seed)
    t0 = time.perf_counter()
    vec = caa_vectors(lm, [it.to_pair() for it in train], layers=a.layers)
    print(f"vector: {time.perf_counter() - t0:.0f} s, norms " + ", ".join(f"L{l} {float(vec[l].norm()):.2f}" for l in a.layers))
    probe = train[: a.n_probe]
    sitems = [ScoringItem(sl.format_prompt(lm, it.question, "("), (it.matching, it.not_matching), target=0) for it in probe]
    settings = [Setting.unsteered()] + [Setting.single(vec, l, s, a.positions) for l in a.layers for s in a.strengths]
    t0 = time.perf_counter()
    p_match = score(lm, sitems, settings).target_probs().mean(1)
    print(f"scoring: {time.perf_counter() - t0:.0f} s; p(match) on {len(probe)} training items:")
    for st, v in zip(settings, p_match.tolist()):
        print(f"  {st.label:24s} {v:.4f}")


if __name__ == "__main__":
    main()
