"""Which training reading makes a Yes/No CAA vector steer as trained? (issue: Yes/No reversal)

For each behaviour, on one train/test split (seed 0), CAA vectors are trained with every reading of
`steerlab.cae.readings.READINGS` (answer token, mean over the answer turn, end-of-turn token,
items recast as A/B), plus the answer reading with both matching answers weighted equally
("answer-bal"), and scored on the same test items, per layer, at relative strengths +r and -r:

* on the Yes/No test items (every vector; the A/B-trained vector too, as a direction), steered at the
  Yes/No "answer" positions (the token predicting the answer on);
* on the test items recast as A/B (the "ab" vector, CAA's own format), steered from the prefilled "(".

Relative strength: alpha * ||v_L|| = r * mean ||h_L|| at the answer token of the training pairs of
that format, the same base for every reading. All settings of one format share one engine call.
Steering positions: --positions (default "last_prompt", the token whose logits give the answer:
the template's last token for Yes/No, the prefilled "(" for A/B; with one-token answers this is
exactly what the behaviour score's "answer" positions steer, and it does not depend on where
"after_user" starts).

    python scripts/yesno_readings.py --behaviours agreeableness,openness,politically-liberal \\
        --layers 6,12,18,24 --n-train 60 --n-test 50 --out runs/yesno/135m.json

Prints one line per (behaviour, reading, test format, layer) and writes every row (effects at +r
and -r with bootstrap 95% intervals, by matching answer, answer-balanced) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--behaviours", default="agreeableness,openness,politically-liberal")
    ap.add_argument("--layers", default="6,12,18,24")
    ap.add_argument("--strength", type=float, default=0.5, help="relative strength r (scored at +r and -r)")
    ap.add_argument("--n-train", type=int, default=60)
    ap.add_argument("--n-test", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None, help="hub id, local dir or .gguf (default: the embedded model)")
    ap.add_argument("--readings", default="answer,answer-bal,turn,end,ab")
    ap.add_argument("--positions", default="last_prompt",
                    help="steering positions (default last_prompt: the token predicting the answer, which is the "
                         "prefilled '(' for A/B; with one-token answers the same as behaviour scoring's 'answer')")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-diagnose", dest="diagnose", action="store_false",
                    help="skip the own-answer diagnostic (one more unsteered pass over the training items)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    import steerlab as sl
    from steerlab.cae import behaviour as bh
    from steerlab.cae.sweeps import answer_balanced_vector, method_plan, run_plans

    t_start = time.time()
    lm = sl.load_model(args.model) if args.model else sl.load_model()
    layers = [int(x) for x in args.layers.split(",")]
    readings = args.readings.split(",")
    r = args.strength
    model_name = Path(lm.model_id).name if str(lm.model_id).endswith(".gguf") else lm.model_id  # no machine paths
    out_rows, meta = [], {"model": model_name, "layers": layers, "r": r, "n_train": args.n_train,
                          "n_test": args.n_test, "seed": args.seed, "positions": args.positions, "threads": args.threads,
                          "load_at_start": os.getloadavg(), "behaviours": {}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name in args.behaviours.split(","):
        t0 = time.time()
        data = bh.load_behaviour(name, args.n_train, args.n_test, seed=args.seed)
        if data.kind != "yesno":
            raise SystemExit(f"{name} is not a Yes/No behaviour")
        vectors, norms = {}, {}
        diag = {}
        for reading in [x for x in readings if x != "answer-bal"]:
            acts, n = bh.reading_activations(lm, data.train, layers, reading, seed=args.seed)
            vectors[reading] = acts.caa_vector(lm)
            norms[reading] = n
            if reading == "answer" and "answer-bal" in readings:
                vectors["answer-bal"] = answer_balanced_vector(lm, acts, data.train)
                norms["answer-bal"] = n
            if reading == "answer" and args.diagnose:
                diag = own_answer_diagnostic(lm, bh, acts, data.train, layers)
                print(f"{name}: train items the unsteered model answers the matching way: {diag['n_pref_match']} of "
                      f"{len(data.train)} {diag['cells']}; cosine of the answer-balanced vectors from those vs the "
                      "others, per layer: " + ", ".join(f"L{L} {c:+.2f}" for L, c in diag["cosine"].items()), flush=True)
        t_extract = time.time() - t0
        yn_norms = norms.get("answer") or norms[next(iter(norms))]
        plans = [method_plan(vectors, "yesno", L, [r, -r], relative=True, norms=yn_norms,
                             positions=args.positions) for L in layers]
        yn = run_plans(lm, data.test, plans)
        sweeps = [("yesno", L, s) for L, s in zip(layers, yn)]
        if "ab" in vectors:
            ab_test = bh.reading_items(data.test, "ab", args.seed)
            ab_plans = [method_plan({"ab": vectors["ab"]}, "ab", L, [r, -r], relative=True, norms=norms["ab"],
                                    positions=args.positions)
                        for L in layers]
            sweeps += [("ab", L, s) for L, s in zip(layers, run_plans(lm, ab_test, ab_plans))]
        for fmt, L, sw in sweeps:
            base = sw.result.unsteered()
            rows = sw.steered_rows()
            by_pref = effect_by_own_answer(sw)
            for reading in vectors if fmt == "yesno" else ["ab"]:
                pr = [x for x in rows if x["method"] == reading]
                plus = next(x for x in pr if x["relative"] > 0)
                minus = next(x for x in pr if x["relative"] < 0)
                row = {"behaviour": name, "reading": reading, "test_format": fmt, "layer": L,
                       "unsteered": base.score, "vector_norm": plus["vector_norm"],
                       "alpha_plus": plus["strength"]}
                for tag, x in (("plus", plus), ("minus", minus)):
                    row.update({f"{tag}_effect": x["effect"], f"{tag}_low": x["effect_low"], f"{tag}_high": x["effect_high"],
                                f"{tag}_balanced": x["balanced"], f"{tag}_bal_low": x["balanced_low"],
                                f"{tag}_bal_high": x["balanced_high"],
                                **{f"{tag}_{k}": v for k, v in x.items() if k.startswith("effect_if_")}})
                for tag, x in (("plus", plus), ("minus", minus)):
                    row.update({f"{tag}_{k}": v for k, v in by_pref[x["label"]].items()})
                row["verdict"] = verdict(row)
                out_rows.append(row)
                print(f"{name:22s} {reading:10s} test={fmt:5s} L{L:<3d} u={base.score:.3f} |v|={row['vector_norm']:7.2f} "
                      f"+r {row['plus_effect']:+.3f} [{row['plus_low']:+.3f}, {row['plus_high']:+.3f}]  "
                      f"-r {row['minus_effect']:+.3f} [{row['minus_low']:+.3f}, {row['minus_high']:+.3f}]  {row['verdict']}",
                      flush=True)
        meta["behaviours"][name] = {"own_answer_diagnostic": diag,"extract_s": round(t_extract, 1), "total_s": round(time.time() - t0, 1),
                                    "yes_matching_train": sum(it.matching == "Yes" for it in data.train),
                                    "yes_matching_test": sum(it.matching == "Yes" for it in data.test)}
        args.out.write_text(json.dumps({"meta": meta, "rows": out_rows}, indent=1))
    meta["wall_s"] = round(time.time() - t_start, 1)
    meta["load_at_end"] = os.getloadavg()
    args.out.write_text(json.dumps({"meta": meta, "rows": out_rows}, indent=1))
    print(f"wrote {args.out} ({meta['wall_s']:.0f} s)")


def effect_by_own_answer(sweep) -> dict[str, dict]:
    """Per steered setting (by label): the mean effect on the test items the unsteered model answers the
    matching way (p_match > 0.5) and on the others, and the mean change of its confidence |p_match - 0.5|.

    A behaviour direction raises p_match on both groups; a direction of "agreeing with one's own
    answer" moves the two groups apart (more or less confident) whatever the behaviour."""
    import numpy as np

    p = sweep.result.p_match
    base = p[sweep.result.baseline]
    pref = base > 0.5
    out = {}
    for s, setting in enumerate(sweep.result.table.settings):
        d = p[s] - base
        out[setting.label] = {
            "n_pref_match": int(pref.sum()),
            "effect_if_pref_match": float(d[pref].mean()) if pref.any() else float("nan"),
            "effect_if_pref_other": float(d[~pref].mean()) if (~pref).any() else float("nan"),
            "confidence_change": float((np.abs(p[s] - 0.5) - np.abs(base - 0.5)).mean()),
        }
    return out


