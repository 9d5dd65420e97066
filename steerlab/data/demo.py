"""The demo data shipped with steerlab: cheerful vs gloomy answers to everyday questions (48 contrast pairs).

`steerlab demo` trains on the first `DEMO_TRAIN` pairs and measures the effect on the rest, at
`DEMO_LAYER` and `DEMO_STRENGTH` (measured on the embedded model: docs/findings.md).
"""

from __future__ import annotations

from importlib import resources

from .pairs import load_pairs
from .records import ContrastPair

DEMO_DATA = "demo"  # the name that stands for these pairs on the command line
DEMO_TRAIN = 40  # the demo file's last 8 pairs are held apart for measuring the effect
DEMO_LAYER = 12  # measured: monotonic, as trained, largest shift of the middle layers (docs/findings.md)
DEMO_STRENGTH = 6.0


def demo_pairs() -> list[ContrastPair]:
    """The contrast pairs shipped with steerlab (cheerful vs gloomy answers to everyday questions)."""
    with resources.as_file(resources.files("steerlab") / "resources" / "demo_contrast.jsonl") as p:
        return load_pairs(p)
