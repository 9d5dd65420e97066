"""Where a model's forward takes and returns its KV cache, whatever the installed transformers calls it.

transformers 5.x renamed the forward keyword `past_key_values` to `cache` (the old name still works there but
warns on every call) and the output field likewise. Everything that feeds a cache back into a forward pass
(the engine, the monitors, BiPO, EPO) goes through these three functions.
"""

from __future__ import annotations


def cache_keyword(model) -> str:
    """The keyword `model.forward` takes its KV cache under: `cache` in current transformers (5.x renamed
    it; `past_key_values` still works there but warns on every call), `past_key_values` before."""
    import inspect

    forward = getattr(model, "forward", model)
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - an unintrospectable forward
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def with_cache(model, cache, **kwargs) -> dict:
    """`kwargs` plus the cache under the keyword this model's forward takes (see `cache_keyword`)."""
    kwargs[cache_keyword(model)] = cache
    return kwargs


def output_cache(out):
    """The KV cache a forward returned (field `cache` in current transformers, `past_key_values` before),
    read without the deprecated alias; None when the call returned none."""
    keys = out.keys() if hasattr(out, "keys") else ()
    for name in ("cache", "past_key_values"):
        if name in keys:
            return out[name]
    return None
