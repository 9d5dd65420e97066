"""steerlab: activation steering for language models.

    import steerlab as sl
    lm = sl.load_model()                                   # embedded SmolLM2-135M-Instruct
    vec = sl.train_caa(lm, pairs, layers=[10])
    print(sl.generate(lm, ["Tell me about your day."], sl.Steering(vec, 8.0)))
"""

__version__ = "0.1.0"

from .capture import capture
from .encoding import EncodedBatch, Prompt, encode, format_prompt
from .errors import SteerlabError
from .generate import generate
from .gguf_io import export_gguf, import_gguf
from .methods import train_actadd, train_caa, train_pca
from .models import LoadedModel, load_model
from .steer import Steering, apply_steering, steer
from .vector import SteeringVector, VectorMetadata

__all__ = [
    "__version__", "load_model", "LoadedModel", "capture", "encode", "format_prompt", "Prompt", "EncodedBatch",
    "train_caa", "train_pca", "train_actadd", "SteeringVector", "VectorMetadata", "Steering", "steer",
    "apply_steering", "generate", "export_gguf", "import_gguf", "SteerlabError",
]
