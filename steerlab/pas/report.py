"""Write a PAS result to disk: results.json, runs.csv, grid.csv, and PNG plots.

* `results.json`: the configuration, the per-variant summary (Delta with its 95% t-interval and
  one-sided p-value, letter-balanced Delta, baselines), and every seed's runs.
* `runs.csv`: one row per (seed, variant): chosen layer and strength, accuracies, Delta,
  balanced Delta, letter baselines, wall time.
* `grid.csv`: one row per (seed, variant, layer, strength): validation accuracy.
* `grid_<method>.png`: validation accuracy over the grid (mean over seeds) minus unsteered;
  `delta.png`: Delta and balanced Delta per variant with 95% intervals;
  `letters_<method>.png`: predicted-letter distribution unsteered vs steered (pooled over seeds)
  next to the gold-letter distribution.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from ..errors import OutputExistsError
from ..results import json_safe

RESULT_FILES = ("results.json", "runs.csv", "grid.csv")


def run_rows(result) -> list[dict]:
    """One row per (seed, variant)."""
    rows = []
    for r in result.runs:
        for m, mr in r.methods.items():
            lb = mr.letter_bias
            rows.append({
                "dataset": result.config.dataset, "method": m, "seed": r.seed, "skipped": mr.skipped,
                "n_train": r.sizes["train"], "n_val": r.sizes["val"], "n_test": r.sizes["test"],
                "train_accuracy": r.train_accuracy, "layer": mr.layer, "strength": mr.strength,
                "val_unsteered": r.val_unsteered, "val_steered": mr.val_accuracy,
                "test_unsteered": r.test_unsteered, "test_steered": mr.test_accuracy, "delta": mr.delta,
                "balanced_delta": lb.balanced_delta if lb else None,
                "majority_train": lb.majority_train if lb else None, "majority_test": lb.majority_test if lb else None,
                "pred_shift": lb.pred_shift if lb else None,
                "top_letter_share_steered": lb.top_letter_share_steered if lb else None,
                "test_plain": r.test_plain, "n_positive": mr.n_positive, "n_negative": mr.n_negative,
                "vector_norm": mr.vector_norm, "wall_s": r.wall_s,
            })
    return rows


def grid_rows(result) -> list[dict]:
    """One row per (seed, variant, layer, strength) with the validation accuracy."""
    rows = []
    for r in result.runs:
        for m, mr in r.methods.items():
            for a, layer in enumerate(result.config.layers):
                for b, s in enumerate(result.config.strengths):
                    if mr.grid_accuracy:
                        rows.append({"seed": r.seed, "method": m, "layer": layer, "strength": s,
                                     "val_accuracy": mr.grid_accuracy[a][b], "val_unsteered": r.val_unsteered})
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        if not rows:
            f.write("")
            return
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if v is None else v) for k, v in row.items()})


def save_result(result, out_dir, *, plots: bool = True, force: bool = False) -> dict[str, str]:
    """Write the result files into `out_dir` (created); refuses to overwrite them unless `force`."""
    out = Path(out_dir)
    if not force:
        clash = [f for f in RESULT_FILES if (out / f).exists()]
        if clash:
            raise OutputExistsError(f"{out / clash[0]} already exists; pass force=True (--force) to overwrite it")
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    (out / "results.json").write_text(json.dumps(json_safe(result.to_dict()), indent=1))
    written["results"] = str(out / "results.json")
    _write_csv(out / "runs.csv", run_rows(result))
    written["runs"] = str(out / "runs.csv")
    _write_csv(out / "grid.csv", grid_rows(result))
    written["grid"] = str(out / "grid.csv")
    if plots:
        written.update(save_plots(result, out))
    return written


def save_plots(result, out: Path) -> dict[str, str]:
    """The PNG plots of the module docstring."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .stats import SeedSummary

    written = {}
    cfg = result.config
    for m in cfg.methods:
        ran = [r for r in result.runs if m in r.methods and r.methods[m].grid_accuracy]
        if not ran:
            continue
        nL, nS = len(cfg.layers), len(cfg.strengths)
        grid = [[sum(r.methods[m].grid_accuracy[a][b] - r.val_unsteered for r in ran) / len(ran) for b in range(nS)]
                for a in range(nL)]
        lim = max(1e-6, max(abs(v) for row in grid for v in row))
        fig, ax = plt.subplots(figsize=(max(6, 0.45 * nS + 2), max(3, 0.35 * nL + 1.5)))
        im = ax.imshow([[100 * v for v in row] for row in grid], cmap="RdBu", vmin=-100 * lim, vmax=100 * lim,
                       aspect="auto")
        ax.set_xticks(range(nS), [f"{s:g}" for s in cfg.strengths], rotation=90, fontsize=7)
        ax.set_yticks(range(nL), [str(l) for l in cfg.layers], fontsize=7)
        ax.set_xlabel("strength")
        ax.set_ylabel("layer")
        ax.set_title(f"{cfg.dataset} {m}: validation accuracy - unsteered (pp), mean of {len(ran)} seed(s)", fontsize=8)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        p = out / f"grid_{m}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written[f"grid_{m}"] = str(p)

        pooled = {"gold": {}, "unsteered": {}, "steered": {}}
        for r in ran:
            lb = r.methods[m].letter_bias
            n = r.sizes["test"]
            for key, dist in (("gold", lb.gold_distribution), ("unsteered", lb.pred_unsteered),
                              ("steered", lb.pred_steered)):
                for k, v in dist.items():
                    pooled[key][k] = pooled[key].get(k, 0.0) + v * n
        letters = sorted(set().union(*pooled.values()))
        fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(letters) + 2), 3))
        width = 0.27
        for j, key in enumerate(("gold", "unsteered", "steered")):
            total = sum(pooled[key].values()) or 1.0
            ax.bar([i + (j - 1) * width for i in range(len(letters))],
                   [pooled[key].get(k, 0.0) / total for k in letters], width, label=key)
        ax.set_xticks(range(len(letters)), letters)
        ax.set_ylabel("share of test items")
        ax.set_title(f"{cfg.dataset} {m}: gold vs predicted letters", fontsize=8)
        ax.legend(fontsize=7)
        fig.tight_layout()
        p = out / f"letters_{m}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        written[f"letters_{m}"] = str(p)

    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(cfg.methods) + 1), 3))
    for j, kind in enumerate(("delta", "balanced_delta")):
        xs, ys, lo, hi = [], [], [], []
        for i, m in enumerate(cfg.methods):
            s = SeedSummary(**result.summary(m)[kind])
            if s.n == 0:
                continue
            xs.append(i + (j - 0.5) * 0.3)
            ys.append(100 * s.mean)
            lo.append(0 if math.isnan(s.ci_low) else 100 * (s.mean - s.ci_low))
            hi.append(0 if math.isnan(s.ci_high) else 100 * (s.ci_high - s.mean))
        ax.bar(xs, ys, 0.3, yerr=[lo, hi], capsize=3, label="Delta" if kind == "delta" else "letter-balanced Delta")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(range(len(cfg.methods)), list(cfg.methods))
    ax.set_ylabel("test accuracy gain (pp)")
    ax.set_title(f"{cfg.dataset}: Delta over {len(result.runs)} seed(s), 95% t-interval", fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = out / "delta.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    written["delta"] = str(p)
    return written
