"""The GPU check's CPU path (what CI can run): steering against the CPU float32 reference in float32 and bfloat16,
the server with a mixed steered/unsteered batch, and the timings, with the CPU as the device."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_cpu_path(tmp_path):
    out = tmp_path / "check.json"
    r = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_check.py"), "--device", "cpu", "--json", str(out)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["device"] == "cpu" and len(got["checks"]) == 3 and all(c["ok"] for c in got["checks"])
    assert {"extraction cpu", "generation cpu"} <= set(got["seconds"])
    assert "cpu_flags" in got["machine"]
    assert "the CPU path" in r.stdout and "PASS" in r.stdout
