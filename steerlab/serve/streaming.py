"""One submitted request's events, from the engine's thread to its HTTP response: a whole result for a
plain request (`wait_result`), server-sent events for a stream (`event_stream`). A client that goes away,
before or during a stream, cancels its request (and counts in the metrics as cancelled)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Optional

from fastapi import Request
from fastapi.responses import StreamingResponse

from .api_errors import ApiError
from .engines.base import (ConditionsDecided, EngineEvent, Failed, Finished, FirstToken, RequestHandle,
                           SteeringTerm, TextDelta)
from .responses import Usage, WireModel, chat_chunk, error_body, text_chunk
from .state import ServerState

DISCONNECT_POLL_S = 0.25  # how often a waiting non-streamed request checks that its client is still there


class Pending:
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


def _finished(server: ServerState, pending: Pending, result: Finished, steered: bool) -> None:
    ttft = pending.first_at - pending.submitted if pending.first_at else None
    server.metrics.observe_done(result.prompt_tokens, result.completion_tokens, time.monotonic() - pending.submitted,
                                ttft, steered)


async def wait_result(server: ServerState, request: Request, pending: Pending, steered: bool) -> Optional[Finished]:
    """The request's `Finished` event, or None when its client left first (the request is then cancelled).
    A `Failed` event raises its ApiError."""
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
                    server.metrics.observe_cancel()
                    return None
            pending.note(event)
            if isinstance(event, Finished):
                _finished(server, pending, event, steered)
                return event
            if isinstance(event, Failed):
                raise ApiError(event.status, event.message)
    except asyncio.CancelledError:
        pending.cancel()
        raise


class JobStream(StreamingResponse):
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


def event_stream(server: ServerState, pending: Pending, chat: bool, rid: str, terms: list[SteeringTerm],
                 include_usage: bool) -> JobStream:
    """The request's events as OpenAI's server-sent chunks: (chat: a first chunk with the role and the
    `steering` echo), one chunk per text delta, the last with the finish reason, the usage chunk when
    asked for, then `[DONE]`; a failure is an error event, then `[DONE]`."""
    created = int(time.time())
    model_id = server.model_id

    def event(obj: WireModel | dict) -> str:
        # json.dumps of the model's dict: the bytes these chunks have always had (pydantic's own JSON
        # writer spaces and writes floats differently)
        return f"data: {json.dumps(obj.model_dump() if isinstance(obj, WireModel) else obj)}\n\n"

    def piece(text=None, finish=None, usage=None, empty=False):
        if chat:
            return chat_chunk(rid, model_id, created, content=text, finish=finish, usage=usage, empty=empty)
        return text_chunk(rid, model_id, created, text=text or "", finish=finish, usage=usage, empty=empty)

    state = {"done": False}

    def close() -> None:  # runs however the response ends; a client that left cancels its request
        if not state["done"]:
            state["done"] = True
            pending.cancel()
            server.metrics.observe_cancel()

    async def stream():
        try:
            if chat:
                first = chat_chunk(rid, model_id, created, role="assistant", content="")
                first.steering = echo(terms, None)
                yield event(first)
            while True:
                ev = await pending.queue.get()
                pending.note(ev)
                if isinstance(ev, TextDelta):
                    # read-out (CAST issue): this delta's tokens' projections, when the request asked
                    chunk = piece(ev.text)
                    chunk.readout = ev.readout
                    yield event(chunk)
                elif isinstance(ev, Finished):
                    state["done"] = True
                    _finished(server, pending, ev, bool(terms))
                    last = piece(None if chat else "", ev.finish_reason)
                    if pending.conditions is not None:  # decided at prefill: the echo's fired/score
                        last.steering = echo(terms, pending.conditions)
                    last.readout = ev.readout  # the whole prompt's and generation's projections, when asked
                    yield event(last)
                    if include_usage:
                        yield event(piece(usage=Usage.of(ev.prompt_tokens, ev.completion_tokens), empty=True))
                    yield "data: [DONE]\n\n"
                    return
                elif isinstance(ev, Failed):
                    state["done"] = True
                    yield event(error_body(ev.message, "server_error"))
                    yield "data: [DONE]\n\n"
                    return
        finally:
            close()

    return JobStream(stream(), close, media_type="text/event-stream",
                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
