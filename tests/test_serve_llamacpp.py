"""llama.cpp interchange: a control vector written the way llama.cpp's `cvector-generator` writes it
imports with each `direction.N` at steerlab layer N (the output of block N), and survives export and
import again unchanged, so a vector can travel llama.cpp → steerlab → llama.cpp (and be served)."""

from __future__ import annotations

import gguf
import numpy as np
import torch

import steerlab as sl
from steerlab.gguf_io import export_gguf, import_gguf


def write_like_cvector_generator(path, directions: dict[int, np.ndarray], model_hint: str = "llama"):
    """What cvector-generator's export_gguf writes: arch 'controlvector', <arch>.model_hint,
    <arch>.layer_count (int32), one F32 tensor 'direction.<i+1>' per layer."""
    w = gguf.GGUFWriter(str(path), "controlvector")
    w.add_string("controlvector.model_hint", model_hint)
    w.add_int32("controlvector.layer_count", len(directions))
    for n, d in sorted(directions.items()):
        w.add_tensor(f"direction.{n}", d.astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_cvector_generator_file_round_trips(tmp_path, tiny_lm):
    rng = np.random.default_rng(0)
    dirs = {n: rng.standard_normal(tiny_lm.hidden_size) for n in range(1, tiny_lm.n_layers)}
    src = write_like_cvector_generator(tmp_path / "cvg.gguf", dirs)
    vec = import_gguf(src, model_id=tiny_lm.model_id, n_layers=tiny_lm.n_layers)
    assert vec.layers == tuple(range(1, tiny_lm.n_layers))
    for n, d in dirs.items():
        assert torch.equal(vec.directions[n], torch.from_numpy(d.astype(np.float32)))
    vec.check_compatible(tiny_lm, allow_other_family=True)
    back = gguf.GGUFReader(str(export_gguf(vec, tmp_path / "again.gguf")))
    assert {t.name for t in back.tensors} == {f"direction.{n}" for n in dirs}
    for t in back.tensors:
        assert np.array_equal(np.asarray(t.data, dtype=np.float32), dirs[int(t.name.split(".")[1])].astype(np.float32))
    again = sl.SteeringVector.load(tmp_path / "again.gguf")
    assert all(torch.equal(again.directions[n], vec.directions[n]) for n in dirs)


def test_a_foreign_file_without_depth_still_loads(tmp_path, tiny_lm):
    src = write_like_cvector_generator(tmp_path / "cvg.gguf", {2: np.ones(tiny_lm.hidden_size)})
    vec = sl.SteeringVector.load(src)  # no depth recorded: check_compatible must not compare it
    assert vec.layers == (2,) and vec.meta.extra.get("n_layers_unknown")
    vec.check_compatible(tiny_lm, allow_other_family=True)
