"""Tables of docs/results/cae.md from CAE run directories (runs/cae/<behaviour>/summary.json).

    python scripts/cae_table.py                      # print the tables
    python scripts/cae_table.py --update docs/results/cae.md   # replace the generated section
    python scripts/cae_table.py --runs docs/results/cae_1.5b_files --suffix=-val \
        --command "docs/results/cae_1.5b_files/queue.sh {name}-judge {name}-val"   # the 1.5B runs

Every number comes from a run's files; nothing is typed by hand. The generated section of the
document lies between the markers `<!-- cae-tables:start -->` and `<!-- cae-tables:end -->`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from steerlab.cae import summarize_run  # noqa: E402
from steerlab.cae.text_measures import distinct_ngrams  # noqa: E402
from steerlab.data import CAE_BEHAVIOURS  # noqa: E402

START, END = "<!-- cae-tables:start -->", "<!-- cae-tables:end -->"
# A behaviour's run directory is RUNS/<behaviour><SUFFIX>; its rerun command is COMMAND with {name} filled in.
SUFFIX = ""
COMMAND = "steerlab cae run --behaviour {name} --out runs/cae/{name} --threads 1"


def rdir(runs: Path, name: str) -> Path:
    return runs / (name + SUFFIX)


def ci(d: dict | None, key: str = "effect", digits: int = 3) -> str:
    if not d or d.get(key) is None:
        return "–"
    return f"{d[key]:+.{digits}f} [{d[key + '_low']:+.{digits}f}, {d[key + '_high']:+.{digits}f}]"


def balanced_effect(run_dir: Path, relative: float = 0.5, csv_name: str = "strength_sweep.csv",
                    n_train: int | None = None) -> dict | None:
    """The answer-balanced effect on the test items (at `relative`, or of the vector from `n_train` pairs
    in sample_count_sweep.csv), with its stratified bootstrap interval, recomputed from the per-item CSV
    and the behaviour file (each item's matching answer)."""
    import numpy as np
    import pandas as pd

    from steerlab.cae.stats import balanced_bootstrap_ci
    from steerlab.data import load_mwe, resolve_behaviour

    csv = run_dir / csv_name
    man = run_dir / "manifest.json"
    if not csv.is_file() or not man.is_file():
        return None
    cfg = json.loads(man.read_text())["config"]
    frame = pd.read_csv(csv)
    matching = {it.index: it.matching for it in load_mwe(resolve_behaviour(cfg["behaviour"], cfg.get("data_root")))}
    base = frame[frame["label"] == "unsteered"].set_index("item")["p_match"]
    if n_train is not None:
        sel = frame[frame["n_train"] == n_train].set_index("item")["p_match"]
    else:
        sel = frame[(frame["relative"] - relative).abs() < 1e-9].set_index("item")["p_match"]
    d = (sel - base.loc[sel.index]).to_numpy()
    groups = np.array([matching[i] for i in sel.index])
    point, lo, hi = balanced_bootstrap_ci(d, groups, n_boot=cfg.get("n_boot", 2000), seed=cfg.get("seed", 0))
    return {"effect": point, "effect_low": lo, "effect_high": hi}


def flatten_cell(f: dict | None) -> str:
    if not f:
        return "–"
    if f.get("n") is None:
        return "none (no effect at n=160)" if "no effect" in f.get("reason", "") else "–"
    return str(f["n"])


def run_command(name: str) -> str:
    return f"`{COMMAND.format(name=name)}`"


def tables(runs: Path) -> str:
    rows, details, missing = [], [], []
    for name in CAE_BEHAVIOURS:
        d = rdir(runs, name)
        if not (d / "manifest.json").is_file():
            missing.append(name)
            continue
        s = summarize_run(d)
        stages = s.get("stages", {})
        if any(v.get("status") != "done" for v in stages.values()) or "side_effects" not in stages:
            missing.append(name + " (incomplete: " + ", ".join(k for k, v in stages.items() if v.get("status") == "done") + ")")
            continue
        e = s.get("effect_at_best") or {}
        by = e.get("by_answer") or {}
        u = s.get("unsteered") or {}
        cost = s.get("cost_at_chosen") or {}
        ood = s.get("ood") or {}
        methods = s.get("methods") or {}
        rows.append("| " + " | ".join([
            name, {"ab": "A/B", "yesno": "Yes/No"}.get(s.get("kind"), "?"),
            f"{u.get('score', float('nan')):.3f} [{u.get('score_low', float('nan')):.3f}, {u.get('score_high', float('nan')):.3f}]",
            str(s.get("best_layer", "–")), ci(e), ci(s.get("effect_at_minus")),
            " / ".join(f"{k} {v:+.3f}" for k, v in sorted(by.items(), key=lambda kv: kv[0] in ("B", "No"))) or "–",
            ci(balanced_effect(d)),
            flatten_cell(s.get("flatten")),
            ci(methods.get("actadd@+0.5")),
            ci(ood.get("judge/all")), ci(ood.get("projection/all"), digits=1),
            f"{cost.get('perplexity', float('nan')):.1f} (x{cost.get('perplexity_ratio', float('nan')):.2f}), KL {cost.get('kl', float('nan')):.2f}",
            f"{s.get('total_seconds', 0) / 60:.0f} min",
        ]) + " |")
        stage_t = ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in stages.items() if v.get("seconds") is not None)
        sc = s.get("sample_counts") or {}
        bal_n = {n: balanced_effect(d, csv_name="sample_count_sweep.csv", n_train=int(n)) for n in sc}
        counts = ("Sample-count effects (plain; answer-balanced): "
                  + ", ".join(f"n={n}: {v['effect']:+.3f}; {bal_n[n]['effect']:+.3f}" for n, v in sc.items())
                  + f"; flatten: {(s.get('flatten') or {}).get('reason', '–')}. ") if sc else ""
        details.append(f"- **{name}**: {run_command(name)} — stages: {stage_t}. {counts}Unsteered perplexity "
                       f"{s.get('unsteered_perplexity', float('nan')):.1f}.")
    head = ("| behaviour | format | unsteered score (test) [95%] | best layer (val) | effect at best layer, r=+0.5 [95%] "
            "| effect at r=−0.5 [95%] | effect by matching answer (r=+0.5) | answer-balanced effect (r=+0.5) [95%] "
            "| gains flatten at n | one-pair ActAdd effect (r=+0.5) | OOD judge effect [95%] | OOD projection effect [95%] "
            "| perplexity at r=+0.5 (ratio), KL | stage time (sum) |\n|" + "---|" * 14)
    out = [head, *rows, "", *details, "", layer_profile(runs), "", strength_profile(runs), "", answer_profile(runs), "",
           ood_profile(runs), "", balanced_vectors(runs), "", judge_checks(runs)]
    if missing:
        out += ["", "Missing or incomplete: " + "; ".join(missing) + ". Each reruns (and resumes) with the command above "
                "with its behaviour name."]
    return "\n".join(out) + "\n"


