"""Markdown tables for docs/results/pas.md from the output directories of `steerlab pas`, `pas-sft`
and `pas-transfer`.

    python benchmarks/pas_tables.py main  runs/pas/bbq-nationality runs/pas/truthfulqa-mc1 ...
    python benchmarks/pas_tables.py bias  runs/pas/*
    python benchmarks/pas_tables.py icl   runs/pas-icl/* --plain runs/pas
    python benchmarks/pas_tables.py sft   runs/pas-sft/*/results.json
    python benchmarks/pas_tables.py transfer runs/pas-transfer/*.json
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
    rows = ["| task | method | seeds | n (train/val/test) | unsteered | steered | Delta pp [95% CI] | p (Delta>0) | "
            "chosen (layer@strength) | s/seed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for d in dirs:
        r = _load(d)
        sizes = r["runs"][0]["sizes"]
        for m, s in r["summary"].items():
            chosen = ", ".join(f"{c[0]}@{c[1]:+g}" for c in s["chosen"])
            rows.append(f"| {r['config']['dataset']} | {m} | {s['n_seeds']} | {sizes['train']}/{sizes['val']}/"
                        f"{sizes['test']} | {_acc(s['test_unsteered'])} | {_acc(s['test_steered'])} | "
                        f"{_ci(s['delta'])} | {_p(s['delta'])} | {chosen} | {s['wall_s_per_seed']:.0f} |")
    return "\n".join(rows)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else float("nan")


def bias_table(dirs: list[str]) -> str:
    rows = ["| task | method | Delta pp | letter-balanced Delta pp [95% CI] | unsteered | majority letter of train, on test "
            "| best single letter on test | top predicted letter share, unsteered -> steered | prediction shift (TV) |",
            "|---|---|---|---|---|---|---|---|---|"]
    for d in dirs:
        r = _load(d)
        for m, s in r["summary"].items():
            lbs = [run["methods"][m]["letter_bias"] for run in r["runs"] if run["methods"][m].get("letter_bias")]
            top_u = _mean([max(lb["pred_unsteered"].values()) for lb in lbs])
            top_s = _mean([max(lb["pred_steered"].values()) for lb in lbs])
            rows.append(f"| {r['config']['dataset']} | {m} | {_pp(s['delta']['mean'])} | {_ci(s['balanced_delta'])} | "
                        f"{_acc(s['test_unsteered'])} | {_acc(s['majority_train'])} | {_acc(s['majority_test'])} | "
                        f"{top_u:.2f} -> {top_s:.2f} | {s['pred_shift']:.2f} |")
    return "\n".join(rows)


def icl_table(dirs: list[str]) -> str:
    rows = ["| task | method | k | seeds | plain (no ICL) | ICL alone | ICL + PAS | PAS on top of ICL, pp [95% CI] | "
            "p | s/seed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for d in dirs:
        r = _load(d)
        for m, s in r["summary"].items():
            rows.append(f"| {r['config']['dataset']} | {m} | {r['config']['icl_k']} | {s['n_seeds']} | "
                        f"{_acc(s.get('test_plain'))} | {_acc(s['test_unsteered'])} | {_acc(s['test_steered'])} | "
                        f"{_ci(s['delta'])} | {_p(s['delta'])} | {s['wall_s_per_seed']:.0f} |")
    return "\n".join(rows)


def sft_table(files: list[str]) -> str:
    rows = ["| task | method | seeds | base | base + PAS | SFT | SFT + PAS | PAS on SFT, pp [95% CI] | SFT alone vs base, pp |"
            " fine-tune s/seed |", "|---|---|---|---|---|---|---|---|---|---|"]
    for f in files:
        r = _load(f)
        s = r["seeds"]
        mean = lambda k: sum(x[k] for x in s) / len(s)  # noqa: E731
        ft = sum(x["sft_info"]["wall_s"] for x in s) / len(s)
        rows.append(f"| {r['dataset']} | {r['method']} | {len(s)} | {_acc(mean('base'))} | {_acc(mean('base_pas'))} | "
                    f"{_acc(mean('sft'))} | {_acc(mean('sft_pas'))} | {_ci(r['summary']['pas_on_sft'])} | "
                    f"{_ci(r['summary']['sft_alone'])} | {ft:.0f} |")
    return "\n".join(rows)


def transfer_table(files: list[str]) -> str:
    rows = ["| vector | evaluated on | n | layer@strength | unsteered | steered | Delta pp | balanced Delta pp |",
            "|---|---|---|---|---|---|---|---|"]
    for f in files:
        r = _load(f)
        for x in r["runs"]:
            rows.append(f"| {Path(r['vector']).parent.name}/{Path(r['vector']).name} | {x['dataset']} | {x['n_items']} | "
                        f"{x['layer']}@{x['strength']:+g} | {_acc(x['unsteered'])} | {_acc(x['steered'])} | "
                        f"{_pp(x['delta'])} | {_pp(x['letter_bias']['balanced_delta'])} |")
    return "\n".join(rows)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("kind", choices=["main", "bias", "icl", "sft", "transfer"])
    ap.add_argument("paths", nargs="+")
    a = ap.parse_args()
    print({"main": main_table, "bias": bias_table, "icl": icl_table, "sft": sft_table,
           "transfer": transfer_table}[a.kind](a.paths))
