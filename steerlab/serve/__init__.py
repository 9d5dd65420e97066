"""`steerlab serve`: an OpenAI-compatible HTTP server with per-request steering and continuous batching.

Modules, one job each: `app` (FastAPI routes), `openai_schema` (request/response models),
`prompts` (messages → token rows, off the generation thread), `row_steering` (request steering →
per-row terms), `scheduler` (continuous batching), `kvcache` (the batched cache rows join and leave),
`sampling` (per-row token choice), `text` (incremental text, stop strings), `registry` (vectors at
run time), `limits` (body size, API key), `metrics` (Prometheus text). Routes: API.md.
"""

from .registry import load_vectors, parse_vector_spec

__all__ = ["create_app", "load_vectors", "parse_vector_spec"]


def create_app(*args, **kwargs):
    """See `steerlab.serve.app.create_app` (imported lazily: FastAPI is an optional dependency)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
