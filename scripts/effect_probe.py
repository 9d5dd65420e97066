"""Measured direction and size of CAA vectors' effects on the embedded model (docs/findings.md).

For each contrast (the shipped demo pairs, and MWE behaviours), train CAA vectors at several layers
and measure, on held-apart pairs, the change of log p(positive) - log p(negative) at +/- strength.

    python scripts/effect_probe.py --out scripts/out/effect_probe.json
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

import steerlab as sl
from steerlab.data.demo import DEMO_TRAIN, demo_pairs
from steerlab.data import load_mwe, resolve_behaviour, split_items
from steerlab.engine import extract_pair_activations


def probe(lm, name, train, held, layers, strengths, position, positions):
    t0 = time.perf_counter()
    if position == "last":
        acts = extract_pair_activations(lm, train, layers)
        vec = acts.caa_vector(lm)
    else:
        vec = sl.train_caa(lm, train, layers, position=position)
    rows = []
    for layer in layers:
        rep = sl.measure_effect(lm, vec, held, layers=[layer], strengths=strengths, positions=positions)
        rows.append({"contrast": name, "layer": layer, "norm": vec.norms()[layer], "direction": rep.direction,
                     "monotonic": rep.monotonic, "effects": rep.rows()})
        shifts = "  ".join(f"{r['strength']:+g}:{r['shift']:+.3f}" for r in rep.rows())
        print(f"{name:28s} L{layer:<3d} |v|={vec.norms()[layer]:6.2f}  {shifts}  {rep.direction}", flush=True)
    return rows, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--behaviours", default="agreeableness,corrigible-neutral-HHH,power-seeking-inclination")
    ap.add_argument("--layers", default="3,6,9,12,15,18,21,24")
    ap.add_argument("--strengths", default="-8,-4,4,8")
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-test", type=int, default=60)
    ap.add_argument("--out", type=Path, default=Path("scripts/out/effect_probe.json"))
    args = ap.parse_args()
    lm = sl.load_model()
    layers = [int(x) for x in args.layers.split(",")]
    strengths = [float(x) for x in args.strengths.split(",")]
    results, timings = [], {}
    pairs = demo_pairs()
    rows, secs = probe(lm, "demo (mean, after_user)", pairs[:DEMO_TRAIN], pairs[DEMO_TRAIN:], layers, strengths,
                       "mean", "after_user")
    results += rows
    timings["demo"] = secs
    for b in [x for x in args.behaviours.split(",") if x]:
        items = load_mwe(resolve_behaviour(b))
        train, test = split_items(items, args.n_train, args.n_test, seed=0)
        rows, secs = probe(lm, f"{b} (answer, all)", [i.to_pair() for i in train], [i.to_pair() for i in test],
                           layers, strengths, "last", "all")
        results += rows
        timings[b] = secs
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
                                    "threads": torch.get_num_threads(), "seconds": timings, "rows": results}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
