"""Out-of-distribution prompts (CAE paper) and the plain-text corpus for perplexity checks.

The OOD folder is laid out as ``ood/{choice-qa,open-ended}/{practical,safety}/
<behaviour>-{short,medium,long}.json``; each file is a JSON list of ``{id, prompt, criteria?}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from ..errors import DatasetError
from .io import PathLike, read_records, read_text, require_data_root
from .records import OODPrompt

OODKind = Literal["choice-qa", "open-ended"]
LENGTHS: tuple[str, ...] = ("short", "medium", "long")


def load_ood(path: PathLike) -> list[OODPrompt]:
    """One OOD file: a JSON list of ``{"id": int, "prompt": str, "criteria"?: str}``.

    ``source`` is the file stem (e.g. ``"openness-short"``). Duplicate ids are an error.
    """
    prompts: list[OODPrompt] = []
    seen: set[int] = set()
    for row in read_records(path):
        pid = row.field("id")
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise row.error(f"field 'id' must be an integer, got {pid!r}")
        if pid in seen:
            raise row.error(f"duplicate id {pid}")
        seen.add(pid)
        prompt = row.text("prompt")
        criteria = row.text("criteria", required=False)
        assert prompt is not None
        prompts.append(OODPrompt(id=pid, prompt=prompt, criteria=criteria, source=row.path.stem))
    return prompts


def _ood_folder(root: PathLike | None, kind: str) -> Path:
    base = require_data_root(root)
    if (base / "ood").is_dir() and not (base / kind).is_dir():
        base = base / "ood"  # accept the data root as well as the ood folder itself
    folder = base / kind
    if not folder.is_dir():
        raise DatasetError(f"{folder}: OOD folder not found (kind must be 'choice-qa' or 'open-ended')")
    return folder


def list_ood_behaviours(root: PathLike | None = None, kind: OODKind = "choice-qa") -> list[str]:
    """Behaviour names with at least one OOD file of ``kind``."""
    names = set()
    for f in _ood_folder(root, kind).rglob("*.json"):
        for length in LENGTHS:
            if f.stem.endswith(f"-{length}"):
                names.add(f.stem[: -len(length) - 1])
    return sorted(names)


def _find(folder: Path, behaviour: str, length: str) -> Path | None:
    exact = sorted(folder.rglob(f"{behaviour}-{length}.json"))
    if exact:
        return exact[0]
    # The upstream data has at least one odd name
    # (open-ended/safety/corrigible-neutral-HHH-neutral-HHH-medium.json): accept a unique
    # "<behaviour>*-<length>.json" as a fallback.
    loose = [f for f in folder.rglob(f"{behaviour}-*-{length}.json")]
    return loose[0] if len(loose) == 1 else None


def load_ood_dir(
    root: PathLike | None,
    kind: OODKind = "choice-qa",
    *,
    behaviour: str,
    lengths: Sequence[str] = LENGTHS,
) -> dict[str, list[OODPrompt]]:
    """The OOD prompts of one behaviour, by length: ``{"short": [...], "medium": [...], ...}``.

    ``root`` is the data root (default: :func:`~steerlab.data.io.default_data_root`) or its
    ``ood`` folder. Lengths without a file are left out; DatasetError if none is found.
    """
    if kind not in ("choice-qa", "open-ended"):
        raise DatasetError(f"OOD kind must be 'choice-qa' or 'open-ended', got {kind!r}")
    folder = _ood_folder(root, kind)
    found: dict[str, list[OODPrompt]] = {}
    for length in lengths:
        path = _find(folder, behaviour, length)
        if path is not None:
            found[length] = load_ood(path)
    if not found:
        known = ", ".join(list_ood_behaviours(folder.parent, kind))
        raise DatasetError(f"{folder}: no {kind} OOD prompts for behaviour {behaviour!r}; available: {known}")
    return found


def load_corpus(path: PathLike, max_chars: int | None = None) -> str:
    """A plain-text corpus (e.g. WikiText-2 test), optionally cut to ``max_chars`` characters.

    DatasetError if the file is empty or holds only whitespace.
    """
    text = read_text(path)
    if not text.strip():
        raise DatasetError(f"{Path(path)}: corpus file is empty")
    if max_chars is not None:
        if max_chars <= 0:
            raise DatasetError(f"max_chars must be positive, got {max_chars}")
        text = text[:max_chars]
    return text
