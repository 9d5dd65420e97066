"""Shared plumbing for the benchmark scripts (not a benchmark itself).

Every measured thing runs in its own subprocess (`run_worker`), so its wall time and its peak
resident memory (ru_maxrss from wait4, which covers the whole child: interpreter, torch, model and
the work) are its own. Workers print one JSON object as the last line of stdout; progress and logs
go to stderr.

Peers (repeng, steering-vectors) pin numpy<2 and transformers<5, so they run in their own virtual
environment, `benchmarks/.venvs/peers`, which `ensure_peer_venv()` creates on first use.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
OUT_DIR = HERE / "out"
VENV_DIR = HERE / ".venvs" / "peers"
DATA_ROOT = Path(os.environ.get("STEERLAB_DATA", "/work/shared/data"))
MWE_FILE = DATA_ROOT / "mwe" / "advanced-ai-risk" / "corrigible-neutral-HHH.jsonl"

# Pinned peer versions (checked on PyPI: the newest releases at the time of writing).
PEER_REQUIREMENTS = [
    "torch==2.13.0",  # pinned: the local CPU wheel (an unpinned torch pulls the CUDA build)
    "numpy<2",
    "transformers<5",
    "repeng==0.4.0",
    "steering-vectors==0.12.2",
]


# ---------------------------------------------------------------------------------------------
# machine and environment


def machine_info() -> dict[str, Any]:
    """CPU model, core counts, memory, load, Python/torch/transformers versions."""
    cpu = "unknown"
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                have = set(line.split(":", 1)[1].split())
                flags = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_tile", "fma") if f in have]
    except OSError:
        pass
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cpu_flags": flags,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "mem_total_gb": mem_gb,
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        info["steerlab_commit"] = out.stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "steerlab"], capture_output=True, text=True)
        info["steerlab_tree_dirty"] = bool(dirty.stdout.strip())
    except OSError:
        pass
    return info


def model_checkpoint() -> Path:
    """The embedded model's safetensors checkpoint directory (converted from the GGUF on first use)."""
    import steerlab.models as m

    return m.convert_gguf(m.embedded_gguf_path())


