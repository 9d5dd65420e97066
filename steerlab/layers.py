"""Finding a model's decoder blocks, and reading or replacing the residual stream in their output.

Layer convention
----------------
steerlab numbers layers from 0. **Layer L is the output of decoder block L**: the residual stream
after block L has run. In Hugging Face terms that is ``output_hidden_states[L + 1]``
(``hidden_states[0]`` is the embedding output, before any block). A steering vector for layer L is
read there and added there, by a forward hook on block L. This is the same convention as
llama.cpp's control vectors, whose tensor ``direction.L`` steers the output of block L.

Two caveats follow from it:

* Hugging Face applies the model's final norm to the *last* entry of ``hidden_states``, so for the
  last layer (L = n - 1) ``hidden_states[n]`` is the *normed* output of the last block, whereas the
  hook on block n - 1 sees it before the norm. For every other layer the two agree exactly.
* The PAS reference code reads ``hidden_states[L]`` (the *input* of block L) but adds to block L's
  output; steerlab does not copy that off-by-one.
* transformers 5 records ``hidden_states`` with its own forward hooks on the blocks, installed the
  first time a forward asks for them. A hook that modifies the stream and is registered after that
  runs *after* the recorder, so ``hidden_states[L + 1]`` shows the unmodified output of block L
  (block L + 1 still receives the modified one). Register stream-modifying hooks with
  ``register_forward_hook(hook, prepend=True)`` so that both agree whatever the order.

Finding the blocks
------------------
:func:`find_decoder_blocks` works structurally, without a list of class names or attribute paths:
among all ``nn.ModuleList``s of the model whose children are non-leaf modules, it prefers, in order,

1. lists whose length equals a layer count in the model's config (``num_hidden_layers``,
   ``n_layer``, ``num_layers``, ``n_layers``, also in the nested text config of multimodal models);
2. lists whose children are all of one class (hybrid models such as Jamba mix two block classes
   and are accepted only on the evidence of 1 and 3);
3. lists that sit beside the model's input embedding (same parent module), which tells the
   language model's blocks from a vision tower's in multimodal wrappers such as Gemma 3;
4. lists not nested inside another candidate's blocks (so a mixture-of-experts list of experts
   inside a block never wins over the blocks themselves);
5. the shallowest, then the longest, then the first registered.

If this guesses wrong, or finds nothing, pass the dotted path of the block list yourself, e.g.
``layers_path="model.layers"`` (digits index into lists: ``"model.0.layers"``). The path is
resolved from the object you loaded (the ``...ForCausalLM``), and must name an ``nn.ModuleList``.
"""

from __future__ import annotations

import copy
import dataclasses
import operator
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from steerlab.errors import LayerError

__all__ = [
    "DecoderBlocks",
    "find_decoder_blocks",
    "block_hidden",
    "with_block_hidden",
]

#: Config keys that give the number of decoder blocks.
_LAYER_COUNT_KEYS = ("num_hidden_layers", "n_layer", "num_layers", "n_layers")

_OVERRIDE_HINT = (
    'pass the dotted path of the decoder-block list explicitly, e.g. layers_path="model.layers"'
)


@dataclass(frozen=True)
class DecoderBlocks:
    """The decoder blocks of a model: the ``nn.ModuleList`` at ``path`` (relative to the model).

    ``blocks[L]`` is block L, whose output is layer L (``hidden_states[L + 1]``).
    """

    path: str
    modules: nn.ModuleList = field(repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.modules)

    def __getitem__(self, i: int) -> nn.Module:
        return self.modules[self.check_layer(i)]

    def __iter__(self) -> Iterator[nn.Module]:
        return iter(self.modules)

    def __repr__(self) -> str:
        kinds = sorted({type(m).__name__ for m in self.modules})
        return f"DecoderBlocks(path={self.path!r}, n={len(self)}, block={'/'.join(kinds)})"

    def check_layer(self, layer: int) -> int:
        """Validate a layer index; return it normalised to 0..n-1 (negative counts from the end)."""
        n = len(self.modules)
        if isinstance(layer, bool):
            raise LayerError(f"layer must be an integer, got {layer!r}")
        try:
            index = operator.index(layer)
        except TypeError:
            raise LayerError(
                f"layer must be an integer, got {layer!r} ({type(layer).__name__})"
            ) from None
        if 0 <= index < n:
            return index
        if -n <= index < 0:
            return index + n
        if index < 0:
            raise LayerError(
                f"layer {index} is out of range: this model has {n} decoder blocks "
                f"(0..{n - 1}, or -{n}..-1 counting from the end)"
            )
        raise LayerError(
            f"layer {index} is out of range: this model has {n} decoder blocks (0..{n - 1})"
        )


