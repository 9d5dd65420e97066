"""Compare two runs of the same sweep in different dtypes (e.g. float32 vs bfloat16) on the same items.

    python benchmarks/dtype_compare.py runs/bf16/float32/layer_sweep runs/bf16/bfloat16/layer_sweep

Reads NAME.json (per-setting effects with bootstrap intervals) and NAME.csv (per-item p_match) of
each run and prints, per setting: both effects with their intervals, whether each effect lies in the
other's interval, and the per-item |Δ p_match| (mean, max). `--markdown` prints a table.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path


def _load(stem: Path):
    data = json.loads(stem.with_suffix(".json").read_text())
    rows = data.get("settings") or data.get("rows") or data.get("summary")
    per_item = defaultdict(dict)
    with stem.with_suffix(".csv").open() as f:
        for r in csv.DictReader(f):
            per_item[r["label"]][r["item"]] = float(r["p_match"])
    return data, rows, per_item


def _key(r: dict) -> str:
    return r.get("label") or f"L{r.get('layer')} r={r.get('relative')}"


def compare(a: Path, b: Path) -> list[dict]:
    _, rows_a, items_a = _load(a)
    _, rows_b, items_b = _load(b)
    by_b = {_key(r): r for r in rows_b}
    out = []
    for ra in rows_a:
        k = _key(ra)
        rb = by_b.get(k)
        if rb is None:
            continue
        ia, ib = items_a.get(k, {}), items_b.get(k, {})
        common = sorted(set(ia) & set(ib))
        diffs = [abs(ia[i] - ib[i]) for i in common]
        row = {"setting": k, "layer": ra.get("layer"), "relative": ra.get("relative"),
               "score_a": ra.get("score"), "score_b": rb.get("score"),
               "n_items": len(common),
               "mean_abs_dp": sum(diffs) / len(diffs) if diffs else float("nan"),
               "max_abs_dp": max(diffs) if diffs else float("nan")}
        if "effect" in ra and ra.get("effect") is not None and rb.get("effect") is not None:
            row.update(effect_a=ra["effect"], low_a=ra["effect_low"], high_a=ra["effect_high"],
                       effect_b=rb["effect"], low_b=rb["effect_low"], high_b=rb["effect_high"])
            row["agree"] = (rb["effect_low"] <= ra["effect"] <= rb["effect_high"]
                            and ra["effect_low"] <= rb["effect"] <= ra["effect_high"])
        out.append(row)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("a", type=Path, help="first run's NAME (path without .json/.csv)")
    ap.add_argument("b", type=Path, help="second run's NAME")
    ap.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    rows = compare(args.a, args.b)
    if args.markdown:
        print("| setting | score A | score B | effect A [95%] | effect B [95%] | each inside the other's CI | mean / max per-item abs diff of p(match) |")
        print("|---|---|---|---|---|---|---|")
    for r in rows:
        eff = ""
        if "effect_a" in r:
            eff = (f"{r['effect_a']:+.3f} [{r['low_a']:+.3f}, {r['high_a']:+.3f}] | "
                   f"{r['effect_b']:+.3f} [{r['low_b']:+.3f}, {r['high_b']:+.3f}] | {'yes' if r['agree'] else 'NO'}")
        else:
            eff = "— | — | —"
        if args.markdown:
            print(f"| {r['setting']} | {r['score_a']:.3f} | {r['score_b']:.3f} | {eff} | "
                  f"{r['mean_abs_dp']:.4f} / {r['max_abs_dp']:.4f} |")
        else:
            print(f"{r['setting']:30s} score {r['score_a']:.3f} vs {r['score_b']:.3f}  {eff}  "
                  f"|dp| mean {r['mean_abs_dp']:.4f} max {r['max_abs_dp']:.4f} (n={r['n_items']})")


if __name__ == "__main__":
    main()