def _done(runs: Path) -> list[tuple[str, dict]]:
    return [(n, summarize_run(rdir(runs, n))) for n in CAE_BEHAVIOURS if (rdir(runs, n) / "manifest.json").is_file()]


def layer_profile(runs: Path) -> str:
    """Validation effect at +r and -r per layer, for every behaviour (where does steering act?)."""
    done = [(n, s) for n, s in _done(runs) if s.get("layer_effects")]
    if not done:
        return ""
    keys = list(done[0][1]["layer_effects"])
    layers = sorted({int(k.split("@")[0]) for k in keys})
    lines = ["Validation-set effect per layer at r=+0.5 / r=−0.5 (the layer sweep; * = the chosen layer):", "",
             "| behaviour | " + " | ".join(f"L{l}" for l in layers) + " |", "|---|" + "---|" * len(layers)]
    for n, s in done:
        le = s["layer_effects"]
        cells = []
        for l in layers:
            star = "*" if s.get("best_layer") == l else ""
            cells.append(f"{star}{le.get(f'{l}@+0.5', float('nan')):+.3f} / {le.get(f'{l}@-0.5', float('nan')):+.3f}")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def strength_profile(runs: Path) -> str:
    """Test effect and corpus perplexity per relative strength at the chosen layer."""
    done = [(n, s) for n, s in _done(runs) if s.get("strength_effects")]
    if not done:
        return ""
    rs = sorted({x["relative"] for _, s in done for x in s["strength_effects"]})
    lines = ["Test-set effect [95%] and corpus perplexity per relative strength r at the chosen layer:", "",
             "| behaviour | " + " | ".join(f"r={r:+g}" for r in rs) + " |", "|---|" + "---|" * len(rs)]
    for n, s in done:
        eff = {x["relative"]: x for x in s["strength_effects"]}
        ppl = {x["relative"]: x["perplexity"] for x in s.get("side_effects", []) if x.get("relative") is not None}
        cells = [f"{eff[r]['effect']:+.3f} [{eff[r]['effect_low']:+.3f}, {eff[r]['effect_high']:+.3f}]; ppl "
                 f"{ppl.get(r, float('nan')):.0f}" if r in eff else "–" for r in rs]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def answer_profile(runs: Path) -> str:
    """Effect per relative strength split by the items' matching answer: does the vector move the answer
    (both groups, opposite signs) while the behaviour score stays put?"""
    done = [(n, rdir(runs, n)) for n, _ in _done(runs) if (rdir(runs, n) / "strength_sweep.json").is_file()]
    if not done:
        return ""
    rows_by = {n: sorted([r for r in json.loads((d / "strength_sweep.json").read_text())["rows"] if r.get("method")],
                         key=lambda r: r["relative"]) for n, d in done}
    rs = sorted({r["relative"] for rows in rows_by.values() for r in rows})
    lines = ["Test-set effect at the chosen layer split by the item's matching answer — items whose matching answer is "
             "A/Yes / items whose matching answer is B/No (a content-blind push towards one answer token shows as "
             "opposite signs; the behaviour effect is roughly their item-weighted mean):", "",
             "| behaviour | " + " | ".join(f"r={r:+g}" for r in rs) + " |", "|---|" + "---|" * len(rs)]
    order = {"A": 0, "Yes": 0, "B": 1, "No": 1}
    for n, rows in rows_by.items():
        cells = []
        for r in rows:
            by = sorted(((k[len("effect_if_"):], v) for k, v in r.items() if k.startswith("effect_if_")),
                        key=lambda kv: order.get(kv[0], 2))
            cells.append(" / ".join(f"{v:+.2f}" for _, v in by))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def repetition(run_dir: Path) -> dict | None:
    """Mean distinct-3-gram ratio of the OOD responses and how many fall below 0.6, per condition."""
    path = run_dir / "ood_generations.jsonl"
    if not path.is_file():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = {}
    for cond in ("unsteered", "steered"):
        d = [distinct_ngrams(r["response"], 3) for r in rows if r["condition"] == cond]
        out[cond] = (sum(d) / max(1, len(d)), sum(x < 0.6 for x in d), len(d))
    return out


