"""Every relative link in the project's Markdown (README, docs/, benchmarks/, scripts/) names a file that exists,
and every #anchor a heading of that file: the results pages are long and rewritten often, and a renamed heading
otherwise leaves links that go nowhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted([ROOT / "README.md", *ROOT.glob("docs/**/*.md"), *ROOT.glob("benchmarks/*.md"),
                *ROOT.glob("scripts/*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {github_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


def test_github_slug_follows_githubs_rule():
    assert github_slug("Persona read at the last token, and multi-format CAA") == \
        "persona-read-at-the-last-token-and-multi-format-caa"
    assert github_slug("The protocol (`steerlab cae generalise`)") == "the-protocol-steerlab-cae-generalise"
    assert github_slug("Results at 1.5B") == "results-at-15b"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # code blocks hold commands, not links
    broken = []
    for target in LINK.findall(text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path) if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with that anchor in {dest.name}")
    assert not broken, "\n".join(broken)
