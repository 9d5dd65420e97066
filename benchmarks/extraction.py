"""Benchmark (a): CAA vectors for every layer, steerlab vs repeng vs steering-vectors vs a naive loop.

Data: the first N pairs of mwe/advanced-ai-risk/corrigible-neutral-HHH.jsonl; a pair is the
question as the user turn and the assistant turn opened with "(A" / "(B" (matching / not
matching), formatted with the chat template exactly as steerlab does (`pair_prompts`). Every
implementation gets those same full strings and reads the last token (the answer letter) at the
output of every decoder block (layer L = hidden_states[L + 1]).

Each implementation runs in its own process (its time excludes process start and model load; its
peak RSS covers the whole process). The peers run in benchmarks/.venvs/peers (created on first
use). Vectors are saved as .npy and compared here with the naive loop's mean difference.

    python benchmarks/extraction.py                       # 500 pairs, everything
    python benchmarks/extraction.py --n-pairs 20 --skip-peers
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    HERE, MWE_FILE, ensure_peer_venv, load_items, log, machine_info, machine_line, model_checkpoint,
    out_dir, peer_checkpoint, peer_versions, print_table, run_worker, write_json,
)

TARGET_SPEEDUP = 3.0
TARGET_MAX_DIFF = 1e-4


def build_texts(n_pairs: int, path: Path) -> dict:
    from transformers import AutoTokenizer

    from steerlab.encoding import format_prompt

    tok = AutoTokenizer.from_pretrained(str(model_checkpoint()))
    pairs = [it.to_pair() for it in load_items(n_pairs, path=path)]
    pos = [format_prompt(tok, p.prompt, p.positive, chat_template=True).text for p in pairs]
    neg = [format_prompt(tok, p.prompt, p.negative, chat_template=True).text for p in pairs]
    ids_p = [tok(t, add_special_tokens=False).input_ids for t in pos]
    ids_n = [tok(t, add_special_tokens=False).input_ids for t in neg]
    n_tokens = sum(map(len, ids_p)) + sum(map(len, ids_n))

    def shared(a: list[int], b: list[int]) -> int:  # common prefix, leaving each side >= 1 token
        k = 0
        while k < min(len(a), len(b)) - 1 and a[k] == b[k]:
            k += 1
        return k

    # What prefix sharing saves: a pair's common prefix runs once, then its two differing tails.
    pair_tokens = sum(len(a) + len(b) - shared(a, b) for a, b in zip(ids_p, ids_n))
    # The template header every text starts with (system turn + "<|im_start|>user\n").
    header = ids_p[0]
    for a in ids_p + ids_n:
        header = header[: shared(header + [-1], a + [-2])]
    stats = {"lengths": [[len(a), len(b), shared(a, b)] for a, b in zip(ids_p, ids_n)], "n_tokens": n_tokens, "tokens_with_pair_sharing": pair_tokens, "common_header_tokens": len(header),
             "longest_text_tokens": max(map(len, ids_p + ids_n)), "mean_text_tokens": n_tokens / len(ids_p + ids_n)}
    return {"file": str(path), "positive": pos, "negative": neg, **stats}


def tokens_fed(impl: str, lengths: list[list[int]], batch_size: int, header: int = 0) -> int:
    """Token positions an implementation feeds the model, padding included (from its batching rule).

    `header`: tokens common to every text, which the engine runs once for the whole dataset."""
    P = [p for p, _, _ in lengths]
    N = [n for _, n, _ in lengths]
    if impl == "naive loop" or batch_size == 1 and impl != "engine":
        return sum(P) + sum(N)
    if impl == "repeng":  # texts in the order p0, n0, p1, n1, ...; batches of `batch_size` texts, padded
        seq = [v for pn in zip(P, N) for v in pn]
        return sum(max(seq[i:i + batch_size]) * len(seq[i:i + batch_size]) for i in range(0, len(seq), batch_size))
    if impl == "steering-vectors":  # batches of `batch_size` pairs: a padded positive batch and a padded negative batch
        return sum(max(X[i:i + batch_size]) * len(X[i:i + batch_size]) for X in (P, N) for i in range(0, len(P), batch_size))
    if impl == "engine":  # header once; pairs sorted by (shared prefix, total); padded prefixes, then 2 padded tails per pair
        order = sorted(range(len(lengths)), key=lambda k: (lengths[k][2], lengths[k][0] + lengths[k][1]))
        total = header
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            total += (max(lengths[k][2] for k in idx) - header) * len(idx)
            total += max(max(lengths[k][0], lengths[k][1]) - lengths[k][2] for k in idx) * 2 * len(idx)
        return total
    return -1


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-pairs", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=16, help="batch size for steerlab and the peers (default 16)")
    ap.add_argument("--peer-batch-sizes", type=int, nargs="+", default=[1],
                    help="batch sizes to run each peer at (default 1: steering-vectors' default, pads nothing, and "
                         "is the peers' fastest on a CPU; add 16, steerlab's, to compare batching: repeng at batch "
                         "16 needs ~20 GiB at 500 pairs); the verdict uses the fastest peer run")
    ap.add_argument("--skip-peers", action="store_true", help="no repeng / steering-vectors (no venv needed)")
    ap.add_argument("--skip-naive", action="store_true", help="no naive loop (then vectors are compared with steerlab's)")
    ap.add_argument("--steerlab", choices=["engine", "train_caa", "both"], default="engine",
                    help="steerlab path: engine.caa_vectors (default), train_caa (capture-based), or both")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in every worker (default: torch's choice)")
    ap.add_argument("--data", type=Path, default=MWE_FILE)
    args = ap.parse_args(argv)
    if args.n_pairs < 1 or args.batch_size < 1 or min(args.peer_batch_sizes) < 1:
        ap.error("--n-pairs, --batch-size and --peer-batch-sizes must be at least 1")

    info = machine_info()
    env = {"OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)} if args.threads else None
    work = out_dir("extraction")
    texts = build_texts(args.n_pairs, args.data)
    texts_path = work / "texts.json"
    texts_path.write_text(json.dumps(texts))
    log(f"{args.n_pairs} pairs, {texts['n_tokens']} tokens in {2 * args.n_pairs} texts")
    worker = HERE / "_worker.py"

    runs: list[dict] = []
    if args.steerlab in ("engine", "both"):
        runs.append(run_worker(sys.executable, worker, ["extract", "engine", "--texts", texts_path, "--save",
                                                        work / "steerlab.npy", "--batch-size", args.batch_size],
                               label="steerlab engine", env=env))
    if args.steerlab in ("train_caa", "both"):
        runs.append(run_worker(sys.executable, worker, ["extract", "train_caa", "--texts", texts_path, "--save",
                                                        work / "train_caa.npy", "--batch-size", args.batch_size],
                               label="steerlab train_caa", env=env))
    versions = {}
    if not args.skip_peers:
        py = ensure_peer_venv(quiet=True)
        versions = peer_versions()
        ckpt = peer_checkpoint()
        for impl in ("repeng", "steering-vectors"):
            for bs in args.peer_batch_sizes:
                r = run_worker(py, HERE / "_peer_worker.py", [impl, "--texts", texts_path, "--checkpoint", ckpt, "--save",
                                                              work / f"{impl}-b{bs}.npy", "--batch-size", bs],
                               label=f"{impl} (batch {bs})", env=env)
                r["label"] = f"{impl}, batch {bs}"
                runs.append(r)
    if not args.skip_naive:
        runs.append(run_worker(sys.executable, worker, ["extract", "naive", "--texts", texts_path, "--save", work / "naive.npy"],
                               label="naive loop", env=env))

    ref_run = runs[-1] if not args.skip_naive else runs[0]
    ref = np.load(ref_run["vectors"]).astype(np.float64)
    for r in runs:
        v = np.load(r["vectors"]).astype(np.float64)
        per_layer = np.abs(v - ref).max(1)
        r["max_abs_diff_vs_ref"] = float(per_layer.max())
        r["max_abs_diff_vs_ref_except_last"] = float(per_layer[:-1].max())
        r["max_abs_diff_per_layer"] = [float(x) for x in per_layer]
        pca_path = str(r["vectors"]).replace(".npy", "-pca.npy")
        if r["impl"] == "repeng" and os.path.exists(pca_path):
            p = np.load(pca_path).astype(np.float64)
            cos = (p * ref).sum(1) / (np.linalg.norm(p, axis=1) * np.linalg.norm(ref, axis=1))
            r["pca_cosine_vs_ref_min"] = float(cos.min())
            r["pca_cosine_vs_ref_mean"] = float(cos.mean())
    ref_norm = float(np.linalg.norm(ref, axis=1).max())

    steer_t = runs[0]["time_s"]
    peers = [r for r in runs if r["impl"] in ("repeng", "steering-vectors")]
    fastest_peer = min(peers, key=lambda r: r["time_s"]) if peers else None
    rows = []
    for r in runs:
        kind = "engine" if "engine" in r["impl"] else r["impl"]
        r["tokens_fed"] = tokens_fed(kind, texts["lengths"], int(r.get("batch_size") or 1), texts["common_header_tokens"]) if kind != "steerlab.train_caa" else None
        rows.append([r.get("label", r["impl"]), r["time_s"], r.get("cpu_s", "-"), 2 * r["n_pairs"] / r["time_s"], r["time_s"] / steer_t,
                     r["tokens_fed"], r["peak_rss_mb"], r.get("rss_after_load_mb"), r["max_abs_diff_vs_ref"],
                     r["max_abs_diff_vs_ref_except_last"]])
    threads = sorted({r.get("torch_threads") for r in runs})
    notes = [machine_line(info) + f" | worker torch threads {threads}",
             f"{args.n_pairs} pairs = {2 * args.n_pairs} texts, {texts['n_tokens']} tokens, {len(ref)} layers; batch size "
             f"steerlab {args.batch_size}, peers {args.peer_batch_sizes}; reference for diffs: {ref_run['impl']} (largest |v| {ref_norm:.2f})",
             "time = vectors for every layer, after model load and one warm-up forward (wall clock; cpu = the process's CPU "
             "time over the same span, which other jobs on a shared machine disturb far less); peak RSS = whole process",
             f"tokens: {texts['n_tokens']} in full texts (what the peers and the naive loop run, before padding); "
             f"{texts['tokens_with_pair_sharing']} with each pair's common prefix run once (what the engine runs); "
             f"{texts['common_header_tokens']} header tokens are common to every text"]
    rep = [r for r in peers if r["impl"] == "repeng"]
    if rep:
        if any(r["max_abs_diff_vs_ref"] > 10 * max(r["max_abs_diff_vs_ref_except_last"], 1e-6) for r in rep):
            notes.append("repeng reads layer L at hidden_states[L + 1]; for the last layer transformers puts the final-norm "
                         "output there, not the block output, hence its large last-layer diff")
        notes.append("repeng has no mean-difference mode: its time is ControlVector.train(method='pca_diff') ("
                     + "; ".join(f"batch {r['batch_size']}: gather {r['gather_s']:.1f} s + PCA/sign {r['reduce_s']:.1f} s"
                                 for r in rep)
                     + "); its diffs are the mean difference of the activations it gathered; its PCA direction's cosine "
                     f"with the reference: min {min(r.get('pca_cosine_vs_ref_min', float('nan')) for r in rep):.3f}, mean "
                     f"{np.mean([r.get('pca_cosine_vs_ref_mean', float('nan')) for r in rep]):.3f}")
    verdict = {}
    if fastest_peer:
        speedup = fastest_peer["time_s"] / steer_t
        verdict = {"speedup_vs_fastest_peer": speedup, "fastest_peer": fastest_peer.get("label", fastest_peer["impl"]),
                   "speedup_target": TARGET_SPEEDUP, "speedup_met": speedup >= TARGET_SPEEDUP}
        notes.append(f"steerlab vs fastest peer run ({verdict['fastest_peer']}): {speedup:.2f}x (target >= {TARGET_SPEEDUP:g}x: "
                     f"{'met' if speedup >= TARGET_SPEEDUP else 'MISSED'})")
        if all("cpu_s" in r for r in [runs[0], *peers]):
            fastest_cpu = min(peers, key=lambda r: r["cpu_s"])
            cpu_speedup = fastest_cpu["cpu_s"] / runs[0]["cpu_s"]
            verdict.update(cpu_speedup_vs_fastest_peer=cpu_speedup, fastest_peer_cpu=fastest_cpu.get("label", fastest_cpu["impl"]))
            notes.append(f"in CPU time: {cpu_speedup:.2f}x vs {verdict['fastest_peer_cpu']}")
    if not args.skip_naive:
        d = runs[0]["max_abs_diff_vs_ref"]
        verdict.update(max_abs_diff=d, diff_target=TARGET_MAX_DIFF, diff_met=d <= TARGET_MAX_DIFF)
        notes.append(f"steerlab vs naive max |diff| {d:.2e} (target <= {TARGET_MAX_DIFF:g}: {'met' if d <= TARGET_MAX_DIFF else 'MISSED'})")
    print_table("CAA extraction, every layer", ["implementation", "time s", "cpu s", "texts/s", "x steerlab time", "tokens fed", "peak RSS MiB",
                                                 "RSS after load MiB", "max |diff| vs ref",
                                                 "same, layers < last"], rows, notes)
    payload = {"machine": info, "peer_versions": versions, "args": {k: str(v) for k, v in vars(args).items()},
               "token_stats": {k: texts[k] for k in ("n_tokens", "tokens_with_pair_sharing", "common_header_tokens",
                                                      "longest_text_tokens", "mean_text_tokens")},
               "runs": runs, "verdict": verdict, "notes": notes}
    path = write_json("extraction", payload)
    log(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
