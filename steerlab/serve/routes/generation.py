"""POST /v1/chat/completions and /v1/completions (and the retired /generate).

A request is checked (unsupported fields, model name, max_tokens, steering, read-out, what the engine
can do), tokenized on the tokenizing thread and checked against the context, then submitted to the
engine as an engine-neutral request; the response is the whole result or a stream (`streaming`). The
model itself is never touched here.
"""

from __future__ import annotations

import asyncio
import time
from typing import Union

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ...errors import PromptTooLongError, SteerlabError
from ...schedules import one_weight_per_token
from ..api_errors import ApiError
from ..engines.base import EngineRequest, QueueFull, SamplingSettings, ShuttingDown, SteeringTerm
from ..openai_schema import ChatCompletionRequest, CompletionRequest
from ..prompts import chat_prompt, completion_prompt, encode_one
from ..resolve import SteeringRequestError, resolve, resolve_readout
from ..responses import (AssistantMessage, ChatChoice, ChatCompletion, TextChoice, TextCompletion, Usage,
                         finish_reason, new_id)
from ..state import ServerState, server_state
from ..streaming import Pending, echo, event_stream, wait_result

# JSONResponse named, not defaulted: the models' dicts go out through json.dumps, as they always have
router = APIRouter(default_response_class=JSONResponse)

CompletionBody = Union[ChatCompletionRequest, CompletionRequest]


def _check(server: ServerState, body: CompletionBody) -> tuple[int, list[SteeringTerm], list]:
    """What the request asks for, checked before any tokenizing: (max new tokens, steering terms, read-outs)."""
    bad = body.unsupported()
    if bad:
        raise ApiError(400, bad[1], param=bad[0])
    model_id, engine, limit = server.model_id, server.engine, server.limits.max_new_tokens
    if body.model != model_id:
        raise ApiError(404, f"model '{body.model}' is not served (this server serves '{model_id}')",
                       param="model", code="model_not_found")
    max_new = server.limits.new_tokens(body.new_tokens())
    if max_new > limit:
        raise ApiError(400, f"max_tokens is {max_new}, more than this server's limit of {limit}", param="max_tokens")
    try:
        served = server.registry.snapshot()
        terms = resolve(body.steering_list(), served, server.lm)
        readout = resolve_readout(body.readout, served, server.lm)
    except SteeringRequestError as e:
        raise ApiError(e.status, str(e), param=e.param, code="vector_not_found" if e.status == 404 else None)
    if any(t.condition is not None for t in terms) and "conditions" not in engine.features:
        raise ApiError(400, f"conditional steering is not available on the {engine.name} engine: serve with "
                            "--engine builtin", param="steering", code="unsupported_on_engine")
    mixed = one_weight_per_token((t.schedule, t.positions) for t in terms)
    if mixed and "mixed_schedules" not in engine.features:
        raise ApiError(400, f"on the {engine.name} engine, {mixed}: serve with --engine builtin for more",
                       param="steering", code="unsupported_on_engine")
    if readout and "readout" not in engine.features:
        raise ApiError(400, f"read-out is not available on the {engine.name} engine: serve with --engine builtin",
                       param="readout", code="unsupported_on_engine")
    return max_new, terms, readout


async def _encode(server: ServerState, body: CompletionBody, chat: bool, max_new: int):
    """The prompt as the engine takes it, tokenized on the tokenizing thread; a prompt the tokenizer or
    the context refuses is the client's 400."""
    lm = server.lm

    def build():
        prompt = chat_prompt(lm, body.messages) if chat else completion_prompt(lm, body.prompt_text())
        return encode_one(lm, prompt, max_new)

    param = "messages" if chat else "prompt"
    try:
        return await asyncio.get_running_loop().run_in_executor(server.tokenize_pool, build)
    except PromptTooLongError as e:
        raise ApiError(400, str(e).replace("prompt 0", "the prompt"), param=param, code="context_length_exceeded")
    except (SteerlabError, ValueError) as e:
        raise ApiError(400, str(e).replace("prompt 0", "the prompt"), param=param)
    except Exception as e:  # the tokenizer refused the text: still the client's input, not a server fault
        raise ApiError(400, f"the prompt could not be tokenized: {type(e).__name__}: {e}", param=param)


async def _submit(server: ServerState, body: CompletionBody, chat: bool) -> tuple[Pending, list[SteeringTerm]]:
    """Check, tokenize and submit the request; 429 when the engine's queue is full, 503 while shutting down."""
    max_new, terms, readout = _check(server, body)
    enc = await _encode(server, body, chat, max_new)
    pending = Pending(asyncio.get_running_loop())
    sampling = SamplingSettings(max_new, body.temperature, body.top_p, body.top_k, body.seed,
                                tuple(body.stop_list()), body.ignore_eos)
    request = EngineRequest.of(enc, new_id("req"), sampling, terms, readout)
    try:
        pending.handle = server.engine.submit(request, pending.emit)
    except QueueFull as e:
        server.metrics.observe_reject("queue_full")
        raise ApiError(429, f"the server is busy ({e}); retry shortly", code="queue_full", type_="rate_limit_error",
                       headers={"Retry-After": "1"})
    except ShuttingDown as e:
        server.metrics.observe_reject("shutting_down")
        raise ApiError(503, str(e), code="shutting_down", headers={"Retry-After": "5"})
    return pending, terms


async def _complete(server: ServerState, request: Request, body: CompletionBody,
                    chat: bool) -> Union[ChatCompletion, TextCompletion, Response]:
    """The completion object, a stream of chunks, or 499 when the client left before the result."""
    pending, terms = await _submit(server, body, chat)
    rid = new_id("chatcmpl" if chat else "cmpl")
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return event_stream(server, pending, chat, rid, terms, include_usage)
    result = await wait_result(server, request, pending, bool(terms))
    if result is None:
        return Response(status_code=499)
    common = dict(id=rid, model=server.model_id, usage=Usage.of(result.prompt_tokens, result.completion_tokens),
                  steering=echo(terms, pending.conditions),
                  readout=result.readout)  # read-out (CAST issue): the prompt's and generation's projections
    reason = finish_reason(result.finish_reason)
    if chat:
        return ChatCompletion(created=int(time.time()), choices=[ChatChoice(
            message=AssistantMessage(content=result.text), finish_reason=reason)], **common)
    return TextCompletion(created=int(time.time()), choices=[TextChoice(text=result.text, finish_reason=reason)],
                          **common)


@router.post("/v1/chat/completions", response_model=ChatCompletion)
async def chat_completions(body: ChatCompletionRequest, request: Request,
                           server: ServerState = Depends(server_state)):
    return await _complete(server, request, body, chat=True)


@router.post("/v1/completions", response_model=TextCompletion)
async def completions(body: CompletionRequest, request: Request, server: ServerState = Depends(server_state)):
    return await _complete(server, request, body, chat=False)


@router.post("/generate")
async def generate_retired():
    raise ApiError(410, "POST /generate is retired: use POST /v1/chat/completions (or /v1/completions) with "
                        "a 'steering' field; see API.md", code="retired")
