"""MWE behaviour sets split into disjoint train and test items (a CAE name or any MWE-format file)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..data.mwe import load_mwe, split_items
from ..data.records import BehaviourItem
from ..data.tasks import resolve_behaviour
from ..errors import DatasetError


@dataclass(frozen=True)
class BehaviourData:
    """One behaviour set split into disjoint train and test items (shuffled with `seed`).

    Attributes:
        name: the behaviour (file stem).
        path: the file it was read from.
        kind: "ab" or "yesno".
        train, test: disjoint item lists; the same seed always gives the same split.
        seed: the split seed.
    """

    name: str
    path: Path
    kind: str
    train: list[BehaviourItem]
    test: list[BehaviourItem]
    seed: int

    def split_record(self) -> dict:
        """What to save so a run can show which items it trained and tested on."""
        return {"behaviour": self.name, "path": str(self.path), "kind": self.kind, "seed": self.seed,
                "train": [it.index for it in self.train], "test": [it.index for it in self.test]}


def load_behaviour(name_or_path: str | Path, n_train: int, n_test: int, *, seed: int = 0,
                   data_root: str | Path | None = None) -> BehaviourData:
    """Load a CAE behaviour (by name, e.g. "openness") or any MWE-format file and split it.

    Raises DatasetError for an unknown name, a file that is not MWE-shaped, rows missing answer
    fields or mixing formats, or too few items for the split.
    """
    path = resolve_behaviour(name_or_path, data_root)
    items = load_mwe(path)
    if n_train < 1 or n_test < 1:
        raise DatasetError(f"need at least one train and one test item, got n_train={n_train}, n_test={n_test}")
    if n_train + n_test > len(items):
        raise DatasetError(f"{path}: has {len(items)} items, fewer than {n_train} train + {n_test} test")
    train, test = split_items(items, n_train, n_test, seed=seed)
    return BehaviourData(path.stem, Path(path), items[0].kind, train, test, seed)