def peer_checkpoint() -> Path:
    """A copy of the embedded checkpoint that transformers<5 loads to the same model.

    steerlab's cache is written by transformers 5, and transformers 4.x cannot read it as is:
      * `safetensors.torch.save_model` stores no `{"format": "pt"}` metadata ("Incompatible
        safetensors file. File metadata is not ['pt', ...] but None");
      * the tied embedding is stored once, as `lm_head.weight`; 4.x expects
        `model.embed_tokens.weight` and leaves the embedding on the meta device;
      * config.json has transformers 5's `rope_parameters` and no `rope_theta`; 4.x would silently
        fall back to rope_theta=10000 instead of the model's 100000 (different activations);
      * tokenizer_config.json names the 5.x class "TokenizersBackend", unknown to 4.x.
    We write the same tensors (plus the embedding under its 4.x name) with that metadata, add
    `rope_theta`/`rope_scaling` to the config and name "PreTrainedTokenizerFast" (same tokenizer.json).
    The vector comparison with the naive loop checks that the peers run the same model.
    """
    src = model_checkpoint()
    key = hashlib.sha256(f"{src}|v3".encode()).hexdigest()[:10]
    dst = HERE / ".venvs" / f"peer-checkpoint-{key}"
    if (dst / "model.safetensors").is_file():
        return dst
    from safetensors.torch import load_file, save_file

    tmp = dst.with_name(dst.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            (tmp / f.name).write_bytes(f.read_bytes())
    tok_cfg = tmp / "tokenizer_config.json"
    if tok_cfg.is_file():
        cfg = json.loads(tok_cfg.read_text())
        if cfg.get("tokenizer_class") == "TokenizersBackend":
            cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        tok_cfg.write_text(json.dumps(cfg, indent=2))
    model_cfg = tmp / "config.json"
    cfg = json.loads(model_cfg.read_text())
    rope = cfg.get("rope_parameters") or {}
    if "rope_theta" not in cfg and "rope_theta" in rope:
        cfg["rope_theta"] = rope["rope_theta"]
        if rope.get("rope_type", "default") != "default":
            cfg["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    model_cfg.write_text(json.dumps(cfg, indent=2))
    tensors = load_file(str(src / "model.safetensors"))
    if "model.embed_tokens.weight" not in tensors and "lm_head.weight" in tensors:
        tensors["model.embed_tokens.weight"] = tensors["lm_head.weight"].clone()
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    tmp.rename(dst)
    return dst


def venv_python() -> Path:
    return VENV_DIR / "bin" / "python"


def ensure_peer_venv(quiet: bool = False) -> Path:
    """Create benchmarks/.venvs/peers with the pinned peer requirements (once; a stamp file records them)."""
    stamp = VENV_DIR / "steerlab-bench-requirements.txt"
    want = "\n".join(PEER_REQUIREMENTS) + "\n"
    if venv_python().is_file() and stamp.is_file() and stamp.read_text() == want:
        return venv_python()
    log(f"creating the peer virtual environment {VENV_DIR} (one time, ~1-2 min) ...")
    VENV_DIR.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV_DIR)], check=True)
    cmd = [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check"]
    if quiet:
        cmd.append("-q")
    pip = subprocess.run(cmd + PEER_REQUIREMENTS, capture_output=True, text=True)
    if pip.returncode != 0:
        raise RuntimeError(f"pip install into {VENV_DIR} failed:\n{pip.stdout[-3000:]}\n{pip.stderr[-3000:]}")
    check = subprocess.run(
        [str(venv_python()), "-c", "import repeng, steering_vectors, transformers, torch, numpy; print('ok')"],
        capture_output=True, text=True,
    )
    if check.returncode != 0:
        raise RuntimeError(f"peer venv does not import its packages:\n{check.stderr}")
    stamp.write_text(want)
    return venv_python()


def peer_versions() -> dict[str, str]:
    """Versions installed in the peer venv."""
    code = (
        "import json, importlib.metadata as m\n"
        "print(json.dumps({p: m.version(p) for p in ['repeng','steering-vectors','transformers','torch','numpy','scikit-learn']}))"
    )
    out = subprocess.run([str(venv_python()), "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# subprocess workers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_worker(python: str | Path, script: Path, args: Sequence[str], *, label: str, env: dict | None = None) -> dict:
    """Run `python script args` in a fresh process; return its JSON result plus the process's peak RSS.

    The result gets `peak_rss_mb` (ru_maxrss of that process, from wait4) and `process_wall_s`
    (including interpreter start and model load).
    """
    log(f"running {label} ...")
    t0 = time.perf_counter()
    full_env = dict(os.environ)
    full_env.setdefault("TOKENIZERS_PARALLELISM", "false")
    full_env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # The workers import _common from here; system-python workers import steerlab from the repo.
    full_env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(REPO)] + ([full_env["PYTHONPATH"]] if full_env.get("PYTHONPATH") else []))
    if env:
        full_env.update(env)
    proc = subprocess.Popen([str(python), str(script), *map(str, args)], stdout=subprocess.PIPE, env=full_env, text=True)
    assert proc.stdout is not None
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{label} failed (exit {proc.returncode}); stdout tail:\n{stdout[-2000:]}")
    lines = [l for l in stdout.strip().splitlines() if l.startswith("{")]
    if not lines:
        raise RuntimeError(f"{label} printed no JSON result; stdout tail:\n{stdout[-2000:]}")
    result = json.loads(lines[-1])
    result["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 1)  # Linux: KiB
    result["process_wall_s"] = round(wall, 2)
    log(f"{label}: done in {wall:.1f} s (peak RSS {result['peak_rss_mb']:.0f} MiB)")
    return result


def rss_now_mb() -> float:
    """Current resident set size of this process (MiB), from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def emit(result: dict) -> None:
    """Worker side: print the result as the last stdout line."""
    print(json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# data


def load_items(n: int, offset: int = 0, path: Path = MWE_FILE):
    """The first `n` items of an MWE file after `offset` (file order: deterministic, no shuffle)."""
    from steerlab.data import load_mwe

    items = load_mwe(path)
    if offset + n > len(items):
        raise SystemExit(f"{path.name} has {len(items)} items; asked for {n} after {offset}")
    return items[offset:offset + n]


# ---------------------------------------------------------------------------------------------
# output


def out_dir(name: str) -> Path:
    d = OUT_DIR / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_json(name: str, payload: dict) -> Path:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    payload = {"benchmark": name, "finished_at": _dt.datetime.now().isoformat(timespec="seconds"), **payload}
    path = OUT_DIR / f"{name}-{stamp}.json"
    text = json.dumps(payload, indent=2, default=str)
    path.write_text(text)
    (OUT_DIR / f"{name}-latest.json").write_text(text)
    return path


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], notes: Sequence[str] = ()) -> None:
    """A table with rich when available, plain text otherwise."""
    cells = [[_fmt(c) for c in r] for r in rows]
    try:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=title)
        for i, c in enumerate(columns):
            t.add_column(c, justify="left" if i == 0 else "right")
        for r in cells:
            t.add_row(*r)
        console = Console(width=max(100, min(200, sum(max(len(x) for x in [c, *[r[i] for r in cells]]) + 3 for i, c in enumerate(columns)))))
        console.print(t)
        for n in notes:
            console.print(f"  {n}", highlight=False)
        return
    except ImportError:
        pass
    widths = [max(len(str(c)), *(len(r[i]) for r in cells)) if cells else len(str(c)) for i, c in enumerate(columns)]
    print(title)
    print("  ".join(str(c).ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in cells:
        print("  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths))))
    for n in notes:
        print(f"  {n}")


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if x != x:
            return "nan"
        if x == 0:
            return "0"
        if abs(x) < 1e-3 or abs(x) >= 1e6:
            return f"{x:.2e}"
        if abs(x) >= 100:
            return f"{x:.0f}"
        return f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"
    return str(x)


def machine_line(info: dict) -> str:
    return (f"machine: {info.get('cpu')} | {info.get('usable_cores')} usable cores | torch {info.get('torch')} "
            f"| transformers {info.get('transformers')} | load avg at start "
            f"{info.get('load_avg_at_start')}")
