"""llama.cpp control-vector GGUF files (GUIDE §5), the interchange format for steering vectors.

`direction.N` steers the output of block N, which is steerlab's layer N. llama.cpp ignores block 0,
so exporting a vector with a layer-0 direction is refused rather than silently dropped.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .errors import OutputExistsError, VectorError
from .vector import SteeringVector, VectorMetadata


def export_gguf(vector: SteeringVector, path: str | os.PathLike, *, force: bool = False) -> Path:
    """Write `vector` as a llama.cpp control vector (steerlab metadata kept under `steerlab.metadata`)."""
    import gguf

    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass force=True (--force) to overwrite it")
    if vector.per_position:
        raise VectorError("llama.cpp control vectors hold one direction per layer; a per-position ActAdd vector cannot be exported")
    if 0 in vector.layers:
        raise VectorError(
            "llama.cpp ignores control vectors for block 0; drop layer 0 first (vector.select(...)) to export"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "controlvector")
    writer.add_string("controlvector.model_hint", vector.meta.family)
    writer.add_uint32("controlvector.layer_count", len(vector.layers))
    writer.add_string("steerlab.metadata", vector.meta.to_json())
    for layer, t in vector.directions.items():
        writer.add_tensor(f"direction.{layer}", t.numpy().astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(tmp, path)
    return path


def _field_str(reader, key: str) -> str | None:
    f = reader.fields.get(key)
    if f is None:
        return None
    return bytes(f.parts[f.data[0]]).decode("utf-8")


def import_gguf(path: str | os.PathLike, *, model_id: str | None = None, n_layers: int | None = None) -> SteeringVector:
    """Read a llama.cpp control vector (ours or any other tool's)."""
    import gguf

    path = Path(path)
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as e:  # gguf raises ValueError/struct errors for foreign files
        raise VectorError(f"{path} is not a readable GGUF file: {e}") from e
    arch = _field_str(reader, "general.architecture")
    if arch != "controlvector":
        raise VectorError(f"{path} is a GGUF file of architecture '{arch}', not a control vector")
    directions: dict[int, torch.Tensor] = {}
    for t in reader.tensors:
        if not t.name.startswith("direction."):
            continue
        try:
            layer = int(t.name.split(".", 1)[1])
        except ValueError as e:
            raise VectorError(f"{path}: bad tensor name '{t.name}'") from e
        arr = np.array(t.data, dtype=np.float32).reshape(-1)
        if layer in directions:  # llama.cpp sums duplicates
            directions[layer] = directions[layer] + torch.from_numpy(arr)
        else:
            directions[layer] = torch.from_numpy(arr.copy())
    if not directions:
        raise VectorError(f"{path} has no direction.N tensors")
    sizes = {t.shape[0] for t in directions.values()}
    if len(sizes) != 1:
        raise VectorError(f"{path}: directions have different lengths {sorted(sizes)}")
    hidden = sizes.pop()
    raw = _field_str(reader, "steerlab.metadata")
    if raw is not None:
        meta = VectorMetadata.from_json(raw)
    else:
        hint = _field_str(reader, "controlvector.model_hint") or "unknown"
        # llama.cpp files do not record the model's depth; unless told, check_compatible must not compare it
        meta = VectorMetadata(model_id=model_id or hint, family=hint, hidden_size=hidden,
                              n_layers=n_layers or max(directions) + 1, method="gguf-import",
                              layers=tuple(sorted(directions)), template="unknown",
                              extra={} if n_layers else {"n_layers_unknown": True})
    if meta.hidden_size != hidden:
        raise VectorError(f"{path}: metadata says hidden size {meta.hidden_size} but directions have {hidden}")
    return SteeringVector(directions, meta)
