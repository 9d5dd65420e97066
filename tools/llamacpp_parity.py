#!/usr/bin/env python
"""Does a steerlab-exported control vector do in llama.cpp what it does in steerlab? (issue 15, item 5)

    python tools/llamacpp_parity.py --setup        # once: build llama-cpp-python from source in its own venv
    python tools/llamacpp_parity.py                # the comparison (docs/llamacpp.md has the numbers)

The setup step builds llama-cpp-python (pinned below) from PyPI's source distribution, CPU only, into
`benchmarks/.venvs/llamacpp` (gitignored; `--venv` elsewhere) with the `gguf` reader beside it; it is
niced and single-job by default because it takes 12+ minutes on two cores, and is skipped when that venv
already imports `llama_cpp`. Nothing else in steerlab needs it.

The comparison, run from steerlab's own environment:
1. trains a CAA vector on the shipped demo pairs at `--layer` (or takes `--vector FILE`, one layer of it),
   exports it with `steerlab.export_gguf` as `direction.L`, and also as `direction.L-1` and
   `direction.L+1` (the same direction deliberately put one block too low / too high);
2. runs the embedded model's own GGUF in llama.cpp (a subprocess in the llama-cpp-python venv: this same
   file with `--worker`) on the same token ids, unsteered and with each file applied through
   `llama_apply_adapter_cvec` exactly as llama.cpp's `--control-vector-scaled FILE:S` loads one
   (direction.N at offset (N-1)*n_embd of an n_embd x n_layer buffer, scaled by S), and reads the
   next-token log-probabilities at the last prompt token;
3. runs steerlab on the same ids with `h_L <- h_L + S*v` at positions "all" (llama.cpp steers every
   token) at layers L-1, L, L+1, and correlates the log-probability shifts (steered - unsteered)
   pooled over prompts and the whole vocabulary, and over each prompt's top-k tokens.

Two controls ride along: `--control-vector-layer-range` semantics (a range that excludes L must leave the
logits untouched; the range L..L must give the full result), and clearing the vector must restore the
unsteered logits exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_VENV = ROOT / "benchmarks" / ".venvs" / "llamacpp"
LLAMA_CPP_PYTHON = "0.3.36"
# CPU only, and only the library llama-cpp-python loads (no llava/mtmd, tools, examples, tests or server).
CMAKE_ARGS = ("-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF "
              "-DLLAMA_BUILD_SERVER=OFF -DGGML_BLAS=OFF -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF")

# Prompts beside the 48 demo prompts: varied everyday and task requests (next-token distributions only).
EXTRA_PROMPTS = [
    "Write a haiku about the sea.",
    "What is the capital of France?",
    "Explain how a bicycle works.",
    "Give me three tips for learning to cook.",
    "Summarize the plot of a detective story in one sentence.",
    "How do I sort a list in Python?",
    "What should I pack for a weekend camping trip?",
    "Tell me about your favourite season.",
    "Why is the sky blue?",
    "Describe a busy train station.",
    "What do you think of rainy afternoons?",
    "Recommend a book for a long flight.",
    "How can I get better sleep?",
    "What happened at the meeting yesterday?",
    "Describe the taste of coffee.",
    "What is the best way to start a new job?",
]


# ---------------------------------------------------------------------------------------------------
# setup: the llama-cpp-python venv
# ---------------------------------------------------------------------------------------------------

def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def venv_ready(venv: Path) -> bool:
    py = venv_python(venv)
    if not py.exists():
        return False
    r = subprocess.run([str(py), "-c", "import llama_cpp, gguf, numpy"], capture_output=True)
    return r.returncode == 0


def setup(venv: Path, version: str = LLAMA_CPP_PYTHON) -> int:
    if venv_ready(venv):
        info = venv / "steerlab-build.json"
        print(f"llama-cpp-python already built in {venv}" + (f": {info.read_text().strip()}" if info.exists() else ""))
        return 0
    if not venv_python(venv).exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv_python(venv)), "-m", "pip", "install", "--disable-pip-version-check"]
    subprocess.run(pip + ["-q", "numpy", "gguf"], check=True)
    env = dict(os.environ)
    env["CMAKE_ARGS"] = env.get("CMAKE_ARGS", CMAKE_ARGS)
    env.setdefault("CMAKE_BUILD_PARALLEL_LEVEL", "1")  # a shared machine; raise it on your own
    env.setdefault("OMP_NUM_THREADS", "1")
    nice = ["nice", "-n", "10"] if shutil.which("nice") else []
    cmd = nice + pip + ["--no-binary", "llama-cpp-python", f"llama-cpp-python=={version}"]
    print(f"building llama-cpp-python {version} from source (CMAKE_ARGS={env['CMAKE_ARGS']!r}, "
          f"CMAKE_BUILD_PARALLEL_LEVEL={env['CMAKE_BUILD_PARALLEL_LEVEL']}); 12+ minutes on 2 cores…", flush=True)
    t0 = time.time()
    r = subprocess.run(cmd, env=env)
    seconds = time.time() - t0
    if r.returncode != 0:
        print(f"build failed after {seconds:.0f} s (exit {r.returncode})", file=sys.stderr)
        return r.returncode
    info = {"llama_cpp_python": version, "build_seconds": round(seconds), "cmake_args": env["CMAKE_ARGS"],
            "parallel": env["CMAKE_BUILD_PARALLEL_LEVEL"], "cores": os.cpu_count(),
            "load_before": [round(x, 2) for x in os.getloadavg()]}
    (venv / "steerlab-build.json").write_text(json.dumps(info) + "\n")
    print(f"built in {seconds:.0f} s")
    return 0


# ---------------------------------------------------------------------------------------------------
# worker: runs inside the llama-cpp-python venv (numpy, gguf, llama_cpp only; no torch, no steerlab)
# ---------------------------------------------------------------------------------------------------

def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def worker(request_path: Path) -> int:
    os.environ.setdefault("LLAMA_GRAPH_REUSE_DISABLE", "1")  # belt and braces: the cvec is read at graph build
    import ctypes

    import gguf
    import llama_cpp

    req = json.loads(request_path.read_text())
    llm = llama_cpp.Llama(model_path=req["model"], n_ctx=req.get("n_ctx", 1024), n_batch=512,
                          n_threads=req.get("threads", 1), n_threads_batch=req.get("threads", 1),
                          logits_all=False, verbose=False)
    model = llm.model
    ctx = llm.ctx
    n_embd = int(llama_cpp.llama_n_embd(model))
    n_layer = int(getattr(llama_cpp, "llama_model_n_layer", getattr(llama_cpp, "llama_n_layer", None))(model))
    # llama_set_adapter_cvec is the current name; llama_apply_adapter_cvec the older (now deprecated) one
    apply_fn = getattr(llama_cpp, "llama_set_adapter_cvec", None) or getattr(llama_cpp, "llama_apply_adapter_cvec")

    def load_cvec(path: str, scale: float) -> np.ndarray:
        # as llama.cpp's common_control_vector_load: direction.N (N >= 1) at offset (N-1)*n_embd, scaled,
        # duplicates summed; the buffer covers every block so a later apply overwrites all of them
        buf = np.zeros(n_embd * n_layer, dtype=np.float32)
        for t in gguf.GGUFReader(path).tensors:
            if not t.name.startswith("direction."):
                continue
            n = int(t.name.split(".", 1)[1])
            if n < 1 or n >= n_layer:
                raise SystemExit(f"{path}: {t.name} is outside blocks 1..{n_layer - 1}")
            arr = np.asarray(t.data, dtype=np.float32).reshape(-1)
            if arr.shape[0] != n_embd:
                raise SystemExit(f"{path}: {t.name} has {arr.shape[0]} values, the model's n_embd is {n_embd}")
            buf[(n - 1) * n_embd:n * n_embd] += scale * arr
        return buf

    def apply(buf: np.ndarray | None, start: int, end: int) -> None:
        if buf is None:
            rc = apply_fn(ctx, None, 0, n_embd, -1, -1)
        else:
            arr = buf.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            rc = apply_fn(ctx, arr, buf.size, n_embd, start, end)
        if rc != 0:
            raise SystemExit(f"llama_apply_adapter_cvec returned {rc}")

    def run_prompts() -> np.ndarray:
        out = np.empty((len(req["prompts"]), llm.n_vocab()), dtype=np.float32)
        for i, ids in enumerate(req["prompts"]):
            llm.reset()
            llm.eval(ids)
            # the last token's logits straight from the context (llm.scores stays empty without logits_all)
            logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, -1), shape=(out.shape[1],))
            out[i] = _log_softmax(logits.copy())
        return out

    results = {}
    t0 = time.time()
    results["unsteered"] = run_prompts()
    for cond in req["conditions"]:
        buf = load_cvec(cond["file"], cond["scale"])
        start, end = cond.get("range", [1, n_layer - 1])  # llama.cpp's default range: every block
        apply(buf, start, end)
        results[cond["name"]] = run_prompts()
        apply(None, -1, -1)
    results["unsteered_again"] = run_prompts()
    np.savez(req["out"], **results)
    meta = {"n_embd": n_embd, "n_layer": n_layer, "n_vocab": int(llm.n_vocab()),
            "llama_cpp_python": llama_cpp.__version__, "seconds": round(time.time() - t0, 1),
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}
    Path(req["out"] + ".json").write_text(json.dumps(meta))
    return 0


# ---------------------------------------------------------------------------------------------------
# the comparison (steerlab's environment)
# ---------------------------------------------------------------------------------------------------

def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    a -= a.mean()
    b -= b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else float("nan")


def _topk_corr(ref_base: np.ndarray, a: np.ndarray, b: np.ndarray, k: int) -> float:
    """Correlation of shifts a, b pooled over each prompt's top-k tokens of the reference base distribution."""
    idx = np.argsort(-ref_base, axis=1)[:, :k]
    return _corr(np.take_along_axis(a, idx, 1), np.take_along_axis(b, idx, 1))


