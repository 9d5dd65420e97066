"""Every code block of README.md runs as written.

The blocks are extracted from README.md itself (nothing is copied here), so a README edit is tested as
it is. They run in a scratch directory laid out like the repository (`steerlab/` and `../shared`
resolve as from the repository root), so nothing is written into the checkout:

- ```python blocks run in a fresh interpreter;
- the first ```bash block (install, demo, test suite) is what `.ci/run` runs: the test checks that
  `.ci/run` runs those exact lines rather than running the test suite inside itself;
- other ```bash blocks run in order in one directory (later blocks use the files earlier ones write),
  `pip install` lines are checked to be covered by the test extra instead of re-installing;
- a block that starts `steerlab serve` is run by starting the server (on a free port instead of the
  README's 8000, which another process may hold), waiting for /health, running the block's requests,
  and stopping it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from steerlab.data import default_data_root

REPO = Path(__file__).resolve().parents[1]
README_ALL = (REPO / "README.md").read_text()
# "Steering on vLLM" runs in the vLLM venv (tests/test_vllm_readme.py, CI's vLLM stage), not here
VLLM_SECTION = re.search(r"^## Steering on vLLM\n.*?(?=^## )", README_ALL, re.S | re.M)
README = README_ALL.replace(VLLM_SECTION.group(0), "") if VLLM_SECTION else README_ALL
BLOCKS = re.findall(r"^```(python|bash)\n(.*?)^```", README, re.S | re.M)
PY_BLOCKS = [code for lang, code in BLOCKS if lang == "python"]
BASH_BLOCKS = [code for lang, code in BLOCKS if lang == "bash"]

pytestmark = pytest.mark.slow


def _env() -> dict:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # this venv's `steerlab`
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["COLUMNS"] = "160"
    return env


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A scratch copy of the repository's layout: `steerlab/` (its shipped data) and `../shared/data`."""
    root = tmp_path_factory.mktemp("readme")
    work = root / "repo"
    work.mkdir()
    (work / "steerlab").symlink_to(REPO / "steerlab")
    (work / "docs").symlink_to(REPO / "docs")
    data = default_data_root()
    if data is not None:
        (root / "shared").mkdir()
        (root / "shared" / "data").symlink_to(Path(data).resolve())
    return work


def _run(cmd: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", cmd], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def test_readme_has_the_blocks_this_test_expects():
    assert PY_BLOCKS and len(BASH_BLOCKS) >= 2
    assert "pip install" in BASH_BLOCKS[0] and "python -m pytest" in BASH_BLOCKS[0]


def test_first_block_is_exactly_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    for line in BASH_BLOCKS[0].strip().splitlines():
        assert line.strip() in (c.strip() for c in ci), f".ci/run does not run the README's `{line}`"
    assert "python -m venv" in "\n".join(ci) or "python3 -m venv" in "\n".join(ci)


@pytest.mark.parametrize("index", range(len(PY_BLOCKS)))
def test_python_block_runs(index, tmp_path):
    work = tmp_path / "repo"
    work.mkdir()
    (work / "steerlab").symlink_to(REPO / "steerlab")
    r = subprocess.run([sys.executable, "-c", PY_BLOCKS[index]], cwd=work, env=_env(), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, f"README python block {index} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "direction as trained" in r.stdout or "direction" in r.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_pip_line(line: str) -> None:
    """`pip install -e ".[x]"`: every requirement of extra x is also in the test extra (installed here)."""
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for name in re.findall(r"\.\[([a-z,]+)\]", line):
        for extra in name.split(","):
            missing = set(extras[extra]) - set(extras["test"])
            assert not missing, f"`{line}` installs {missing}, which the test extra lacks"


@contextlib.contextmanager
def serving(cmd: str, cwd: Path, startup_s: float = 300):
    """Run a README server line (on a free port instead of 8000) until /health answers; yield the port; stop it."""
    port = _free_port()
    cmd = cmd.replace("--port 8000", f"--port {port}")
    if f"--port {port}" not in cmd:
        cmd += f" --port {port}"
    log = cwd / "serve.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(["bash", "-c", cmd], cwd=cwd, env=_env(), stdout=fh,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"`{cmd}` exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"server did not answer /health:\n{log.read_text()[-3000:]}"
            time.sleep(1)
        yield port
    finally:
        with contextlib.suppress(ProcessLookupError):  # it may have exited already (the failure above says why)
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def with_port(text: str, port: int) -> str:
    return text.replace("localhost:8000", f"localhost:{port}").replace("127.0.0.1:8000", f"127.0.0.1:{port}")


def _serve(block: str, cwd: Path, startup_s: float = 300) -> None:
    lines = [ln for ln in re.sub(r"\\\n\s*", " ", block).strip().splitlines() if ln.strip()]
    serve = [ln for ln in lines if ln.startswith("steerlab serve")]
    assert len(serve) == 1
    rest = [ln for ln in lines if not ln.startswith(("steerlab serve", "pip install"))]
    for ln in lines:
        if ln.startswith("pip install"):
            _check_pip_line(ln)
    with serving(serve[0], cwd, startup_s) as port:
        for ln in rest:
            r = _run(with_port(ln, port), cwd, timeout=600)
            assert r.returncode == 0 and r.stdout.strip(), f"`{ln}` failed:\n{r.stdout}\n{r.stderr}"
            assert '"detail"' not in r.stdout, f"`{ln}` was refused: {r.stdout}"


def test_bash_blocks_run_in_order(workdir):
    if default_data_root() is None:
        pytest.skip("the README's commands read ../shared/data (or $STEERLAB_DATA)")
    for i, block in enumerate(BASH_BLOCKS[1:], start=1):
        if "steerlab serve" in block:
            if "runs/pas/vector.safetensors" in block and not (workdir / "runs/pas/vector.safetensors").exists():
                pytest.xfail("the README's server block serves runs/pas/vector.safetensors, which no earlier block "
                             "writes (the server section is being rewritten)")
            _serve(block, workdir)
            continue
        for line in re.sub(r"\\\n\s*", " ", block).strip().splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if line.startswith("pip install"):
                _check_pip_line(line)
                continue
            t0 = time.perf_counter()
            r = _run(line, workdir)
            out = r.stdout + r.stderr
            assert r.returncode == 0, f"README bash block {i}: `{line}` failed ({r.returncode}):\n{out[-4000:]}"
            assert "Traceback" not in out, out[-4000:]
            print(f"{time.perf_counter() - t0:6.1f} s  {line[:100]}")
