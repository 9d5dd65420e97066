"""steerlab / naive-baseline worker (system Python): one measured thing per process.

    python _worker.py extract  {engine|train_caa|naive} --texts T.json --n-pairs N --save V.npy [--batch-size B]
    python _worker.py sweep    {engine|naive} --spec S.json --save R.npz
    python _worker.py generate {plain|steered|per_row|one_by_one} --spec S.json --save G.json

Prints one JSON line (the result) as the last line of stdout; the parent adds peak RSS.
Timed regions exclude process start, model load and one warm-up forward.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from _common import MWE_FILE, emit, load_items, model_checkpoint, rss_now_mb


def _warmup(lm_model, input_ids: torch.Tensor) -> None:
    with torch.no_grad():
        lm_model(input_ids=input_ids)


# ---------------------------------------------------------------------------------------------
# (a) extraction


def extract(args) -> dict:
    texts = json.loads(Path(args.texts).read_text())
    pos, neg = texts["positive"], texts["negative"]
    n = len(pos)
    if args.impl == "naive":
        return _extract_naive(args, pos, neg)

    import steerlab
    from steerlab.methods.common import pair_prompts

    lm = steerlab.load_model()
    rss_loaded = rss_now_mb()
    pairs = [it.to_pair() for it in load_items(n, path=Path(texts.get("file", MWE_FILE)))]
    # The peers were given exactly the strings steerlab builds from these pairs.
    p_prompts, n_prompts = pair_prompts(lm, pairs)
    assert [p.text for p in p_prompts] == pos and [p.text for p in n_prompts] == neg, "texts differ from steerlab's"
    layers = list(range(lm.n_layers))
    _warmup(lm.model, lm.tokenizer(pos[0], add_special_tokens=False, return_tensors="pt").input_ids)
    if args.impl == "engine":
        from steerlab.engine import caa_vectors

        kwargs = {"batch_size": args.batch_size} if args.batch_size else {}
        t0 = time.perf_counter()
        vec = caa_vectors(lm, pairs, layers, **kwargs)
        dt = time.perf_counter() - t0
        label = "steerlab.engine.caa_vectors"
    else:
        t0 = time.perf_counter()
        vec = steerlab.train_caa(lm, pairs, layers, batch_size=args.batch_size or 16)
        dt = time.perf_counter() - t0
        label = "steerlab.train_caa"
    dirs = vec.directions if hasattr(vec, "directions") else vec
    arr = np.stack([dirs[l].float().cpu().numpy() for l in layers])
    np.save(args.save, arr.astype(np.float32))
    return {"impl": label, "time_s": dt, "rss_after_load_mb": rss_loaded, "n_pairs": n,
            "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(), "vectors": args.save}


def _extract_naive(args, pos: list[str], neg: list[str]) -> dict:
    """One forward per text with output_hidden_states; activation = hidden_states[L + 1][0, -1]; mean difference.

    transformers puts the *final-norm* output in hidden_states[-1], not the last block's output, so
    for the last layer we read the block output with a forward hook instead (steerlab's convention:
    layer L is the output of decoder block L, for every L).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = str(model_checkpoint())
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    rss_loaded = rss_now_mb()
    n_layers = model.config.num_hidden_layers
    encode = lambda t: tok(t, add_special_tokens=False, return_tensors="pt").input_ids  # noqa: E731
    _warmup(model, encode(pos[0]))
    last_block: dict = {}

    def grab_last(module, inputs, output):
        last_block["h"] = (output[0] if isinstance(output, tuple) else output).detach()

    handle = model.model.layers[n_layers - 1].register_forward_hook(grab_last)

    def acts(text: str) -> np.ndarray:
        hs = model(input_ids=encode(text), output_hidden_states=True).hidden_states
        rows = [hs[layer + 1][0, -1] for layer in range(n_layers - 1)] + [last_block["h"][0, -1]]
        return torch.stack(rows).double().numpy()

    total = np.zeros((n_layers, model.config.hidden_size), dtype=np.float64)
    t0 = time.perf_counter()
    with torch.no_grad():
        for p, q in zip(pos, neg):
            total += acts(p) - acts(q)
    dt = time.perf_counter() - t0
    handle.remove()
    np.save(args.save, (total / len(pos)).astype(np.float32))
    return {"impl": "naive loop", "time_s": dt, "rss_after_load_mb": rss_loaded, "n_pairs": len(pos),
            "batch_size": 1, "torch_threads": torch.get_num_threads(), "vectors": args.save}


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("task", choices=["extract", "sweep", "generate"])
    ap.add_argument("impl")
    ap.add_argument("--texts")
    ap.add_argument("--spec")
    ap.add_argument("--save", required=True)
    ap.add_argument("--batch-size", type=int, default=0)
    args = ap.parse_args()
    if args.task == "extract":
        result = extract(args)
    elif args.task == "sweep":
        from _sweep_worker import sweep

        result = sweep(args)
    else:
        from _gen_worker import generate_task

        result = generate_task(args)
    emit(result)


if __name__ == "__main__":
    main()