def _steerlab_logprobs(lm, ids_rows, steering_vec, strength, batch_size=16):
    import torch

    import steerlab as sl
    from steerlab.encoding import pad_left

    pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    out = []
    for s in range(0, len(ids_rows), batch_size):
        ids, mask = pad_left(ids_rows[s:s + batch_size], pad_id)
        with torch.no_grad():
            if steering_vec is None:
                logits = lm.model(input_ids=ids, attention_mask=mask).logits[:, -1]
            else:
                with sl.steer(lm, steering_vec, strength, positions="all"):
                    logits = lm.model(input_ids=ids, attention_mask=mask).logits[:, -1]
        out.append(torch.log_softmax(logits.double(), -1).float().numpy())
    return np.concatenate(out)


def compare(args) -> int:
    venv = Path(args.venv)
    if not venv_ready(venv):
        print(f"no llama-cpp-python venv at {venv}; run `python {Path(__file__).name} --setup` first (12+ min)",
              file=sys.stderr)
        return 2
    import torch

    import steerlab as sl
    from steerlab.data.demo import DEMO_TRAIN, demo_pairs
    from steerlab.encoding import tokenize_prompts
    from steerlab.models import embedded_gguf_path
    from steerlab.vector import SteeringVector, export_gguf, import_gguf

    torch.set_num_threads(args.threads)
    t_start = time.time()
    load0 = os.getloadavg()
    lm = sl.load_model()
    gguf_model = str(embedded_gguf_path())
    L = args.layer
    if args.vector:
        vec = SteeringVector.load(args.vector) if not args.vector.endswith(".gguf") else import_gguf(args.vector)
        L = L if L in vec.layers else vec.layers[0]
        source = f"{args.vector} (layer {L})"
    else:
        vec = sl.train_caa(lm, demo_pairs()[:DEMO_TRAIN], [L], position="mean")
        source = f"CAA, demo pairs, position mean, layer {L}"
    direction = vec[L]
    placements = [p for p in (L - 1, L, L + 1) if 1 <= p < lm.n_layers]
    per_block = {p: SteeringVector({p: direction}, vec.meta) for p in placements}

    pairs = demo_pairs()
    prompts = [p.prompt for p in pairs] + EXTRA_PROMPTS
    prompts = prompts[:args.prompts] if args.prompts else prompts
    ids_rows = [r[0] for r in tokenize_prompts(lm, prompts)]

    tmp = Path(tempfile.mkdtemp(prefix="steerlab-llamacpp-"))
    files = {p: export_gguf(v, tmp / f"vec_block{p}.gguf") for p, v in per_block.items()}
    S = args.strength
    conditions = [{"name": f"block{p}", "file": str(files[p]), "scale": S} for p in placements]
    n_layer = lm.n_layers
    if L + 1 <= n_layer - 1:  # a layer range that excludes the vector's block: must change nothing
        conditions.append({"name": "range_excl", "file": str(files[L]), "scale": S, "range": [L + 1, n_layer - 1]})
    conditions.append({"name": "range_only", "file": str(files[L]), "scale": S, "range": [L, L]})
    request = {"model": gguf_model, "prompts": ids_rows, "conditions": conditions, "out": str(tmp / "llama.npz"),
               "threads": args.threads, "n_ctx": 1024}
    (tmp / "request.json").write_text(json.dumps(request))

    t0 = time.time()
    r = subprocess.run([str(venv_python(venv)), str(Path(__file__).resolve()), "--worker", str(tmp / "request.json")],
                       env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    if r.returncode != 0:
        print("llama.cpp worker failed", file=sys.stderr)
        return r.returncode
    t_llama = time.time() - t0
    ll = dict(np.load(tmp / "llama.npz"))
    ll_meta = json.loads((tmp / "llama.npz.json").read_text())

    t0 = time.time()
    sl_base = _steerlab_logprobs(lm, ids_rows, None, 0.0)
    sl_shift = {p: _steerlab_logprobs(lm, ids_rows, per_block[p], S) - sl_base for p in placements}
    t_steerlab = time.time() - t0

    V = min(sl_base.shape[1], ll["unsteered"].shape[1])  # padded vocabularies: compare the shared ids
    sl_base = sl_base[:, :V]
    sl_shift = {p: s[:, :V] for p, s in sl_shift.items()}
    ll = {k: v[:, :V] for k, v in ll.items()}
    ll_shift = {p: ll[f"block{p}"] - ll["unsteered"] for p in placements}

    k = args.topk
    table = []
    for lp in placements:  # where llama.cpp got the vector
        row = {"llama_block": lp}
        for sp in placements:  # where steerlab added it
            row[f"all_{sp}"] = _corr(ll_shift[lp], sl_shift[sp])
            row[f"top{k}_{sp}"] = _topk_corr(sl_base, ll_shift[lp], sl_shift[sp], k)
        table.append(row)
    base_corr = _corr(ll["unsteered"], sl_base)
    top1_agree = float((ll["unsteered"].argmax(1) == sl_base.argmax(1)).mean())
    top1_agree_steered = float((ll[f"block{L}"].argmax(1) == (sl_base + sl_shift[L]).argmax(1)).mean())
    shift_size = {"steerlab": float(np.abs(sl_shift[L]).mean()), "llama": float(np.abs(ll_shift[L]).mean())}
    # least-squares slope of llama.cpp's shift on steerlab's (1.0 = same size)
    a, b = ll_shift[L].astype(np.float64).ravel(), sl_shift[L].astype(np.float64).ravel()
    slope = float((a * b).sum() / (b * b).sum())
    controls = {
        "range_excl_max_abs": float(np.abs(ll["range_excl"] - ll["unsteered"]).max()) if "range_excl" in ll else None,
        "range_only_max_abs_vs_full": float(np.abs(ll["range_only"] - ll[f"block{L}"]).max()),
        "cleared_max_abs": float(np.abs(ll["unsteered_again"] - ll["unsteered"]).max()),
    }

    print(f"\nvector: {source}; norm {float(direction.norm()):.3f}; strength {S:g}; positions all")
    print(f"model: {gguf_model.rsplit('/', 1)[-1]} in llama.cpp (llama-cpp-python {ll_meta['llama_cpp_python']}) "
          f"vs its float32 conversion in steerlab; {len(ids_rows)} prompts x {V} tokens")
    print(f"unsteered agreement: log-prob correlation {base_corr:.4f}, same top-1 token {top1_agree:.0%} "
          f"(steered at block {L}: {top1_agree_steered:.0%})")
    print(f"mean |shift| at block {L}: steerlab {shift_size['steerlab']:.4f}, llama.cpp {shift_size['llama']:.4f}; "
          f"slope llama on steerlab {slope:.3f}\n")
    head = "llama.cpp direction.N | " + " | ".join(f"steerlab L={sp} (all / top{k})" for sp in placements)
    print(head)
    print("-" * len(head))
    for row in table:
        print(f"{'N=' + str(row['llama_block']):>21} | " + " | ".join(
            f"{row[f'all_{sp}']:.3f} / {row[f'top{k}_{sp}']:.3f}".center(len(f"steerlab L={sp} (all / top{k})"))
            for sp in placements))
    print(f"\ncontrols: layer range {L + 1}..{n_layer - 1} (excludes block {L}) max |change| "
          f"{controls['range_excl_max_abs']}; range {L}..{L} vs full max |diff| {controls['range_only_max_abs_vs_full']:.3g}; "
          f"cleared vs never-steered max |diff| {controls['cleared_max_abs']:.3g}")
    diag = {row["llama_block"]: row[f"all_{L}"] for row in table}
    ok = diag[L] >= 0.95 and all(diag[p] < diag[L] for p in diag if p != L)
    print(f"\nparity {'PASS' if ok else 'FAIL'}: correlation {diag[L]:.3f} at block {L} (>= 0.95), "
          + ", ".join(f"{diag[p]:.3f} with the vector at block {p}" for p in diag if p != L))

    result = {"vector": source, "norm": float(direction.norm()), "strength": S, "layer": L, "prompts": len(ids_rows),
              "vocab": V, "topk": k, "table": table, "unsteered_corr": base_corr, "top1_agree": top1_agree,
              "top1_agree_steered": top1_agree_steered, "shift_size": shift_size, "slope": slope,
              "controls": controls, "pass": ok, "llama": ll_meta,
              "seconds": {"total": round(time.time() - t_start, 1), "llama": round(t_llama, 1),
                          "steerlab": round(t_steerlab, 1)},
              "machine": {"cores": os.cpu_count(), "load_before": [round(x, 2) for x in load0],
                          "load_after": [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(),
                          "torch": torch.__version__, "threads": args.threads}}
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setup", action="store_true", help="build llama-cpp-python in --venv (skipped when it exists)")
    ap.add_argument("--venv", default=str(DEFAULT_VENV), help="the llama-cpp-python venv (default %(default)s)")
    ap.add_argument("--layer", type=int, default=12, help="block the vector is trained for and exported at")
    ap.add_argument("--strength", type=float, default=6.0, help="steering strength (llama.cpp's scale)")
    ap.add_argument("--vector", help="use this .safetensors/.gguf vector instead of training a demo CAA vector")
    ap.add_argument("--prompts", type=int, default=0, help="use only the first N prompts (default all 64)")
    ap.add_argument("--topk", type=int, default=50, help="top-k tokens (of steerlab's unsteered distribution)")
    ap.add_argument("--threads", type=int, default=1, help="threads for both sides (a shared machine: 1)")
    ap.add_argument("--out", help="also write the results as JSON here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(Path(args.worker))
    if args.setup:
        return setup(Path(args.venv))
    return compare(args)


if __name__ == "__main__":
    sys.exit(main())
