"""Peer-library worker: runs inside benchmarks/.venvs/peers (numpy<2, transformers<5).

    python _peer_worker.py {repeng|steering-vectors} --texts T.json --checkpoint DIR --save V.npy [--batch-size N]

Reads the exact formatted positive/negative strings written by extraction.py, computes the
per-layer vectors with the library the way its README/docstrings describe, saves them as a
[n_layers, hidden] float32 .npy (layer L = output of decoder block L) and prints one JSON line.
This file imports neither steerlab nor anything from transformers>=5.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from _common import emit, rss_now_mb


def load(checkpoint: str):
    model = AutoModelForCausalLM.from_pretrained(checkpoint, torch_dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(checkpoint)
    # The texts are already chat-formatted (they carry the template's special tokens); SmolLM2's
    # tokenizer adds no BOS, so tokenizer(text) gives the same ids steerlab runs.
    return model, tok


def warmup(model, tok, text: str) -> None:
    with torch.no_grad():
        model(**tok([text], return_tensors="pt"))


def run_repeng(args, pos: list[str], neg: list[str]) -> dict:
    import repeng
    import repeng.extract as rx
    from repeng import ControlVector, DatasetEntry

    model, tok = load(args.checkpoint)
    rss_loaded = rss_now_mb()
    n_layers = model.config.num_hidden_layers
    warmup(model, tok, pos[0])
    dataset = [DatasetEntry(positive=p, negative=n) for p, n in zip(pos, neg)]

    # repeng only offers PCA reductions ("pca_diff" (default), "pca_center", "umap"); there is no
    # mean-difference mode. We time ControlVector.train with its default and cheapest reduction,
    # pca_diff, and wrap its activation gatherer (batched_get_hiddens) to time the gathering alone
    # and keep the activations, so we can also take their plain mean difference.
    captured: dict = {}
    original = rx.batched_get_hiddens

    def timed_gather(*a, **k):
        t = time.perf_counter()
        out = original(*a, **k)
        captured["gather_s"] = time.perf_counter() - t
        captured["hiddens"] = out
        return out

    rx.batched_get_hiddens = timed_gather
    try:
        t0, c0 = time.perf_counter(), time.process_time()
        vec = ControlVector.train(model, tok, dataset, batch_size=args.batch_size, method="pca_diff",
                                  hidden_layers=list(range(n_layers)))
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
    finally:
        rx.batched_get_hiddens = original
    pca = np.stack([vec.directions[l] for l in range(n_layers)]).astype(np.float32)
    hid = captured["hiddens"]  # {layer: [2n, hidden]}, order pos, neg, pos, neg, ...
    mean = np.stack([(hid[l][::2].astype(np.float64) - hid[l][1::2].astype(np.float64)).mean(0) for l in range(n_layers)])
    np.save(args.save, mean.astype(np.float32))
    np.save(args.save.replace(".npy", "-pca.npy"), pca)
    return {
        "impl": "repeng",
        "version": repeng.__version__ if hasattr(repeng, "__version__") else None,
        "time_s": total,
        "cpu_s": cpu,
        "gather_s": captured["gather_s"],
        "reduce_s": total - captured["gather_s"],
        "method": "ControlVector.train(method='pca_diff'); vectors compared = mean difference of its gathered activations",
        "rss_after_load_mb": rss_loaded,
        "tokenizer_padding_side": tok.padding_side,
    }


def run_steering_vectors(args, pos: list[str], neg: list[str]) -> dict:
    import steering_vectors
    from steering_vectors import train_steering_vector

    model, tok = load(args.checkpoint)
    rss_loaded = rss_now_mb()
    n_layers = model.config.num_hidden_layers
    warmup(model, tok, pos[0])
    samples = list(zip(pos, neg))
    t0, c0 = time.perf_counter(), time.process_time()
    sv = train_steering_vector(model, tok, samples, layers=None, layer_type="decoder_block",
                               read_token_index=-1, batch_size=args.batch_size, show_progress=False)
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    vecs = np.stack([sv.layer_activations[l].float().cpu().numpy() for l in range(n_layers)])
    np.save(args.save, vecs.astype(np.float32))
    return {
        "impl": "steering-vectors",
        "time_s": total,
        "cpu_s": cpu,
        "method": "train_steering_vector(read_token_index=-1, aggregator=mean_aggregator())",
        "rss_after_load_mb": rss_loaded,
        "tokenizer_padding_side": tok.padding_side,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("impl", choices=["repeng", "steering-vectors"])
    ap.add_argument("--texts", required=True)
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--save", required=True)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    texts = json.loads(open(args.texts).read())
    pos, neg = texts["positive"], texts["negative"]
    fn = run_repeng if args.impl == "repeng" else run_steering_vectors
    result = fn(args, pos, neg)
    result.update(n_pairs=len(pos), batch_size=args.batch_size, torch_threads=torch.get_num_threads(),
                  torch=torch.__version__, vectors=args.save)
    emit(result)


if __name__ == "__main__":
    main()
