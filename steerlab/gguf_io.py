"""llama.cpp control-vector GGUF files (GUIDE §5), the interchange format for steering vectors: the raw format.

`direction.N` steers the output of block N, which is steerlab's layer N. llama.cpp ignores block 0,
so writing a layer-0 direction is refused rather than silently dropped.

This module moves tensors and strings only (`write_control_vector`, `read_control_vector`); it stands
below `steerlab.vector`, whose `export_gguf`, `import_gguf` and `SteeringVector.load` turn them into
a SteeringVector with its metadata.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from .errors import OutputExistsError, VectorError


@dataclass
class ControlVectorFile:
    """What a control-vector GGUF file holds.

    Attributes:
        directions: {layer: [hidden]} (float32; duplicates of a layer summed, as llama.cpp does).
        model_hint: `controlvector.model_hint` (the model family), None if absent.
        steerlab_metadata: the JSON steerlab wrote under `steerlab.metadata`, None in other tools' files.
    """

    directions: dict[int, torch.Tensor]
    model_hint: str | None = None
    steerlab_metadata: str | None = None

    @property
    def hidden_size(self) -> int:
        return next(iter(self.directions.values())).shape[0]


def write_control_vector(path: str | os.PathLike, directions: Mapping[int, torch.Tensor], *, model_hint: str,
                         steerlab_metadata: str | None = None, force: bool = False) -> Path:
    """Write `directions` ({layer: [hidden]}) as a llama.cpp control vector, atomically."""
    import gguf

    path = Path(path)
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass force=True (--force) to overwrite it")
    if any(t.dim() != 1 for t in directions.values()):
        raise VectorError("llama.cpp control vectors hold one direction per layer; a per-position ActAdd vector cannot be exported")
    if 0 in directions:
        raise VectorError(
            "llama.cpp ignores control vectors for block 0; drop layer 0 first (vector.select(...)) to export"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    writer = gguf.GGUFWriter(str(tmp), "controlvector")
    writer.add_string("controlvector.model_hint", model_hint)
    writer.add_uint32("controlvector.layer_count", len(directions))
    if steerlab_metadata is not None:
        writer.add_string("steerlab.metadata", steerlab_metadata)
    for layer, t in directions.items():
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


def read_control_vector(path: str | os.PathLike) -> ControlVectorFile:
    """Read a llama.cpp control vector (ours or any other tool's), checking its structure."""
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
    return ControlVectorFile(directions, _field_str(reader, "controlvector.model_hint"),
                             _field_str(reader, "steerlab.metadata"))
