"""The 1.5B result tables in docs/results/cae-1.5b.md are what the table scripts print from the committed
result files: a number edited by hand, or a result file changed without regenerating the page, fails here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from steerlab.data.io import default_data_root

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "results" / "cae-1.5b.md"
PAS = "docs/results/pas_runs/qwen1.5b"
PAS_TASKS = [f"{PAS}/{t}" for t in ("truthfulqa-mc1", "bbq-nationality", "bbq-disability-status",
                                     "bbq-physical-appearance", "bbq-sexual-orientation", "openbookqa")]
# The command that regenerates the page's validation-split section (also written in the page).
CAE_VAL = ["scripts/cae_table.py", "--runs", "docs/results/cae_1.5b_files", "--suffix=-val",
           "--command", "docs/results/cae_1.5b_files/queue.sh {name}-judge {name}-val"]


def script(*args: str) -> str:
    res = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    return res.stdout


def table_rows(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("|---")]


@pytest.mark.parametrize("kind", ["main", "bias", "groups"])
def test_pas_tables_match_the_result_files(kind):
    rows = table_rows(script("scripts/pas_tables.py", kind, *PAS_TASKS))
    assert len(rows) > 3
    doc = DOC.read_text()
    missing = [r for r in rows if r not in doc]
    assert not missing, f"rows of `pas_tables.py {kind}` not in {DOC.name} (regenerate the table):\n" + "\n".join(missing)


@pytest.mark.skipif(default_data_root() is None, reason="needs ../shared/data (the items' matching answers)")
def test_cae_validation_section_is_the_scripts_output():
    doc = DOC.read_text()
    start, end = "<!-- cae-tables:start -->", "<!-- cae-tables:end -->"
    assert start in doc and end in doc
    section = doc.split(start, 1)[1].split(end, 1)[0].strip()
    assert section == script(*CAE_VAL).strip(), (
        f"regenerate with: python {' '.join(CAE_VAL[:4])} --command '{CAE_VAL[5]}' --update {DOC.relative_to(ROOT)}")


GEN_DOC = ROOT / "docs" / "results" / "generalisation.md"
GEN = ROOT / "docs" / "results" / "generalisation_files"


@pytest.mark.parametrize("runs, baseline", [("1.5b", None), ("1.5b-last-token", "1.5b"), ("1.5b-all-lengths", None), ("1.5b-open-val", "1.5b-chosen-r"),
                                           ("1.5b-all-positions", "1.5b-chosen-r"), ("135m", None),
                                           ("1.5b-bands", None), ("1.5b-schedule", "1.5b"), ("1.5b-schedule-r1", "1.5b"),
                                           ("1.5b-schedule-r1-seed2", "1.5b"), ("1.5b-schedule-decay", "1.5b"), ("1.5b-bipo", "1.5b"),
                                           ("1.5b-seeds", "1.5b"), ("1.5b-persona-bipo", "1.5b")])
def test_generalisation_tables_match_the_result_files(runs, baseline):
    """The r = 0.5, 30-prompt, open-answer, prompt-steering, 135M, band and schedule tables of generalisation.md (cells, per-length effects) are what
    scripts/generalise_table.py prints from the committed run directories."""
    dirs = [str(p) for p in sorted((GEN / runs).iterdir()) if (p / "summary.json").is_file()]
    extra = ["--baseline", *[str(p) for p in sorted((GEN / baseline).iterdir()) if p.is_dir()]] if baseline else []
    rows = table_rows(script("scripts/generalise_table.py", *dirs, *extra, "--model", "qwen2.5-coder-1.5b"))
    assert len(rows) >= 2  # a header and a cell, at least
    doc = GEN_DOC.read_text()
    missing = [r for r in rows if r not in doc]
    assert not missing, f"rows of generalise_table.py {runs} not in {GEN_DOC.name} (regenerate):\n" + "\n".join(missing)


def test_generalisation_bipo_block_is_exactly_the_scripts_rows():
    """The float32 BiPO block (between its markers) is the script's table and nothing else: a row whose run
    directory was never committed fails here, not only a number edited by hand."""
    doc = GEN_DOC.read_text()
    start, end = "<!-- bipo-fp32:start -->", "<!-- bipo-fp32:end -->"
    block = [r for r in doc.split(start, 1)[1].split(end, 1)[0].splitlines() if r.strip()]
    dirs = [str(p) for p in sorted((GEN / "1.5b-bipo").iterdir()) if (p / "summary.json").is_file()]
    base = [str(p) for p in sorted((GEN / "1.5b").iterdir()) if p.is_dir()]
    out = script("scripts/generalise_table.py", *dirs, "--baseline", *base, "--model", "qwen2.5-coder-1.5b")
    assert block == [r for r in out.splitlines() if r.startswith("|")], "regenerate the block between the markers"


OVERVIEW = ("1.5b", "1.5b-bipo", "1.5b-seeds", "1.5b-persona-bipo")  # the r = 0.5 table, its float32 BiPO cells, persona seeds and persona-BiPO cells


def overview_dirs() -> list[str]:
    return [str(p) for runs in OVERVIEW if (GEN / runs).is_dir()
            for p in sorted((GEN / runs).iterdir()) if (p / "summary.json").is_file()]


def test_generalisation_overview_is_exactly_the_scripts_table():
    """The behaviours × methods overview at the top of generalisation.md (between its markers) is
    `generalise_table.py --overview` over the r = 0.5 run directories, every committed seed pooled."""
    doc = GEN_DOC.read_text()
    start, end = "<!-- overview:start -->", "<!-- overview:end -->"
    block = [r for r in doc.split(start, 1)[1].split(end, 1)[0].splitlines() if r.strip()]
    out = script("scripts/generalise_table.py", *overview_dirs(), "--overview", "--model", "qwen2.5-coder-1.5b")
    assert block == out.splitlines(), "regenerate the block between the markers (scripts/generalise_table.py --overview)"


def test_generalisation_carry_over_is_exactly_the_scripts_table():
    """The carry-over block in generalisation.md ("Why no method gets there": what predicts the open-ended effect,
    per method, and the judge's scale per behaviour) is `generalise_table.py --carry-over` over the same run
    directories as the overview."""
    doc = GEN_DOC.read_text()
    start, end = "<!-- carry-over:start -->", "<!-- carry-over:end -->"
    block = [r for r in doc.split(start, 1)[1].split(end, 1)[0].splitlines() if r.strip()]
    out = script("scripts/generalise_table.py", *overview_dirs(), "--carry-over", "--model", "qwen2.5-coder-1.5b")
    assert block == [r for r in out.splitlines() if r.strip()], \
        "regenerate the block between the markers (scripts/generalise_table.py --carry-over)"
