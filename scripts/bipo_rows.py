"""What a BiPO run on a behaviour's MWE pairs keeps and runs per step (issue 26's cost question), without training.

    STEERLAB_DTYPE=float32 python scripts/bipo_rows.py power-seeking-inclination extraversion \
        --model qwen2.5-coder-1.5b --layers 10,12,22

For the training items `cae generalise` would use (the same split) and BiPO's minibatches, prints per behaviour:
the prompt part's width (run once, kept as keys and values), the rest's width (run at every step) and the completion
columns whose logits a step needs, as min / median / max over the minibatches; and the bytes kept for the whole run
as `steerlab.methods.bipo` keeps them (each distinct prompt part once, the block outputs of the +v half of the rows)
and with one copy per row. Loads the model for its tokenizer, template and sizes; runs no forward pass unless asked:
`--time-prompt N` times the prompt pass over the first minibatch N times each way (distinct prompt parts once /
every row), `--time-reference N` the unsteered reference pass over its rest (the +v half / every row, with the
largest difference in log-probs between the two), side by side.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from steerlab.cae.generalise import GeneraliseConfig, split_behaviour
from steerlab.data.tasks import resolve_behaviour
from steerlab.errors import DatasetError
from steerlab.methods.bipo import BiPOConfig, completion_pairs, planned_rows
from steerlab.methods.bipo_split import CachedPrefix, kept_bytes, prompt_pass, reference_pass, rest_logprobs
from steerlab.models import load_model


def spread(values: list[int]) -> str:
    return f"{min(values)} / {statistics.median(values):g} / {max(values)}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("behaviours", nargs="+")
    ap.add_argument("--model", default=None, help="model id or path (default: the embedded model)")
    ap.add_argument("--layers", default="10,12,22", help="layers trained together (their block outputs are kept)")
    ap.add_argument("--n-train", type=int, default=40)
    ap.add_argument("--batch", type=int, default=4, help="pairs per step (--bipo-batch)")
    ap.add_argument("--time-prompt", type=int, default=0, metavar="N",
                    help="time the first minibatch's prompt pass N times each way (shared / one per row)")
    ap.add_argument("--time-reference", type=int, default=0, metavar="N",
                    help="time the first minibatch's reference pass N times each way (+v half / every row)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as the research runs)")
    args = ap.parse_args(argv)
    if args.time_prompt < 0 or args.time_reference < 0:
        ap.error("--time-prompt and --time-reference take a count of 0 or more")
    try:  # a misspelt behaviour fails here, not after the model has loaded
        paths = {b: str(resolve_behaviour(b)) for b in args.behaviours}
    except DatasetError as e:
        ap.error(str(e))
    torch.set_num_threads(args.threads)
    layers = [int(x) for x in args.layers.split(",")]
    lm = load_model(args.model)
    print("| behaviour | pairs | prompt width | rest width | logit columns | kept, as trained | kept, one per row |")
    print("|---|---|---|---|---|---|---|")
    timings = []
    for b in args.behaviours:
        cfg = GeneraliseConfig(paths[b], layers=tuple(layers), n_train=args.n_train)
        pairs = completion_pairs(split_behaviour(cfg).train)
        rows = planned_rows(lm, pairs, BiPOConfig(batch_size=args.batch))
        per_row = sum(r.prompt_ids.numel() * lm.kv_bytes_per_token
                      + r.rest_ids.numel() * lm.hidden_size * lm.dtype.itemsize * len(layers) for r in rows)
        print(f"| {b} | {len(pairs)} | {spread([r.prompt_width for r in rows])} | "
              f"{spread([r.rest_ids.shape[1] for r in rows])} | {spread([r.keep for r in rows])} | "
              f"{kept_bytes(lm, rows, len(layers)) / 2**20:.0f} MiB | {per_row / 2**20:.0f} MiB |")
        timings.append((b, rows[0]))
    for b, first in timings[:1] if args.time_prompt else []:
        print(f"\nthe prompt pass over {b}'s first minibatch ({first.prompt_ids.shape[0]} rows, width "
              f"{first.prompt_width}), seconds:")
        with torch.no_grad():
            for rep in range(args.time_prompt):
                for share in (True, False):
                    t = time.perf_counter()
                    prompt_pass(lm, first, share=share)
                    print(f"  {rep}: {'shared' if share else 'per row'} {time.perf_counter() - t:.2f}")
    for b, first in timings[:1] if args.time_reference else []:
        print(f"\nthe reference pass over the rest of {b}'s first minibatch ({first.rest_ids.shape[0]} rows, width "
              f"{first.rest_ids.shape[1]}), seconds:")
        with torch.no_grad():
            kept = prompt_pass(lm, first)
            for rep in range(args.time_reference):
                t = time.perf_counter()
                half, _ = reference_pass(lm, first, kept, layers)
                t_half = time.perf_counter() - t
                t = time.perf_counter()
                captured: dict[int, CachedPrefix] = {}
                every = rest_logprobs(lm, first, kept, torch.ones(first.rest_ids.shape[0]), None, layers[0],
                                      capture=captured, capture_layers=layers)
                t_every = time.perf_counter() - t
                print(f"  {rep}: +v half {t_half:.2f}, every row {t_every:.2f}, log-probs differ by at most "
                      f"{float((half - every).abs().max()):.2g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
