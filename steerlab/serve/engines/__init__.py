"""Engines behind the server: `base` is the seam (the `Engine` protocol, engine-neutral requests, typed
events), `builtin` the default engine, `vllm` the vLLM one (the `steerlab[vllm]` extra). The server
imports an engine only when it builds one (`build_engine`), so importing this package loads no model code.
"""

from __future__ import annotations

from .base import *  # noqa: F401,F403  (the seam's public names)
from .base import Engine
from .base import __all__ as _base_all
from ...errors import SteerlabError

ENGINES = ("builtin", "vllm")

__all__ = list(_base_all) + ["ENGINES", "engine_module", "build_engine"]


def _missing(name: str, e: ImportError) -> SteerlabError:
    return SteerlabError(f'the {name} engine needs vLLM and steerlab\'s vLLM plugin: pip install "steerlab[vllm]" '
                         f"({type(e).__name__}: {e})")


def build_engine(name: str, model=None, **options) -> Engine:
    """Engine `name` on `model` (a `LoadedModel`, or what `steerlab.load_model` takes; None: the embedded
    model), with the engine's `options` (`max_batch`, `max_queue`, and its own). Every engine module has a
    `build_engine(model, **options)`; a missing optional dependency is one SteerlabError, at import or build."""
    module = engine_module(name)
    try:
        return module.build_engine(model, **options)
    except ImportError as e:
        if name == "builtin":
            raise
        raise _missing(name, e) from None


def engine_module(name: str):
    """The module implementing engine `name` (imported now); a SteerlabError naming what is missing when the
    engine or its dependencies are not installed."""
    import importlib
    import importlib.util

    if name not in ENGINES:
        raise SteerlabError(f"unknown engine '{name}': choose one of {', '.join(ENGINES)}")
    if name == "vllm" and importlib.util.find_spec("vllm") is None:  # found without importing it (seconds)
        raise _missing(name, ModuleNotFoundError("No module named 'vllm'"))
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError as e:
        if name == "builtin":
            raise
        raise _missing(name, e) from None
