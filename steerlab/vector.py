"""SteeringVector: per-layer directions plus the metadata that says where they came from.

A direction is a 1-D tensor [hidden] (added at every steered position) or, for ActAdd, a 2-D tensor
[positions, hidden] added position by position from the start of the user prompt. Files are
safetensors with the metadata as JSON (key "steerlab"), or llama.cpp control vectors (`export_gguf`,
`import_gguf`; the raw format is `gguf_io`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping

import torch

from .errors import OutputExistsError, VectorError
from .gguf_io import read_control_vector, write_control_vector
from .version import __version__

FORMAT_VERSION = 1


def _steerlab_version() -> str:
    return __version__


# How a vector is meant to be applied: typed fields now, before that keys of `extra` (same names). Those
# keys are lifted out of `extra` into the fields whenever metadata is built (an older file, older code);
# unset fields are left out of the file.
USAGE_FIELDS: tuple[str, ...] = ("selected_layers", "strength", "positions")


@dataclass(frozen=True)
class VectorMetadata:
    """Where a vector came from and how it is meant to be applied: what a user needs to reuse it safely.

    Attributes:
        model_id, family, hidden_size, n_layers: the model it was trained on.
        method: "caa", "pca", "actadd", "pasf", "ipas-a", "ipas-wo", ... (or an arithmetic expression).
        layers: the layers it has directions for.
        position: where activations were read for training ("last", "mean", ...).
        template: the prompt template used for training ("chat", "raw", ...).
        data_hash, n_train: the training data (a short hash, the number of examples).
        selected_layers: the layer(s) to steer by default (e.g. the layer `steerlab pas` chose); None: all.
        strength: the default steering strength (e.g. the one `steerlab pas` chose); None: the library default.
        positions: the default steered positions ("all", "after_user", "last_prompt"); None: the library default.
        extra: anything else a method records (provenance, results), JSON values.
    """

    model_id: str
    family: str
    hidden_size: int
    n_layers: int
    method: str
    layers: tuple[int, ...]
    position: str = "last"
    template: str = "raw"
    data_hash: str = ""
    n_train: int = 0
    steerlab_version: str = field(default_factory=_steerlab_version)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    extra: Mapping = field(default_factory=dict)
    selected_layers: tuple[int, ...] | None = None
    strength: float | None = None
    positions: str | None = None

    def __post_init__(self) -> None:
        extra = dict(self.extra)
        lifted = {k: extra.pop(k) for k in USAGE_FIELDS if k in extra}
        if lifted:  # the pre-typed spelling (those keys in extra), from an older file or older code
            object.__setattr__(self, "extra", extra)
            for k, v in lifted.items():
                if getattr(self, k) is None:
                    object.__setattr__(self, k, v)
        if self.selected_layers is not None:
            object.__setattr__(self, "selected_layers", tuple(int(l) for l in self.selected_layers))
        if self.strength is not None:
            object.__setattr__(self, "strength", float(self.strength))

    def to_json(self) -> str:
        d = asdict(self)
        d["layers"] = list(self.layers)
        d["extra"] = dict(self.extra)
        for k in USAGE_FIELDS:
            if d[k] is None:
                del d[k]
        if self.selected_layers is not None:
            d["selected_layers"] = list(self.selected_layers)
        d["format_version"] = FORMAT_VERSION
        return json.dumps(d, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "VectorMetadata":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise VectorError(f"vector metadata is not valid JSON: {e}") from e
        d.pop("format_version", None)
        known = {f for f in cls.__dataclass_fields__}
        extra = dict(d.pop("extra", {}) or {})
        for k in list(d):
            if k not in known:
                extra[k] = d.pop(k)
        missing = [k for k in ("model_id", "family", "hidden_size", "n_layers", "method", "layers") if k not in d]
        if missing:
            raise VectorError(f"vector metadata lacks {', '.join(missing)}")
        d["layers"] = tuple(int(x) for x in d["layers"])
        return cls(**d, extra=extra)


def hash_texts(texts: Iterable[str]) -> str:
    """A short stable hash of training data, recorded in vector metadata."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


def _check_finite(layer: int, t: torch.Tensor, where: str) -> None:
    if not torch.isfinite(t).all():
        bad = "NaN" if torch.isnan(t).any() else "inf"
        raise VectorError(f"{where}: layer {layer} contains {bad} values")


