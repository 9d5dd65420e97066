"""The generalisation table (issue 26) from finished `steerlab cae generalise` runs.

    python scripts/generalise_table.py docs/results/generalisation_files/1.5b/*/ \
        --figure docs/results/generalisation_files/1.5b/open_ended.png --json docs/results/generalisation_files/1.5b/table.json

Prints one markdown row per cell (`steerlab.cae.generalise_report.markdown_table`), the open-ended effect per
prompt length where the runs used several (`length_table`), how many behaviours each method brings over the
issue's bar, and the rerun command and machine of every cell. With `--overview`, one table of behaviours ×
methods instead, each entry a cell's seeds pooled (`overview_table`), for run directories of several kinds at once:

    python scripts/generalise_table.py docs/results/generalisation_files/{1.5b,1.5b-bipo,1.5b-seeds}/*/ --overview \
        --figure docs/results/generalisation_files/overview_open_ended.png

With `--carry-over`, what predicts the open-ended effect across the judged cells instead: per method, the
in-distribution effect and the unsteered read-out against it, and per behaviour where the unsteered answers sit
on the judge's scale (`steerlab.cae.carry_over`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from steerlab.cae.carry_over import carry_over_table, room_table
from steerlab.cae.generalise_report import (collect, goal_counts, length_table, markdown_table, overview_table,
                                            plot, to_json)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="run directories (one per behaviour)")
    ap.add_argument("--figure", type=Path, help="write the open-ended effect figure here (PNG)")
    ap.add_argument("--json", type=Path, help="write every cell's report here")
    ap.add_argument("--model", help="the --model of the rerun commands (default: the vectors' model id)")
    ap.add_argument("--baseline", nargs="*", type=Path, default=[],
                    help="run directories whose CAA cells the goal's in-distribution proviso is held against (not "
                         "printed), for runs that have no CAA cell of their own")
    ap.add_argument("--overview", action="store_true",
                    help="print one behaviours x methods table (each entry a cell's seeds pooled) and nothing else")
    ap.add_argument("--carry-over", action="store_true",
                    help="print what predicts the open-ended effect across the judged cells (per method), where the "
                         "unsteered answers sit on the judge's scale (per behaviour), and nothing else")
    args = ap.parse_args(argv)
    reports = collect(args.runs, args.model)
    if not reports:
        print("no finished cells (no summary.json) in the given directories", file=sys.stderr)
        return 1
    baseline = [c for c in collect(args.baseline, args.model) if c.method == "caa"]
    if args.overview:
        print(overview_table(reports, baseline))
        if args.figure:  # every seed of every method, one interval each
            print(f"\nwrote {plot(reports, args.figure)}")
        return 0
    if args.carry_over:
        print(carry_over_table(reports))
        print()
        print(room_table(reports))
        return 0
    print(markdown_table(reports, baseline))
    print()
    if any(len(c.by_length.get("+r", {})) > 1 for c in reports):
        print("Open-ended effect per prompt length:\n")
        print(length_table(reports))
        print()
    for method, (met, seen) in goal_counts(reports, baseline).items():
        print(f"- {method}: meets the goal for {met} of {seen} behaviours measured")
    print()
    for c in reports:
        m = c.machine
        print(f"- {c.behaviour} {c.method} seed {c.seed}: `{c.command}` "
              f"({m.get('cpu_model', '?')}, {'avx512_bf16' if 'avx512_bf16' in m.get('cpu_flags', []) else 'no bf16'}, "
              f"{m.get('dtype', '?')}, {sum(c.seconds.values()) / 60:.0f} min)")
    if args.figure:
        print(f"\nwrote {plot(reports, args.figure)}")
    if args.json:
        args.json.write_text(json.dumps(to_json(reports), indent=1, default=float))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
