"""Result files of the studies: atomic JSON, CSV tables, JSONL appends, and matplotlib figures.

Every stage of a study writes its own files as soon as it has them, so a later failure keeps earlier
results. Files are written to a temporary name and renamed, so a crash never leaves a half-written
JSON. `json_safe` is the value cleaning they share (NaN/inf become null).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

from .errors import OutputExistsError, SteerlabError


def json_safe(x: Any) -> Any:
    """JSON-safe values: NaN/inf become None, numpy scalars become Python numbers, tuples lists, paths strings."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item") and not isinstance(x, (str, bytes)) and getattr(x, "ndim", 1) == 0:
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def write_json(path: str | Path, data: Any) -> Path:
    """Write `data` as indented JSON, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(json_safe(data), indent=1, allow_nan=False))
    os.replace(tmp, path)
    return path


def with_machine(data: dict) -> dict:
    """`data` with the machine block under "machine" (CPU, flags, cores, threads, torch, devices, load average,
    and the dtype/device this process was told to use): where a result was made, beside the result."""
    from .hardware import machine_block

    return {**data, "machine": machine_block(dtype=os.environ.get("STEERLAB_DTYPE"),
                                             device=os.environ.get("STEERLAB_DEVICE"))}


def write_result(path: str | Path, data: dict) -> Path:
    """A study's result JSON (`write_json`), carrying the machine block."""
    return write_json(path, with_machine(data))


def read_json(path: str | Path) -> Any:
    """Parse a result file; a corrupt one is a SteerlabError naming it (rerun the stage that wrote it)."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise SteerlabError(f"{path}: not valid JSON ({e}); rerun the stage that wrote it") from None


def write_csv(path: str | Path, rows: Sequence[dict]) -> Path:
    """Rows (dicts) as a CSV table, atomically; columns in first-seen order."""
    import pandas as pd

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(list(rows), columns=cols).to_csv(tmp, index=False)
    os.replace(tmp, path)
    return path


def append_jsonl(path: str | Path, records: Iterable[dict]) -> None:
    """Append records to a JSONL file (one flush per call)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(json_safe(r), allow_nan=False) + "\n")
        f.flush()


def read_jsonl(path: str | Path) -> list[dict]:
    """Records of a JSONL file ([] if it does not exist). A truncated last line (a run killed while
    appending) is dropped; any other bad line is a SteerlabError."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    out = []
    for k, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if k == len(lines) - 1:
                break
            raise SteerlabError(f"{path}, line {k + 1}: not valid JSON") from None
    return out


def check_fresh(paths: Sequence[Path], force: bool) -> None:
    """Refuse to overwrite result files unless `force`."""
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not force:
        raise OutputExistsError(f"{existing[0]} already exists; pass force=True (--force) to overwrite it")


def figure():
    """A new matplotlib (figure, axes) pair on the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(6.4, 4.0), dpi=110)


def save_figure(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path
