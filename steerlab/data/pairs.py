"""Contrast pairs for CAA / ActAdd from a user's JSONL file."""

from __future__ import annotations

from .io import PathLike, read_records
from .records import ContrastPair


def load_pairs(path: PathLike) -> list[ContrastPair]:
    """Read contrast pairs from JSONL rows ``{"prompt"?: str, "positive": str, "negative": str}``.

    ``prompt`` is optional (default ``""``: raw-text pairs). A ``.json`` file holding a list of
    such objects is accepted too. Missing fields, non-string or empty values, identical sides and
    an empty file raise DatasetError naming the file and line.
    """
    pairs: list[ContrastPair] = []
    for row in read_records(path):
        prompt = row.text("prompt", required=False, allow_empty=True) or ""
        positive = row.text("positive")
        negative = row.text("negative")
        assert positive is not None and negative is not None  # required=True guarantees it
        if positive == negative:
            raise row.error("'positive' and 'negative' are identical")
        pairs.append(ContrastPair(prompt=prompt, positive=positive, negative=negative))
    return pairs