class SteeringVector:
    """Per-layer steering directions of one model, with metadata.

    Vectors of the same model support `+`, `-`, unary `-`, and scaling by a number; a layer that one
    side lacks counts as zero there.
    """

    def __init__(self, directions: Mapping[int, torch.Tensor], meta: VectorMetadata):
        if not directions:
            raise VectorError("a steering vector needs at least one layer")
        clean: dict[int, torch.Tensor] = {}
        for layer, t in directions.items():
            t = torch.as_tensor(t).detach().to("cpu", torch.float32)
            if t.dim() not in (1, 2) or t.shape[-1] != meta.hidden_size:
                raise VectorError(
                    f"layer {layer}: direction has shape {tuple(t.shape)}, expected ({meta.hidden_size},) "
                    f"or (positions, {meta.hidden_size}) for hidden size {meta.hidden_size}"
                )
            if not 0 <= int(layer) < meta.n_layers:
                raise VectorError(f"layer {layer} is out of range for a model with {meta.n_layers} layers")
            _check_finite(int(layer), t, "steering vector")
            clean[int(layer)] = t.contiguous()
        self.directions = dict(sorted(clean.items()))
        self.meta = replace(meta, layers=tuple(self.directions))

    # -- basics -------------------------------------------------------------------------------
    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.directions)

    @property
    def per_position(self) -> bool:
        """True for ActAdd-style vectors whose directions are [positions, hidden]."""
        return any(t.dim() == 2 for t in self.directions.values())

    def __getitem__(self, layer: int) -> torch.Tensor:
        if layer not in self.directions:
            raise VectorError(f"this vector has no direction for layer {layer} (it has layers {list(self.layers)})")
        return self.directions[layer]

    def norms(self) -> dict[int, float]:
        """L2 norm of each layer's direction (Frobenius norm for per-position ones)."""
        return {layer: float(t.norm()) for layer, t in self.directions.items()}

    def select(self, layers: Iterable[int]) -> "SteeringVector":
        """The same vector restricted to `layers`."""
        layers = list(layers)
        return SteeringVector({layer: self[layer] for layer in layers}, self.meta)

    def normalized(self) -> "SteeringVector":
        """Each layer's direction scaled to unit norm (an explicit option; never applied silently)."""
        return SteeringVector({l: t / t.norm().clamp_min(1e-12) for l, t in self.directions.items()},
                              replace(self.meta, extra={**self.meta.extra, "normalized": True}))

    def __repr__(self) -> str:
        return (f"SteeringVector(method={self.meta.method!r}, model={self.meta.model_id!r}, "
                f"layers={list(self.layers)}, hidden={self.meta.hidden_size})")

    # -- arithmetic ---------------------------------------------------------------------------
    def _check_same_model(self, other: "SteeringVector") -> None:
        a, b = self.meta, other.meta
        if (a.family, a.hidden_size, a.n_layers) != (b.family, b.hidden_size, b.n_layers):
            raise VectorError(
                f"cannot combine vectors of different models: {a.model_id} ({a.family}, hidden {a.hidden_size}) "
                f"and {b.model_id} ({b.family}, hidden {b.hidden_size})"
            )

    def _combine(self, other: "SteeringVector", sign: float) -> "SteeringVector":
        if not isinstance(other, SteeringVector):
            return NotImplemented
        self._check_same_model(other)
        out: dict[int, torch.Tensor] = {}
        for layer in sorted(set(self.layers) | set(other.layers)):
            x = self.directions.get(layer)
            y = other.directions.get(layer)
            if x is None:
                out[layer] = sign * y
            elif y is None:
                out[layer] = x.clone()
            else:
                if x.shape != y.shape:
                    raise VectorError(f"layer {layer}: cannot combine directions of shapes {tuple(x.shape)} and {tuple(y.shape)}")
                out[layer] = x + sign * y
        op = "+" if sign > 0 else "-"
        meta = replace(self.meta, method=f"({self.meta.method} {op} {other.meta.method})", data_hash="", n_train=0)
        return SteeringVector(out, meta)

    def __add__(self, other):
        return self._combine(other, 1.0)

    def __sub__(self, other):
        return self._combine(other, -1.0)

    def __mul__(self, k: float) -> "SteeringVector":
        if not isinstance(k, (int, float)) or isinstance(k, bool):
            return NotImplemented
        if not math.isfinite(k):
            raise VectorError(f"a vector can only be scaled by a finite number, got {k}")
        return SteeringVector({l: t * float(k) for l, t in self.directions.items()}, self.meta)

    __rmul__ = __mul__

    def __truediv__(self, k: float) -> "SteeringVector":
        if not isinstance(k, (int, float)) or isinstance(k, bool) or k == 0 or not math.isfinite(k):
            raise VectorError(f"a vector can only be divided by a finite non-zero number, got {k!r}")
        return self * (1.0 / k)

    def __neg__(self) -> "SteeringVector":
        return self * -1.0

    # -- model compatibility ------------------------------------------------------------------
    def check_compatible(self, lm, *, allow_other_family: bool = False) -> None:
        """Raise VectorError if this vector cannot steer `lm` (hidden size, depth, family)."""
        m = self.meta
        if m.hidden_size != lm.hidden_size:
            raise VectorError(
                f"vector was made for hidden size {m.hidden_size} ({m.model_id}), but this model has {lm.hidden_size}"
            )
        if max(self.layers) >= lm.n_layers:
            raise VectorError(f"vector has layer {max(self.layers)}, but this model has only {lm.n_layers} layers")
        same_depth = m.n_layers == lm.n_layers or bool(m.extra.get("n_layers_unknown"))  # foreign GGUF files
        if not allow_other_family and (m.family != lm.family or not same_depth):
            raise VectorError(
                f"vector was made for {m.model_id} ({m.family}, {m.n_layers} layers), not {lm.model_id} "
                f"({lm.family}, {lm.n_layers} layers); pass allow_other_family=True (--allow-other-model) to use it anyway"
            )

    # -- storage ------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, *, force: bool = False) -> Path:
        """Write a safetensors file. Refuses to overwrite an existing file unless `force`."""
        from safetensors.torch import save_file

        path = Path(path)
        if path.exists() and not force:
            raise OutputExistsError(f"{path} already exists; pass force=True (--force) to overwrite it")
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {f"layer.{l}": t.contiguous() for l, t in self.directions.items()}
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata={"steerlab": self.meta.to_json()})
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SteeringVector":
        """Read a file written by `save` (or a llama.cpp control-vector `.gguf`), validating every tensor."""
        path = Path(path)
        if not path.is_file():
            raise VectorError(f"vector file not found: {path}")
        if path.suffix == ".gguf":
            return import_gguf(path)
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                raw_meta = (f.metadata() or {}).get("steerlab")
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise VectorError(f"{path} is not a readable safetensors vector file: {e}") from e
        if raw_meta is None:
            raise VectorError(f"{path} has no steerlab metadata; it was not written by steerlab")
        meta = VectorMetadata.from_json(raw_meta)
        directions = {}
        for k, t in tensors.items():
            if not k.startswith("layer.") or not k[6:].lstrip("-").isdigit():
                raise VectorError(f"{path}: unexpected tensor name '{k}' (expected layer.N)")
            _check_finite(int(k[6:]), t, str(path))
            directions[int(k[6:])] = t
        return cls(directions, meta)


