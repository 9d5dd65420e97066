"""The FastAPI app: OpenAI-compatible routes, the vector registry, /metrics and /health (see API.md).

Request handling never touches the model: a request is validated (schema, model name, steering,
limits), tokenized on a worker thread and checked against the context, then submitted to the engine
(`engines.base.Engine`: the built-in one or vLLM) as an engine-neutral request, whose typed events
come back through an asyncio queue. A client that goes away (before or during a stream) cancels its
request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import PromptTooLongError, SteerlabError, VectorError
from . import openai_schema as oa
from .limits import BearerAuth, BodyLimit
from .metrics import Metrics, route_label
from .engines.base import (ConditionsDecided, Engine, EngineEvent, Failed, Finished, FirstToken, QueueFull,
                           RequestHandle, SamplingSettings, ShuttingDown, SteeringTerm, TextDelta)
from .prompts import chat_prompt, completion_prompt, encode_one, engine_request, max_token_chars
from .registry import Registry, describe
from .resolve import SteeringRequestError, resolve, resolve_readout

log = logging.getLogger("steerlab.serve")
DISCONNECT_POLL_S = 0.25  # how often a waiting non-streamed request checks that its client is still there


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 type_: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")


def _error_response(status: int, message: str, type_: str = "invalid_request_error", param=None, code=None,
                    headers=None) -> JSONResponse:
    return JSONResponse(oa.error_body(message, type_, param, code), status_code=status, headers=headers)


class _MetricsMiddleware:
    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 0}

        async def tracking_send(msg):
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, tracking_send)
        finally:
            self.metrics.observe_request(route_label(scope.get("path", "")), status["code"] or 499)


class _JobStream(StreamingResponse):
    """A streamed completion that cancels its job when the response ends early, for whatever reason
    (Starlette stops a stream on disconnect without always closing the generator at once)."""

    def __init__(self, content, on_close, **kw):
        super().__init__(content, **kw)
        self._on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()


class _Pending:
    """Events from the engine's thread for one request, delivered on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()
        self.first_at: Optional[float] = None
        self.submitted = time.monotonic()
        self.handle: Optional[RequestHandle] = None
        self.conditions: Optional[ConditionsDecided] = None

    def emit(self, event: EngineEvent) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, event)
        except RuntimeError:  # the loop is gone (shutdown): nobody is waiting
            pass

    def cancel(self) -> None:
        if self.handle is not None:
            self.handle.cancel()

    def note(self, event: EngineEvent) -> None:
        """Keep what the response needs from an event that is not text (first token time, conditions)."""
        if isinstance(event, FirstToken):
            self.first_at = event.at
        elif isinstance(event, ConditionsDecided):
            self.conditions = event


def echo(terms: list[SteeringTerm], decided: Optional[ConditionsDecided]) -> list[dict]:
    """The response's `steering` field: each term, with its condition's decision (`fired`,
    `condition_scores`) once the engine has decided it."""
    return [{**t.describe(), **(decided.echo(t, k) if decided is not None else {})} for k, t in enumerate(terms)]


