"""Tests for steerlab.layers: finding decoder blocks; layer L is hidden_states[L + 1].

Every model here is a tiny, randomly initialised transformers model built from a config (offline).
"""

from __future__ import annotations

import functools
import types
from collections import OrderedDict, namedtuple

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")

from steerlab.errors import LayerError, SteerlabError  # noqa: E402
from steerlab.layers import (  # noqa: E402
    DecoderBlocks,
    block_hidden,
    find_decoder_blocks,
    with_block_hidden,
)

VOCAB = 128
SEQ = 6

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
)

# name -> (config class, model class, config kwargs, expected blocks path)
_ARCHS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(_COMMON), "model.layers"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(_COMMON), "model.layers"),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(_COMMON), "model.layers"),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(_COMMON, head_dim=8), "model.layers"),
    "gemma3_text": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        dict(_COMMON, head_dim=8),
        "model.layers",
    ),
    "gpt2": (
        "GPT2Config",
        "GPT2LMHeadModel",
        dict(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64,
             bos_token_id=1, eos_token_id=2),
        "transformer.h",
    ),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(_COMMON), "gpt_neox.layers"),
    "phi": ("PhiConfig", "PhiForCausalLM", dict(_COMMON), "model.layers"),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(_COMMON), "model.layers"),
    "mixtral": (
        "MixtralConfig",
        "MixtralForCausalLM",
        dict(_COMMON, num_local_experts=4, num_experts_per_tok=2),
        "model.layers",
    ),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        "Qwen2MoeForCausalLM",
        dict(_COMMON, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
             shared_expert_intermediate_size=32),
        "model.layers",
    ),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(_COMMON, head_dim=8), "model.layers"),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        "Qwen3MoeForCausalLM",
        dict(_COMMON, head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
        "model.layers",
    ),
    # Blocks that still return a tuple (exercises the tuple path of block_hidden).
    "bloom": (
        "BloomConfig",
        "BloomForCausalLM",
        dict(vocab_size=VOCAB, hidden_size=32, n_layer=3, n_head=4,
             bos_token_id=1, eos_token_id=2, pad_token_id=0),
        "transformer.h",
    ),
    "falcon": (
        "FalconConfig",
        "FalconForCausalLM",
        dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
             bos_token_id=1, eos_token_id=2, pad_token_id=0),
        "transformer.h",
    ),
    # Hybrid: two block classes in one list (attention and Mamba blocks).
    "jamba": (
        "JambaConfig",
        "JambaForCausalLM",
        dict(_COMMON, num_hidden_layers=4, num_experts=2, attn_layer_period=2,
             attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1,
             mamba_d_state=4, mamba_expand=1, mamba_dt_rank=4, use_mamba_kernels=False),
        "model.layers",
    ),
}


def _gemma3_multimodal(**overrides):
    text = dict(_COMMON, vocab_size=300, head_dim=8)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, image_size=28, patch_size=14)
    vision.update(overrides)
    cfg = transformers.Gemma3Config(
        text_config=text, vision_config=vision, mm_tokens_per_image=4,
        image_token_index=299, boi_token_index=297, eoi_token_index=298,
    )
    return transformers.Gemma3ForConditionalGeneration(cfg)


@functools.cache
def _build(name: str):
    torch.manual_seed(0)
    if name == "gemma3_multimodal":
        model, path = _gemma3_multimodal(), "model.language_model.layers"
    else:
        cfg_name, model_name, kwargs, path = _ARCHS[name]
        cfg_cls = getattr(transformers, cfg_name, None)
        model_cls = getattr(transformers, model_name, None)
        if cfg_cls is None or model_cls is None:
            pytest.skip(f"{model_name} is not in this transformers")
        model = model_cls(cfg_cls(**kwargs))
    return model.eval(), path


ALL = [*_ARCHS, "gemma3_multimodal"]


def _n_layers(model) -> int:
    return model.config.get_text_config(decoder=True).num_hidden_layers


