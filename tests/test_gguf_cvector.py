"""llama.cpp interop of control-vector GGUF files (issue 15, item 5).

A file laid out as llama.cpp's `cvector-generator` writes it imports into steerlab and round-trips
(import -> export -> import gives the same vector, and the exported file is what llama.cpp reads).
The layout, read from the tool's source (tools/cvector-generator: export_gguf, pca.hpp, mean.hpp):
  - KV pairs, in this order: general.architecture = "controlvector" (string);
    controlvector.model_hint = the model's general.architecture (string, e.g. "llama");
    controlvector.layer_count = n_layer - 1 (INT32, where steerlab writes UINT32);
  - tensors direction.1 .. direction.{n_layer-1}, in that order, 1-D F32 of n_embd values, each
    unit-norm (both the PCA and the mean method normalise), no other tensors, no other KV pairs.

The slow test at the end runs the real comparison with llama.cpp (tools/llamacpp_parity.py) and skips
unless the llama-cpp-python venv that `tools/llamacpp_parity.py --setup` builds is already there; no
test builds it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch

from steerlab.gguf_io import read_control_vector
from steerlab.vector import export_gguf, import_gguf
from steerlab.vector import SteeringVector

ROOT = Path(__file__).resolve().parents[1]
N_EMBD, N_LAYER = 576, 30  # SmolLM2-135M's shape, as cvector-generator would see it


def write_cvector_generator_file(path: Path, n_embd: int = N_EMBD, n_layer: int = N_LAYER, hint: str = "llama",
                                 seed: int = 0) -> dict[int, np.ndarray]:
    """Write a control vector exactly as llama.cpp's cvector-generator lays it out; return its directions."""
    rng = np.random.default_rng(seed)
    directions = {}
    w = gguf.GGUFWriter(str(path), "controlvector")  # writes general.architecture first
    w.add_string("controlvector.model_hint", hint)
    w.add_int32("controlvector.layer_count", n_layer - 1)
    for il in range(n_layer - 1):  # the generator's il-th result is named direction.{il + 1}
        v = rng.standard_normal(n_embd).astype(np.float32)
        v /= np.linalg.norm(v)
        directions[il + 1] = v
        w.add_tensor(f"direction.{il + 1}", v)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return directions


def _field(reader: gguf.GGUFReader, key: str):
    f = reader.fields[key]
    value = f.parts[f.data[0]]
    return bytes(value).decode() if f.types[0] == gguf.GGUFValueType.STRING else value.tolist()[0]


def test_the_helper_writes_the_generator_layout(tmp_path):
    path = tmp_path / "control_vector.gguf"
    write_cvector_generator_file(path)
    r = gguf.GGUFReader(str(path))
    keys = [k for k in r.fields if not k.startswith("GGUF.")]
    assert keys == ["general.architecture", "controlvector.model_hint", "controlvector.layer_count"]
    assert _field(r, "general.architecture") == "controlvector"
    assert r.fields["controlvector.layer_count"].types == [gguf.GGUFValueType.INT32]
    assert _field(r, "controlvector.layer_count") == N_LAYER - 1
    assert [t.name for t in r.tensors] == [f"direction.{n}" for n in range(1, N_LAYER)]
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [N_EMBD] for t in r.tensors)


def test_cvector_generator_file_imports(tmp_path):
    path = tmp_path / "control_vector.gguf"
    dirs = write_cvector_generator_file(path)
    raw = read_control_vector(path)  # the raw format: what the file holds
    assert raw.model_hint == "llama" and raw.steerlab_metadata is None and raw.hidden_size == N_EMBD
    assert sorted(raw.directions) == list(range(1, N_LAYER))
    vec = import_gguf(path)
    assert vec.layers == tuple(range(1, N_LAYER))  # direction.N is steerlab's layer N (block N's output)
    for n, v in dirs.items():
        assert vec[n].dtype == torch.float32 and torch.equal(vec[n], torch.from_numpy(v))
    m = vec.meta
    assert (m.family, m.model_id, m.hidden_size, m.method) == ("llama", "llama", N_EMBD, "gguf-import")
    # the file does not record the model's depth: steerlab takes the deepest direction + 1 and says so
    assert m.n_layers == N_LAYER and m.extra == {"n_layers_unknown": True}
    # told the depth (and the model), nothing is marked unknown
    told = import_gguf(path, model_id="HuggingFaceTB/SmolLM2-135M-Instruct", n_layers=N_LAYER)
    assert told.meta.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct" and told.meta.extra == {}
    # SteeringVector.load dispatches .gguf to the same importer
    assert torch.equal(SteeringVector.load(path)[7], vec[7])


