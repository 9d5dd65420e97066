"""The FastAPI app: `create_app` assembles the server from its parts (see API.md for the routes).

The parts: `state.ServerState` (engine, registry, metrics, limits, tokenizing thread; on
`app.state.server`), the routers of `routes` (generation, vectors, meta), `api_errors` (every error
OpenAI-shaped), the middleware of `limits` and `metrics`, and the playground when present. Request
handling never touches the model: routes submit engine-neutral requests to the engine
(`engines.base.Engine`: the built-in one or vLLM) and read its typed events (`streaming`).
"""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from fastapi import FastAPI

from . import routes
from .api_errors import install_error_handlers
from .engines.base import Engine
from .limits import BearerAuth, BodyLimit
from .metrics import Metrics, MetricsMiddleware
from .openai_schema import DEFAULT_MAX_TOKENS
from .prompts import max_token_chars
from .registry import Registry
from .state import Limits, ServerState


def _server_state(engine: Engine, vectors, limits: Limits, allow_other_model: bool) -> ServerState:
    """The shared state, with the engine's batches and the server's gauges wired into the metrics."""
    lm = engine.model
    registry = Registry(lm, vectors, allow_other_model=allow_other_model)
    metrics = Metrics()
    engine.on_batch(metrics.observe_batch)
    tokenize_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="steerlab-tokenize")
    tokenize_pool.submit(max_token_chars, lm.tokenizer)  # the early length bound, off the request path
    metrics.gauges.update({
        "steerlab_queue_depth": lambda: engine.queued,
        "steerlab_active_rows": lambda: engine.active,
        "steerlab_registered_vectors": lambda: len(registry),
        "steerlab_vector_bytes": registry.total_bytes,
    })
    return ServerState(engine, registry, metrics, limits, tokenize_pool)


def create_app(engine: Engine, vectors=None, *, api_key: Optional[str] = None, max_new_tokens_limit: int = 512,
               default_max_tokens: int = DEFAULT_MAX_TOKENS, max_body_bytes: int = 1 << 20,
               max_upload_bytes: int = 32 << 20, allow_other_model: bool = False,
               shutdown_grace_s: float = 10.0) -> FastAPI:
    """A FastAPI app serving `engine`'s model with the named `vectors` (more can be registered at run time).
    The app owns the engine from now on: it closes it on shutdown."""
    server = _server_state(engine, vectors, Limits(max_new_tokens_limit, default_max_tokens), allow_other_model)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        try:
            yield
        finally:
            await asyncio.to_thread(engine.close, shutdown_grace_s)
            server.tokenize_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="steerlab", description="OpenAI-compatible generation with activation steering per request.",
                  lifespan=lifespan)
    app.state.server = server
    # the parts by their own names too, as callers (tests, `run`) have always read them
    app.state.engine, app.state.registry, app.state.metrics = server.engine, server.registry, server.metrics
    install_error_handlers(app)
    for router in (routes.generation, routes.meta, routes.vectors):
        app.include_router(router)

    try:  # the browser playground (steerlab/serve/playground/), when present
        from .playground import mount_playground  # type: ignore[attr-defined]
    except ImportError:
        mount_playground = None
    if mount_playground is not None:
        mount_playground(app)

    # outermost first to see a request: metrics, then the key, then the body limit
    app.add_middleware(BodyLimit, limit=max_body_bytes, upload_limit=max_upload_bytes)
    app.add_middleware(BearerAuth, key=api_key)
    app.add_middleware(MetricsMiddleware, metrics=server.metrics)
    return app


def run(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000, shutdown_grace_s: float = 10.0,
        log_level: str = "info") -> None:
    """Serve `app` with uvicorn. On SIGINT/SIGTERM new requests get 503 at once, running ones get up to
    `shutdown_grace_s` to finish, then the rest are cancelled."""
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            app.state.server.engine.begin_shutdown()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=max(1, int(shutdown_grace_s)))
    _Server(config).run()
