"""float32 vs bfloat16 vs `auto`: how fast CAA extraction and a layer sweep run in each dtype on this machine.

Whether bfloat16 is faster depends on the CPU: with avx512_bf16 (or AMX) it is ~3x faster than float32, on
AVX2-only CPUs ~3x slower. `--dtype auto` (steerlab.hardware.choose_dtype) picks by the CPU's flags; the goal
(issue 24) is that auto is never slower than the faster of the two. Each dtype runs in its own process, one
after another (`--threads` each), so nothing else should run meanwhile.

    python benchmarks/dtype_speed.py --model qwen2.5-coder-1.5b --pairs 8 --items 8 --threads 1

Per dtype: model load time, CAA extraction seconds per pair (MWE A/B pairs, 3 layers, read at the answer
letter) and a layer sweep (unsteered + 3 layers x ±4 on `--items` test items, the scoring engine).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import DATA_ROOT, machine_info, write_json

WORKER = r"""
import json, sys, time, torch
torch.set_num_threads(int(sys.argv[4]))
import steerlab as sl
from steerlab.data import load_mwe
from steerlab.engine import Setting, score
from steerlab.cae.prompts import scoring_items
t = time.perf_counter()
lm = sl.load_model(sys.argv[1] or None, dtype=sys.argv[2])
load = time.perf_counter() - t
n_pairs, n_items = int(sys.argv[3]), int(sys.argv[5])
items = load_mwe(sys.argv[6])
layers = [lm.n_layers // 4, lm.n_layers // 2, 3 * lm.n_layers // 4]
pairs = [it.to_pair() for it in items[:n_pairs]]
sl.train_caa(lm, pairs[:1], layers)  # warm-up
t = time.perf_counter()
vec = sl.train_caa(lm, pairs, layers)
extract = time.perf_counter() - t
test = scoring_items(lm, items[n_pairs:n_pairs + n_items])
settings = [Setting.unsteered()] + [Setting.single(vec, l, s, "after_user") for l in layers for s in (-4.0, 4.0)]
t = time.perf_counter()
score(lm, test, settings)
sweep = time.perf_counter() - t
print(json.dumps({"dtype": str(lm.dtype).removeprefix("torch."), "load_s": load, "extract_s": extract,
                  "s_per_pair": extract / len(pairs), "sweep_s": sweep, "settings": len(settings)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--items", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--behaviour", default=str(DATA_ROOT / "mwe" / "advanced-ai-risk" / "corrigible-neutral-HHH.jsonl"))
    args = ap.parse_args()
    info = machine_info()
    rows = []
    for dtype in ("float32", "bfloat16", "auto"):
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", WORKER, args.model, dtype, str(args.pairs), str(args.threads),
                              str(args.items), args.behaviour], capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"{dtype} failed:\n{out.stderr[-3000:]}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["asked"] = dtype
        row["wall_s"] = time.perf_counter() - t
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nmodel {args.model or 'embedded'}, {args.pairs} pairs, {args.items} test items, {args.threads} thread(s)")
    print(f"machine: {info['cpu']}, flags {info['cpu_flags']}, load at start {info['load_avg_at_start']}")
    print(f"{'--dtype':10s} {'runs in':10s} {'load s':>8s} {'s / pair':>9s} {'sweep s':>8s}")
    for r in rows:
        print(f"{r['asked']:10s} {r['dtype']:10s} {r['load_s']:8.1f} {r['s_per_pair']:9.2f} {r['sweep_s']:8.1f}")
    write_json("dtype_speed", {"machine": info, "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
