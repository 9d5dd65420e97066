"""steerlab: activation steering for language models.

    import steerlab as sl
    lm = sl.load_model()                                   # embedded SmolLM2-135M-Instruct
    vec = sl.train_caa(lm, pairs, layers=[10])
    print(sl.generate(lm, ["Tell me about your day."], sl.Steering(vec, 8.0)))

Names are imported lazily, so `import steerlab.data` does not pay for importing torch/transformers.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING

from .version import __version__

_EXPORTS = {
    "load_model": "models", "LoadedModel": "models",
    "capture": "capture",
    "encode": "encoding", "format_prompt": "encoding", "Prompt": "encoding", "EncodedBatch": "encoding",
    "train_caa": "methods", "train_pca": "methods", "train_actadd": "methods", "train_pas": "methods",
    "SteeringVector": "vector", "VectorMetadata": "vector",
    "Steering": "steer", "steer": "steer", "apply_steering": "steer",
    "generate": "generate",
    "export_gguf": "vector", "import_gguf": "vector",
    "measure_effect": "effect", "EffectReport": "effect",
    "score": "engine",
    "SteerlabError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


class _Package(types.ModuleType):
    """`capture`, `steer` and `generate` name both a function and the submodule defining it. Importing
    such a submodule makes the import system set the package attribute to the module (for instance
    `import steerlab.methods` imports `steerlab.capture`), which would shadow the function; keep the
    function (what the eager `from .capture import capture` used to guarantee)."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name and hasattr(value, name):
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'steerlab' has no attribute '{name}'")


if TYPE_CHECKING:  # for type checkers and IDEs
    from .capture import capture
    from .effect import EffectReport, measure_effect
    from .encoding import EncodedBatch, Prompt, encode, format_prompt
    from .errors import SteerlabError
    from .generate import generate
    from .engine import score
    from .methods import train_actadd, train_caa, train_pas, train_pca
    from .models import LoadedModel, load_model
    from .steer import Steering, apply_steering, steer
    from .vector import SteeringVector, VectorMetadata, export_gguf, import_gguf