def ood_profile(runs: Path) -> str:
    """OOD measures by prompt kind at the chosen layer and strength."""
    done = [(n, s["ood"]) for n, s in _done(runs) if s.get("ood")]
    if not done:
        return ""
    keys = ["judge/choice-qa", "judge/open-ended", "projection/choice-qa", "projection/open-ended"]
    lines = ["OOD (10 short prompts per kind, greedy, 48 new tokens, chosen layer, r=+0.5): steered − unsteered local-judge "
             "score (p(Yes) to the rubric question) and mean projection of the response's activations on the unit "
             "vector, [95%] paired bootstrap:", "",
             "| behaviour | unsteered judge (all) | " + " | ".join(keys)
             + " | distinct 3-grams unsteered → steered (responses below 0.6) |", "|---|---|" + "---|" * (len(keys) + 1)]
    for n, o in done:
        cells = [ci(o.get(k), digits=1 if k.startswith("projection") else 3) for k in keys]
        rep = repetition(rdir(runs, n))
        rep_cell = "–" if rep is None else (f"{rep['unsteered'][0]:.2f} ({rep['unsteered'][1]}/{rep['unsteered'][2]}) → "
                                            f"{rep['steered'][0]:.2f} ({rep['steered'][1]}/{rep['steered'][2]})")
        lines.append(f"| {n} | {(o.get('judge/all') or {}).get('unsteered', float('nan')):.3f} | " + " | ".join(cells)
                     + f" | {rep_cell} |")
    return "\n".join(lines)


