"""Prompt sets: a file of prompts (one per line, or JSONL / a JSON list with a `prompt` field), and the
CAST data (condition and refusal sets) shipped in the shared data directory."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DatasetError
from .io import PathLike, read_json, read_records, read_text, require_data_root


def load_prompts(path: PathLike) -> list[str]:
    """Prompts from `path`: `.jsonl` / `.json` rows with a `prompt` field, otherwise one prompt per
    non-blank line of text. An empty file, or a row without a prompt, is a DatasetError naming it."""
    p = Path(path).expanduser()
    if p.suffix.lower() in (".jsonl", ".json"):
        prompts = [row.text("prompt") for row in read_records(p)]
    else:
        prompts = [line.strip() for line in read_text(p).splitlines() if line.strip()]
    if not prompts:
        raise DatasetError(f"{p}: no prompts (the file is empty)")
    return [x for x in prompts if x is not None]


@dataclass(frozen=True)
class ConditionPairs:
    """The CAST condition set: harmful and harmless instructions, paired, for one split."""

    harmful: list[str]
    harmless: list[str]


def _cast_file(name: str, data_root: PathLike | None) -> Path:
    path = require_data_root(data_root) / "cast" / name
    if not path.exists():
        raise DatasetError(f"{path}: not found (the CAST data lives in <data>/cast/, see SOURCES.md)")
    return path


def load_condition_harmful(split: str = "train", data_root: PathLike | None = None) -> ConditionPairs:
    """`cast/condition_harmful.json`: 4,050 train / 450 test pairs of a harmful and a harmless instruction."""
    path = _cast_file("condition_harmful.json", data_root)
    data = read_json(path)
    if split not in data:
        raise DatasetError(f"{path}: no split '{split}' (it has {', '.join(data)})")
    rows = data[split]
    return ConditionPairs([r["harmful"] for r in rows], [r["harmless"] for r in rows])


def load_alpaca(split: str = "train", data_root: PathLike | None = None) -> list[str]:
    """`cast/alpaca.json`: harmless instructions (700 train / 500 test)."""
    path = _cast_file("alpaca.json", data_root)
    data = read_json(path)
    if split not in data:
        raise DatasetError(f"{path}: no split '{split}' (it has {', '.join(data)})")
    return [r["question"] for r in data[split]]


def load_refusal_openings(data_root: PathLike | None = None) -> tuple[list[str], list[str]]:
    """`cast/behavior_refusal.json`: (refusing openings, compliant openings), 100 each."""
    data = read_json(_cast_file("behavior_refusal.json", data_root))
    return list(data["non_compliant_responses"]), list(data["compliant_responses"])


__all__ = ["load_prompts", "ConditionPairs", "load_condition_harmful", "load_alpaca", "load_refusal_openings"]