def create_app(engine: Engine, vectors=None, *, api_key: Optional[str] = None, max_new_tokens_limit: int = 512,
               default_max_tokens: int = oa.DEFAULT_MAX_TOKENS, max_body_bytes: int = 1 << 20,
               max_upload_bytes: int = 32 << 20, allow_other_model: bool = False,
               shutdown_grace_s: float = 10.0) -> FastAPI:
    """A FastAPI app serving `engine`'s model with the named `vectors` (more can be registered at run time).
    The app owns the engine from now on: it closes it on shutdown."""
    lm = engine.model
    registry = Registry(lm, vectors, allow_other_model=allow_other_model)
    metrics = Metrics()
    engine.on_batch(metrics.observe_batch)
    tokenize_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="steerlab-tokenize")
    tokenize_pool.submit(max_token_chars, lm.tokenizer)  # the early length bound, off the request path
    model_id = lm.model_id
    started = int(time.time())
    metrics.gauges.update({
        "steerlab_queue_depth": lambda: engine.queued,
        "steerlab_active_rows": lambda: engine.active,
        "steerlab_registered_vectors": lambda: len(registry),
        "steerlab_vector_bytes": registry.total_bytes,
    })

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        try:
            yield
        finally:
            await asyncio.to_thread(engine.close, shutdown_grace_s)
            tokenize_pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="steerlab", description="OpenAI-compatible generation with activation steering per request.",
                  lifespan=lifespan)
    app.state.engine, app.state.registry, app.state.metrics = engine, registry, metrics

    # -- errors: always OpenAI-shaped JSON, never a stack trace ---------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_request, e: ApiError):
        return _error_response(e.status, e.message, e.type, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, e: RequestValidationError):
        parts, param = [], None
        for err in e.errors()[:5]:
            if err.get("type") == "json_invalid":
                parts.append(f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'decode error')})")
                continue
            loc = [str(x) for x in err.get("loc", ()) if x != "body"]
            param = param or (".".join(loc) or None)
            parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
        return _error_response(400, "; ".join(parts) or "invalid request", param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, e: StarletteHTTPException):
        return _error_response(e.status_code, str(e.detail), "invalid_request_error" if e.status_code < 500 else "server_error")

    @app.exception_handler(Exception)
    async def _internal(_request, e: Exception):  # pragma: no cover - a bug, not an input
        log.exception("unhandled error")
        return _error_response(500, f"internal error: {type(e).__name__}", "server_error")

    # -- the generation routes ---------------------------------------------------------------------
    async def prepare(body, chat: bool) -> tuple[_Pending, list[SteeringTerm]]:
        bad = body.unsupported()
        if bad:
            raise ApiError(400, bad[1], param=bad[0])
        if body.model != model_id:
            raise ApiError(404, f"model '{body.model}' is not served (this server serves '{model_id}')",
                           param="model", code="model_not_found")
        max_new = body.new_tokens() or min(default_max_tokens, max_new_tokens_limit)
        if max_new > max_new_tokens_limit:
            raise ApiError(400, f"max_tokens is {max_new}, more than this server's limit of {max_new_tokens_limit}",
                           param="max_tokens")
        try:
            served = registry.snapshot()
            terms = resolve(body.steering_list(), served, lm)
            readout = resolve_readout(body.readout, served, lm)
        except SteeringRequestError as e:
            raise ApiError(e.status, str(e), param=e.param, code="vector_not_found" if e.status == 404 else None)
        if any(t.condition is not None for t in terms) and "conditions" not in engine.features:
            raise ApiError(400, f"conditional steering is not available on the {engine.name} engine: serve with "
                                "--engine builtin", param="steering", code="unsupported_on_engine")
        if readout and "readout" not in engine.features:
            raise ApiError(400, f"read-out is not available on the {engine.name} engine: serve with --engine builtin",
                           param="readout", code="unsupported_on_engine")

        def build():
            if chat:
                prompt = chat_prompt(lm, body.messages)
            else:
                prompt = completion_prompt(lm, body.prompt_text())
            return encode_one(lm, prompt, max_new)

        loop = asyncio.get_running_loop()
        try:
            enc = await loop.run_in_executor(tokenize_pool, build)
        except PromptTooLongError as e:
            raise ApiError(400, str(e).replace("prompt 0", "the prompt"), param="messages" if chat else "prompt",
                           code="context_length_exceeded")
        except (SteerlabError, ValueError) as e:
            raise ApiError(400, str(e).replace("prompt 0", "the prompt"), param="messages" if chat else "prompt")
        except Exception as e:  # the tokenizer refused the text: still the client's input, not a server fault
            raise ApiError(400, f"the prompt could not be tokenized: {type(e).__name__}: {e}",
                           param="messages" if chat else "prompt")
        pending = _Pending(loop)
        sampling = SamplingSettings(max_new, body.temperature, body.top_p, body.top_k, body.seed,
                                    tuple(body.stop_list()), body.ignore_eos)
        request = engine_request(enc, oa.new_id("req"), sampling, terms, readout)
        try:
            pending.handle = engine.submit(request, pending.emit)
        except QueueFull as e:
            metrics.observe_reject("queue_full")
            raise ApiError(429, f"the server is busy ({e}); retry shortly", code="queue_full", type_="rate_limit_error",
                           headers={"Retry-After": "1"})
        except ShuttingDown as e:
            metrics.observe_reject("shutting_down")
            raise ApiError(503, str(e), code="shutting_down", headers={"Retry-After": "5"})
        return pending, terms

    def finished(pending: _Pending, result: Finished, steered: bool) -> None:
        ttft = pending.first_at - pending.submitted if pending.first_at else None
        metrics.observe_done(result.prompt_tokens, result.completion_tokens, time.monotonic() - pending.submitted,
                             ttft, steered)

    async def wait_result(request: Request, pending: _Pending, steered: bool) -> Optional[Finished]:
        next_check = time.monotonic() + DISCONNECT_POLL_S
        try:
            while True:
                try:
                    event = await asyncio.wait_for(pending.queue.get(), DISCONNECT_POLL_S)
                except asyncio.TimeoutError:
                    event = None
                if time.monotonic() >= next_check:  # on a clock, not only when no events come
                    next_check = time.monotonic() + DISCONNECT_POLL_S
                    if await request.is_disconnected():
                        pending.cancel()
                        metrics.observe_cancel()
                        return None
                pending.note(event)
                if isinstance(event, Finished):
                    finished(pending, event, steered)
                    return event
                if isinstance(event, Failed):
                    raise ApiError(event.status, event.message)
        except asyncio.CancelledError:
            pending.cancel()
            raise

    def sse(pending: _Pending, chat: bool, rid: str, terms: list[SteeringTerm], include_usage: bool):
        created = int(time.time())

        def event(obj) -> str:
            return f"data: {json.dumps(obj)}\n\n"

        def piece(text=None, finish=None, usage_=None, empty=False):
            if chat:
                return oa.chat_chunk(rid, model_id, created, content=text, finish_reason=finish, usage_=usage_, empty=empty)
            return oa.text_chunk(rid, model_id, created, text=text or "", finish_reason=finish, usage_=usage_, empty=empty)

        state = {"done": False}

        def close() -> None:  # runs however the response ends; a client that left cancels its request
            if not state["done"]:
                state["done"] = True
                pending.cancel()
                metrics.observe_cancel()

        async def stream():
            try:
                if chat:
                    first = oa.chat_chunk(rid, model_id, created, role="assistant", content="")
                    first["steering"] = echo(terms, None)
                    yield event(first)
                while True:
                    ev = await pending.queue.get()
                    pending.note(ev)
                    if isinstance(ev, TextDelta):
                        chunk = piece(ev.text)
                        if ev.readout is not None:  # read-out (CAST issue): this delta's tokens' projections
                            chunk["readout"] = ev.readout
                        yield event(chunk)
                    elif isinstance(ev, Finished):
                        state["done"] = True
                        finished(pending, ev, bool(terms))
                        last = piece(None if chat else "", ev.finish_reason)
                        if pending.conditions is not None:  # decided at prefill: the echo's fired/score
                            last["steering"] = echo(terms, pending.conditions)
                        if ev.readout is not None:  # the whole prompt's and generation's projections
                            last["readout"] = ev.readout
                        yield event(last)
                        if include_usage:
                            yield event(piece(usage_=oa.usage(ev.prompt_tokens, ev.completion_tokens), empty=True))
                        yield "data: [DONE]\n\n"
                        return
                    elif isinstance(ev, Failed):
                        state["done"] = True
                        yield event(oa.error_body(ev.message, "server_error"))
                        yield "data: [DONE]\n\n"
                        return
            finally:
                close()

        return _JobStream(stream(), close, media_type="text/event-stream",
                          headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def complete(request: Request, body, chat: bool):
        pending, terms = await prepare(body, chat)
        rid = oa.new_id("chatcmpl" if chat else "cmpl")
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return sse(pending, chat, rid, terms, include_usage)
        result = await wait_result(request, pending, bool(terms))
        if result is None:
            return Response(status_code=499)
        build = oa.chat_completion if chat else oa.text_completion
        out = build(rid, model_id, result, echo(terms, pending.conditions))
        if result.readout is not None:  # read-out (CAST issue): the whole prompt's and generation's projections
            out["readout"] = result.readout
        return JSONResponse(out)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: oa.ChatCompletionRequest, request: Request):
        return await complete(request, body, chat=True)

    @app.post("/v1/completions")
    async def completions(body: oa.CompletionRequest, request: Request):
        return await complete(request, body, chat=False)

    @app.post("/generate")
    async def generate_retired():
        raise ApiError(410, "POST /generate is retired: use POST /v1/chat/completions (or /v1/completions) with "
                            "a 'steering' field; see API.md", code="retired")

    # -- models, health, metrics -------------------------------------------------------------------
    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{
            "id": model_id, "object": "model", "created": started, "owned_by": "steerlab",
            "n_layers": lm.n_layers, "hidden_size": lm.hidden_size, "max_context": lm.max_context,
            "max_tokens_limit": max_new_tokens_limit}]}

    @app.get("/health")
    async def health():
        return {"status": "shutting_down" if engine.closing else "ok", "model": model_id,
                "n_layers": lm.n_layers, "hidden_size": lm.hidden_size, "active": engine.active,
                "queued": engine.queued, "vectors": len(registry)}

    @app.get("/metrics")
    async def metrics_route():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    # -- vectors -----------------------------------------------------------------------------------
    def get_vector(name: str):
        vec = registry.get(name)
        if vec is None:
            raise ApiError(404, f"no vector named '{name}' (served: {', '.join(sorted(registry.snapshot())) or 'none'})",
                           param="name", code="vector_not_found")
        return vec

    @app.get("/v1/vectors")
    async def list_vectors():
        return {"object": "list", "data": [describe(n, v) for n, v in sorted(registry.snapshot().items())]}

    @app.get("/v1/vectors/{name}")
    async def fetch_vector(name: str):
        return describe(name, get_vector(name))

    @app.get("/v1/vectors/{name}/file")
    async def download_vector(name: str):
        from safetensors.torch import save

        vec = get_vector(name)
        data = save({f"layer.{l}": t.contiguous() for l, t in vec.directions.items()},
                    metadata={"steerlab": vec.meta.to_json()})
        return Response(data, media_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{name}.safetensors"'})

    @app.post("/v1/vectors", status_code=201)
    async def register_vector(request: Request, name: str = "", overwrite: bool = False):
        data = await request.body()
        try:
            vec = await asyncio.to_thread(registry.register, name, data, overwrite=overwrite)
        except ValueError as e:
            raise ApiError(400, str(e), param="name")
        except KeyError:
            raise ApiError(409, f"a vector named '{name}' exists; pass overwrite=true to replace it", param="name",
                           code="vector_exists")
        except VectorError as e:
            raise ApiError(400, str(e), param="body", code="invalid_vector")
        return JSONResponse(describe(name, vec), status_code=201)

    @app.delete("/v1/vectors/{name}")
    async def delete_vector(name: str):
        if not registry.delete(name):
            get_vector(name)  # raises the 404
        return {"id": name, "object": "vector", "deleted": True}

    try:  # the browser playground (steerlab/serve/playground/), when present
        from .playground import mount_playground  # type: ignore[attr-defined]
    except ImportError:
        mount_playground = None
    if mount_playground is not None:
        mount_playground(app)

    # outermost first to see a request: metrics, then the key, then the body limit
    app.add_middleware(BodyLimit, limit=max_body_bytes, upload_limit=max_upload_bytes)
    app.add_middleware(BearerAuth, key=api_key)
    app.add_middleware(_MetricsMiddleware, metrics=metrics)
    return app


def run(app: FastAPI, *, host: str = "127.0.0.1", port: int = 8000, shutdown_grace_s: float = 10.0,
        log_level: str = "info") -> None:
    """Serve `app` with uvicorn. On SIGINT/SIGTERM new requests get 503 at once, running ones get up to
    `shutdown_grace_s` to finish, then the rest are cancelled."""
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            app.state.engine.begin_shutdown()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            timeout_graceful_shutdown=max(1, int(shutdown_grace_s)))
    _Server(config).run()
