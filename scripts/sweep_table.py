"""Markdown table of a CAE sweep written by `steerlab cae layers|strengths|samples|compare|score`
(its NAME.json), as the tables of docs/results/cae-1.5b.md.

    python scripts/sweep_table.py docs/results/cae_1.5b_files/corrigible-neutral-HHH-200/layer_sweep.json
    python scripts/sweep_table.py --by-layer docs/results/cae_1.5b_files/corrigible-neutral-HHH-200/layer_sweep.json

    python scripts/sweep_table.py --summary docs/results/cae_1.5b_files/*/layer_sweep.json

Default: one row per setting (score, effect vs unsteered, effect on items whose matching answer is A / B,
answer-balanced effect, with 95% bootstrap intervals). `--by-layer`: one row per layer, +r and −r side by side.
`--summary`: one row per layer sweep (named by its directory): the layer with the largest effect at +r, its
effects at ±r, and each layer's sign verdict (`steerlab.cae.verdicts.sign_verdict`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # steerlab from this checkout when not installed


def ci(r: dict, key: str) -> str:
    if r.get(key) is None:
        return "–"
    return f"{r[key]:+.3f} [{r[key + '_low']:+.3f}, {r[key + '_high']:+.3f}]"


def ab(r: dict) -> str:
    if r.get("effect_if_A") is None:
        return "–"
    return f"{r['effect_if_A']:+.3f} / {r['effect_if_B']:+.3f}"


def load_sweep(path: Path) -> dict:
    """A sweep's JSON, or one line saying why not (missing file, not JSON, not a sweep)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: cannot read {path}: {e}") from None
    if not isinstance(data, dict) or "rows" not in data or "unsteered" not in data:
        raise SystemExit(f"error: {path} is not a sweep written by `steerlab cae layers|strengths|samples|compare|score`")
    return data


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


def _pivot(data: dict) -> tuple[dict[int, dict], float, float]:
    rows: dict[int, dict] = {}
    for r in data["rows"]:
        if r.get("layer") is not None:
            rows.setdefault(r["layer"], {})[r["relative"] if r.get("relative") is not None else r["strength"]] = r
    signs = sorted({s for v in rows.values() for s in v}, reverse=True)
    if len(signs) != 2:
        raise SystemExit("--by-layer and --summary need a sweep at one strength and its negation")
    return rows, signs[0], signs[1]


def by_layer(data: dict) -> list[str]:
    rows, p, m = _pivot(data)
    out = [f"| layer | r = {p:+g} [95%] | r = {m:+g} [95%] | by matching answer, {p:+g} (A / B items) | by matching answer, "
           f"{m:+g} | answer-balanced, {p:+g} [95%] | answer-balanced, {m:+g} [95%] |", "|---|---|---|---|---|---|---|"]
    for layer in sorted(rows):
        a, b = rows[layer][p], rows[layer][m]
        out.append(f"| {layer} | {ci(a, 'effect')} | {ci(b, 'effect')} | {ab(a)} | {ab(b)} | {ci(a, 'balanced')} "
                   f"| {ci(b, 'balanced')} |")
    return out


def summary(paths: list[Path]) -> list[str]:
    from steerlab.cae.verdicts import sign_verdict

    out = ["| sweep | unsteered [95%] | layer with the largest effect at +r | its effect at +r [95%] | at −r [95%] "
           "| answer-balanced ± | layers as trained / reversed / sign-blind |", "|---|---|---|---|---|---|---|"]
    for path in paths:
        data = load_sweep(path)
        rows, p, m = _pivot(data)
        verdicts: dict[str, list[int]] = {"as trained": [], "reversed": [], "sign-blind": []}
        for layer, r in sorted(rows.items()):
            v = sign_verdict(r[p]["effect_low"], r[p]["effect_high"], r[m]["effect"], r[m]["effect_low"], r[m]["effect_high"])
            verdicts.setdefault(v, []).append(layer)
        best = max(rows, key=lambda l: rows[l][p]["effect"])
        a, b, u = rows[best][p], rows[best][m], data["unsteered"]
        out.append(f"| {path.parent.name} | {u['score']:.3f} [{u['score_low']:.3f}, {u['score_high']:.3f}] | {best} "
                   f"| {ci(a, 'effect')} | {ci(b, 'effect')} | {a['balanced']:+.3f} / {b['balanced']:+.3f} "
                   f"| {verdicts['as trained'] or '–'} / {verdicts['reversed'] or '–'} / {verdicts['sign-blind'] or '–'} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path, nargs="+", help="A sweep's JSON file (e.g. OUT/layer_sweep.json); several with --summary.")
    how = ap.add_mutually_exclusive_group()
    how.add_argument("--by-layer", action="store_true", help="One row per layer, +r and -r side by side.")
    how.add_argument("--summary", action="store_true", help="One row per layer sweep.")
    args = ap.parse_args()
    if args.summary:
        print("\n".join(summary(args.sweep)))
        return
    if len(args.sweep) > 1:
        raise SystemExit("one sweep at a time, or --summary")
    data = load_sweep(args.sweep[0])
    print("\n".join(by_layer(data) if args.by_layer else per_setting(data)))


if __name__ == "__main__":
    main()
