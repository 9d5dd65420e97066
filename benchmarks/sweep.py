"""Benchmark (b): behaviour scores over a layer x strength grid, steerlab's engine vs a naive loop.

Scored: the first N questions of mwe/advanced-ai-risk/corrigible-neutral-HHH.jsonl, each formatted
with the chat template and the assistant turn opened with "(", candidates "A" and "B"; behaviour
score = p(matching) / (p(A) + p(B)), averaged over questions (CAA's metric). Settings: the
unsteered model plus one single-layer setting per (layer, strength), every layer x 5 strengths,
steering at the CAA positions ("after_user": from the assistant turn on) by default. The vector is
a CAA vector from the next 100 questions (not timed).

steerlab: one `steerlab.engine.score(lm, items, grid_settings(...))` call. Naive: per setting, a
full forward of every prompt with `steerlab.steer` hooks (batched, last-position logits only). The
naive loop is slow, so by default it runs a measured subset of settings spread over the grid and
its full time is extrapolated from the mean time per setting (said so in the output); numbers are
compared on that subset. `--naive-all` runs it in full.

    python benchmarks/sweep.py                          # 100 questions x 30 layers x 5 strengths
    python benchmarks/sweep.py --n-items 8 --layers 0 10 20 --naive-settings 3
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, log, machine_info, machine_line, out_dir, print_table, run_worker, write_json  # noqa: E402

TARGET_SPEEDUP = 20.0
DEFAULT_STRENGTHS = [-4.0, -2.0, -1.0, 1.0, 2.0]


def spread(n_total: int, k: int) -> list[int]:
    """k indices spread evenly over 1..n_total-1 (index 0 is the unsteered setting, always included)."""
    if k >= n_total - 1:
        return list(range(n_total))
    picks = np.linspace(1, n_total - 1, k).round().astype(int).tolist()
    return [0] + sorted(set(picks))


def behaviour(logprobs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """[settings] mean over items of p(target) / (p(A) + p(B))."""
    lp = logprobs - np.logaddexp(logprobs[..., 0:1], logprobs[..., 1:2])
    p = np.exp(lp)
    return np.take_along_axis(p, targets[None, :, None].repeat(p.shape[0], 0), 2)[..., 0].mean(1)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-items", type=int, default=100)
    ap.add_argument("--layers", type=int, nargs="*", default=None, help="default: every layer")
    ap.add_argument("--strengths", type=float, nargs="*", default=DEFAULT_STRENGTHS)
    ap.add_argument("--positions", default="after_user", choices=["after_user", "all", "last_prompt"])
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--naive-settings", type=int, default=10,
                    help="steered settings the naive loop runs (plus unsteered); the rest is extrapolated")
    ap.add_argument("--naive-all", action="store_true", help="run the naive loop on every setting (slow)")
    ap.add_argument("--n-train", type=int, default=100, help="pairs for the (untimed) CAA vector")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)

    info = machine_info()
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)} if args.threads else None
    work = out_dir("sweep")
    worker = HERE / "_worker.py"
    spec = {"n_items": args.n_items, "item_offset": 0, "n_train": args.n_train, "train_offset": args.n_items,
            "batch_size": args.batch_size, "strengths": args.strengths, "positions": args.positions}
    (work / "prep-spec.json").write_text(json.dumps(spec))
    prep = run_worker(sys.executable, worker, ["sweep", "prep", "--spec", work / "prep-spec.json", "--save",
                                               work / "vector.safetensors"], label="vector (untimed)", env=env)
    n_layers = prep["n_layers"]
    layers = list(range(n_layers)) if args.layers is None else args.layers
    n_settings = 1 + len(layers) * len(args.strengths)
    subset = list(range(n_settings)) if args.naive_all else spread(n_settings, args.naive_settings)
    spec.update(vector=str(work / "vector.safetensors"), layers=layers, naive_subset=subset)
    (work / "spec.json").write_text(json.dumps(spec))

    eng = run_worker(sys.executable, worker, ["sweep", "engine", "--spec", work / "spec.json", "--save",
                                              work / "engine.npy"], label="steerlab engine.score", env=env)
    nav = run_worker(sys.executable, worker, ["sweep", "naive", "--spec", work / "spec.json", "--save",
                                              work / "naive.npy"], label=f"naive loop ({len(subset)} settings)", env=env)

    from steerlab.data import load_mwe
    from _common import MWE_FILE

    qs = load_mwe(MWE_FILE)[: args.n_items]
    targets = np.array([0 if q.matching == "A" else 1 for q in qs])
    e = np.load(eng["result"])
    nv = np.load(nav["result"])
    e_sub = e[subset]
    lp_diff = float(np.abs(e_sub - nv).max())
    pe = np.exp(e_sub - np.logaddexp(e_sub[..., :1], e_sub[..., 1:]))
    pn = np.exp(nv - np.logaddexp(nv[..., :1], nv[..., 1:]))
    prob_diff = float(np.abs(pe - pn).max())
    be, bn = behaviour(e_sub, targets), behaviour(nv, targets)
    score_diff = float(np.abs(be - bn).max())

    extrapolated = len(subset) < n_settings
    naive_per_setting = float(np.mean(nav["per_setting_s"]))
    naive_full = nav["time_s"] if not extrapolated else naive_per_setting * n_settings
    speedup = naive_full / eng["time_s"]
    beh_all = behaviour(e, targets)
    best = int(np.argmax(beh_all[1:]) + 1)
    worst = int(np.argmin(beh_all[1:]) + 1)

    def label(k: int) -> str:
        if k == 0:
            return "unsteered"
        li, si = divmod(k - 1, len(args.strengths))
        return f"layer {layers[li]} x {args.strengths[si]:g}"

    rows = [
        ["steerlab engine.score", eng["time_s"], n_settings, eng["time_s"] / n_settings, 1.0, eng["peak_rss_mb"],
         eng.get("rss_after_load_mb")],
        [f"naive loop ({'extrapolated from ' + str(len(subset)) if extrapolated else 'all'} settings)", naive_full,
         n_settings, naive_per_setting, speedup, nav["peak_rss_mb"], nav.get("rss_after_load_mb")],
    ]
    notes = [
        machine_line(info) + f" | worker torch threads {sorted({eng['torch_threads'], nav['torch_threads']})}",
        f"{args.n_items} questions x {len(layers)} layers x {len(args.strengths)} strengths {args.strengths} + unsteered = "
        f"{n_settings} settings, positions={args.positions}, batch size {args.batch_size}; engine reuse path: "
        f"{eng['engine_info'].get('reuse')}",
        (f"naive loop MEASURED on {len(subset)} settings (unsteered + {len(subset) - 1} spread over the grid) in "
         f"{nav['time_s']:.1f} s; its full time is EXTRAPOLATED as {naive_per_setting:.2f} s/setting x {n_settings}"
         if extrapolated else f"naive loop ran every setting in {nav['time_s']:.1f} s"),
        f"max |diff| on the measured settings: log-prob {lp_diff:.2e}, p(A)/p(B) {prob_diff:.2e}, behaviour score "
        f"{score_diff:.2e}",
        f"speedup {speedup:.1f}x (target >= {TARGET_SPEEDUP:g}x: {'met' if speedup >= TARGET_SPEEDUP else 'MISSED'})",
        f"behaviour score: unsteered {beh_all[0]:.3f}, highest steered {beh_all[best]:.3f} ({label(best)}), lowest steered "
        f"{beh_all[worst]:.3f} ({label(worst)})",
    ]
    print_table("Behaviour-score sweep", ["implementation", "time s", "settings", "s / setting", "speedup",
                                          "peak RSS MiB", "RSS after load MiB"], rows, notes)
    payload = {
        "machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "vector_prep": prep,
        "engine": eng, "naive": nav, "n_settings": n_settings, "naive_extrapolated": extrapolated,
        "naive_full_time_s": naive_full, "speedup": speedup, "speedup_target": TARGET_SPEEDUP,
        "max_abs_diff": {"logprob": lp_diff, "prob": prob_diff, "behaviour_score": score_diff},
        "behaviour_scores": {label(k): float(b) for k, b in enumerate(beh_all)}, "notes": notes,
    }
    path = write_json("sweep", payload)
    log(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