# ---------------------------------------------------------------------------------------------
# Finding the blocks
# ---------------------------------------------------------------------------------------------


def _config_layer_counts(model: nn.Module) -> set[int]:
    """Layer counts the model's config states (top level and its text/decoder sub-config)."""
    try:
        config = getattr(model, "config", None)
    except Exception:  # some wrappers raise on unknown attributes
        config = None
    if config is None:
        return set()
    configs: list[Any] = [config]
    sub = getattr(config, "text_config", None)
    if sub is not None:
        configs.append(sub)
    get_text_config = getattr(config, "get_text_config", None)
    if callable(get_text_config):
        try:
            sub = get_text_config(decoder=True)
        except Exception:
            sub = None
        if sub is not None:
            configs.append(sub)
    counts: set[int] = set()
    for cfg in configs:
        for key in _LAYER_COUNT_KEYS:
            try:
                value = getattr(cfg, key, None)
            except Exception:
                value = None
            if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                counts.add(value)
    return counts


def _input_embedding(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_input_embeddings", None)
    if not callable(get):
        return None
    try:
        emb = get()
    except Exception:  # NotImplementedError on models without one
        return None
    return emb if isinstance(emb, nn.Module) else None


def _parent_name(name: str) -> str:
    return name.rpartition(".")[0]


def _module_lists(model: nn.Module) -> list[str]:
    return [name for name, mod in model.named_modules() if isinstance(mod, nn.ModuleList) and name]


def _describe_lists(model: nn.Module) -> str:
    modules = dict(model.named_modules())
    found = []
    for name in _module_lists(model):
        ml = modules[name]
        kinds = sorted({type(c).__name__ for c in ml})
        found.append(f"{name} ({len(ml)} x {'/'.join(kinds) or 'nothing'})")
    if not found:
        return "the model has no nn.ModuleList"
    shown = ", ".join(found[:8]) + (f", ... ({len(found) - 8} more)" if len(found) > 8 else "")
    return f"nn.ModuleLists in the model: {shown}"


def _is_block_list(ml: nn.ModuleList) -> bool:
    """Non-empty, and every child is a composite module (a block, not a bare Linear or norm)."""
    return len(ml) > 0 and all(any(True for _ in child.children()) for child in ml)


def find_decoder_blocks(model: nn.Module, path: str | None = None) -> DecoderBlocks:
    """Locate the decoder blocks of ``model`` (see the module docstring for the rules).

    With ``path`` (a dotted attribute path such as ``"model.layers"``; digits index into lists),
    resolve it instead of searching, and check that it names a non-empty ``nn.ModuleList``.
    Raises :class:`~steerlab.errors.LayerError` if the path is bad or no block list is found.
    """
    if not isinstance(model, nn.Module):
        raise LayerError(f"expected a torch.nn.Module, got {type(model).__name__}")
    if path is not None:
        return _resolve_path(model, path)

    modules = dict(model.named_modules())
    names = [n for n in _module_lists(model) if _is_block_list(modules[n])]
    counts = _config_layer_counts(model)
    emb = _input_embedding(model)
    emb_parents: set[str] = set()
    if emb is not None:
        emb_parents = {_parent_name(n) for n, m in model.named_modules() if m is emb and n}

    def homogeneous(name: str) -> bool:
        return len({type(c) for c in modules[name]}) == 1

    def nested(name: str) -> bool:
        # inside an element of another candidate list, e.g. "model.layers.0.mlp.experts"
        return any(name.startswith(other + ".") for other in names if other != name)

    def count_ok(name: str) -> bool:
        return len(modules[name]) in counts

    def beside_embedding(name: str) -> bool:
        return _parent_name(name) in emb_parents

    # A heterogeneous list is only believed with both kinds of outside evidence.
    eligible = [n for n in names if homogeneous(n) or (count_ok(n) and beside_embedding(n))]
    if counts:
        # The config states the depth: a list of another length is only believed when it sits
        # beside the input embedding (e.g. a config whose count means something else).
        matching = [n for n in eligible if count_ok(n)]
        eligible = matching or [n for n in eligible if beside_embedding(n)]

    if not eligible:
        stated = (
            f"; its config says {'/'.join(str(c) for c in sorted(counts))} layers" if counts else ""
        )
        raise LayerError(
            f"could not find the decoder blocks of {type(model).__name__}{stated} "
            f"({_describe_lists(model)}); {_OVERRIDE_HINT}"
        )

    order = {n: i for i, n in enumerate(names)}
    best = min(
        eligible,
        key=lambda n: (
            not count_ok(n),
            not homogeneous(n),
            not beside_embedding(n),
            nested(n),
            n.count("."),
            -len(modules[n]),
            order[n],
        ),
    )
    return DecoderBlocks(path=best, modules=modules[best])


def _resolve_path(model: nn.Module, path: str) -> DecoderBlocks:
    if not isinstance(path, str) or not path.strip():
        raise LayerError(f"layers_path must be a dotted path such as 'model.layers', got {path!r}")
    path = path.strip()
    obj: Any = model
    walked: list[str] = []
    for part in path.split("."):
        where = ".".join(walked) or "the model"
        if part.isdigit() and isinstance(obj, (nn.ModuleList, nn.Sequential, list, tuple)):
            index = int(part)
            if index >= len(obj):
                raise LayerError(
                    f"layers_path {path!r}: index {index} is out of range for {where} "
                    f"({len(obj)} items); {_describe_lists(model)}"
                )
            obj = obj[index]
        else:
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise LayerError(
                    f"layers_path {path!r}: {where} ({type(obj).__name__}) has no attribute "
                    f"{part!r}; {_describe_lists(model)}"
                ) from None
        walked.append(part)
    if not isinstance(obj, nn.ModuleList):
        raise LayerError(
            f"layers_path {path!r} names a {type(obj).__name__}, not an nn.ModuleList of decoder "
            f"blocks; {_describe_lists(model)}"
        )
    if len(obj) == 0:
        raise LayerError(f"layers_path {path!r} names an empty nn.ModuleList")
    return DecoderBlocks(path=path, modules=obj)


# ---------------------------------------------------------------------------------------------
# The residual stream in a block's output
# ---------------------------------------------------------------------------------------------


def _first_key(output: Mapping) -> Any:
    for key in output.keys():
        return key
    raise LayerError(f"decoder block returned an empty {type(output).__name__}")


def block_hidden(output: Any) -> torch.Tensor:
    """The residual-stream tensor in a decoder block's forward output.

    Blocks return the tensor itself (transformers 5), a tuple or list whose first element it is
    (older transformers, remote code), or a ``ModelOutput`` whose first field it is.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        if not output:
            raise LayerError(f"decoder block returned an empty {type(output).__name__}")
        first = output[0]
    elif isinstance(output, Mapping):  # transformers' ModelOutput is an OrderedDict
        first = output[_first_key(output)]
    else:
        raise LayerError(
            f"cannot find the hidden states in a decoder block's output of type "
            f"{type(output).__name__}"
        )
    if not isinstance(first, torch.Tensor):
        raise LayerError(
            f"the first item of a decoder block's output is a {type(first).__name__}, "
            "not the hidden-state tensor"
        )
    return first


def with_block_hidden(output: Any, hidden: torch.Tensor, *, same_rows: bool = True) -> Any:
    """``output`` with its residual-stream tensor replaced by ``hidden`` (same structure).

    Meant as the return value of a forward hook that modifies the stream. ``hidden`` must have
    the shape of the tensor it replaces; with ``same_rows=False`` its batch size may differ (a stand-in
    block whose kept output is repeated over the rows of the pass). The input is not mutated.
    """
    old = block_hidden(output)
    if hidden.shape[1:] != old.shape[1:] or (same_rows and hidden.shape != old.shape):
        raise ValueError(
            f"replacement hidden states have shape {tuple(hidden.shape)}, "
            f"expected {tuple(old.shape)}"
        )
    if isinstance(output, torch.Tensor):
        return hidden
    if isinstance(output, tuple):
        if hasattr(output, "_fields"):  # namedtuple
            return type(output)(hidden, *output[1:])
        return (hidden, *output[1:])
    if isinstance(output, list):
        return [hidden, *output[1:]]
    # Mapping (ModelOutput)
    key = _first_key(output)
    if dataclasses.is_dataclass(output) and not isinstance(output, type):
        try:
            return dataclasses.replace(output, **{key: hidden})
        except (TypeError, ValueError):
            pass
    new = copy.copy(output)
    new[key] = hidden
    return new
