"""What conditional steering and read-out cost (CAST), side by side in one run, one process.

Rows of one batch, greedy, the same number of new tokens (EOS ignored by timing per generated token):
  plainly steered        every row steered with the vector, at a layer below the condition's or the top one
  half conditioned       the same vector with a condition; half the prompts fire it (harmful), half not:
                         below the condition's layer decided by the prefill's look-ahead (the blocks from
                         the steered layer to the condition's run once more, unsteered), above it on the
                         steered pass's way up; beside them, the two alternatives below the condition's
                         layer: a separate unsteered pass up to the condition's layer before the steered
                         one (what steerlab did before the look-ahead), and decide="first_token"
  read-out               the vector's projection read at every token (prompt and generation), unsteered
  no read-out            the same generation without the read-out hook
  served: ...            the same rows as requests to the built-in server engine (its continuous-batching
                         scheduler, `run_requests`), plainly steered vs half conditioned; the engine decides
                         the conditions of all requests admitted together in their prefill (as above) and
                         drops a term that did not fire
Each setting runs `--rounds` times interleaved (so machine load drifts over all alike); the table gives
the median time per generated token and the ratio to its baseline. Goals (issue 25): half conditioned
≤ 1.05× plainly steered; read-out ≤ 1.05× no read-out.

    python benchmarks/conditional.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace

import torch

import steerlab as sl
from steerlab.condition import ConditionVector, train_condition
from steerlab.data.prompt_sets import load_condition_harmful
from steerlab.monitoring import ReadoutHook
from steerlab.steering import resolve_conditions

from _common import machine_info, write_json


# each setting's baseline: the same vector at the same layer, plainly steered (or no read-out)
BASELINE = {"plainly steered (low layer)": "plainly steered (low layer)",
            "half conditioned, look-ahead": "plainly steered (low layer)",
            "half conditioned, separate pass": "plainly steered (low layer)",
            "half conditioned, first_token": "plainly steered (low layer)",
            "plainly steered (top layer)": "plainly steered (top layer)",
            "half conditioned, in-pass": "plainly steered (top layer)",
            "no read-out": "no read-out", "read-out (every token)": "no read-out",
            "served: plainly steered (low)": "served: plainly steered (low)",
            "served: half conditioned (low)": "served: plainly steered (low)",
            "served: half conditioned (low, first_token)": "served: plainly steered (low)",
            "served: plainly steered (top)": "served: plainly steered (top)",
            "served: half conditioned (top)": "served: plainly steered (top)"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", default=None,
                    help="comma-separated words: run only the settings whose name holds one (and their baselines), "
                         "e.g. 'low' for the steered-below-the-condition rows")
    args = ap.parse_args()
    picked = set(BASELINE)
    if args.only:  # checked before the model loads
        words = [w.strip() for w in args.only.split(",") if w.strip()]
        picked = {k for k in BASELINE if any(w in k for w in words)}
        picked |= {BASELINE[k] for k in picked}
        if not picked:
            ap.error(f"--only {args.only!r} names no setting (settings: {', '.join(BASELINE)})")
    torch.set_num_threads(args.threads)
    lm = sl.load_model(args.model)
    train, test = load_condition_harmful("train"), load_condition_harmful("test")
    cond = ConditionVector(train_condition(lm, train.harmful[:64], train.harmless[:64],
                                           range(lm.n_layers // 3, lm.n_layers, 2)), "harmful")
    half = args.batch_size // 2
    prompts = test.harmful[:half] + test.harmless[:args.batch_size - half]
    fired = sum(c.fired for c in cond.check(lm, prompts))
    layer, above = lm.n_layers // 2, lm.n_layers - 1  # below the condition's layer, and above it
    g = torch.Generator().manual_seed(0)
    vec = sl.SteeringVector({l: torch.randn(lm.hidden_size, generator=g) for l in (layer, above)},
                            replace(cond.vector.meta, method="random", layers=(layer, above), extra={}))

    def gen(steering):
        return sl.generate(lm, prompts, steering, max_new_tokens=args.new_tokens, batch_size=args.batch_size)

    def watched():
        hook = ReadoutHook(lm, vec.directions[layer], layer)
        try:
            return gen(None)
        finally:
            hook.remove()

    from steerlab.serve.engines.base import ConditionLeaf, EngineRequest, SamplingSettings, SteeringTerm, run_requests
    from steerlab.serve.engines.builtin import build_engine

    engine = build_engine(lm, max_batch=args.batch_size)
    sampling = SamplingSettings(args.new_tokens, ignore_eos=True)
    encoded = [sl.encode(lm, [p]) for p in prompts]

    def served(at: int, conditioned: bool, decide: str = "exact"):
        term = SteeringTerm("v", vec.select([at]), 2.0, (at,), "after_user",
                            ConditionLeaf("harmful", cond.vector) if conditioned else None, decide)
        return lambda: run_requests(engine, [EngineRequest.of(e, f"r{i}", sampling, (term,))
                                             for i, e in enumerate(encoded)])

    def separate_pass():
        term = sl.Steering(vec, 2.0, [layer], condition=cond)
        resolved, _ = resolve_conditions(lm, [term], sl.encode(lm, prompts))
        return gen(resolved)

    settings = {
        "plainly steered (low layer)": lambda: gen(sl.Steering(vec, 2.0, [layer])),
        "half conditioned, look-ahead": lambda: gen(sl.Steering(vec, 2.0, [layer], condition=cond)),
        "half conditioned, separate pass": separate_pass,
        "half conditioned, first_token": lambda: gen(sl.Steering(vec, 2.0, [layer], condition=cond,
                                                                  decide="first_token")),
        "plainly steered (top layer)": lambda: gen(sl.Steering(vec, 2.0, [above])),
        "half conditioned, in-pass": lambda: gen(sl.Steering(vec, 2.0, [above], condition=cond)),
        "no read-out": lambda: gen(None), "read-out (every token)": watched,
        "served: plainly steered (low)": served(layer, False),
        "served: half conditioned (low)": served(layer, True),
        "served: half conditioned (low, first_token)": served(layer, True, "first_token"),
        "served: plainly steered (top)": served(above, False),
        "served: half conditioned (top)": served(above, True)}
    settings = {k: v for k, v in settings.items() if k in picked}
    times: dict[str, list[float]] = {k: [] for k in settings}
    for name, fn in settings.items():  # warm-up
        fn()
    for _ in range(args.rounds):
        for name, fn in settings.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) / (args.new_tokens * len(prompts)))
    engine.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    info = machine_info()
    print(f"{lm.model_id}, {lm.dtype}, batch {len(prompts)} ({fired} fire the condition), {args.new_tokens} new "
          f"tokens, {args.rounds} rounds; condition at layer {cond.rule.layer}, vector at layer {layer} (below it: "
          f"look-ahead over layers {layer}-{cond.rule.layer}) or {above} (above it: decided on the way up)")
    print(f"machine: {info}")
    print(f"{'setting':44s} {'ms / token (median)':>20s} {'vs baseline':>12s}")
    for k, v in med.items():
        print(f"{k:44s} {1000 * v:20.3f} {v / med[BASELINE[k]]:11.3f}x")
    write_json("conditional", {"machine": info, "model": lm.model_id, "dtype": str(lm.dtype), "batch": len(prompts),
                               "fired": fired, "new_tokens": args.new_tokens, "seconds_per_token": times,
                               "median": med})


if __name__ == "__main__":
    main()
