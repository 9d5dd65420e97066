"""Shared fixtures for the core tests.

Most tests run on tiny randomly initialised models built from a config (fast, offline) that share
the real SmolLM2 tokenizer, so prompts are encoded exactly as for the real model (chat template,
left padding, the same pad token). The real embedded model is loaded once per session for the few
checks that need real weights.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import pytest
import torch

import steerlab as sl
from steerlab.layers import find_decoder_blocks
from steerlab.vector import USAGE_FIELDS, VectorMetadata

_GUARDED_MODELS: list[sl.LoadedModel] = []


def pytest_configure(config):
    # The test models are tiny; on a shared machine several intra-op threads mostly spin-wait for each
    # other (a 12-token SmolLM2 forward took 10 s with 2 threads under load, 0.8 s with 1).
    torch.set_num_threads(int(os.environ.get("STEERLAB_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def real_lm() -> sl.LoadedModel:
    """The embedded SmolLM2-135M-Instruct (loaded from the steerlab cache)."""
    lm = sl.load_model()
    _GUARDED_MODELS.append(lm)
    return lm


@pytest.fixture(scope="session")
def tokenizer(real_lm):
    """The real SmolLM2 tokenizer (left padding, pad token set by load_model)."""
    return real_lm.tokenizer


def build_tiny(tokenizer, *, family: str = "llama", hidden: int = 32, layers: int = 4, max_positions: int = 128,
               seed: int = 0) -> sl.LoadedModel:
    """A tiny random float32 causal LM over the real tokenizer's vocabulary, wrapped as a LoadedModel."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    cfg_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[family]
    cfg = cfg_cls(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=None, tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = model_cls(cfg).eval().requires_grad_(False)
    # No EOS: greedy generation always runs the full max_new_tokens, so step counts are known.
    model.generation_config.eos_token_id = None
    lm = sl.LoadedModel(model, tokenizer, f"tiny-{family}-{hidden}", find_decoder_blocks(model), True)
    _GUARDED_MODELS.append(lm)
    return lm


@pytest.fixture(scope="session")
def make_tiny(tokenizer) -> Callable[..., sl.LoadedModel]:
    """Factory for tiny models (see `build_tiny`); one model per distinct set of arguments."""
    made: dict = {}

    def make(**kw):
        key = tuple(sorted(kw.items()))
        if key not in made:
            made[key] = build_tiny(tokenizer, **kw)
        return made[key]

    return make


@pytest.fixture(scope="session")
def tiny_lm(make_tiny) -> sl.LoadedModel:
    """Tiny Llama: 4 layers, hidden 32, context 128."""
    return make_tiny()


@pytest.fixture(scope="session")
def save_tiny(make_tiny, tmp_path_factory) -> Callable[..., Path]:
    """`save_tiny(**kw)`: the directory `make_tiny(**kw)` is saved to (model and tokenizer, once per set of
    arguments), for what loads a model by path: the CLI's --model, `load_model`, a judge model."""
    saved: dict = {}

    def save(**kw) -> Path:
        key = tuple(sorted(kw.items()))
        if key not in saved:
            lm = make_tiny(**kw)
            d = tmp_path_factory.mktemp("tiny-model")
            lm.model.save_pretrained(d)
            lm.tokenizer.save_pretrained(d)
            saved[key] = d
        return saved[key]

    return save


def make_vector(lm, directions: dict[int, torch.Tensor], method: str = "test", **extra) -> sl.SteeringVector:
    """A SteeringVector for `lm` with the given directions (selected_layers/strength/positions: metadata
    fields; any other keyword goes to the metadata's extra)."""
    usage = {k: extra.pop(k) for k in USAGE_FIELDS if k in extra}
    meta = VectorMetadata(model_id=lm.model_id, family=lm.family, hidden_size=lm.hidden_size, n_layers=lm.n_layers,
                          method=method, layers=tuple(directions), extra=extra, **usage)
    return sl.SteeringVector(directions, meta)


def random_vector(lm, layers, seed: int, *, scale: float = 1.0) -> sl.SteeringVector:
    g = torch.Generator().manual_seed(seed)
    return make_vector(lm, {l: scale * torch.randn(lm.hidden_size, generator=g) for l in layers})


@pytest.fixture(scope="session")
def vec_factory():
    """`vec_factory(lm, layers, seed)` → a random vector; `.make(lm, {layer: tensor})` for given directions."""

    class _F:
        __call__ = staticmethod(random_vector)
        make = staticmethod(make_vector)

    return _F()


def _foreign(hook) -> bool:
    """Hooks transformers installs itself (its output_hidden_states capture stays registered)."""
    return str(getattr(hook, "__module__", "")).startswith("transformers")


def _hooks_left(lm) -> list[str]:
    left = []
    for name, mod in lm.model.named_modules():
        for hooks in (mod._forward_hooks, mod._forward_pre_hooks):
            if any(not _foreign(h) for h in hooks.values()):
                left.append(name or "<model>")
    return left


@pytest.fixture(autouse=True)
def no_leaked_hooks():
    """Every test must leave every model it touched without hooks (steering always cleans up)."""
    yield
    for lm in _GUARDED_MODELS:
        left = _hooks_left(lm)
        for _, mod in lm.model.named_modules():  # do not let one leak cascade into later tests
            for hooks in (mod._forward_hooks, mod._forward_pre_hooks):
                for key in [k for k, h in hooks.items() if not _foreign(h)]:
                    del hooks[key]
        assert not left, f"hooks left on {lm.model_id}: {left}"
