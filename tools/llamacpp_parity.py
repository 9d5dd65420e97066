"""Does an exported control vector do in llama.cpp what it does in steerlab? (issue 15, GUIDE §8)

1. Builds llama-cpp-python from source in its own venv (`~/.cache/steerlab/llamacpp-venv`, or
   `--venv`): ~12+ min on one core the first time (cached after; `--threads-build` cores, niced).
2. Trains the demo vector (cheerful vs gloomy, layer `--layer`, as `steerlab demo` does) or reads
   `--vector`, exports it with `steerlab.gguf_io.export_gguf`, and reads the GGUF back with
   `import_gguf` (what llama.cpp gets is what steerlab wrote).
3. For `--n-prompts` chat prompts, next-token log-probabilities at the last prompt position:
   steerlab (embedded model, float32, `Steering(vec, strength, positions="all")`: llama.cpp adds a
   control vector at every position) and llama.cpp (the embedded model's own GGUF file, with the
   vector applied through `llama_apply_adapter_cvec` at the GGUF's block N and, as controls, at
   N-2 .. N+2). Same token ids on both sides.
4. Reports the Pearson correlation of the log-probability shifts (steered - unsteered) over each
   prompt's top-`--top-k` tokens, per placement. Expected: ≥ 0.95 at block N, lower at the
   neighbours (a one-layer offset is the silent trap of GUIDE §8).

    python tools/llamacpp_parity.py                     # build if needed, then compare (JSON to --out)
    python tools/llamacpp_parity.py --build-only        # just the venv
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
PROMPTS = ["How was your weekend?", "Tell me about the sea.", "What is a good breakfast?", "Describe your ideal day.",
           "What do you think of rainy days?", "How do you feel about Mondays?", "Tell me about your neighbourhood.",
           "What is the best part of winter?", "Describe a train journey.", "What did you learn this year?",
           "How was the concert?", "What is your favourite season and why?"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path, build_threads: int) -> Path:
    py = venv_python(venv)
    if py.exists() and subprocess.run([str(py), "-c", "import llama_cpp"], capture_output=True).returncode == 0:
        return py
    log(f"building {LLAMA_CPP_PYTHON} from source in {venv} (~12+ min on one core; cached after)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(build_threads), "MAKEFLAGS": f"-j{build_threads}",
           "CMAKE_ARGS": "-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF "
                         "-DLLAMA_CURL=OFF"}
    subprocess.run([str(py), "-m", "pip", "install", "-q", "numpy"], check=True, env=env)
    t0 = time.time()
    subprocess.run(["nice", "-n", "10", str(py), "-m", "pip", "install", "--no-binary", "llama-cpp-python",
                    "--no-cache-dir", LLAMA_CPP_PYTHON], check=True, env=env)
    log(f"built in {time.time() - t0:.0f} s")
    return py


def pearson(a, b) -> float:
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", type=Path, default=Path.home() / ".cache" / "steerlab" / "llamacpp-venv")
    ap.add_argument("--vector", type=Path, help="a steerlab vector file (default: train the demo vector)")
    ap.add_argument("--layer", type=int, default=12, help="layer of the demo vector")
    ap.add_argument("--strength", type=float, default=4.0)
    ap.add_argument("--n-prompts", type=int, default=12)
    ap.add_argument("--top-k", type=int, default=50)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--threads-build", type=int, default=1)
    ap.add_argument("--build-only", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE.parent / "benchmarks" / "out" / "llamacpp-parity.json")
    args = ap.parse_args()
    py = ensure_venv(args.venv, args.threads_build)
    if args.build_only:
        return

    import tempfile

    import numpy as np
    import torch

    import steerlab as sl
    from steerlab.gguf_io import export_gguf, import_gguf
    from steerlab.models import embedded_gguf_path

    torch.set_num_threads(args.threads)
    lm = sl.load_model()
    if args.vector:
        vec = sl.SteeringVector.load(args.vector)
    else:
        from importlib import resources

        from steerlab.data.pairs import load_pairs

        with resources.as_file(resources.files("steerlab") / "resources" / "demo_contrast.jsonl") as p:
            pairs = load_pairs(p)
        log(f"training the demo vector at layer {args.layer}")
        vec = sl.train_caa(lm, pairs, [args.layer], position="mean")
    if len(vec.layers) != 1:
        raise SystemExit("give a one-layer vector (the comparison moves it across blocks)")
    with tempfile.TemporaryDirectory() as tmp:
        gguf_vec = import_gguf(export_gguf(vec, Path(tmp) / "v.gguf"))
    (layer,) = gguf_vec.layers  # direction.N in the file
    direction = gguf_vec.directions[layer]
    assert torch.equal(direction, vec.directions[layer]), "GGUF round trip changed the vector"

    prompts = PROMPTS[: args.n_prompts]
    enc = [sl.encode(lm, [p]).input_ids[0].tolist() for p in prompts]
    steering = sl.Steering(gguf_vec, args.strength, positions="all")

    def steerlab_logprobs(steer):
        out = []
        for ids in enc:
            x = torch.tensor([ids])
            with torch.no_grad():
                if steer is None:
                    logits = lm.model(input_ids=x).logits[0, -1]
                else:
                    with sl.steer(lm, [steer]):
                        logits = lm.model(input_ids=x).logits[0, -1]
            out.append(torch.log_softmax(logits.double(), -1))
        return out

    base, steered = steerlab_logprobs(None), steerlab_logprobs(steering)
    keep = [sorted(set(torch.topk(b, args.top_k).indices.tolist()) | set(torch.topk(s, args.top_k).indices.tolist()))
            for b, s in zip(base, steered)]
    sl_shift = np.concatenate([(s[k] - b[k]).numpy() for b, s, k in zip(base, steered, keep)])

    offsets = [o for o in (-2, -1, 0, 1, 2) if 1 <= layer + o < lm.n_layers]
    placements = [{"name": f"block{layer + o}", "layer": layer + o, "vector": (args.strength * direction).tolist()}
                  for o in offsets]
    job = {"gguf": str(embedded_gguf_path()), "prompts": enc, "keep": keep, "n_embd": lm.hidden_size,
           "placements": placements, "threads": args.threads}
    log(f"llama.cpp: {len(prompts)} prompts × {len(placements) + 1} settings")
    r = subprocess.run([str(py), str(HERE / "llamacpp_worker.py")], input=json.dumps(job), capture_output=True,
                       text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"llama.cpp worker failed:\n{r.stderr[-3000:]}")
    res = json.loads(r.stdout.strip().splitlines()[-1])
    lc_base = [np.asarray(x) for x in res["unsteered"]]
    base_agree = pearson(np.concatenate([b[k].numpy() for b, k in zip(base, keep)]), np.concatenate(lc_base))
    rows = []
    for o, pl in zip(offsets, placements):
        lc_shift = np.concatenate([np.asarray(s) - b for s, b in zip(res[pl["name"]], lc_base)])
        rows.append({"llama_cpp_block": pl["layer"], "offset": o, "correlation": pearson(sl_shift, lc_shift),
                     "mean_abs_shift_llama_cpp": float(np.abs(lc_shift).mean())})
    summary = {"vector_layer": layer, "strength": args.strength, "n_prompts": len(prompts), "top_k": args.top_k,
               "mean_abs_shift_steerlab": float(np.abs(sl_shift).mean()),
               "unsteered_logprob_correlation": base_agree, "llama_cpp_python": res.get("llama_cpp_python"),
               "model_gguf": Path(job["gguf"]).name, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2))
    print(f"steerlab layer {layer} (direction.{layer}), strength {args.strength}, {len(prompts)} prompts, "
          f"top-{args.top_k} tokens; unsteered log-prob agreement {base_agree:.4f}")
    print("llama.cpp block | offset | correlation of log-prob shifts | mean |shift| llama.cpp")
    for row in rows:
        print(f"{row['llama_cpp_block']:>15} | {row['offset']:+d}     | {row['correlation']:.3f}"
              f"                          | {row['mean_abs_shift_llama_cpp']:.3f}")
    print(f"mean |shift| steerlab: {summary['mean_abs_shift_steerlab']:.3f}; written {args.out}")


if __name__ == "__main__":
    main()
