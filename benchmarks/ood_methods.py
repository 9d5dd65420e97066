"""What the issue-26 training methods cost: wall time of CAA, multi-format CAA, BiPO and persona vectors on
one behaviour's first N items at one layer, in one process (model loaded once, before the clock starts).

    python benchmarks/ood_methods.py --behaviour corrigible-neutral-HHH --n-items 20 --layer 10 \
        [--model qwen2.5-coder-1.5b] [--bipo-steps 5] [--bipo-batch 4] [--persona-questions 4] [--threads 1]

Prints one JSON object (per method: seconds, and BiPO's steps and seconds per step; persona's answers
generated and kept) with the machine block, and writes it to benchmarks/out/ood_methods-*.json.
"bipo-whole" is BiPO running every block at every step (`cache_prefix=False`, the loop before block L's
output was replayed): side by side with "bipo", the same losses at a different cost.
"bipo-shared" trains every layer of --bipo-layers in one call (`train_bipo_layers`: one reference pass for all),
"bipo-each" one call per layer (a reference pass each): side by side, the same vectors at a different cost.
Sizes are small on purpose: it measures cost, not the vectors' quality (that is `docs/results/generalisation.md`).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from _common import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--behaviour", default="corrigible-neutral-HHH")
    ap.add_argument("--n-items", type=int, default=20)
    ap.add_argument("--layer", type=int, default=10)
    ap.add_argument("--model", default=None)
    ap.add_argument("--bipo-steps", type=int, default=5)
    ap.add_argument("--bipo-batch", type=int, default=4)
    ap.add_argument("--bipo-layers", default="10,20", help="bipo-shared / bipo-each: the layers trained")
    ap.add_argument("--persona-questions", type=int, default=4)
    ap.add_argument("--persona-tokens", type=int, default=48)
    ap.add_argument("--no-judge", action="store_true")
    ap.add_argument("--methods", default="caa,multiformat,bipo,bipo-whole,persona")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    import steerlab as sl
    from steerlab.cae.judge import LocalJudge
    from steerlab.cae.trait_judge import trait_scorer
    from steerlab.data import load_mwe
    from steerlab.data.tasks import resolve_behaviour
    from steerlab.hardware import machine_block
    from steerlab.methods import (BiPOConfig, PersonaConfig, completion_pairs, load_trait, persona_questions,
                                  train_caa, train_multiformat)
    from steerlab.methods.bipo import train_bipo_detailed, train_bipo_layers
    from steerlab.methods.persona import train_persona_detailed

    items = load_mwe(resolve_behaviour(args.behaviour))[:args.n_items]
    lm = sl.load_model(args.model)
    result: dict = {"behaviour": args.behaviour, "n_items": len(items), "layer": args.layer, "model": lm.model_id,
                    "dtype": str(lm.dtype) if hasattr(lm, "dtype") else None, "methods": {}}
    for name in args.methods.split(","):
        t0 = time.perf_counter()
        row: dict = {}
        if name == "caa":
            train_caa(lm, [it.to_pair() for it in items], [args.layer])
        elif name == "multiformat":
            vec = train_multiformat(lm, items, [args.layer])
            row["format_counts"] = vec.meta.extra["format_counts"]
        elif name in ("bipo", "bipo-whole"):
            res = train_bipo_detailed(lm, completion_pairs(items), args.layer,
                                      BiPOConfig(max_steps=args.bipo_steps, batch_size=args.bipo_batch, patience=10**6,
                                                 cache_prefix=name == "bipo"))
            row.update(steps=res.steps, seconds_per_step=round(res.seconds_per_step, 2),
                       replayed_prefix=res.vector.meta.extra["replayed_prefix"],
                       val_loss=[round(h["val_loss"], 4) for h in res.history])
        elif name in ("bipo-shared", "bipo-each"):
            layers = [int(x) for x in args.bipo_layers.split(",")]
            cfg = BiPOConfig(max_steps=args.bipo_steps, batch_size=args.bipo_batch, patience=10**6)
            pairs = completion_pairs(items)
            runs = (train_bipo_layers(lm, pairs, layers, cfg) if name == "bipo-shared"
                    else {l: train_bipo_detailed(lm, pairs, l, cfg) for l in layers})
            row.update(layers=layers, reference_seconds=[round(r.reference_seconds, 2) for r in runs.values()],
                       val_loss={l: [round(h["val_loss"], 4) for h in r.history] for l, r in runs.items()})
        elif name == "persona":
            trait = load_trait(args.behaviour)
            judge = None if args.no_judge else trait_scorer(LocalJudge(lm), trait.name, trait.description)
            cfg = PersonaConfig(samples_per_question=2, max_new_tokens=args.persona_tokens)
            try:
                res = train_persona_detailed(lm, trait, persona_questions(items)[:args.persona_questions], [args.layer],
                                             cfg, judge)
                row.update(answers=len(res.samples), kept=sum(s.kept for s in res.samples))
            except sl.SteerlabError as e:  # the judge kept no answer on one side: a result too
                row["error"] = str(e)
        else:
            raise SystemExit(f"unknown method {name}")
        row["seconds"] = round(time.perf_counter() - t0, 2)
        result["methods"][name] = row
        print(name, json.dumps(row), flush=True)
    result["machine"] = machine_block()
    path = write_json("ood_methods", result)
    print(json.dumps(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
