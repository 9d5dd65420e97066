"""The GPU check: steering on an accelerator against the CPU float32 reference, the server on it, and timings.

    python tools/gpu_check.py                 # on a CUDA machine: every check, < 5 minutes on the embedded model
    python tools/gpu_check.py --device cpu    # the CPU path (what CI runs): the same checks with the CPU as device

1. Steering: for 16 prompts, the next-token log-prob shift that a vector causes (steered minus unsteered
   log-softmax at the last prompt position) on the device, correlated with the CPU float32 shift: ≥ 0.999 in
   float32, ≥ 0.99 in bfloat16.
2. The server on the device: 8 concurrent chat requests through the `openai` client, half steered (different
   vectors and strengths), each equal to `steerlab.generate` for that request alone on the device.
3. Timings, device vs CPU: CAA extraction (every layer, the 48 demo pairs) and steered generation (16 prompts ×
   32 tokens).
Prints a table and the machine; `--json PATH` writes them. Exit code 1 if a check fails.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from pathlib import Path

import torch

import steerlab as sl
from steerlab.data import demo_pairs
from steerlab.hardware import choose_device, detect, machine_block

PROMPTS = ["How was your weekend?", "Tell me about the sea.", "What is a good breakfast?", "Describe a storm.",
           "Write a haiku about autumn.", "What do you think of cats?", "Give me advice on studying.",
           "How do airplanes fly?", "What is your favourite colour?", "Tell me a joke.", "Plan a picnic.",
           "Why is the sky blue?", "Describe your ideal home.", "What makes a good friend?",
           "How do I start running?", "Tell me about the moon."]


def shifts(lm, vec, layer: int, strength: float) -> torch.Tensor:
    """[prompts, vocab] steered minus unsteered next-token log-probs (float32, on the CPU)."""
    batch = sl.encode(lm, PROMPTS)
    inputs = batch.to(lm.device)
    with torch.no_grad():
        plain = lm.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).logits[:, -1].float()
        with sl.steer(lm, [sl.Steering(vec, strength, [layer])], batch=batch):
            steered = lm.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).logits[:, -1].float()
    return (steered.log_softmax(-1) - plain.log_softmax(-1)).cpu()


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.corrcoef(torch.stack([a.flatten().double(), b.flatten().double()]))[0, 1])


def check_server(lm, vectors: dict) -> tuple[bool, str]:
    import openai
    import uvicorn

    from steerlab.serve import create_app
    from steerlab.serve.engines.builtin import BuiltinEngine

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(BuiltinEngine(lm, max_batch=8), vectors), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline:
            return False, "server did not start"
        time.sleep(0.05)
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
    specs = [None, {"vector": "a", "strength": 4}, None, {"vector": "b", "strength": -4}] * 2
    got: dict[int, str] = {}

    def ask(i: int) -> None:
        extra = {"steering": specs[i]} if specs[i] else None
        r = client.chat.completions.create(model=lm.model_id, messages=[{"role": "user", "content": PROMPTS[i]}],
                                           max_tokens=12, temperature=0, extra_body=extra)
        got[i] = r.choices[0].message.content

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(specs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    server.should_exit = True
    thread.join(30)
    bad = []
    for i, spec in enumerate(specs):
        steering = sl.Steering(vectors[spec["vector"]], spec["strength"]) if spec else None
        if got.get(i) != sl.generate(lm, [PROMPTS[i]], steering, max_new_tokens=12)[0]:
            bad.append(i)
    return not bad, f"{len(specs) - len(bad)}/{len(specs)} requests equal their solo generation" + \
        (f" (differ: {bad})" if bad else "")


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="the device to check (auto: the first CUDA device)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", type=Path, default=None, help="write the results here")
    args = ap.parse_args(argv)
    device = choose_device(args.device, detect())
    rows: list[tuple[str, str, bool]] = []
    timings: dict[str, float] = {}
    print(f"checking device {device} (machine: {json.dumps(machine_block())})", flush=True)
    if device == "cpu":
        print("no accelerator here: the device checks run with the CPU as device (the CPU path)", flush=True)

    ref = sl.load_model(args.model, dtype="float32", device="cpu")
    layer = ref.n_layers // 2
    vec = sl.train_caa(ref, demo_pairs()[:40], [layer], position="mean")
    ref_shift = shifts(ref, vec, layer, 6.0)
    for dtype, goal in (("float32", 0.999), ("bfloat16", 0.99)):
        lm = sl.load_model(args.model, dtype=dtype, device=device)
        r = correlation(shifts(lm, vec, layer, 6.0), ref_shift)
        rows.append((f"log-prob shift vs CPU float32, {dtype} on {device}", f"r = {r:.5f} (goal ≥ {goal})", r >= goal))
        del lm
    lm = sl.load_model(args.model, dtype="float32", device=device)
    other = sl.train_caa(lm, demo_pairs()[8:40], [layer - 2], position="mean")
    ok, what = check_server(lm, {"a": vec, "b": other})
    rows.append((f"server on {device}: mixed steered/unsteered batch", what, ok))

    pairs = demo_pairs()
    for where, model in (("cpu", ref), (device, lm)):
        if where == "cpu" and device == "cpu" and "extraction cpu" in timings:
            continue
        timings[f"extraction {where}"] = timed(lambda m=model: sl.train_caa(m, pairs, None, position="mean"))
        timings[f"generation {where}"] = timed(lambda m=model: sl.generate(m, PROMPTS, sl.Steering(vec, 4.0),
                                                                          max_new_tokens=32))
    width = max(len(r[0]) for r in rows)
    print(f"\n{'check':{width}s}  result")
    for name, result, ok in rows:
        print(f"{name:{width}s}  {'PASS' if ok else 'FAIL'}  {result}")
    print(f"\n{'timing (float32)':{width}s}  seconds")
    for name, s in timings.items():
        print(f"{name:{width}s}  {s:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "machine": machine_block(),
                                         "checks": [{"check": n, "result": r, "ok": ok} for n, r, ok in rows],
                                         "seconds": timings}, indent=1))
    return 0 if all(ok for _, _, ok in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
