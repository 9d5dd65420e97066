"""How much of a steered generation is spent in steerlab's hooks (benchmark (c), load-independent).

Wall-clock overhead of steering (steered vs unsteered tokens/s) is a difference of two noisy times;
on a shared machine its per-round spread (±10 %) is larger than the effect. This script measures the
cost directly: it times the two hooks steering installs (the model pre-hook that records where the
call sits in the sequence, and the block hook that adds the vector) inside one steered generation,
and reports their share of that generation's time. Both numbers come from the same process and the
same seconds, so machine load scales them alike.

    python benchmarks/steering_hook_cost.py --threads 1
"""

from __future__ import annotations

import argparse
import importlib
import time

import torch

import steerlab as sl

steer_mod = importlib.import_module("steerlab.steering")  # the module; `steerlab.steer` is the function

from _common import load_items, machine_info, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--layer", type=int, default=10)
    ap.add_argument("--strength", type=float, default=2.0)
    ap.add_argument("--positions", default="after_user", choices=["after_user", "all", "last_prompt"])
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    spent = {"pre_hook": 0.0, "block_hook": 0.0, "calls": 0}
    orig_update, orig_layer_hook = steer_mod._ForwardState.update, steer_mod._layer_hook

    def timed_update(self, a, k):
        t = time.perf_counter()
        orig_update(self, a, k)
        spent["pre_hook"] += time.perf_counter() - t
        spent["calls"] += 1

    def timed_layer_hook(terms, state):
        inner = orig_layer_hook(terms, state)

        def hook(module, a, out):
            t = time.perf_counter()
            r = inner(module, a, out)
            spent["block_hook"] += time.perf_counter() - t
            return r

        return hook

    steer_mod._ForwardState.update, steer_mod._layer_hook = timed_update, timed_layer_hook

    lm = sl.load_model()
    vec = sl.train_caa(lm, [it.to_pair() for it in load_items(20)], layers=[args.layer])
    # the generation benchmark's prompts: MWE questions without their answer choices
    prompts = [q.question.split("\n\nChoices:")[0] for q in load_items(args.batch_size, offset=200)]
    steering = sl.Steering(vec, args.strength, positions=args.positions)
    sl.generate(lm, prompts[:2], steering, max_new_tokens=4)  # warm-up
    spent.update(pre_hook=0.0, block_hook=0.0, calls=0)

    t = time.perf_counter()
    sl.generate(lm, prompts, steering, max_new_tokens=args.new_tokens, batch_size=args.batch_size)
    total = time.perf_counter() - t
    hooks = spent["pre_hook"] + spent["block_hook"]
    rows = [("steered generation", total), ("model pre-hook (position bookkeeping)", spent["pre_hook"]),
            ("block hook (adds the vector)", spent["block_hook"]), ("both hooks", hooks)]
    print(f"{args.batch_size} prompts x up to {args.new_tokens} new tokens, layer {args.layer}, "
          f"{args.positions}, {spent['calls']} forward calls, torch threads {torch.get_num_threads()}")
    for name, s in rows:
        print(f"  {name:40s} {s * 1e3:10.1f} ms  {100 * s / total:6.2f} %")
    path = write_json("steering_hook_cost", {"machine": machine_info(), "args": vars(args), "total_s": total,
                                             **spent, "hooks_share": hooks / total})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
