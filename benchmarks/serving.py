"""Serving under load: 32 concurrent streamed chat requests × 64 new tokens against `steerlab serve`,
with 0 % / 50 % / 100 % of the rows steered by 1 / 8 / 32 distinct vectors, side by side, on each engine
(`--engines builtin,vllm,vllm-compiled`: the built-in engine, vLLM eager, vLLM with its compiled model).

The server runs in its own process (`steerlab serve --engine ...`, embedded model, float32); this process is
only the load generator (asyncio + httpx, streaming, so time-to-first-token is measured where the
client sees it). Every request sends `ignore_eos` so each row generates exactly `--new-tokens`
tokens whatever its steering does to the text: configurations then do the same work and differ only
in steering. Vectors are random directions (norm 4, a CAA vector's size at these layers) at layers
10-13, strength 4, positions after_user, registered over the API (`POST /v1/vectors`).

Per configuration: throughput (generated tokens / wall time of the burst), tokens per second of
the server process's CPU time (user+sys, from /proc; it moves far less than wall time on a shared,
loaded machine), request latency p50/p95 and TTFT p50/p95. Configurations run round-robin, `--repeats` times, so
load drift spreads over all of them; the table shows medians over repeats. Then memory per
registered vector: the server's RSS before and after registering `--memory-vectors` full-depth
vectors, divided by their count, next to the vectors' own bytes.

    python benchmarks/serving.py                    # the built-in engine, the issue's sizes (~5-10 min)
    python benchmarks/serving.py --engines builtin,vllm,vllm-compiled   # side by side (the vLLM venv)
    python benchmarks/serving.py --quick            # pipeline check (small)

Server CPU time counts the server process and every process it started (vLLM's engine core and workers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, log, machine_info, machine_line, print_table, write_json  # noqa: E402

TOPICS = ["the sea", "mountains", "breakfast", "trains", "music", "rain", "gardening", "the moon", "coffee", "chess",
          "bicycles", "winter", "libraries", "bread", "rivers", "owls"]


def prompts(n: int) -> list[str]:
    forms = ["Tell me about {}.", "Write a short story about {}.", "What do you like about {}? Answer in detail."]
    return [forms[i % 3].format(TOPICS[i % len(TOPICS)]) for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of `pid` and all its descendants (vLLM runs its engine core and workers as children)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += proc_cpu_s(p)
        except (OSError, IndexError, ValueError):  # exited meanwhile
            pass
        todo += children.get(p, [])
    return total


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def vector_file_bytes(model_id: str, family: str, hidden: int, n_layers: int, layers, seed: int) -> bytes:
    import torch
    from safetensors.torch import save

    from steerlab.vector import VectorMetadata

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for l in layers:
        d = torch.randn(hidden, generator=g)
        tensors[f"layer.{l}"] = (d / d.norm() * 4.0).contiguous()
    meta = VectorMetadata(model_id, family, hidden, n_layers, "random", tuple(layers), positions="after_user")
    return save(tensors, metadata={"steerlab": meta.to_json()})


async def one_request(client, url, body) -> dict:
    t0 = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", url, json=body) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            if ev.get("usage"):
                tokens = ev["usage"]["completion_tokens"]
            ch = ev.get("choices") or []
            if first is None and ch and ch[0].get("delta", {}).get("content"):
                first = time.perf_counter()
    end = time.perf_counter()
    return {"latency": end - t0, "ttft": (first or end) - t0, "tokens": tokens}


async def burst(base: str, model: str, n: int, new_tokens: int, steered_frac: float, n_vectors: int) -> dict:
    import httpx

    n_steered = round(n * steered_frac)
    bodies = []
    for i, p in enumerate(prompts(n)):
        body = {"model": model, "messages": [{"role": "user", "content": p}], "max_tokens": new_tokens,
                "temperature": 0, "stream": True, "stream_options": {"include_usage": True}, "ignore_eos": True}
        if i < n_steered:
            body["steering"] = {"vector": f"bench{i % n_vectors}", "strength": 4.0}
        bodies.append(body)
    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one_request(client, base + "/v1/chat/completions", b) for b in bodies))
        wall = time.perf_counter() - t0
    tokens = sum(r["tokens"] for r in results)
    return {"wall_s": wall, "tokens": tokens, "throughput": tokens / wall,
            "latency": [r["latency"] for r in results], "ttft": [r["ttft"] for r in results]}


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


ENGINES = {"builtin": ["--engine", "builtin"], "vllm": ["--engine", "vllm", "--eager"],
           "vllm-compiled": ["--engine", "vllm", "--compiled"]}


def start_server(engine: str, args, port: int):
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "TOKENIZERS_PARALLELISM": "false", "STEERLAB_API_KEY": "", "VLLM_CPU_KVCACHE_SPACE": "2"}
    cmd = [sys.executable, "-c", "from steerlab.cli import app; app()", "serve", "--port", str(port),
           "--max-batch", str(max(32, args.requests)), "--max-new-tokens-limit", str(max(512, args.new_tokens)),
           "--dtype", args.dtype, *ENGINES[engine], *(["--model", args.model] if args.model else [])]
    log(f"starting server: steerlab {' '.join(cmd[3:])}")
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_healthy(server, base: str, timeout_s: float = 600) -> dict:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        if server.poll() is not None:
            raise SystemExit(f"server exited: {server.stderr.read()[-2000:]}")
        try:
            return httpx.get(base + "/health", timeout=2).json()
        except httpx.HTTPError:
            if time.monotonic() > deadline:
                raise SystemExit(f"server did not start in {timeout_s:.0f} s")
            time.sleep(0.5)


def bench_engine(engine: str, args, configs, max_vectors: int) -> tuple[dict, dict | None]:
    """Every configuration on one engine's server: {config: [repeat results]}, and memory per vector (builtin)."""
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(engine, args, port)
    memory = None
    try:
        health = wait_healthy(server, base)
        model, n_layers, hidden = health["model"], health["n_layers"], health["hidden_size"]
        from steerlab.models import model_shape

        family = model_shape(args.model).family  # vectors must name the served model's family
        for k in range(max_vectors):
            data = vector_file_bytes(model, family, hidden, n_layers, [10 + k % 4], seed=k)
            httpx.post(f"{base}/v1/vectors?name=bench{k}", content=data, timeout=30).raise_for_status()
        log(f"{engine}: warm-up burst")
        asyncio.run(burst(base, model, args.requests, min(8, args.new_tokens), 1.0, max_vectors))
        runs: dict = {c: [] for c in configs}
        for rep in range(args.repeats):
            for c in configs:
                cpu0 = tree_cpu_s(server.pid)
                res = asyncio.run(burst(base, model, args.requests, args.new_tokens, *c))
                res["server_cpu_s"] = tree_cpu_s(server.pid) - cpu0
                res["load_avg"] = os.getloadavg()[0]
                runs[c].append(res)
                log(f"{engine} repeat {rep + 1}/{args.repeats} steered {c[0]:.0%} × {c[1]} vectors: "
                    f"{res['throughput']:.1f} tok/s, wall {res['wall_s']:.1f} s, server CPU {res['server_cpu_s']:.1f} s, "
                    f"load {res['load_avg']:.1f}")
        if engine == "builtin" and args.memory_vectors:  # memory per registered vector (full depth: every layer)
            rss0 = proc_rss_mb(server.pid)
            one = vector_file_bytes(model, family, hidden, n_layers, range(n_layers), seed=999)
            for k in range(args.memory_vectors):
                httpx.post(f"{base}/v1/vectors?name=mem{k}", content=one, timeout=30).raise_for_status()
            rss1 = proc_rss_mb(server.pid)
            for k in range(args.memory_vectors):
                httpx.delete(f"{base}/v1/vectors/mem{k}", timeout=30)
            memory = {"vectors": args.memory_vectors, "layers_each": n_layers, "hidden": hidden,
                      "tensor_kib_each": n_layers * hidden * 4 / 1024, "rss_before_mb": rss0, "rss_after_mb": rss1,
                      "rss_kib_per_vector": (rss1 - rss0) * 1024 / args.memory_vectors}
    finally:
        server.terminate()
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()
    return runs, memory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", default="builtin", help="comma-separated: builtin, vllm (eager), vllm-compiled")
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--vectors", default="1,8,32", help="distinct vectors among the steered rows")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--model", default=None, help="what `steerlab serve --model` takes (default: the embedded model; "
                    "on a GPU: qwen2.5-coder-1.5b with --requests 256)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1")),
                    help="torch threads in the server (default: $OMP_NUM_THREADS, else 1)")
    ap.add_argument("--memory-vectors", type=int, default=200)
    ap.add_argument("--quick", action="store_true", help="8 requests × 8 tokens, 1 repeat: a pipeline check")
    args = ap.parse_args()
    if args.quick:
        args.requests, args.new_tokens, args.repeats, args.memory_vectors = 8, 8, 1, 20
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    bad = [e for e in engines if e not in ENGINES]
    if bad:
        raise SystemExit(f"unknown engine(s) {bad}: choose from {', '.join(ENGINES)}")
    counts = [int(k) for k in args.vectors.split(",")]
    info = machine_info()
    configs = [(0.0, 0)] + [(f, k) for f in (0.5, 1.0) for k in counts]
    results = {e: bench_engine(e, args, configs, max(counts)) for e in engines}

    rows, table = [], []
    first = engines[0]
    first_base = statistics.median(r["throughput"] for r in results[first][0][(0.0, 0)])
    for engine in engines:
        runs = results[engine][0]
        base_tp = statistics.median(r["throughput"] for r in runs[(0.0, 0)])
        base_per_cpu = statistics.median(r["tokens"] / r["server_cpu_s"] for r in runs[(0.0, 0)])
        for c in configs:
            rs = runs[c]
            lat = [x for r in rs for x in r["latency"]]
            ttft = [x for r in rs for x in r["ttft"]]
            tp = statistics.median(r["throughput"] for r in rs)
            per_cpu = statistics.median(r["tokens"] / r["server_cpu_s"] for r in rs)
            row = {"engine": engine, "steered": c[0], "vectors": c[1], "throughput_tok_s": tp,
                   "vs_unsteered": tp / base_tp, f"vs_{first}_unsteered": tp / first_base,
                   "tokens_per_server_cpu_s": per_cpu, "latency_p50_s": pct(lat, 50), "latency_p95_s": pct(lat, 95),
                   "ttft_p50_s": pct(ttft, 50), "ttft_p95_s": pct(ttft, 95),
                   "server_cpu_s": statistics.median(r["server_cpu_s"] for r in rs),
                   "throughputs": [r["throughput"] for r in rs], "tokens": rs[0]["tokens"]}
            rows.append(row)
            table.append([engine, f"{c[0]:.0%}", c[1] or "-", tp, f"{tp / base_tp:.2f}x", f"{tp / first_base:.2f}x",
                          per_cpu, f"{per_cpu / base_per_cpu:.2f}x", row["latency_p50_s"], row["latency_p95_s"],
                          row["ttft_p50_s"], row["ttft_p95_s"]])
    memory = next((m for _, m in results.values() if m), None)
    notes = [machine_line(info),
             f"{args.requests} concurrent streamed chat requests × {args.new_tokens} new tokens (ignore_eos), greedy, "
             f"{args.dtype}; server torch threads {args.threads}; medians of {args.repeats} round-robin repeats; "
             "latency/TTFT percentiles pooled over repeats; server CPU = the server and its child processes"]
    if memory:
        notes.append(f"memory (builtin): {memory['vectors']} registered vectors of {memory['layers_each']} layers × "
                     f"{memory['hidden']}: {memory['tensor_kib_each']:.1f} KiB of float32 each; server RSS "
                     f"+{memory['rss_kib_per_vector']:.1f} KiB per vector ({memory['rss_before_mb']:.0f} → "
                     f"{memory['rss_after_mb']:.0f} MiB)")
    print_table(f"steerlab serve: {args.requests} concurrent requests, engine × steered share × distinct vectors",
                ["engine", "steered", "vectors", "tok/s (wall)", "vs 0%", f"vs {first} 0%", "tok per server CPU-s",
                 "vs 0%", "lat p50 s", "lat p95 s", "TTFT p50 s", "TTFT p95 s"], table, notes)
    path = write_json("serving", {"machine": info, "args": vars(args), "rows": rows, "memory": memory,
                                  "runs": {f"{e}-{c[0]}-{c[1]}": results[e][0][c] for e in engines for c in configs}})
    log(f"wrote {path}")


if __name__ == "__main__":
    main()
