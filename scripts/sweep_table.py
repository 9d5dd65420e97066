"""Markdown table of a CAE sweep written by `steerlab cae layers|strengths|samples|compare|score`
(its NAME.json), as the tables of docs/results/cae-1.5b.md.

    python scripts/sweep_table.py docs/results/cae_1.5b_files/corrigible-neutral-HHH-200/layer_sweep.json
    python scripts/sweep_table.py --by-layer docs/results/cae_1.5b_files/corrigible-neutral-HHH-200/layer_sweep.json

Default: one row per setting (score, effect vs unsteered, effect on items whose matching answer is A / B,
answer-balanced effect, with 95% bootstrap intervals). `--by-layer`: one row per layer, +r and −r side by side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def ci(r: dict, key: str) -> str:
    if r.get(key) is None:
        return "–"
    return f"{r[key]:+.3f} [{r[key + '_low']:+.3f}, {r[key + '_high']:+.3f}]"


def ab(r: dict) -> str:
    if r.get("effect_if_A") is None:
        return "–"
    return f"{r['effect_if_A']:+.3f} / {r['effect_if_B']:+.3f}"


def per_setting(data: dict) -> list[str]:
    u = data["unsteered"]
    out = ["| setting | score [95%] | effect [95%] | by matching answer (A / B items) | answer-balanced effect [95%] |",
           "|---|---|---|---|---|",
           f"| unsteered | {u['score']:.3f} [{u['score_low']:.3f}, {u['score_high']:.3f}] | – | – | – |"]
    for r in data["rows"]:
        if r.get("layer") is None:
            continue
        out.append(f"| {r['label']} | {r['score']:.3f} [{r['score_low']:.3f}, {r['score_high']:.3f}] | {ci(r, 'effect')} "
                   f"| {ab(r)} | {ci(r, 'balanced')} |")
    return out


def by_layer(data: dict) -> list[str]:
    rows: dict[int, dict] = {}
    for r in data["rows"]:
        if r.get("layer") is not None:
            rows.setdefault(r["layer"], {})[r["relative"] if r.get("relative") is not None else r["strength"]] = r
    signs = sorted({s for v in rows.values() for s in v}, reverse=True)
    if len(signs) != 2:
        raise SystemExit("--by-layer needs a sweep at one strength and its negation")
    p, m = signs
    out = [f"| layer | r = {p:+g} [95%] | r = {m:+g} [95%] | by matching answer, {p:+g} (A / B items) | by matching answer, "
           f"{m:+g} | answer-balanced, {p:+g} [95%] | answer-balanced, {m:+g} [95%] |", "|---|---|---|---|---|---|---|"]
    for layer in sorted(rows):
        a, b = rows[layer][p], rows[layer][m]
        out.append(f"| {layer} | {ci(a, 'effect')} | {ci(b, 'effect')} | {ab(a)} | {ab(b)} | {ci(a, 'balanced')} "
                   f"| {ci(b, 'balanced')} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path, help="A sweep's JSON file (e.g. OUT/layer_sweep.json).")
    ap.add_argument("--by-layer", action="store_true", help="One row per layer, +r and -r side by side.")
    args = ap.parse_args()
    data = json.loads(args.sweep.read_text())
    print("\n".join(by_layer(data) if args.by_layer else per_setting(data)))


if __name__ == "__main__":
    main()