def _ids() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randint(3, VOCAB, (2, SEQ), generator=g)


@pytest.mark.parametrize("name", ALL)
def test_blocks_found(name):
    model, path = _build(name)
    blocks = find_decoder_blocks(model)
    assert blocks.path == path
    assert len(blocks) == _n_layers(model)
    assert blocks.modules is model.get_submodule(path)
    assert blocks[0] is blocks.modules[0] and blocks[-1] is blocks.modules[-1]
    assert list(blocks) == list(blocks.modules)
    assert path in repr(blocks)
    # the explicit override resolves to the same list
    explicit = find_decoder_blocks(model, path)
    assert explicit.modules is blocks.modules and explicit.path == path


@pytest.mark.parametrize("name", ALL)
def test_hook_reads_hidden_states_l_plus_1(name):
    model, _ = _build(name)
    blocks = find_decoder_blocks(model)
    seen: dict[int, torch.Tensor] = {}
    handles = [
        blk.register_forward_hook(
            lambda mod, args, out, i=i: seen.__setitem__(i, block_hidden(out).detach().clone())
        )
        for i, blk in enumerate(blocks)
    ]
    try:
        with torch.no_grad():
            hs = model(input_ids=_ids(), output_hidden_states=True).hidden_states
    finally:
        for h in handles:
            h.remove()
    n = len(blocks)
    assert len(hs) == n + 1
    for layer in range(n - 1):
        torch.testing.assert_close(seen[layer], hs[layer + 1], rtol=0, atol=0)
    # HF applies the final norm to the last entry only (the documented caveat).
    assert not torch.allclose(seen[n - 1], hs[n])


