"""The vectors a vLLM deployment steers with: files in one directory, named by `$STEERLAB_VLLM_VECTORS`.

Every process that needs a vector (the API server checking a request, the engine core salting the prefix
cache, each tensor-parallel worker adding it) reads it from this directory by name, so a vector written
there at run time reaches every worker without any message between processes. A file is re-read when it
changes (size or mtime) and identified by the sha256 of its bytes: a request that names a digest gets
exactly that content or an error, never a stale copy. No vLLM import here.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Optional

import torch

from ..vector import SteeringVector
from .spec import SpecError, TermSpec

ENV = "STEERLAB_VLLM_VECTORS"
SUFFIXES = (".safetensors", ".gguf")


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class VectorStore:
    """Vectors by name from `directory` (default `$STEERLAB_VLLM_VECTORS`), cached per file version."""

    def __init__(self, directory: Optional[str | os.PathLike] = None):
        d = directory if directory is not None else os.environ.get(ENV)
        self.directory = Path(d).expanduser() if d else None
        self._cache: dict[str, tuple[tuple[int, int], str, SteeringVector]] = {}
        self._lock = threading.Lock()

    def path(self, name: str) -> Path:
        if self.directory is None:
            raise SpecError(f"steering needs a vector directory: set ${ENV} for vLLM (and its workers)")
        for suffix in SUFFIXES:
            p = self.directory / f"{name}{suffix}"
            if p.is_file():
                return p
        raise SpecError(f"unknown steering vector '{name}' (no {name}.safetensors in {self.directory})")

    def get(self, name: str, digest: Optional[str] = None) -> tuple[SteeringVector, str]:
        """The vector `name` and the digest of the file it came from; SpecError if it is missing, unreadable
        or not the `digest` asked for."""
        p = self.path(name)
        st = p.stat()
        version = (st.st_size, st.st_mtime_ns)
        with self._lock:
            hit = self._cache.get(name)
            if hit is None or hit[0] != version:
                try:
                    vector = SteeringVector.load(p)
                except Exception as e:  # a half-written or foreign file: the request fails, the worker lives
                    raise SpecError(f"steering vector '{name}' could not be read: {e}") from None
                hit = (version, file_digest(p), vector)
                self._cache[name] = hit
        if digest is not None and not hit[1].startswith(digest):
            raise SpecError(f"steering vector '{name}' has digest {hit[1][:16]}, not the {digest[:16]} asked for")
        return hit[2], hit[1]

    def put(self, vector: SteeringVector, name: str) -> str:
        """Write `vector` as `name` (atomically: readers see the old file or the new one) and return its digest."""
        if self.directory is None:
            raise SpecError(f"no vector directory: set ${ENV}")
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=self.directory)
        os.close(fd)
        try:
            vector.save(tmp, force=True)
            digest = file_digest(Path(tmp))
            os.replace(tmp, self.directory / f"{name}.safetensors")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return digest


def term_deltas(term: TermSpec, vector: SteeringVector, n_layers: int) -> dict[int, torch.Tensor]:
    """Per layer, `strength * direction` (float32, [hidden]) of one term; SpecError for what vLLM cannot apply."""
    if vector.per_position:
        raise SpecError(f"steering vector '{term.vector}' is per-position (ActAdd); the vLLM plugin adds one "
                        "direction per layer")
    layers = term.layers if term.layers is not None else tuple(sorted(vector.layers))
    out = {}
    for layer in layers:
        l = layer + n_layers if layer < 0 else layer
        if not 0 <= l < n_layers:
            raise SpecError(f"layer {layer} is out of range for a model with {n_layers} blocks")
        if l not in vector.directions:
            raise SpecError(f"steering vector '{term.vector}' has no direction for layer {l}")
        out[l] = term.strength * vector.directions[l].to(torch.float32)
    return out


__all__ = ["ENV", "VectorStore", "file_digest", "term_deltas"]