def test_cvector_generator_file_round_trips(tmp_path):
    src = tmp_path / "control_vector.gguf"
    write_cvector_generator_file(src, seed=3)
    first = import_gguf(src)
    out = export_gguf(first, tmp_path / "again.gguf")
    second = import_gguf(out)
    assert second.layers == first.layers
    for n in first.layers:
        assert torch.equal(second[n], first[n])
    assert second.meta == first.meta  # every field, created and extra included

    # what llama.cpp reads from the exported file is what it read from the original: the architecture,
    # the model hint and the direction.N tensors (it looks at no other key)
    a, b = gguf.GGUFReader(str(src)), gguf.GGUFReader(str(out))
    assert _field(b, "general.architecture") == "controlvector"
    assert _field(b, "controlvector.model_hint") == _field(a, "controlvector.model_hint") == "llama"
    assert _field(b, "controlvector.layer_count") == _field(a, "controlvector.layer_count") == N_LAYER - 1
    assert {t.name: np.asarray(t.data).tolist() for t in a.tensors} == {t.name: np.asarray(t.data).tolist() for t in b.tensors}

    # and once more through safetensors, for good measure
    third = SteeringVector.load(second.save(tmp_path / "again.safetensors"))
    assert third.meta == first.meta and all(torch.equal(third[n], first[n]) for n in first.layers)


def test_cvector_generator_file_subset_and_scaling_round_trip(tmp_path):
    # what users do with a generator file: keep a band of layers, scale it, and hand it back to llama.cpp
    src = tmp_path / "control_vector.gguf"
    write_cvector_generator_file(src, n_embd=64, n_layer=8, hint="qwen2", seed=1)
    band = import_gguf(src).select([3, 4, 5]) * 2.5
    back = import_gguf(export_gguf(band, tmp_path / "band.gguf"))
    assert back.layers == (3, 4, 5) and back.meta.family == "qwen2"
    for n in band.layers:
        assert torch.equal(back[n], band[n])
    r = gguf.GGUFReader(str(tmp_path / "band.gguf"))
    assert [t.name for t in r.tensors] == ["direction.3", "direction.4", "direction.5"]


# --------------------------------------------------------------------------------------------------
# the real thing: llama.cpp through llama-cpp-python, when its venv has been built
# --------------------------------------------------------------------------------------------------

LLAMACPP_VENV = Path(os.environ.get("STEERLAB_LLAMACPP_VENV", ROOT / "benchmarks" / ".venvs" / "llamacpp"))


def _llamacpp_ready() -> bool:
    py = LLAMACPP_VENV / "bin" / "python"
    return py.exists() and subprocess.run([str(py), "-c", "import llama_cpp, gguf"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _llamacpp_ready(), reason="llama-cpp-python venv not built (python tools/llamacpp_parity.py --setup)")
def test_llamacpp_parity(tmp_path):
    out = tmp_path / "parity.json"
    r = subprocess.run([sys.executable, str(ROOT / "tools" / "llamacpp_parity.py"), "--venv", str(LLAMACPP_VENV),
                        "--prompts", "24", "--out", str(out)], capture_output=True, text=True, timeout=1800,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.exists(), r.stdout + r.stderr
    res = json.loads(out.read_text())
    L = res["layer"]
    diag = {row["llama_block"]: row[f"all_{L}"] for row in res["table"]}
    assert diag[L] >= 0.95, r.stdout
    assert diag[L - 1] < diag[L] and diag[L + 1] < diag[L], r.stdout
    assert res["controls"]["range_excl_max_abs"] == 0.0  # a layer range without the block changes nothing
    assert res["controls"]["cleared_max_abs"] == 0.0  # clearing the vector restores the unsteered logits
    assert r.returncode == 0, r.stdout + r.stderr