def _block_input(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@pytest.mark.parametrize("name", ALL)
def test_hook_modifying_stream_shifts_next_hidden_state(name):
    model, _ = _build(name)
    blocks = find_decoder_blocks(model)
    ids = _ids()
    with torch.no_grad():
        base = model(input_ids=ids, output_hidden_states=True).hidden_states
    hidden = base[0].shape[-1]
    for layer in range(len(blocks) - 1):
        delta = torch.randn(hidden, generator=torch.Generator().manual_seed(layer))
        next_input: list[torch.Tensor] = []

        def hook(mod, args, out):
            return with_block_hidden(out, block_hidden(out) + delta)

        # prepend=True: run before transformers' own output-capturing hook on the block (installed
        # lazily by the first output_hidden_states call), so hidden_states shows the steered stream.
        handles = [
            blocks[layer].register_forward_hook(hook, prepend=True),
            blocks[layer + 1].register_forward_pre_hook(
                lambda mod, args, kwargs: next_input.append(_block_input(args, kwargs)),
                with_kwargs=True,
            ),
        ]
        try:
            with torch.no_grad():
                steered = model(input_ids=ids, output_hidden_states=True).hidden_states
        finally:
            for h in handles:
                h.remove()
        torch.testing.assert_close(steered[layer], base[layer], rtol=0, atol=0)
        diff = steered[layer + 1] - base[layer + 1]
        torch.testing.assert_close(diff, delta.expand_as(diff), rtol=0, atol=1e-5)
        # what the next block actually receives is the steered stream
        torch.testing.assert_close(next_input[0], steered[layer + 1], rtol=0, atol=0)
        assert not torch.allclose(steered[-1], base[-1])


# ---------------------------------------------------------------------------------------------
# Structural search on synthetic models
# ---------------------------------------------------------------------------------------------


class _Expert(nn.Module):
    def __init__(self):
        super().__init__()
        self.up = nn.Linear(8, 8)


class _Block(nn.Module):
    def __init__(self, n_experts: int = 0):
        super().__init__()
        self.attn = nn.Linear(8, 8)
        if n_experts:
            self.experts = nn.ModuleList(_Expert() for _ in range(n_experts))


class _Stack(nn.Module):
    def __init__(self, n: int, n_experts: int = 0):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.layers = nn.ModuleList(_Block(n_experts) for _ in range(n))


class _LM(nn.Module):
    def __init__(self, n: int, n_experts: int = 0, config=None, with_embedding_getter=True):
        super().__init__()
        self.model = _Stack(n, n_experts)
        self.head = nn.Linear(8, 10)
        if config is not None:
            self.config = config
        self._getter = with_embedding_getter

    def get_input_embeddings(self):
        if not self._getter:
            raise NotImplementedError
        return self.model.embed


def test_moe_expert_lists_never_win():
    # experts list is longer than the block list, and there is no config or embedding hint
    lm = _LM(n=2, n_experts=8, with_embedding_getter=False)
    assert find_decoder_blocks(lm).path == "model.layers"
    # experts list has the same length as the block list, and the config states it
    lm = _LM(n=4, n_experts=4, config=types.SimpleNamespace(num_hidden_layers=4))
    assert find_decoder_blocks(lm).path == "model.layers"


def test_config_count_picks_the_matching_list():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = types.SimpleNamespace(n_layer=3)
            self.aux = nn.ModuleList(_Block() for _ in range(5))  # shallower, longer
            self.lm = _Stack(3)

    assert find_decoder_blocks(Wrapper()).path == "lm.layers"


def test_multimodal_text_blocks_chosen_when_vision_has_same_depth():
    torch.manual_seed(0)
    model = _gemma3_multimodal(num_hidden_layers=3)  # vision tower as deep as the text model
    blocks = find_decoder_blocks(model)
    assert blocks.path == "model.language_model.layers"
    assert len(blocks) == 3


def test_peft_wrapped_model():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    cfg_name, model_name, kwargs, _ = _ARCHS["llama"]
    base = getattr(transformers, model_name)(getattr(transformers, cfg_name)(**kwargs))
    wrapped = peft.get_peft_model(
        base, peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"])
    )
    blocks = find_decoder_blocks(wrapped)
    assert blocks.path == "base_model.model.model.layers"
    assert blocks.modules is base.model.layers


def test_explicit_path_with_list_index():
    lm = _LM(n=3)
    outer = nn.ModuleList([lm])
    blocks = find_decoder_blocks(outer, "0.model.layers")
    assert blocks.modules is lm.model.layers
    assert blocks.path == "0.model.layers"


def test_bogus_paths_raise_clear_errors():
    model, _ = _build("llama")
    with pytest.raises(LayerError, match=r"has no attribute 'blocks'.*model\.layers"):
        find_decoder_blocks(model, "model.blocks")
    with pytest.raises(LayerError, match=r"names a Embedding, not an nn\.ModuleList"):
        find_decoder_blocks(model, "model.embed_tokens")
    with pytest.raises(LayerError, match=r"names a LlamaDecoderLayer"):
        find_decoder_blocks(model, "model.layers.1")
    with pytest.raises(LayerError, match=r"index 7 is out of range"):
        find_decoder_blocks(model, "model.layers.7.mlp")
    with pytest.raises(LayerError, match=r"dotted path"):
        find_decoder_blocks(model, "")


def test_no_block_list_raises_with_override_hint():
    seq = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 10))
    with pytest.raises(LayerError, match=r'layers_path="model\.layers"') as info:
        find_decoder_blocks(seq)
    assert "no nn.ModuleList" in str(info.value)
    assert isinstance(info.value, SteerlabError)

    class Leafy(nn.Module):  # a ModuleList of bare Linears is not a list of blocks
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleList(nn.Linear(8, 8) for _ in range(3))

    with pytest.raises(LayerError, match=r"heads \(3 x Linear\).*layers_path="):
        find_decoder_blocks(Leafy())

    class Mismatch(nn.Module):  # config says 4, the only list has 3 and is not beside an embedding
        def __init__(self):
            super().__init__()
            self.config = types.SimpleNamespace(num_layers=4)
            self.stuff = nn.ModuleList(_Block() for _ in range(3))

    with pytest.raises(LayerError, match=r"config says 4 layers.*layers_path="):
        find_decoder_blocks(Mismatch())

    with pytest.raises(LayerError, match="torch.nn.Module"):
        find_decoder_blocks("gpt2")  # type: ignore[arg-type]


