"""Benchmark (c): generation throughput, steered vs unsteered, and per-row vectors vs one request at a time.

1. Steering overhead: 16 prompts in one batch, exactly 64 new tokens each (greedy; EOS cannot end
   a row early), unsteered vs steered with a CAA vector at one layer (positions "after_user", the
   CAA convention). Timed in ONE process, alternating unsteered/steered for `--repeats` rounds
   (overhead = median over rounds of steered time / unsteered time), so machine-load drift hits
   both alike; one plain and one steered run are repeated in processes of their own for their
   peak memory.
2. Per-request vectors: 32 prompts, each with its own vector (32 distinct random directions at one
   layer, scaled to the CAA vector's norm): one batch of 32 with per-row `Steering` vs 32 requests
   one at a time. Both produce 64 tokens per prompt; we also report how many of the 32 outputs
   are token-identical between the two (greedy; batching can flip near-ties in float32).

Generation follows `steerlab.generate`'s code path (encode, `steerlab.steer` with the batch's
per-row terms, `model.generate`), only adding `min_new_tokens` so every run does the same work.

    python benchmarks/generation.py
    python benchmarks/generation.py --new-tokens 8 --batch-size 4 --n-per-row 4 --repeats 1 --repeats-per-row 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import HERE, log, machine_info, machine_line, out_dir, print_table, run_worker, write_json  # noqa: E402

TARGET_OVERHEAD = 0.03
TARGET_PER_ROW = 5.0


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--n-per-row", type=int, default=32, help="prompts (each with its own vector) for part 2")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds of unsteered/steered (median reported)")
    ap.add_argument("--repeats-per-row", type=int, default=3, help="timed rounds of the per-row comparison")
    ap.add_argument("--layer", type=int, default=None, help="steered layer (default: n_layers // 3)")
    ap.add_argument("--strength", type=float, default=2.0)
    ap.add_argument("--positions", default="after_user", choices=["after_user", "all", "last_prompt"])
    ap.add_argument("--skip-memory", action="store_true", help="skip the separate plain/steered memory processes")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)

    info = machine_info()
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)} if args.threads else None
    work = out_dir("generation")
    worker = HERE / "_worker.py"

    prep_spec = {"n_train": 100, "train_offset": 100, "batch_size": 16}
    (work / "prep-spec.json").write_text(json.dumps(prep_spec))
    prep = run_worker(sys.executable, worker, ["sweep", "prep", "--spec", work / "prep-spec.json", "--save",
                                               work / "vector.safetensors"], label="CAA vector (untimed)", env=env)
    layer = args.layer if args.layer is not None else prep["n_layers"] // 3
    spec = {"vector": str(work / "vector.safetensors"), "layer": layer, "strength": args.strength,
            "positions": args.positions, "n_prompts": max(args.batch_size, args.n_per_row), "prompt_offset": 200,
            "new_tokens": args.new_tokens, "repeats": args.repeats, "batch_size": args.batch_size,
            "n_per_row": args.n_per_row}
    spec_path = work / "spec.json"
    spec_path.write_text(json.dumps(spec))
    spec_pr = work / "spec-per-row.json"
    spec_pr.write_text(json.dumps({**spec, "repeats": args.repeats_per_row}))
    spec_mem = work / "spec-memory.json"
    spec_mem.write_text(json.dumps({**spec, "repeats": 1}))

    def run(mode: str, label: str) -> dict:
        path = {"per_row": spec_pr, "one_by_one": spec_pr, "plain": spec_mem, "steered": spec_mem}.get(mode, spec_path)
        return run_worker(sys.executable, worker, ["generate", mode, "--spec", path, "--save",
                                                   work / f"{mode}.json"], label=label, env=env)

    ab = run("ab", f"unsteered/steered interleaved x{args.repeats}")
    mem = {} if args.skip_memory else {m: run(m, f"{m} alone (memory)") for m in ("plain", "steered")}
    per_row = run("per_row", f"{args.n_per_row} per-row vectors, one batch")
    serial = run("one_by_one", f"{args.n_per_row} requests one at a time")

    tps_plain, tps_steer = ab["tokens_per_s"]["plain"], ab["tokens_per_s"]["steered"]
    import numpy as np

    # extra time per token when steered: median over rounds of (steered time / unsteered time of the same round)
    overhead = float(np.median(ab["paired_ratios"])) - 1.0
    overhead_medians = tps_plain / tps_steer - 1.0
    speedup = per_row["tokens_per_s"] / serial["tokens_per_s"]
    # The same two measures in CPU time, which other jobs on a shared machine disturb far less than wall time.
    overhead_cpu = float(np.median(ab["paired_cpu_ratios"])) - 1.0
    speedup_cpu = float(np.median(serial["cpu_times"])) / float(np.median(per_row["cpu_times"]))
    same = sum(a == b for a, b in zip(json.loads(Path(per_row["outputs"]).read_text()),
                                      json.loads(Path(serial["outputs"]).read_text())))
    T = args.new_tokens
    rows = [
        [f"unsteered, batch {args.batch_size}", tps_plain, sorted(ab["times"]["plain"]), "-",
         mem.get("plain", {}).get("peak_rss_mb")],
        [f"steered (layer {layer}, {args.positions}), batch {args.batch_size}", tps_steer, sorted(ab["times"]["steered"]),
         f"{overhead * 100:+.1f}% time", mem.get("steered", {}).get("peak_rss_mb")],
        [f"{args.n_per_row} per-row vectors, one batch", per_row["tokens_per_s"], sorted(per_row["times"]),
         f"{speedup:.1f}x", per_row["peak_rss_mb"]],
        [f"{args.n_per_row} requests one at a time", serial["tokens_per_s"], sorted(serial["times"]), "1x",
         serial["peak_rss_mb"]],
    ]
    rows = [[r[0], r[1], ", ".join(f"{t:.1f}" for t in r[2]), r[3], r[4]] for r in rows]
    notes = [
        machine_line(info) + f" | worker torch threads {sorted({ab['torch_threads'], per_row['torch_threads']})}",
        f"{T} new tokens per prompt (forced), greedy; tokens/s = prompts x {T} / median time; "
        f"unsteered/steered timed interleaved in one process (peak RSS of that process {ab['peak_rss_mb']:.0f} MiB)",
        f"steering overhead {overhead * 100:+.1f}% time per token (median of the {len(ab['paired_ratios'])} per-round "
        f"ratios {', '.join(f'{(r - 1) * 100:+.1f}%' for r in ab['paired_ratios'])}; ratio of medians "
        f"{overhead_medians * 100:+.1f}%) (target <= {TARGET_OVERHEAD * 100:g}%: "
        f"{'met' if overhead <= TARGET_OVERHEAD else 'MISSED'}); steered rows whose text changed: "
        f"{ab.get('steered_changed_rows')}/{args.batch_size}",
        f"in CPU time: steering overhead {overhead_cpu * 100:+.1f}% (per-round "
        f"{', '.join(f'{(r - 1) * 100:+.1f}%' for r in ab['paired_cpu_ratios'])}); per-row batch vs one at a time "
        f"{speedup_cpu:.1f}x",
        f"per-row batch vs one at a time: {speedup:.1f}x (target >= {TARGET_PER_ROW:g}x: "
        f"{'met' if speedup >= TARGET_PER_ROW else 'MISSED'}); identical outputs {same}/{args.n_per_row}",
    ]
    print_table("Generation throughput", ["run", "tokens/s", "times s", "vs baseline", "peak RSS MiB"], rows, notes)
    payload = {"machine": info, "args": {k: str(v) for k, v in vars(args).items()}, "spec": spec, "interleaved": ab,
               "memory_runs": mem, "per_row": per_row, "one_by_one": serial, "steering_overhead": overhead, "steering_overhead_ratio_of_medians": overhead_medians,
               "steering_overhead_cpu": overhead_cpu, "per_row_speedup_cpu": speedup_cpu,
               "overhead_target": TARGET_OVERHEAD, "per_row_speedup": speedup, "per_row_target": TARGET_PER_ROW,
               "per_row_identical_outputs": same, "notes": notes}
    path = write_json("generation", payload)
    log(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