def balanced_vectors(runs: Path) -> str:
    """Plain vs answer-balanced CAA vector (scripts/cae_balanced.py's balanced.json), where it was run."""
    done = [(n, json.loads((rdir(runs, n) / "balanced.json").read_text())) for n in CAE_BEHAVIOURS
            if (rdir(runs, n) / "balanced.json").is_file()]
    if not done:
        return ""
    rs = sorted({r["relative"] for _, b in done for r in b["rows"] if r.get("method")})
    lines = ["Plain vs answer-balanced CAA vector on the test items at the chosen layer "
             "(`python scripts/cae_balanced.py runs/cae/<behaviour>`; the balanced vector weights the "
             "training pairs' two matching-answer groups equally), effect [95%]:", "",
             "| behaviour | layer | cos(plain, balanced) | vector | " + " | ".join(f"r={r:+g}" for r in rs) + " |",
             "|---|---|---|---|" + "---|" * len(rs)]
    for n, b in done:
        for m in ("caa", "caa-balanced"):
            eff = {r["relative"]: r for r in b["rows"] if r.get("method") == m}
            lines.append(f"| {n} | {b['layer']} | {b['cosine_plain_balanced']:.3f} | {m} | "
                         + " | ".join(ci(eff.get(r)) for r in rs) + " |")
    return "\n".join(lines)


def judge_checks(runs: Path) -> str:
    done = [(n, s["judge_check"]) for n, s in _done(runs) if s.get("judge_check")]
    if not done:
        return ""
    lines = ["Local judge check (`steerlab cae judge-check`): AUC separating behaviour-matching from non-matching "
             "texts of the behaviour's own items (0.5 = chance):", "", "| behaviour | AUC | mean score matching | "
             "mean score not matching | texts |", "|---|---|---|---|---|"]
    for n, j in done:
        lines.append(f"| {n} | {j['auc']:.3f} | {j['mean_matching']:.3f} | {j['mean_not_matching']:.3f} | "
                     f"{j['n_matching']} + {j['n_not_matching']} |")
    return "\n".join(lines)


def main() -> None:
    global SUFFIX, COMMAND
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=ROOT / "runs" / "cae")
    ap.add_argument("--suffix", default="", help="Run directories are RUNS/<behaviour><SUFFIX>.")
    ap.add_argument("--command", default=COMMAND, help="Rerun command shown per behaviour ({name}: the behaviour).")
    ap.add_argument("--update", type=Path, help="Replace the generated section of this Markdown file.")
    args = ap.parse_args()
    try:
        args.command.format(name="x")
    except (KeyError, IndexError, ValueError) as e:
        raise SystemExit(f"error: --command may use only {{name}} as a placeholder, got {args.command!r} ({e})") from None
    SUFFIX, COMMAND = args.suffix, args.command
    text = tables(args.runs)
    if args.update is None:
        print(text)
        return
    doc = args.update.read_text()
    if START not in doc or END not in doc:
        raise SystemExit(f"{args.update} has no {START} ... {END} section")
    a, rest = doc.split(START, 1)
    _, b = rest.split(END, 1)
    args.update.write_text(a + START + "\n" + text + END + b)
    print(f"updated {args.update}")


if __name__ == "__main__":
    main()
