"""The built-in engine (`--engine builtin`, the default): continuous batching over plain PyTorch and
transformers on the embedded or any loaded model, no extra install.

Modules, one job each: `scheduler` (the engine: admission, prefill, decoding steps, events), `rows`
(engine requests → one-row encodings, stacked batches and per-row `steerlab.Steering` terms),
`kvcache` (the batched cache rows join and leave), `sampling` (per-row token choice).
"""

from .scheduler import BuiltinEngine, Job

__all__ = ["BuiltinEngine", "Job", "build_engine"]


def build_engine(model=None, *, max_batch: int = 32, max_queue: int = 256, window_s: float = 0.01,
                 max_prefill_tokens: int = 16384) -> BuiltinEngine:
    """The built-in engine on `model`: a loaded `LoadedModel`, or what `steerlab.load_model` takes (None: the
    embedded model). Every engine module has a `build_engine(model, *, max_batch, max_queue, ...)`."""
    if model is None or isinstance(model, str):
        from ....models import load_model

        model = load_model(model)
    return BuiltinEngine(model, max_batch=max_batch, max_queue=max_queue, window_s=window_s,
                         max_prefill_tokens=max_prefill_tokens)
