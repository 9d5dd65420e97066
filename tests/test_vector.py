"""Vector storage: safetensors and llama.cpp control-vector GGUF round trips are exact (tensors and
metadata), files are read back with an independent reader, and bad files or mismatched models fail
with one clear VectorError."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import steerlab as sl
from steerlab.errors import OutputExistsError, VectorError
from steerlab.vector import SteeringVector, VectorMetadata, export_gguf, import_gguf


@pytest.fixture()
def vec(tiny_lm, vec_factory):
    g = torch.Generator().manual_seed(5)
    dirs = {l: torch.randn(32, generator=g) * 10 ** l for l in (1, 3)}  # different magnitudes per layer
    return vec_factory.make(tiny_lm, dirs, method="caa", behaviour="openness", pairs=[1, 2])


def _logits(lm, steering=None):
    batch = sl.encode(lm, ["Hi", "Tell me a story."])
    with torch.no_grad(), sl.steer(lm, steering or [], batch=batch):
        return lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits


def _field(reader: gguf.GGUFReader, key: str):
    f = reader.fields[key]
    value = f.parts[f.data[0]]
    return bytes(value).decode() if f.types[0] == gguf.GGUFValueType.STRING else value.tolist()[0]


# --------------------------------------------------------------------------------------------------
# safetensors
# --------------------------------------------------------------------------------------------------

def test_safetensors_round_trip_is_exact(tmp_path, tiny_lm, vec):
    path = vec.save(tmp_path / "v.safetensors")
    back = SteeringVector.load(path)
    assert back.layers == vec.layers
    for layer in vec.layers:
        assert back[layer].dtype == torch.float32 and torch.equal(back[layer], vec[layer])
    assert back.meta == vec.meta  # every field, incl. created, version and extra
    assert back.meta.extra == {"behaviour": "openness", "pairs": [1, 2]}
    with safe_open(str(path), framework="pt") as f:  # the file as another reader sees it
        assert sorted(f.keys()) == ["layer.1", "layer.3"]
        assert VectorMetadata.from_json(f.metadata()["steerlab"]) == vec.meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.safetensors"]  # no temporary file left
    # steering with the loaded vector is bit-identical
    assert torch.equal(_logits(tiny_lm, [sl.Steering(back, 0.5)]), _logits(tiny_lm, [sl.Steering(vec, 0.5)]))

    actadd = sl.train_actadd(tiny_lm, "Love", "Hate", layers=[2])
    back = SteeringVector.load(actadd.save(tmp_path / "a.safetensors"))
    assert torch.equal(back[2], actadd[2]) and back.per_position and back.meta == actadd.meta


def test_existing_file_is_refused_unless_force(tmp_path, vec):
    path = tmp_path / "v.safetensors"
    path.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="already exists.*force"):
        vec.save(path)
    assert path.read_bytes() == b"keep me"
    vec.save(path, force=True)
    assert torch.equal(SteeringVector.load(path)[3], vec[3])

    g = tmp_path / "v.gguf"
    g.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError, match="already exists.*force"):
        export_gguf(vec, g)
    assert g.read_bytes() == b"keep me"
    export_gguf(vec, g, force=True)
    assert torch.equal(import_gguf(g)[1], vec[1])


def _write_raw(path, tensors, meta_json):
    save_file(tensors, str(path), metadata=None if meta_json is None else {"steerlab": meta_json})
    return path


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_values_in_a_file_are_refused(tmp_path, vec, bad):
    t = vec[1].clone()
    t[7] = float(bad)
    path = _write_raw(tmp_path / "bad.safetensors", {"layer.1": t, "layer.3": vec[3]}, vec.meta.to_json())
    with pytest.raises(VectorError, match=f"layer 1 contains {'NaN' if bad == 'nan' else 'inf'}"):
        SteeringVector.load(path)
    g = tmp_path / "bad.gguf"
    w = gguf.GGUFWriter(str(g), "controlvector")
    w.add_string("controlvector.model_hint", "llama")
    w.add_uint32("controlvector.layer_count", 1)
    w.add_tensor("direction.2", t.numpy())
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    with pytest.raises(VectorError, match="contains"):
        SteeringVector.load(g)


def test_malformed_vector_files(tmp_path, vec):
    with pytest.raises(VectorError, match="not found"):
        SteeringVector.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(VectorError, match="not a readable safetensors"):
        SteeringVector.load(junk)
    with pytest.raises(VectorError, match="no steerlab metadata"):
        SteeringVector.load(_write_raw(tmp_path / "a.safetensors", {"layer.1": vec[1]}, None))
    with pytest.raises(VectorError, match="unexpected tensor name 'weight'"):
        SteeringVector.load(_write_raw(tmp_path / "b.safetensors", {"weight": vec[1]}, vec.meta.to_json()))
    with pytest.raises(VectorError, match="not valid JSON"):
        SteeringVector.load(_write_raw(tmp_path / "c.safetensors", {"layer.1": vec[1]}, "{oops"))
    with pytest.raises(VectorError, match="lacks hidden_size"):
        SteeringVector.load(_write_raw(tmp_path / "d.safetensors", {"layer.1": vec[1]}, '{"model_id": "m", '
                                       '"family": "llama", "n_layers": 4, "method": "caa", "layers": [1]}'))
    with pytest.raises(VectorError, match="expected \\(32,\\)"):
        SteeringVector.load(_write_raw(tmp_path / "e.safetensors", {"layer.1": torch.zeros(16)}, vec.meta.to_json()))
    with pytest.raises(VectorError, match="not a readable GGUF"):
        SteeringVector.load(junk.rename(tmp_path / "junk.gguf"))


# --------------------------------------------------------------------------------------------------
# GGUF control vectors
# --------------------------------------------------------------------------------------------------

def test_gguf_export_is_a_llama_cpp_control_vector(tmp_path, vec):
    path = export_gguf(vec, tmp_path / "v.gguf")
    reader = gguf.GGUFReader(str(path))
    assert _field(reader, "general.architecture") == "controlvector"
    assert _field(reader, "controlvector.model_hint") == "llama"
    assert _field(reader, "controlvector.layer_count") == 2
    assert reader.fields["controlvector.layer_count"].types == [gguf.GGUFValueType.UINT32]
    tensors = {t.name: t for t in reader.tensors}
    assert sorted(tensors) == ["direction.1", "direction.3"]
    for layer in (1, 3):
        t = tensors[f"direction.{layer}"]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and list(t.shape) == [32]
        assert np.array_equal(np.asarray(t.data), vec[layer].numpy())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.gguf"]


def test_gguf_round_trip_is_exact(tmp_path, tiny_lm, vec):
    path = export_gguf(vec, tmp_path / "v.gguf")
    for back in (import_gguf(path), SteeringVector.load(path)):
        assert back.layers == vec.layers and back.meta == vec.meta
        for layer in vec.layers:
            assert torch.equal(back[layer], vec[layer])
    assert torch.equal(_logits(tiny_lm, [sl.Steering(back, 2.0)]), _logits(tiny_lm, [sl.Steering(vec, 2.0)]))
    # safetensors -> GGUF -> safetensors
    again = SteeringVector.load(import_gguf(path).save(tmp_path / "again.safetensors"))
    assert all(torch.equal(again[l], vec[l]) for l in vec.layers) and again.meta == vec.meta


def test_gguf_refuses_layer_zero_and_per_position(tmp_path, tiny_lm, vec_factory):
    with_zero = vec_factory(tiny_lm, [0, 2], seed=1)
    with pytest.raises(VectorError, match="block 0.*select"):
        export_gguf(with_zero, tmp_path / "z.gguf")
    export_gguf(with_zero.select([2]), tmp_path / "ok.gguf")
    actadd = sl.train_actadd(tiny_lm, "Love", "Hate", layers=[1])
    with pytest.raises(VectorError, match="per-position"):
        export_gguf(actadd, tmp_path / "a.gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.gguf"]


def _foreign_gguf(path, directions: dict[int, np.ndarray], hint="llama", arch="controlvector"):
    """A control vector as other tools (repeng, llama.cpp's cvector-generator) write it: no steerlab metadata."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_string(f"{arch}.model_hint", hint)
    w.add_uint32(f"{arch}.layer_count", len(directions))
    for layer, d in directions.items():
        w.add_tensor(f"direction.{layer}", d.astype(np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    return path


def test_foreign_gguf_import(tmp_path, tiny_lm, make_tiny):
    rng = np.random.default_rng(0)
    dirs = {1: rng.standard_normal(32), 2: rng.standard_normal(32)}
    v = import_gguf(_foreign_gguf(tmp_path / "f.gguf", dirs))
    assert v.layers == (1, 2) and v.meta.family == "llama" and v.meta.hidden_size == 32
    assert all(np.array_equal(v[l].numpy(), dirs[l].astype(np.float32)) for l in dirs)
    # llama.cpp files do not record the model's depth: a vector for this family and width fits
    v.check_compatible(tiny_lm)
    v.check_compatible(make_tiny(layers=6))
    with pytest.raises(VectorError, match="hidden size 32"):
        v.check_compatible(make_tiny(hidden=48))
    with pytest.raises(VectorError, match="allow_other_family"):
        v.check_compatible(make_tiny(family="qwen2"))
    told = import_gguf(tmp_path / "f.gguf", n_layers=6)  # a depth the caller knows is checked
    with pytest.raises(VectorError, match="6 layers"):
        told.check_compatible(tiny_lm)
    with pytest.raises(VectorError, match="architecture 'llama', not a control vector"):
        import_gguf(_foreign_gguf(tmp_path / "m.gguf", dirs, arch="llama"))
    with pytest.raises(VectorError, match="no direction.N tensors"):
        import_gguf(_foreign_gguf(tmp_path / "e.gguf", {}))
    with pytest.raises(VectorError, match="different lengths"):
        import_gguf(_foreign_gguf(tmp_path / "l.gguf", {1: rng.standard_normal(32), 2: rng.standard_normal(16)}))


# --------------------------------------------------------------------------------------------------
# Fitting a model
# --------------------------------------------------------------------------------------------------

def test_vectors_check_the_model_they_are_loaded_into(tmp_path, tiny_lm, make_tiny, vec):
    path = vec.save(tmp_path / "v.safetensors")
    loaded = SteeringVector.load(path)
    loaded.check_compatible(tiny_lm)

    wide = make_tiny(hidden=48)
    for allow in (False, True):  # no override for another hidden size
        with pytest.raises(VectorError, match="hidden size 32.*this model has 48"):
            loaded.check_compatible(wide, allow_other_family=allow)
    with pytest.raises(VectorError, match="hidden size 32"):
        sl.apply_steering(wide, sl.Steering(loaded, 1.0))

    qwen = make_tiny(family="qwen2")
    with pytest.raises(VectorError, match="made for tiny-llama-32 \\(llama, 4 layers\\).*allow_other_family"):
        loaded.check_compatible(qwen)
    loaded.check_compatible(qwen, allow_other_family=True)  # the override works
    assert not torch.equal(_logits(qwen, [sl.Steering(loaded, 3.0)]), _logits(qwen))

    deeper = make_tiny(layers=6)
    with pytest.raises(VectorError, match="4 layers"):
        loaded.check_compatible(deeper)
    deeper_vec = SteeringVector({5: torch.ones(32)}, VectorMetadata("d", "llama", 32, 6, "caa", (5,)))
    with pytest.raises(VectorError, match="has layer 5, but this model has only 4 layers"):
        deeper_vec.check_compatible(tiny_lm, allow_other_family=True)


OLD_PAS_META = {  # the metadata a `steerlab pas` vector file carried before the usage fields were typed
    "created": "2026-11-22T15:17:22+00:00", "data_hash": "4d8cedc3078c7b08", "family": "llama", "format_version": 1,
    "hidden_size": 32, "layers": [2], "method": "ipas-wo", "model_id": "tiny", "n_layers": 4, "n_train": 48,
    "position": "last", "steerlab_version": "0.1.0", "template": "chat",
    "extra": {"selected_layers": [2], "strength": -28.0, "positions": "last_prompt", "seed": 1, "icl_k": 0},
}


def test_old_format_file_loads_with_typed_usage_fields(tmp_path):
    """Files written before selected_layers/strength/positions were typed fields (they were strings in
    extra) load with those fields filled and steer the same way."""
    path = tmp_path / "old.safetensors"
    save_file({"layer.2": torch.ones(32)}, str(path), metadata={"steerlab": json.dumps(OLD_PAS_META)})
    v = SteeringVector.load(path)
    m = v.meta
    assert (m.selected_layers, m.strength, m.positions) == ((2,), -28.0, "last_prompt")
    assert m.extra == {"seed": 1, "icl_k": 0} and (m.method, m.model_id, m.hidden_size) == ("ipas-wo", "tiny", 32)
    s = sl.Steering.from_vector(v)
    assert (s.strength, list(s.layers), s.positions) == (-28.0, [2], "last_prompt")
    again = SteeringVector.load(v.save(tmp_path / "new.safetensors"))  # written with typed fields, read back equal
    assert again.meta == m
    with safe_open(str(tmp_path / "new.safetensors"), framework="pt") as f:
        written = json.loads(f.metadata()["steerlab"])
    assert written["strength"] == -28.0 and "strength" not in written["extra"]


def test_unset_usage_fields_stay_out_of_the_file(tmp_path, vec):
    path = vec.save(tmp_path / "v.safetensors")
    with safe_open(str(path), framework="pt") as f:
        written = json.loads(f.metadata()["steerlab"])
    assert not {"selected_layers", "strength", "positions"} & set(written)
    m = SteeringVector.load(path).meta
    assert (m.selected_layers, m.strength, m.positions) == (None, None, None)


SHIPPED = Path(__file__).resolve().parents[1] / "docs" / "results"


@pytest.mark.parametrize("name", ["pas_runs/main/openbookqa/vector.safetensors",
                                  "pas_runs/icl/bbq-disability-status/vector_ipas-a.safetensors",
                                  "epo_files/survival-instinct.vector.safetensors",
                                  "epo_files/power-seeking-inclination.vector.safetensors"])
def test_shipped_vector_files_still_load(name):
    path = SHIPPED / name
    if not path.is_file():
        pytest.skip(f"{name} not shipped in this checkout")
    with safe_open(str(path), framework="pt") as f:
        raw = json.loads(f.metadata()["steerlab"])
    v = SteeringVector.load(path)
    old = raw.get("extra", {})
    if "strength" in old:  # a `steerlab pas` vector: the choice it recorded is now typed
        assert v.meta.strength == old["strength"] and v.meta.positions == old["positions"]
        assert list(v.meta.selected_layers) == old["selected_layers"] and "strength" not in v.meta.extra
    else:
        assert (v.meta.selected_layers, v.meta.strength, v.meta.positions) == (None, None, None)
    assert v.layers == tuple(raw["layers"]) and v.meta.method == raw["method"]


def test_usage_keys_given_in_extra_become_the_typed_fields(vec):
    """Code written against the old spelling (the keys in extra) still builds the typed fields."""
    from dataclasses import replace

    m = replace(vec.meta, extra={**vec.meta.extra, "strength": 6.0, "positions": "after_user", "selected_layers": [1]})
    assert (m.strength, m.positions, m.selected_layers) == (6.0, "after_user", (1,))
    assert not {"strength", "positions", "selected_layers"} & set(m.extra)
    kept = replace(m, extra={"strength": 1.0})  # a typed value already set wins
    assert kept.strength == 6.0 and kept.extra == {}
