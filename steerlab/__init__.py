"""steerlab: activation steering for language models.

    import steerlab as sl
    lm = sl.load_model()                                   # embedded SmolLM2-135M-Instruct
    vec = sl.train_caa(lm, pairs, layers=[10])
    print(sl.generate(lm, ["Tell me about your day."], sl.Steering(vec, 8.0)))

One way to do each step: load (`load_model`), capture (`capture`), train (`train_caa`, `train_pca`,
`train_actadd`, `train_pas`), store (`SteeringVector.save`/`load`, `export_gguf`/`import_gguf`), steer
(`Steering`, `steer`; conditionally: `train_condition`, `ConditionVector`), generate (`generate`), watch
(`readout`), score many settings at once (`score`, the engine's),
measure (`measure_effect`). The studies are packages: `steerlab.cae`, `steerlab.pas`, `steerlab.epo`.

Names are imported lazily, so `import steerlab.data` does not pay for importing torch/transformers.
No submodule shares a name with one of these functions, so importing a submodule never shadows one.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .version import __version__

_EXPORTS = {
    "load_model": "models", "LoadedModel": "models",
    "capture": "activations",
    "encode": "encoding", "format_prompt": "encoding", "Prompt": "encoding", "EncodedBatch": "encoding",
    "train_caa": "methods", "train_pca": "methods", "train_actadd": "methods", "train_pas": "methods",
    "SteeringVector": "vector", "VectorMetadata": "vector",
    "Steering": "steering", "steer": "steering", "apply_steering": "steering",
    "generate": "generation",
    "readout": "monitoring", "Readout": "monitoring", "StopRule": "monitoring",
    "train_condition": "condition", "ConditionVector": "condition",
    "export_gguf": "vector", "import_gguf": "vector",
    "measure_effect": "effect", "EffectReport": "effect",
    "score": "engine",
    "SteerlabError": "errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'steerlab' has no attribute '{name}'")


if TYPE_CHECKING:  # for type checkers and IDEs
    from .activations import capture
    from .effect import EffectReport, measure_effect
    from .encoding import EncodedBatch, Prompt, encode, format_prompt
    from .engine import score
    from .errors import SteerlabError
    from .condition import ConditionVector, train_condition
    from .generation import generate
    from .monitoring import Readout, StopRule, readout
    from .methods import train_actadd, train_caa, train_pas, train_pca
    from .models import LoadedModel, load_model
    from .steering import Steering, apply_steering, steer
    from .vector import SteeringVector, VectorMetadata, export_gguf, import_gguf
