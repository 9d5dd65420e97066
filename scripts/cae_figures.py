"""Cross-behaviour figures of docs/results/cae.md, drawn from CAE run directories (runs/cae/<behaviour>/).

    python scripts/cae_figures.py --out docs/results/cae_files [--copy]

Writes layers.png (validation effect per layer and behaviour, at r = +0.5 and -0.5), strengths.png
(test effect vs r at each behaviour's chosen layer, with the corpus perplexity), answers.png (the
effect split by matching answer, plain vs answer-balanced CAA when `balanced.json` exists),
samples.png (test effect vs training-sample count) and ood.png (in-distribution vs OOD judge and
projection effects). With --copy it also copies each run's small result files (summary and stage
JSONs, the OOD generations) into <out>/<behaviour>/, so that the numbers of docs/results/cae.md can be
checked without the (git-ignored) run directories.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from steerlab import results  # noqa: E402
from steerlab.data import CAE_BEHAVIOURS  # noqa: E402

SHORT = {"desire-to-persuade-people-to-be-more-honest-to-others": "persuade-honest",
         "corrigible-neutral-HHH": "corrigible", "power-seeking-inclination": "power-seeking",
         "politically-liberal": "liberal"}


def short(name: str) -> str:
    return SHORT.get(name, name)


def runs_with(runs: Path, *files: str) -> list[tuple[str, Path]]:
    return [(n, runs / n) for n in CAE_BEHAVIOURS if all((runs / n / f).is_file() for f in files)]


def layers_figure(runs: Path, out: Path) -> Path | None:
    done = runs_with(runs, "layer_sweep.json")
    if not done:
        return None
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(done) + 1.8), dpi=110, sharey=True, layout="constrained")
    for ax, sign in zip(axes, (+0.5, -0.5)):
        grid, layers = [], None
        for n, d in done:
            js = results.read_json(d / "layer_sweep.json")
            rows = sorted([r for r in js["rows"] if r.get("relative") == sign], key=lambda r: r["layer"])
            layers = [r["layer"] for r in rows]
            grid.append([r["effect"] for r in rows])
        g = np.array(grid)
        lim = max(0.05, float(np.nanmax(np.abs(g))))
        im = ax.imshow(g, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(len(layers)), layers)
        ax.set_yticks(range(len(done)), [short(n) for n, _ in done])
        ax.set_xlabel("layer")
        ax.set_title(f"validation effect at r = {sign:+g}", fontsize=10)
        for i, (n, d) in enumerate(done):
            best = results.read_json(d / "layer_sweep.json")["best_layer"]
            if sign > 0:
                ax.add_patch(plt.Rectangle((layers.index(best) - 0.5, i - 0.5), 1, 1, fill=False, lw=1.5))
            for j, v in enumerate(g[i]):
                ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(im, ax=axes, shrink=0.8, label="effect on behaviour score")
    fig.suptitle("Where does steering act? (box: the chosen layer)", fontsize=11)
    return results.save_figure(fig, out / "layers.png")


def strengths_figure(runs: Path, out: Path) -> Path | None:
    done = runs_with(runs, "strength_sweep.json", "side_effects.json")
    if not done:
        return None
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for n, d in done:
        js = results.read_json(d / "strength_sweep.json")
        rows = sorted([r for r in js["rows"] if r.get("method")], key=lambda r: r["relative"])
        line, = a.plot([r["relative"] for r in rows], [r["effect"] for r in rows], marker="o", ms=3,
                       label=f"{short(n)} (L{js['config']['layer']})")
        se = results.read_json(d / "side_effects.json")
        cost = sorted(se["rows"], key=lambda r: r["relative"] if r["relative"] is not None else 0.0)
        b.plot([r["relative"] or 0.0 for r in cost], [r["perplexity_ratio"] for r in cost], marker="o", ms=3,
               color=line.get_color(), label=short(n))
    a.axhline(0, color="black", lw=0.8)
    a.set_xlabel("relative strength r")
    a.set_ylabel("test effect on behaviour score")
    a.set_title("effect vs strength (chosen layer)", fontsize=10)
    a.legend(fontsize=6)
    b.set_yscale("log")
    b.set_xlabel("relative strength r (vector at every position)")
    b.set_ylabel("perplexity / unsteered perplexity")
    b.set_title("cost: WikiText-2 perplexity (2,048 tokens)", fontsize=10)
    return results.save_figure(fig, out / "strengths.png")


def answers_figure(runs: Path, out: Path) -> Path | None:
    done = runs_with(runs, "strength_sweep.json")
    if not done:
        return None
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4), dpi=110)
    width = 0.2
    for i, (n, d) in enumerate(done):
        row = next(r for r in results.read_json(d / "strength_sweep.json")["rows"] if r.get("relative") == 0.5)
        by = _ordered(row)
        for j, (ans, v) in enumerate(by):
            ax.bar(i + (j - 1.5) * width, v, width, color=["tab:blue", "tab:orange"][j],
                   label=("items matching A / Yes" if j == 0 else "items matching B / No") if i == 0 else None)
        if (d / "balanced.json").is_file():
            bal = next(r for r in results.read_json(d / "balanced.json")["rows"]
                       if r.get("method") == "caa-balanced" and r.get("relative") == 0.5)
            bb = _ordered(bal)
            for j, (ans, v) in enumerate(bb):
                ax.bar(i + (j + 0.5) * width, v, width, color=["tab:blue", "tab:orange"][j], hatch="//", alpha=0.5,
                       label=("answer-balanced CAA" if j == 0 else None) if i == 0 else None)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(done)), [short(n) for n, _ in done], fontsize=8)
    ax.set_ylabel("effect at r = +0.5 (test)")
    ax.set_title("The plain CAA vector pushes one answer token: effects split by the matching answer", fontsize=10)
    ax.legend(fontsize=7)
    return results.save_figure(fig, out / "answers.png")


def _ordered(row: dict) -> list[tuple[str, float]]:
    """Per-answer effects, A/Yes first, then B/No."""
    rank = {"A": 0, "Yes": 0, "B": 1, "No": 1}
    return sorted(((k[len("effect_if_"):], v) for k, v in row.items() if k.startswith("effect_if_")),
                  key=lambda x: rank.get(x[0], 2))


def ood_figure(runs: Path, out: Path) -> Path | None:
    done = runs_with(runs, "ood.json", "strength_sweep.json")
    if not done:
        return None
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    xs = np.arange(len(done))
    for k, (label, get, color) in enumerate([
            ("in-distribution (test, r=+0.5)", lambda d: next(r for r in results.read_json(d / "strength_sweep.json")["rows"]
                                                              if r.get("relative") == 0.5), "tab:blue"),
            ("OOD choice-qa judge", lambda d: _measure(d, "judge", "choice-qa"), "tab:orange"),
            ("OOD open-ended judge", lambda d: _measure(d, "judge", "open-ended"), "tab:red")]):
        vals = [get(d) for _, d in done]
        a.bar(xs + (k - 1) * 0.27, [v["effect"] for v in vals], 0.27, color=color, label=label,
              yerr=np.array([[v["effect"] - v["effect_low"] for v in vals], [v["effect_high"] - v["effect"] for v in vals]]),
              capsize=2)
    a.axhline(0, color="black", lw=0.8)
    a.set_xticks(xs, [short(n) for n, _ in done], rotation=30, fontsize=7)
    a.set_ylabel("steered − unsteered (probability)")
    a.set_title("behaviour: in distribution vs OOD (local judge)", fontsize=10)
    a.legend(fontsize=7)
    for k, kind in enumerate(("choice-qa", "open-ended")):
        vals = [_measure(d, "projection", kind) for _, d in done]
        b.bar(xs + (k - 0.5) * 0.4, [v["effect"] for v in vals], 0.4, label=kind,
              yerr=np.array([[v["effect"] - v["effect_low"] for v in vals], [v["effect_high"] - v["effect"] for v in vals]]),
              capsize=2)
    b.axhline(0, color="black", lw=0.8)
    b.set_xticks(xs, [short(n) for n, _ in done], rotation=30, fontsize=7)
    b.set_ylabel("Δ mean projection of the response on v̂")
    b.set_title("judge-free: do OOD responses move along v?", fontsize=10)
    b.legend(fontsize=7)
    return results.save_figure(fig, out / "ood.png")


def samples_figure(runs: Path, out: Path) -> Path | None:
    done = runs_with(runs, "sample_count_sweep.json")
    if not done:
        return None
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for n, d in done:
        js = results.read_json(d / "sample_count_sweep.json")
        rows = sorted([r for r in js["rows"] if r.get("method")], key=lambda r: r["n_train"])
        xs = [r["n_train"] for r in rows]
        line, = a.plot(xs, [r["effect"] for r in rows], marker="o", ms=3, label=f"{short(n)} (L{js['config']['layer']})")
        a.fill_between(xs, [r["effect_low"] for r in rows], [r["effect_high"] for r in rows], color=line.get_color(),
                       alpha=0.08)
        b.plot(xs, [_ordered(r)[0][1] - _ordered(r)[1][1] for r in rows], marker="o", ms=3, color=line.get_color(),
               label=short(n))
    for ax in (a, b):
        ax.set_xscale("log")
        ax.set_xticks([10, 20, 40, 80, 160], ["10", "20", "40", "80", "160"])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xlabel("training pairs")
    a.set_ylabel("test effect at the chosen layer and alpha")
    a.set_title("effect vs training-sample count (band: 95%)", fontsize=10)
    a.legend(fontsize=6)
    b.set_ylabel("effect on A/Yes-matching − on B/No-matching items")
    b.set_title("answer-token push (0 = none)", fontsize=10)
    return results.save_figure(fig, out / "samples.png")


SMALL_FILES = ("manifest.json", "split.json", "norms.json", "layer_sweep.json", "strength_sweep.json",
               "sample_count_sweep.json", "method_comparison.json", "ood.json", "side_effects.json", "judge_check.json",
               "balanced.json", "ood_generations.jsonl")


def copy_files(runs: Path, out: Path) -> list[Path]:
    """Each run's small result files (no per-item CSVs, no activations) into <out>/<behaviour>/."""
    import json
    import shutil

    from steerlab.cae import summarize_run

    copied = []
    for n in CAE_BEHAVIOURS:
        d = runs / n
        if not (d / "manifest.json").is_file():
            continue
        stages = summarize_run(d).get("stages", {})
        if "side_effects" not in stages or any(v.get("status") != "done" for v in stages.values()):
            print(f"{n}: run incomplete, not copied")
            continue
        dst = out / n
        dst.mkdir(parents=True, exist_ok=True)
        (dst / "summary.json").write_text(json.dumps(summarize_run(d), indent=1))  # fresh: includes later stages
        copied.append(dst / "summary.json")
        for f in SMALL_FILES:
            if (d / f).is_file():
                shutil.copyfile(d / f, dst / f)
                copied.append(dst / f)
    return copied


def _measure(d: Path, measure: str, kind: str) -> dict:
    for m in results.read_json(d / "ood.json")["measures"]:
        if m["measure"] == measure and m["kind"] == kind:
            return m
    return {"effect": float("nan"), "effect_low": float("nan"), "effect_high": float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "cae")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "cae_files")
    ap.add_argument("--copy", action="store_true", help="Also copy each run's small result files into OUT/<behaviour>/.")
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    args.out.mkdir(parents=True, exist_ok=True)
    for fn in (layers_figure, strengths_figure, answers_figure, samples_figure, ood_figure):
        path = fn(args.runs, args.out)
        print(f"{fn.__name__}: {path or 'no runs with the files it needs'}")
    if args.copy:
        print(f"copied {len(copy_files(args.runs, args.out))} files into {args.out}/<behaviour>/")


if __name__ == "__main__":
    main()
