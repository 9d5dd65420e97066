"""`steerlab serve`: the OpenAI-compatible server (steerlab.serve) with its playground."""

from __future__ import annotations

import importlib.util
from typing import List, Optional

import typer

from ..errors import SteerlabError
from .common import load_model, run_command, say, set_runtime
from .options import MODEL, THREADS, DEVICE, DEVICE_MAP, DTYPE


def serve(
    vector: List[str] = typer.Option([], "--vector", "-v", help="A vector to serve, as NAME=PATH or PATH (named after "
                                     "the file); repeat for several. More can be registered at run time."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port."),
    max_batch: int = typer.Option(32, help="Most requests decoded together (continuous batching)."),
    batch_window_ms: float = typer.Option(10.0, help="When idle, how long a first request waits for others to prefill with it."),
    max_new_tokens_limit: int = typer.Option(512, help="Largest max_tokens a request may ask for."),
    max_queue: int = typer.Option(256, help="Most requests waiting for a batch slot; beyond it 429 with Retry-After."),
    max_body_bytes: int = typer.Option(1 << 20, help="Largest request body (413 beyond); vector uploads: --max-upload-bytes."),
    max_upload_bytes: int = typer.Option(32 << 20, help="Largest vector upload."),
    api_key: Optional[str] = typer.Option(None, envvar="STEERLAB_API_KEY", help="Require 'Authorization: Bearer KEY' "
                                          "on every route but /health (default: $STEERLAB_API_KEY, else none)."),
    shutdown_grace_s: float = typer.Option(10.0, help="On SIGINT/SIGTERM, seconds running requests get to finish."),
    allow_other_model: bool = typer.Option(False, help="Serve vectors made for another model family."),
    engine: str = typer.Option("builtin", help="What runs the model: builtin (continuous batching in this process, "
                               "the default) or vllm (vLLM's engine; needs steerlab[vllm])."),
    eager: bool = typer.Option(True, "--eager/--compiled", help="vllm engine: run the model eagerly, or let vLLM "
                               "compile it (and capture CUDA graphs on a GPU); the steering add works in both."),
    model: Optional[str] = MODEL,
    threads: Optional[int] = THREADS,
    device: str = DEVICE,
    dtype: Optional[str] = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
) -> None:
    """Serve an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models, /v1/vectors, /metrics,
    /health) with steering per request; routes in steerlab/serve/API.md."""

    def body():
        set_runtime(threads, device, dtype, device_map)
        if any(importlib.util.find_spec(m) is None for m in ("fastapi", "uvicorn")):
            raise SteerlabError('the server needs FastAPI and uvicorn: pip install "steerlab[server]"')
        from ..serve import create_app, load_vectors
        from ..serve.app import run
        from ..serve.engines import build_engine, engine_module

        engine_module(engine)  # before the load: an unknown engine or a missing vLLM is one line, at once
        if engine == "builtin":
            running = build_engine(engine, load_model(model), max_batch=max_batch, max_queue=max_queue,
                                   window_s=batch_window_ms / 1000)
        else:
            running = build_engine(engine, model, max_batch=max_batch, max_queue=max_queue, enforce_eager=eager)
        try:
            vectors = load_vectors(vector, running.model, allow_other_model=allow_other_model)
        except BaseException:
            running.close(0)
            raise
        api = create_app(running, vectors, api_key=api_key or None, max_new_tokens_limit=max_new_tokens_limit,
                         max_body_bytes=max_body_bytes, max_upload_bytes=max_upload_bytes,
                         allow_other_model=allow_other_model, shutdown_grace_s=shutdown_grace_s)
        say(f"serving {running.model.model_id} on the {engine} engine with vectors: {', '.join(vectors) or 'none'} "
            f"on http://{host}:{port}/v1" + (" (API key required)" if api_key else ""))
        run(api, host=host, port=port, shutdown_grace_s=shutdown_grace_s)

    run_command(body)


def register(app: typer.Typer) -> None:
    """Add `steerlab serve` to the root app."""
    app.command()(serve)