def export_gguf(vector: SteeringVector, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write `vector` as a llama.cpp control vector (steerlab metadata kept under `steerlab.metadata`)."""
    return write_control_vector(path, vector.directions, model_hint=vector.meta.family,
                                steerlab_metadata=vector.meta.to_json(), force=force)


def import_gguf(path: str | os.PathLike, *, model_id: str | None = None, n_layers: int | None = None) -> SteeringVector:
    """Read a llama.cpp control vector (ours or any other tool's)."""
    path = Path(path)
    f = read_control_vector(path)
    hidden = f.hidden_size
    if f.steerlab_metadata is not None:
        meta = VectorMetadata.from_json(f.steerlab_metadata)
    else:
        hint = f.model_hint or "unknown"
        # llama.cpp files do not record the model's depth; unless told, check_compatible must not compare it
        meta = VectorMetadata(model_id=model_id or hint, family=hint, hidden_size=hidden,
                              n_layers=n_layers or max(f.directions) + 1, method="gguf-import",
                              layers=tuple(sorted(f.directions)), template="unknown",
                              extra={} if n_layers else {"n_layers_unknown": True})
    if meta.hidden_size != hidden:
        raise VectorError(f"{path}: metadata says hidden size {meta.hidden_size} but directions have {hidden}")
    return SteeringVector(f.directions, meta)
