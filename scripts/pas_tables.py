"""Markdown tables for docs/results/pas.md from the output directories of `steerlab pas`, `pas-sft`
and `pas-transfer`.

    python scripts/pas_tables.py main  runs/pas/bbq-nationality runs/pas/truthfulqa-mc1 ...
    python scripts/pas_tables.py bias  runs/pas/*
    python scripts/pas_tables.py icl   runs/pas-icl/* --plain runs/pas
    python scripts/pas_tables.py sft   runs/pas-sft/*/results.json
    python scripts/pas_tables.py transfer runs/pas-transfer/*.json
    python scripts/pas_tables.py groups runs/pas/*
    python scripts/pas_tables.py strengths runs/pas/bbq-nationality
    python scripts/pas_tables.py wall runs/pas/*
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def _pp(x, digits=1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:+.{digits}f}"


def _acc(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _ci(s: dict) -> str:
    if not s or s.get("n", 0) == 0:
        return "n/a"
    if s.get("ci_low") is None:
        return _pp(s["mean"])
    return f"{_pp(s['mean'])} [{_pp(s['ci_low'])}, {_pp(s['ci_high'])}]"


def _p(s: dict) -> str:
    p = s.get("p_greater")
    return "n/a" if p is None else f"{p:.3f}"


def _load(d: str) -> dict:
    p = Path(d)
    return json.loads((p / "results.json" if p.is_dir() else p).read_text())


def main_table(dirs: list[str]) -> str:
    rows = [("| task | method | seeds | n (train/val/test) | unsteered | steered | Delta pp [95% CI] | p (Delta>0) | "
            "validation gain of the chosen setting, pp | chosen (layer@strength) | s/seed |"),
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in dirs:
        r = _load(d)
        sizes = r["runs"][0]["sizes"]
        for m, s in r["summary"].items():
            chosen = ", ".join(f"{c[0]}@{c[1]:+g}" for c in s["chosen"])
            rows.append(f"| {r['config']['dataset']} | {m} | {s['n_seeds']} | {sizes['train']}/{sizes['val']}/"
                        f"{sizes['test']} | {_acc(s['test_unsteered'])} | {_acc(s['test_steered'])} | "
                        f"{_ci(s['delta'])} | {_p(s['delta'])} | {_pp(s['val_steered'] - s['val_unsteered'])} | {chosen} | "
                        f"{s['wall_s_per_seed']:.0f} |")
    return "\n".join(rows)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def _swaps(lbs: list[dict], share: float = 0.9) -> int:
    """Seeds where the unsteered and the steered model each give one letter on >= `share` of the test items,
    and the letters differ: the vector moved the answer letter wholesale."""
    n = 0
    for lb in lbs:
        u, st = lb["pred_unsteered"], lb["pred_steered"]
        tu, ts = max(u, key=u.get), max(st, key=st.get)
        n += u[tu] >= share and st[ts] >= share and tu != ts
    return n


def bias_table(dirs: list[str]) -> str:
    rows = [("| task | method | Delta pp | letter-balanced Delta pp [95% CI] | unsteered | majority letter of train, on test "
            "| best single letter on test | top predicted letter share, unsteered -> steered | prediction shift (TV) | "
             "seeds where steering only swaps the letter |"),
            "|---|---|---|---|---|---|---|---|---|---|"]
    for d in dirs:
        r = _load(d)
        for m, s in r["summary"].items():
            lbs = [run["methods"][m]["letter_bias"] for run in r["runs"] if run["methods"][m].get("letter_bias")]
            top_u = _mean([max(lb["pred_unsteered"].values()) for lb in lbs])
            top_s = _mean([max(lb["pred_steered"].values()) for lb in lbs])
            rows.append(f"| {r['config']['dataset']} | {m} | {_pp(s['delta']['mean'])} | {_ci(s['balanced_delta'])} | "
                        f"{_acc(s['test_unsteered'])} | {_acc(s['majority_train'])} | {_acc(s['majority_test'])} | "
                        f"{top_u:.2f} -> {top_s:.2f} | {s['pred_shift']:.2f} | {_swaps(lbs)}/{len(lbs)} |")
    return "\n".join(rows)


def icl_table(dirs: list[str]) -> str:
    rows = [("| task | method | k | seeds | plain (no ICL) | ICL alone | ICL + PAS | PAS on top of ICL, pp [95% CI] | "
            "p | s/seed |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for d in dirs:
        r = _load(d)
        for m, s in r["summary"].items():
            rows.append(f"| {r['config']['dataset']} | {m} | {r['config']['icl_k']} | {s['n_seeds']} | "
                        f"{_acc(s.get('test_plain'))} | {_acc(s['test_unsteered'])} | {_acc(s['test_steered'])} | "
                        f"{_ci(s['delta'])} | {_p(s['delta'])} | {s['wall_s_per_seed']:.0f} |")
    return "\n".join(rows)


def sft_table(files: list[str]) -> str:
    rows = [("| task | method | seeds | base | base + PAS | SFT | SFT + PAS | PAS on SFT, pp [95% CI] | SFT alone vs base, pp |"
            " fine-tune s/seed |"), "|---|---|---|---|---|---|---|---|---|---|"]
    for f in files:
        r = _load(f)
        s = r["seeds"]

        def mean(k, s=s):
            return sum(x[k] for x in s) / len(s)

        ft = sum(x["sft_info"]["wall_s"] for x in s) / len(s)
        rows.append(f"| {r['dataset']} | {r['method']} | {len(s)} | {_acc(mean('base'))} | {_acc(mean('base_pas'))} | "
                    f"{_acc(mean('sft'))} | {_acc(mean('sft_pas'))} | {_ci(r['summary']['pas_on_sft'])} | "
                    f"{_ci(r['summary']['sft_alone'])} | {ft:.0f} |")
    return "\n".join(rows)


def _top(dist: dict) -> str:
    k = max(dist, key=dist.get)
    return f"{k} {dist[k]:.2f}"


def transfer_table(files: list[str]) -> str:
    rows = [("| vector | evaluated on | n | layer@strength | unsteered | steered | Delta pp | balanced Delta pp | "
             "top predicted letter, unsteered -> steered |"), "|---|---|---|---|---|---|---|---|---|"]
    for f in files:
        r = _load(f)
        for x in r["runs"]:
            rows.append(f"| {Path(r['vector']).parent.name}/{Path(r['vector']).name} | {x['dataset']} | {x['n_items']} | "
                        f"{x['layer']}@{x['strength']:+g} | {_acc(x['unsteered'])} | {_acc(x['steered'])} | "
                        f"{_pp(x['delta'])} | {_pp(x['letter_bias']['balanced_delta'])} | "
                        f"{_top(x['letter_bias']['pred_unsteered'])} -> {_top(x['letter_bias']['pred_steered'])} |")
    return "\n".join(rows)


_GROUPS = {"bbq-": "bias", "ethics-": "morality", "truthfulqa": "alignment", "sycophancy": "alignment",
           "openbookqa": "intelligence", "arc": "intelligence", "lsat": "intelligence"}


def _group(name: str) -> str:
    return next((g for k, g in _GROUPS.items() if name.startswith(k)), "other")


def groups_table(dirs: list[str]) -> str:
    """Per group (bias / alignment / intelligence) and method: the per-seed Delta of every task pooled
    (mean, 95% t-interval over task x seed, one-sided p), the same for the letter-balanced Delta, and the
    correlation across those seeds between Delta and 1 - (share of test items whose gold letter is the
    unsteered model's top letter): near +1 means Delta is what moving answers off that letter buys."""
    try:
        from steerlab.pas.stats import summarize
    except ImportError:  # run from a checkout without the package installed
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from steerlab.pas.stats import summarize

    pooled: dict[tuple[str, str], dict[str, list]] = {}
    for d in dirs:
        r = _load(d)
        g = _group(r["config"]["dataset"])
        for run in r["runs"]:
            for m, x in run["methods"].items():
                lb = x.get("letter_bias")
                if x.get("skipped") or not lb:
                    continue
                top = max(lb["pred_unsteered"], key=lb["pred_unsteered"].get)
                p = pooled.setdefault((g, m), {"delta": [], "bal": [], "off": [], "tasks": set()})
                p["delta"].append(x["delta"])
                p["bal"].append(lb["balanced_delta"])
                p["off"].append(1 - lb["gold_distribution"].get(top, 0.0))
                p["tasks"].add(r["config"]["dataset"])
    rows = [("| group | method | tasks | task-seeds | Delta pp [95% CI] | p (Delta>0) | letter-balanced Delta pp [95% CI] | "
            "p | corr(Delta, gold off the top letter) |"), "|---|---|---|---|---|---|---|---|---|"]
    order = {k: i for i, k in enumerate(["bias", "morality", "alignment", "intelligence", "other", "pasf", "ipas-a",
                                                 "ipas-wo"])}
    for (g, m), p in sorted(pooled.items(), key=lambda kv: (order.get(kv[0][0], 9), order.get(kv[0][1], 9))):
        sd, sb = summarize(p["delta"]), summarize(p["bal"])
        rows.append(f"| {g} | {m} | {len(p['tasks'])} | {sd.n} | {_ci(sd.to_dict())} | {_p(sd.to_dict())} | "
                    f"{_ci(sb.to_dict())} | {_p(sb.to_dict())} | {_corr(p['delta'], p['off'])} |")
    return "\n".join(rows)


def _corr(a, b) -> str:
    n = len(a)
    if n < 3:
        return "n/a"
    ma, mb = sum(a) / n, sum(b) / n
    va, vb = sum((x - ma) ** 2 for x in a), sum((y - mb) ** 2 for y in b)
    if va == 0 or vb == 0:
        return "n/a"
    return f"{sum((x - ma) * (y - mb) for x, y in zip(a, b)) / math.sqrt(va * vb):+.2f}"


def strengths_table(dirs: list[str]) -> str:
    """From grid.csv: per method and |strength|, the best validation gain over layers and both signs, and
    the mean absolute change of validation accuracy (pp), pooled over seeds."""
    import csv

    acc: dict[tuple[str, float], list[float]] = {}
    for d in dirs:
        with open(Path(d) / "grid.csv") as f:
            for row in csv.DictReader(f):
                key = (row["method"], abs(float(row["strength"])))
                acc.setdefault(key, []).append(float(row["val_accuracy"]) - float(row["val_unsteered"]))
    mags = sorted({k[1] for k in acc})
    methods = [m for m in ("pasf", "ipas-a", "ipas-wo") if any(k[0] == m for k in acc)]
    rows = ["| \\|strength\\| | " + " | ".join(f"{m}: best / mean \\|change\\| pp" for m in methods) + " |",
            "|---|" + "---|" * len(methods)]
    for g in mags:
        cells = []
        for m in methods:
            v = acc.get((m, g), [])
            cells.append(f"{_pp(max(v), 0)} / {100 * sum(abs(x) for x in v) / len(v):.1f}" if v else "n/a")
        rows.append(f"| {g:g} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def wall_table(dirs: list[str]) -> str:
    """Wall time per run from results.json: whole run, per seed, and per seed by phase."""
    rows = [("| run | items (train/val/test) | seeds | wall s (run) | s/seed | per seed: train answers / vectors / "
            "validation grid / test, s |"), "|---|---|---|---|---|---|"]
    for d in dirs:
        r = _load(d)
        runs = r["runs"]
        sz = runs[0]["sizes"]
        ph = " / ".join(f"{sum(x['phases'][k] for x in runs) / len(runs):.0f}"
                        for k in ("train_answers", "vectors", "validation_grid", "test"))
        rows.append(f"| {Path(d).parent.name}/{Path(d).name} | {sz['train']}/{sz['val']}/{sz['test']} | {len(runs)} | "
                    f"{r['wall_s']:.0f} | {r['wall_s'] / len(runs):.0f} | {ph} |")
    return "\n".join(rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["main", "bias", "icl", "sft", "transfer", "groups", "strengths", "wall"])
    ap.add_argument("paths", nargs="+")
    a = ap.parse_args()
    print({"main": main_table, "bias": bias_table, "icl": icl_table, "sft": sft_table,
           "transfer": transfer_table, "groups": groups_table,
           "strengths": strengths_table, "wall": wall_table}[a.kind](a.paths))
