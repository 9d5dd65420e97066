"""The vectors a server steers with: loaded at start from files, registered and deleted at run time.

An uploaded vector is written to a private temporary file and read back with the same two calls the
CLI uses for a vector file (`SteeringVector.load`, then `check_compatible` with this model), so it is
validated exactly as a file would be; requests never name server-side paths.
"""

from __future__ import annotations

import re
import tempfile
import threading
from pathlib import Path

from ..errors import SteerlabError, VectorError
from ..vector import SteeringVector

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def parse_vector_spec(spec: str) -> tuple[str, Path]:
    """'name=path' or 'path' (named after the file's stem) → (name, path)."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = Path(spec).stem, spec
    if not name or not path:
        raise SteerlabError(f"cannot read vector '{spec}': use NAME=PATH or PATH")
    return name, Path(path)


def load_vector_file(path, lm, *, allow_other_model: bool = False) -> SteeringVector:
    """What the CLI does with a vector file: read and validate it, then check it fits `lm`."""
    vec = SteeringVector.load(path)
    vec.check_compatible(lm, allow_other_family=allow_other_model)
    return vec


def load_vectors(specs: list[str], lm, *, allow_other_model: bool = False) -> dict[str, SteeringVector]:
    """Load and check every vector before the server starts, so a bad file fails at once, not on a request."""
    vectors: dict[str, SteeringVector] = {}
    for spec in specs:
        name, path = parse_vector_spec(spec)
        if name in vectors:
            raise SteerlabError(f"two vectors are named '{name}': name them apart with NAME=PATH")
        if not NAME_RE.match(name):
            raise SteerlabError(f"vector name '{name}' must match {NAME_RE.pattern}")
        vectors[name] = load_vector_file(path, lm, allow_other_model=allow_other_model)
    return vectors


def vector_bytes(vec: SteeringVector) -> int:
    return sum(t.numel() * t.element_size() for t in vec.directions.values())


class Registry:
    """Name → SteeringVector, safe to read and change from request threads."""

    def __init__(self, lm, vectors: dict[str, SteeringVector] | None = None, *, allow_other_model: bool = False):
        self.lm = lm
        self.allow_other_model = allow_other_model
        self._lock = threading.Lock()
        self._vectors: dict[str, SteeringVector] = {}
        for name, vec in (vectors or {}).items():
            vec.check_compatible(lm, allow_other_family=True)  # family was checked when the file was loaded
            self._vectors[name] = vec

    def snapshot(self) -> dict[str, SteeringVector]:
        with self._lock:
            return dict(self._vectors)

    def get(self, name: str) -> SteeringVector | None:
        with self._lock:
            return self._vectors.get(name)

    def __len__(self) -> int:
        return len(self._vectors)

    def total_bytes(self) -> int:
        return sum(vector_bytes(v) for v in self.snapshot().values())

    def register(self, name: str, data: bytes, *, overwrite: bool = False) -> SteeringVector:
        """Validate uploaded file bytes (safetensors, or a llama.cpp GGUF by its magic) and add them as `name`.

        Raises VectorError (the upload is not a usable vector), KeyError (the name is taken),
        ValueError (a bad name)."""
        if not NAME_RE.match(name or ""):
            raise ValueError(f"vector name must match {NAME_RE.pattern}")
        if not overwrite and self.get(name) is not None:
            raise KeyError(name)
        if not data:
            raise VectorError("the upload is empty: send the vector file's bytes as the request body")
        suffix = ".gguf" if data[:4] == b"GGUF" else ".safetensors"
        with tempfile.TemporaryDirectory(prefix="steerlab-upload-") as tmp:
            path = Path(tmp) / f"upload{suffix}"
            path.write_bytes(data)
            try:
                vec = load_vector_file(path, self.lm, allow_other_model=self.allow_other_model)
            except SteerlabError as e:  # name the upload, never the server's temporary path
                raise VectorError(str(e).replace(str(path), "the uploaded file")) from None
            except Exception as e:  # a parser error on hostile bytes: still the client's input
                raise VectorError(f"the uploaded file is not a readable vector file: {type(e).__name__}") from None
        with self._lock:
            if not overwrite and name in self._vectors:
                raise KeyError(name)
            self._vectors[name] = vec
        return vec

    def delete(self, name: str) -> bool:
        with self._lock:
            return self._vectors.pop(name, None) is not None