def test_check_layer():
    blocks = DecoderBlocks(path="x", modules=nn.ModuleList(_Block() for _ in range(30)))
    assert len(blocks) == 30
    assert blocks.check_layer(0) == 0
    assert blocks.check_layer(29) == 29
    assert blocks.check_layer(-1) == 29
    assert blocks.check_layer(-30) == 0
    assert blocks.check_layer(torch.tensor(5).item()) == 5
    with pytest.raises(LayerError) as info:
        blocks.check_layer(40)
    assert str(info.value) == (
        "layer 40 is out of range: this model has 30 decoder blocks (0..29)"
    )
    with pytest.raises(LayerError, match=r"layer 30 is out of range"):
        blocks.check_layer(30)
    with pytest.raises(LayerError, match=r"layer -31 is out of range.*-30\.\.-1"):
        blocks.check_layer(-31)
    with pytest.raises(LayerError, match="must be an integer"):
        blocks.check_layer(2.0)  # type: ignore[arg-type]
    with pytest.raises(LayerError, match="must be an integer"):
        blocks.check_layer(True)
    with pytest.raises(LayerError, match="must be an integer"):
        blocks.check_layer("3")  # type: ignore[arg-type]
    with pytest.raises(LayerError, match="layer 40 is out of range"):
        blocks[40]
    assert blocks[-1] is blocks.modules[29]


def test_check_layer_accepts_numpy_ints():
    np = pytest.importorskip("numpy")
    blocks = DecoderBlocks(path="x", modules=nn.ModuleList(_Block() for _ in range(4)))
    assert blocks.check_layer(np.int64(-2)) == 2


# ---------------------------------------------------------------------------------------------
# block_hidden / with_block_hidden on every output shape
# ---------------------------------------------------------------------------------------------


def test_block_hidden_and_replacement_structures():
    h = torch.zeros(2, 3, 4)
    new = torch.ones(2, 3, 4)
    extra = torch.full((1,), 7.0)

    assert block_hidden(h) is h
    assert with_block_hidden(h, new) is new

    tup = (h, extra, None)
    assert block_hidden(tup) is h
    out = with_block_hidden(tup, new)
    assert isinstance(out, tuple) and out[0] is new and out[1] is extra and out[2] is None
    assert tup[0] is h  # not mutated

    lst = [h, extra]
    out = with_block_hidden(lst, new)
    assert isinstance(out, list) and out[0] is new and out[1] is extra and lst[0] is h

    Out = namedtuple("Out", "hidden cache")
    nt = Out(h, extra)
    out = with_block_hidden(nt, new)
    assert isinstance(out, Out) and out.hidden is new and out.cache is extra

    from transformers.modeling_outputs import BaseModelOutputWithPast

    mo = BaseModelOutputWithPast(last_hidden_state=h, attentions=(extra,))
    assert block_hidden(mo) is h
    out = with_block_hidden(mo, new)
    assert type(out) is BaseModelOutputWithPast
    assert out.last_hidden_state is new and out[0] is new and out.attentions == (extra,)
    assert mo.last_hidden_state is h

    od = OrderedDict(hidden=h, other=1)
    out = with_block_hidden(od, new)
    assert out["hidden"] is new and out["other"] == 1 and od["hidden"] is h


def test_block_hidden_errors():
    with pytest.raises(LayerError, match="empty tuple"):
        block_hidden(())
    with pytest.raises(LayerError, match="not the hidden-state tensor"):
        block_hidden((None, torch.zeros(1)))
    with pytest.raises(LayerError, match="of type int"):
        block_hidden(3)
    with pytest.raises(ValueError, match="shape"):
        with_block_hidden((torch.zeros(2, 3),), torch.zeros(3, 2))
