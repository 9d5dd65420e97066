"""Read-out vs judged trait on the CAE 1.5B out-of-distribution generations.

    python scripts/readout_trait.py            # writes docs/results/cast_files/readout_trait.json

Input: the files `steerlab cae ood` saved per behaviour (docs/results/cae_1.5b_files/<run>/ood_scores.json):
one record per response (10 choice-qa + 10 open-ended prompts, each answered unsteered and steered) with the
local judge's score (p(Yes) to "does this response show the behaviour?", in [0, 1]) and the response's
*projection*: `steerlab.cae.ood.response_projections`, the mean over the response's tokens of <h_L, v_L/||v_L||>
at the vector's layer L, read unsteered on prompt + response (the read-out of steerlab.monitoring, averaged
over the answer). The judge's AUC on the behaviour's own matching/non-matching texts comes from the same run's
judge_check.json (`steerlab cae judge-check`).

For each behaviour and prompt kind: Pearson and Spearman correlation of projection with judge score over the
responses (unsteered and steered together), with a 95 % bootstrap interval that resamples *prompts* (each
prompt keeps both its responses, which are not independent). Pooled: every behaviour's values standardised
(Pearson) or turned into ranks (Spearman) within behaviour and kind first, since each behaviour's projection is
on its own vector and scale; the bootstrap resamples prompts within each behaviour.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, rankdata, spearmanr

ROOT = Path(__file__).resolve().parents[1]
CAE = ROOT / "docs/results/cae_1.5b_files"
AUC_FLOOR = 0.8  # below it the judge cannot tell the behaviour from its opposite on the behaviour's own texts


def runs(base: Path) -> list[Path]:
    """The runs with OOD scores: the nine validation-split suites and the corrigible L12 run."""
    return sorted(p.parent for p in base.glob("*/ood_scores.json"))


def load(run: Path, kind: str | None):
    recs = json.loads((run / "ood_scores.json").read_text())
    recs = [r for r in recs if r["projection"] is not None and (kind is None or r["kind"] == kind)]
    prompts = sorted({(r["kind"], r["id"]) for r in recs})
    index = {p: i for i, p in enumerate(prompts)}
    cluster = np.array([index[(r["kind"], r["id"])] for r in recs])
    return (np.array([r["projection"] for r in recs], float), np.array([r["judge"] for r in recs], float),
            cluster, np.array([r["condition"] == "steered" for r in recs]))


def corr(x, y, how):
    if len(x) < 3 or np.std(x) == 0 or np.std(y) == 0:
        return float("nan")
    return float(pearsonr(x, y)[0] if how == "pearson" else spearmanr(x, y)[0])


def zscore(a):
    return (a - a.mean()) / (a.std() or 1.0)


def ranks(a):
    return zscore(rankdata(a))


def bootstrap(groups, how, pooled, n_boot, rng):
    """95 % interval: resample prompts (clusters) within each group, recompute the (pooled) correlation."""
    stats = []
    for _ in range(n_boot):
        xs, ys = [], []
        for x, y, c in groups:
            ids = np.unique(c)
            pick = rng.choice(ids, size=len(ids), replace=True)
            rows = np.concatenate([np.flatnonzero(c == i) for i in pick])
            bx, by = x[rows], y[rows]
            if pooled:
                f = zscore if how == "pearson" else ranks
                if np.std(bx) == 0 or np.std(by) == 0:
                    continue
                bx, by = f(bx), f(by)
            xs.append(bx); ys.append(by)
        if not xs:
            continue
        x, y = np.concatenate(xs), np.concatenate(ys)
        r = corr(x, y, "pearson" if pooled else how)
        if not np.isnan(r):
            stats.append(r)
    if not stats:
        return [float("nan"), float("nan")]
    return [float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))]


def pooled_corr(groups, how):
    f = zscore if how == "pearson" else ranks
    keep = [(x, y) for x, y, _ in groups if np.std(x) > 0 and np.std(y) > 0]
    x = np.concatenate([f(x) for x, _ in keep]); y = np.concatenate([f(y) for _, y in keep])
    return corr(x, y, "pearson")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cae", type=Path, default=CAE)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/cast_files/readout_trait.json")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    rows, groups = [], {"open-ended": [], "choice-qa": [], "all": []}
    good = {k: [] for k in groups}
    for run in runs(args.cae):
        meta = json.loads((run / "ood.json").read_text()) if (run / "ood.json").exists() else {}
        jc = run / "judge_check.json"
        auc = json.loads(jc.read_text())["auc"] if jc.exists() else None
        for kind in ("open-ended", "choice-qa", "all"):
            x, y, c, steered = load(run, None if kind == "all" else kind)
            row = {"run": run.name, "behaviour": meta.get("behaviour", run.name), "layer": meta.get("layer"),
                   "strength": meta.get("strength"), "kind": kind, "n_responses": len(x),
                   "n_prompts": int(len(np.unique(c))), "judge_auc": auc,
                   "judge_can_tell": None if auc is None else auc >= AUC_FLOOR,
                   "mean_projection_unsteered": float(x[~steered].mean()),
                   "mean_projection_steered": float(x[steered].mean()),
                   "mean_judge_unsteered": float(y[~steered].mean()), "mean_judge_steered": float(y[steered].mean())}
            for how in ("pearson", "spearman"):
                row[how] = corr(x, y, how)
                row[f"{how}_ci95"] = bootstrap([(x, y, c)], how, False, args.n_boot, rng)
            rows.append(row)
            groups[kind].append((x, y, c))
            if auc is not None and auc >= AUC_FLOOR:
                good[kind].append((x, y, c))
    pooled = []
    for name, sets in (("all runs", groups), (f"judge AUC >= {AUC_FLOOR}", good)):
        for kind, g in sets.items():
            if not g:
                continue
            p = {"pool": name, "kind": kind, "n_runs": len(g), "n_responses": int(sum(len(x) for x, _, _ in g))}
            for how in ("pearson", "spearman"):
                p[how] = pooled_corr(g, how)
                p[f"{how}_ci95"] = bootstrap(g, how, True, args.n_boot, rng)
            pooled.append(p)

    def fmt(r, how):
        lo, hi = r[f"{how}_ci95"]
        return f"{r[how]:+.2f} [{lo:+.2f}, {hi:+.2f}]"

    print(f"{'run':58s} {'kind':10s} {'n':>3s} {'pearson [95%]':>22s} {'spearman [95%]':>22s}  judge AUC")
    for r in rows:
        auc = "—" if r["judge_auc"] is None else f"{r['judge_auc']:.3f}" + ("" if r["judge_can_tell"]
                                                                            else " (judge cannot tell)")
        print(f"{r['run']:58s} {r['kind']:10s} {r['n_responses']:3d} {fmt(r, 'pearson'):>22s} "
              f"{fmt(r, 'spearman'):>22s}  {auc}")
    for p in pooled:
        print(f"{'pooled: ' + p['pool']:58s} {p['kind']:10s} {p['n_responses']:3d} {fmt(p, 'pearson'):>22s} "
              f"{fmt(p, 'spearman'):>22s}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "source": str(args.cae.relative_to(ROOT)) if args.cae.is_relative_to(ROOT) else str(args.cae),
        "projection": "steerlab.cae.ood.response_projections: mean over the response tokens of <h_L, v_L/|v_L|>, "
                      "read unsteered on prompt + response, L = the run's steering layer",
        "judge": "local judge p(Yes) that the response shows the behaviour (the 1.5B model itself)",
        "bootstrap": {"n": args.n_boot, "seed": args.seed, "unit": "prompt (both its responses kept together)"},
        "auc_floor": AUC_FLOOR, "per_run": rows, "pooled": pooled}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
