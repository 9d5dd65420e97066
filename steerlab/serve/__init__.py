"""`steerlab serve`: an OpenAI-compatible HTTP server with per-request steering, over an engine seam.

Routes, limits, auth, the vector registry, metrics, the playground and the OpenAI schema are written
once against `engines.base.Engine`; an engine turns engine-neutral requests (token ids, user/prompt
boundaries, sampling settings, resolved steering terms) into typed events. Modules, one job each:
`app` (`create_app`: assembles the parts), `state` (what routes share: engine, registry, metrics,
limits), `routes` (FastAPI routers: `generation`, `vectors`, `meta`), `streaming` (an engine's events →
a result or server-sent chunks), `api_errors` (OpenAI-shaped errors), `openai_schema` (request models),
`responses` (response models), `prompts` (messages → token rows → engine requests, off the engine's
thread), `resolve` (the `steering` field → `SteeringTerm`s), `text` (incremental text, stop strings),
`registry` (vectors at run time), `limits` (body size, API key), `metrics` (Prometheus text);
`engines.base` (the seam), `engines.builtin` (the default engine: continuous batching with per-row
steering), `engines.vllm` (the `steerlab[vllm]` extra). Routes: API.md.
"""

from .registry import load_vectors, parse_vector_spec

__all__ = ["create_app", "load_vectors", "parse_vector_spec"]


def create_app(*args, **kwargs):
    """See `steerlab.serve.app.create_app` (imported lazily: FastAPI is an optional dependency)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