def own_answer_diagnostic(lm, bh, acts, train, layers) -> dict:
    """Does the answer-token difference encode the behaviour, or agreement with the model's own answer?

    The training items are split by the unsteered model's own answer (p_match > 0.5 or not); in each
    half an answer-balanced mean difference is taken (equal weight to Yes- and No-matching items, so the
    answer token's identity cancels). A behaviour direction is the same in both halves (cosine > 0); a
    direction of "the answer just read is the one I would give" flips sign between them (cosine < 0).
    """
    import numpy as np
    import torch

    res = bh.score_behaviour(lm, train, [], n_boot=10)
    pref = res.p_match[0] > 0.5
    answers = np.array([it.matching for it in train])

    def balanced(mask, L):
        d = acts.differences(L).double()
        means = [d[torch.as_tensor(mask & (answers == a))].mean(0) for a in ("Yes", "No") if (mask & (answers == a)).any()]
        return torch.stack(means).mean(0) if len(means) == 2 else None

    cos = {}
    for L in layers:
        a, b = balanced(pref, L), balanced(~pref, L)
        cos[L] = float(torch.nn.functional.cosine_similarity(a, b, dim=0)) if a is not None and b is not None else float("nan")
    cells = {f"{'own=match' if own else 'own=other'},match={a}": int((pref == own)[answers == a].sum())
             for own in (True, False) for a in ("Yes", "No")}
    return {"n_pref_match": int(pref.sum()), "train_score": float(res.p_match[0].mean()), "cosine": cos,
            "cells": cells}


def verdict(row: dict) -> str:
    """docs/findings.md's rule (`steerlab.cae.verdicts.sign_verdict`) on one result row."""
    from steerlab.cae.verdicts import sign_verdict

    return sign_verdict(row["plus_low"], row["plus_high"], row["minus_effect"], row["minus_low"], row["minus_high"])


if __name__ == "__main__":
    main()
