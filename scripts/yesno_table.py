"""Markdown tables of `scripts/yesno_readings.py` results (docs/findings.md, Yes/No section).

    python scripts/yesno_table.py runs/yesno/135m.json runs/yesno/1.5b.json

One table per result file: a row per (behaviour, reading, test format), a column per layer with the
effect at +r and at -r (95% bootstrap intervals) and the verdict letter (T as trained, R reversed,
blank unclear; rule in yesno_readings.verdict). Then the own-answer diagnostics.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

READING_NAMES = {"answer": "answer token (today)", "answer-bal": "answer token, answer-balanced", "turn": "mean over answer turn",
                 "end": "end-of-turn token", "ab": "recast as A/B"}
MARK = {"as trained": " **T**", "reversed": " **R**", "sign-blind": " S", "unclear": ""}


def verdict(r: dict) -> str:
    """docs/findings.md's rule (`steerlab.cae.verdicts.sign_verdict`) on one result row."""
    from steerlab.cae.verdicts import sign_verdict

    return sign_verdict(r["plus_low"], r["plus_high"], r["minus_effect"], r["minus_low"], r["minus_high"])


def cell(r: dict) -> str:
    return (f"{r['plus_effect']:+.3f} [{r['plus_low']:+.3f}, {r['plus_high']:+.3f}] / "
            f"{r['minus_effect']:+.3f} [{r['minus_low']:+.3f}, {r['minus_high']:+.3f}]{MARK[verdict(r)]}")


def table(path: Path) -> str:
    data = json.loads(path.read_text())
    meta, rows = data["meta"], data["rows"]
    layers = meta["layers"]
    model = meta["model"] if not meta["model"].endswith(".gguf") else Path(meta["model"]).name  # no machine paths
    out = [f"Model {model}, {meta['n_train']} train / {meta['n_test']} test items (seed {meta['seed']}), "
           f"r = ±{meta['r']:g}, steering at {meta.get('positions', 'answer')}; cell: effect at +r [95%] / at −r [95%].", "",
           "| behaviour | reading | scored as | unsteered | " + " | ".join(f"layer {L}" for L in layers) + " |",
           "|---|---|---|---|" + "---|" * len(layers)]
    keys = []
    for r in rows:
        k = (r["behaviour"], r["reading"], r["test_format"])
        if k not in keys:
            keys.append(k)
    same = [k for k in keys if k[1] == "answer-bal" and all(
        abs(a["plus_effect"] - b["plus_effect"]) < 1e-4 and abs(a["minus_effect"] - b["minus_effect"]) < 1e-4 for a in rows for b in rows
        if (a["behaviour"], a["reading"], a["test_format"]) == k and (b["behaviour"], b["reading"], b["test_format"]) ==
        (k[0], "answer", k[2]) and a["layer"] == b["layer"])]
    for b, reading, fmt in keys:
        if (b, reading, fmt) in same:
            continue
        sel = {r["layer"]: r for r in rows if (r["behaviour"], r["reading"], r["test_format"]) == (b, reading, fmt)}
        u = next(iter(sel.values()))["unsteered"]
        out.append(f"| {b} | {READING_NAMES.get(reading, reading)} | {'Yes/No' if fmt == 'yesno' else 'A/B'} | {u:.3f} | "
                   + " | ".join(cell(sel[L]) if L in sel else "" for L in layers) + " |")
    if same:
        out += ["", "(The answer-balanced vector equals the plain one here: every training split is exactly half "
                "Yes-matching, " + ", ".join(f"{b} {v['yes_matching_train']}/{meta['n_train']}" for b, v in
                                             meta["behaviours"].items()) + ".)"]
    diag = [(b, v["own_answer_diagnostic"]) for b, v in meta["behaviours"].items()
            if v.get("own_answer_diagnostic") and not all(c != c for c in v["own_answer_diagnostic"]["cosine"].values())]
    if diag:
        out += ["", "Own-answer diagnostic (answer-token reading): training items the unsteered model answers the matching "
                "way, and the cosine between the answer-balanced vectors of those items and of the others:", ""]
        for b, d in diag:
            out.append(f"- {b}: {d['n_pref_match']} of {meta['n_train']} (train score {d['train_score']:.3f}); cosine "
                       + ", ".join(f"L{L} {c:+.2f}" for L, c in d["cosine"].items()))
    if any(r["test_format"] == "ab" for r in rows):
        out += ["", "T: as trained, R: reversed, S: sign-blind (both signs move the score the same way, both intervals "
                "excluding 0); blank: unclear."]
    t = meta.get("wall_s")
    out += ["", f"Wall time {t:.0f} s" if t else f"Wall time: {meta.get('note', 'run incomplete')}",
            f"(load average at start {meta['load_at_start'][0]:.1f}" + (f", at end {meta['load_at_end'][0]:.1f})" if 'load_at_end' in meta else ")")
            + "; per behaviour: " + ", ".join(f"{b} {v['total_s']:.0f} s" for b, v in meta["behaviours"].items()) + "."]
    return "\n".join(out)


def main(argv: list[str]) -> None:
    """`yesno_table.py FILES...` prints; `--update DOC FILES...` replaces DOC's yesno-tables block."""
    if argv[:1] == ["--update"]:
        doc, files = Path(argv[1]), argv[2:]
        text = doc.read_text()
        start, end = "<!-- yesno-tables:start -->", "<!-- yesno-tables:end -->"
        a, b = text.index(start) + len(start), text.index(end)
        doc.write_text(text[:a] + "\n" + "\n\n".join(table(Path(p)) for p in files) + "\n" + text[b:])
        print(f"updated {doc}")
        return
    print("\n\n".join(table(Path(p)) for p in argv))


if __name__ == "__main__":
    main(sys.argv[1:])
