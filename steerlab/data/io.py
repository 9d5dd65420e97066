"""Shared readers for the dataset loaders: JSONL, JSON, CSV and plain text.

Every reader reports problems as a one-line :class:`~steerlab.errors.DatasetError` that names
the file and the line (or item) number, and refuses empty files, so a loader never leaks a raw
``KeyError`` / ``JSONDecodeError`` stack to the user.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from ..errors import DatasetError

PathLike = Union[str, "os.PathLike[str]"]  # anything Path() accepts

#: Environment variable that overrides where the evaluation data lives.
DATA_ENV = "STEERLAB_DATA"


@dataclass(frozen=True)
class Row:
    """One record of a data file together with where it came from (for error messages).

    ``number`` is 1-based and counts physical lines for JSONL/CSV (the line the record starts
    on) and items for a JSON list; ``index`` is the 0-based position among the data records.
    """

    path: Path
    number: int
    index: int
    data: Any
    unit: str = "line"  # "line" (JSONL/CSV) or "item" (JSON list)

    @property
    def where(self) -> str:
        return f"{self.path}, {self.unit} {self.number}"

    def error(self, problem: str) -> DatasetError:
        """A DatasetError naming this file and line; ``raise row.error("...")``."""
        return DatasetError(f"{self.where}: {problem}")

    def field(self, key: str | int, *, required: bool = True, default: Any = None) -> Any:
        """The value of ``key``; dotted keys (``"question.stem"``) descend into nested objects."""
        value: Any = self.data
        if isinstance(value, dict) and key in value:
            return value[key]  # exact names first: CSV headers may contain dots
        parts: Sequence[str | int] = key.split(".") if isinstance(key, str) else [key]
        for part in parts:
            if isinstance(value, dict) and part in value:
                value = value[part]
            elif isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
                value = value[part]
            else:
                if required:
                    raise self.error(f"missing field {key!r}")
                return default
        return value

    def text(self, key: str | int, *, required: bool = True, allow_empty: bool = False) -> str | None:
        """A string field (numbers are not silently converted: that usually means a wrong column)."""
        value = self.field(key, required=required)
        if value is None and not required:
            return None
        if not isinstance(value, str):
            raise self.error(f"field {key!r} must be a string, got {type(value).__name__} {value!r:.60}")
        if not allow_empty and not value.strip():
            raise self.error(f"field {key!r} is empty")
        return value

    def has(self, key: str) -> bool:
        return self.field(key, required=False, default=_MISSING) is not _MISSING


_MISSING = object()


def _check_file(path: PathLike) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise DatasetError(f"{p}: file not found")
    if p.is_dir():
        raise DatasetError(f"{p}: is a directory, expected a data file")
    return p


def read_text(path: PathLike) -> str:
    """The whole file as UTF-8 text (a BOM is dropped); DatasetError if it cannot be decoded."""
    p = _check_file(path)
    try:
        return p.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        # Report the line of the bad byte: users fix files, not offsets.
        line = p.read_bytes()[: exc.start].count(b"\n") + 1
        raise DatasetError(f"{p}, line {line}: not valid UTF-8 ({exc.reason})") from None
    except OSError as exc:
        raise DatasetError(f"{p}: cannot read ({exc.strerror or exc})") from None


def iter_jsonl(path: PathLike) -> Iterator[Row]:
    """Yield each non-blank line of a JSONL file as a Row holding a JSON object."""
    p = Path(path).expanduser()
    index = 0
    for number, line in enumerate(read_text(p).splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (often a trailing one) are harmless
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{p}, line {number}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(data, dict):
            raise DatasetError(f"{p}, line {number}: expected a JSON object, got {type(data).__name__}")
        yield Row(p, number, index, data)
        index += 1


def read_json(path: PathLike) -> Any:
    """Parse a whole JSON file; an empty file or a syntax error is a DatasetError with its line."""
    p = Path(path).expanduser()
    text = read_text(p)
    if not text.strip():
        raise DatasetError(f"{p}: file is empty")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{p}, line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None


def read_records(path: PathLike) -> list[Row]:
    """All records of a ``.jsonl`` file, or of a ``.json`` file holding a list of objects.

    Raises DatasetError when the file holds no record at all.
    """
    p = Path(path).expanduser()
    if p.suffix.lower() == ".json":
        data = read_json(p)
        if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
            data = next(iter(data.values()))  # tolerate {"data": [...]} wrappers
        if not isinstance(data, list):
            raise DatasetError(f"{p}: expected a JSON list of objects, got {type(data).__name__}")
        rows = []
        for i, item in enumerate(data):
            if not isinstance(item, dict):
                raise DatasetError(f"{p}, item {i + 1}: expected a JSON object, got {type(item).__name__}")
            rows.append(Row(p, i + 1, i, item, unit="item"))
    else:
        rows = list(iter_jsonl(p))
    if not rows:
        raise DatasetError(f"{p}: file is empty (no records)")
    return rows


def read_csv(path: PathLike, *, header: bool = True) -> list[Row]:
    """Rows of a CSV file.

    With ``header=True`` each Row's data is a dict keyed by the header's column names (a row with
    the wrong number of cells is an error); otherwise it is a dict keyed by column position
    (0, 1, ...). Row numbers are the physical line each record starts on (quoted cells may span
    lines). Raises DatasetError on an empty file or a file with a header and no data.
    """
    p = Path(path).expanduser()
    text = read_text(p)
    if not text.strip():
        raise DatasetError(f"{p}: file is empty")
    reader = csv.reader(text.splitlines(keepends=True))
    columns: list[str] | None = None
    rows: list[Row] = []
    start = 1
    try:
        for cells in reader:
            number, start = start, reader.line_num + 1
            if not cells or all(not c.strip() for c in cells):
                continue
            if header and columns is None:
                columns = [c.strip() for c in cells]
                dup = {c for c in columns if columns.count(c) > 1}
                if dup:
                    raise DatasetError(f"{p}, line {number}: duplicate column name(s) {sorted(dup)} in header")
                continue
            if columns is not None:
                if len(cells) != len(columns):
                    raise DatasetError(
                        f"{p}, line {number}: expected {len(columns)} cells (header), got {len(cells)}"
                    )
                data: dict[Any, str] = dict(zip(columns, cells))
            else:
                data = dict(enumerate(cells))
            rows.append(Row(p, number, len(rows), data))
    except csv.Error as exc:
        raise DatasetError(f"{p}, line {reader.line_num}: malformed CSV ({exc})") from None
    if not rows:
        raise DatasetError(f"{p}: file has no data rows" + (" (only a header)" if columns else ""))
    return rows


def csv_header(path: PathLike) -> list[str]:
    """The first non-blank row of a CSV file (stripped), for format detection."""
    p = Path(path).expanduser()
    text = read_text(p)
    for cells in csv.reader(text.splitlines(keepends=True)):
        if cells and any(c.strip() for c in cells):
            return [c.strip() for c in cells]
    raise DatasetError(f"{p}: file is empty")


def _repo_root() -> Path:
    # steerlab/data/io.py -> steerlab/data -> steerlab -> repository root
    return Path(__file__).resolve().parents[2]


def default_data_root() -> Path | None:
    """The evaluation-data folder, or None when it cannot be found.

    ``$STEERLAB_DATA`` wins when set (returned as given, even if missing, so a typo surfaces as a
    clear "file not found" later rather than silently using another copy). Otherwise the first
    existing of ``shared/data`` and ``../shared/data``, tried relative to the current directory
    and then to the repository root (the parent of the ``steerlab`` package).
    """
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    seen: set[Path] = set()
    for base in (Path.cwd(), _repo_root()):
        for rel in ("shared/data", "../shared/data"):
            candidate = (base / rel).resolve()
            if candidate in seen:
                continue
            seen.add(candidate)
            if candidate.is_dir():
                return candidate
    return None


def require_data_root(data_root: PathLike | None = None) -> Path:
    """``data_root`` as a Path, or the default one; DatasetError when neither exists."""
    if data_root is not None:
        root = Path(data_root).expanduser()
    else:
        found = default_data_root()
        if found is None:
            raise DatasetError(
                f"no evaluation-data folder found: set ${DATA_ENV} or pass data_root "
                "(looked for shared/data and ../shared/data)"
            )
        root = found
    if not root.is_dir():
        raise DatasetError(f"{root}: data folder does not exist")
    return root
