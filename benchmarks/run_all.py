"""Run every benchmark in sequence at the issue's sizes, then print a one-screen summary.

    python benchmarks/run_all.py                 # full sizes (see benchmarks/README.md for durations)
    python benchmarks/run_all.py --quick         # tiny sizes, a smoke test of the whole pipeline (~3 min)
    python benchmarks/run_all.py --threads 2     # pin torch threads in every worker
    python benchmarks/run_all.py --only sweep generation

Each script writes benchmarks/out/<name>-<time>.json (and <name>-latest.json); this one writes
benchmarks/out/run_all-<time>.json with the three verdicts.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import extraction  # noqa: E402
import generation  # noqa: E402
import sweep  # noqa: E402
from _common import log, machine_info, machine_line, print_table, write_json  # noqa: E402

QUICK = {
    "extraction": ["--n-pairs", "8", "--batch-size", "4"],
    "sweep": ["--n-items", "8", "--layers", "0", "10", "20", "--naive-settings", "3", "--n-train", "10"],
    "generation": ["--new-tokens", "8", "--batch-size", "4", "--n-per-row", "4", "--repeats", "2", "--repeats-per-row", "1",
                   "--skip-memory"],
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--only", nargs="*", choices=["extraction", "sweep", "generation"], default=None)
    ap.add_argument("--skip-peers", action="store_true")
    args = ap.parse_args()
    chosen = args.only or ["extraction", "sweep", "generation"]
    common = ["--threads", str(args.threads)] if args.threads else []
    results, durations = {}, {}
    for name in chosen:
        argv = (QUICK[name] if args.quick else []) + common
        if name == "extraction" and args.skip_peers:
            argv.append("--skip-peers")
        log(f"=== {name} {' '.join(argv)}")
        t0 = time.perf_counter()
        results[name] = {"extraction": extraction, "sweep": sweep, "generation": generation}[name].main(argv)
        durations[name] = time.perf_counter() - t0

    rows = []
    if "extraction" in results:
        v = results["extraction"]["verdict"]
        if "speedup_vs_fastest_peer" in v:
            rows.append(["extraction: steerlab vs fastest peer", f"{v['speedup_vs_fastest_peer']:.2f}x",
                         f">= {v['speedup_target']:g}x", "met" if v["speedup_met"] else "MISSED"])
        if "max_abs_diff" in v:
            rows.append(["extraction: max |diff| vs naive mean difference", f"{v['max_abs_diff']:.1e}",
                         f"<= {v['diff_target']:g}", "met" if v["diff_met"] else "MISSED"])
    if "sweep" in results:
        r = results["sweep"]
        rows.append(["sweep: engine vs per-setting forward" + (" (extrapolated)" if r["naive_extrapolated"] else ""),
                     f"{r['speedup']:.1f}x", f">= {r['speedup_target']:g}x", "met" if r["speedup"] >= r["speedup_target"] else "MISSED"])
        rows.append(["sweep: max |diff| behaviour score / p", f"{r['max_abs_diff']['behaviour_score']:.1e} / "
                     f"{r['max_abs_diff']['prob']:.1e}", "identical", "-"])
    if "generation" in results:
        r = results["generation"]
        rows.append(["generation: steering overhead", f"{r['steering_overhead'] * 100:+.1f}%",
                     f"<= {r['overhead_target'] * 100:g}%", "met" if r["steering_overhead"] <= r["overhead_target"] else "MISSED"])
        rows.append(["generation: per-row batch vs one at a time", f"{r['per_row_speedup']:.1f}x",
                     f">= {r['per_row_target']:g}x", "met" if r["per_row_speedup"] >= r["per_row_target"] else "MISSED"])
    info = machine_info()
    notes = [machine_line(info), "durations: " + ", ".join(f"{k} {v / 60:.1f} min" for k, v in durations.items())]
    if args.quick:
        # The targets are stated for the sizes; tiny inputs leave nothing to amortise.
        notes.append("--quick: tiny sizes, a pipeline check only; the verdicts apply to the full sizes")
    print_table("steerlab benchmarks: summary", ["measure", "value", "target", "verdict"], rows, notes)
    path = write_json("run_all", {"machine": info, "quick": args.quick, "durations_s": durations,
                                  "summary": [dict(zip(["measure", "value", "target", "verdict"], r)) for r in rows]})
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
