"""Where steerlab keeps what it caches on disk (converted models, installed known models)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$STEERLAB_CACHE, else $XDG_CACHE_HOME/steerlab or ~/.cache/steerlab."""
    if os.environ.get("STEERLAB_CACHE"):
        return Path(os.environ["STEERLAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "steerlab"
