"""Model loading: embedded default (GGUF → cached safetensors), local directories, options, errors."""

from __future__ import annotations

import time

import pytest
import torch

import steerlab as sl
from steerlab.errors import LayerError, ModelLoadError
from steerlab.models import _gguf_cache_dir, embedded_gguf_path


def test_embedded_model_facts(real_lm):
    assert real_lm.model_id == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (real_lm.family, real_lm.n_layers, real_lm.hidden_size) == ("llama", 30, 576)
    assert real_lm.blocks.path == "model.layers"
    assert real_lm.use_chat_template and real_lm.template_name == "chat"
    assert real_lm.tokenizer.padding_side == "left" and real_lm.tokenizer.pad_token is not None
    assert not real_lm.model.training


def test_embedded_gguf_is_cached_and_reloads_fast(real_lm):
    gguf = embedded_gguf_path()
    assert gguf.suffix == ".gguf" and gguf.is_file()
    cached = _gguf_cache_dir(gguf)
    assert (cached / "model.safetensors").is_file() and (cached / "config.json").is_file()
    start = time.perf_counter()
    again = sl.load_model()
    assert time.perf_counter() - start < 20  # the first conversion takes ~30 s; a cached load ~1 s
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.equal(again.model(x).logits, real_lm.model(x).logits)


def test_local_directory_dtype_and_template_options(tmp_path, tiny_lm):
    tiny_lm.model.save_pretrained(tmp_path)
    tiny_lm.tokenizer.save_pretrained(tmp_path)
    lm = sl.load_model(tmp_path, dtype="bfloat16", chat_template=False)
    assert lm.dtype == torch.bfloat16 and lm.template_name == "raw"
    assert lm.n_layers == tiny_lm.n_layers and lm.model_id == str(tmp_path)
    lm2 = sl.load_model(tmp_path, layers_path="model.layers", model_id="my-tiny")
    assert lm2.model_id == "my-tiny" and lm2.blocks.path == "model.layers"


def test_bad_model_inputs(tmp_path, tiny_lm):
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        sl.load_model(tmp_path / "missing.gguf")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        sl.load_model(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        sl.load_model(dtype="float8")
    d = tmp_path / "m"
    tiny_lm.model.save_pretrained(d)
    tiny_lm.tokenizer.save_pretrained(d)
    with pytest.raises(LayerError):
        sl.load_model(d, layers_path="model.nothing_here")
