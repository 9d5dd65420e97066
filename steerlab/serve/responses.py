"""Response models: the JSON every route answers with (OpenAI's objects, steerlab's fields added).

The models state the wire format; they do not change it. Fields named in a model's `omit_if_none` are
left out of the JSON when None, as OpenAI leaves them out (a stream's `usage` only on its usage chunk,
a delta only with what it adds) and as steerlab adds its own (`readout` only when a request asked for
it). Values read from a vector file's metadata are typed `Any`: they are echoed as the file records
them, never coerced (an upload is validated for use, not for tidiness).
"""

from __future__ import annotations

import uuid
from typing import Any, ClassVar, Literal, Optional

from pydantic import BaseModel, model_serializer

from ..vector import SteeringVector
from .registry import vector_bytes

FinishReason = Literal["stop", "length", "content_filter"]


class WireModel(BaseModel):
    """A response object; `omit_if_none` names the fields the JSON leaves out when they are None."""

    omit_if_none: ClassVar[tuple[str, ...]] = ()

    @model_serializer(mode="wrap")
    def _omit_none(self, handler):
        data = handler(self)
        for name in self.omit_if_none:
            if data.get(name, 0) is None:
                del data[name]
        return data


# -- errors -------------------------------------------------------------------------------------------
class ErrorDetail(WireModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorBody(WireModel):
    """Every error the server answers (and a stream's failure event): OpenAI's shape."""

    error: ErrorDetail


def error_body(message: str, type_: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> dict:
    return ErrorBody(error=ErrorDetail(message=message, type=type_, param=param, code=code)).model_dump()


def new_id(prefix: str) -> str:
    """A response's (or an engine request's) id: `prefix`-24 hex digits."""
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


# -- completions --------------------------------------------------------------------------------------
class Usage(WireModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> "Usage":
        return cls(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                   total_tokens=prompt_tokens + completion_tokens)


def finish_reason(r: str) -> FinishReason:
    """An engine's finish reason as OpenAI names it ("cancelled" and the like never reach a client as such)."""
    return r if r in ("stop", "length", "content_filter") else "stop"  # type: ignore[return-value]


class AssistantMessage(WireModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(WireModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: FinishReason


class TextChoice(WireModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: FinishReason


class _OpenAIObject(WireModel):
    """The fields of a completion object and of a stream chunk alike: steerlab adds `steering` (each term as
    applied, with its condition's decision) and `readout` (projections, when a request asks for them).
    Subclasses narrow fields in place: the order here is the JSON's."""

    omit_if_none: ClassVar[tuple[str, ...]] = ("usage", "steering", "readout")
    id: str
    object: str
    created: int
    model: str
    choices: list
    usage: Optional[Usage] = None
    steering: Optional[list[dict[str, Any]]] = None
    readout: Any = None


class _Completion(_OpenAIObject):
    """A whole completion: `usage` and `steering` always, `readout` (the prompt's and generation's
    projections) when asked for."""

    omit_if_none: ClassVar[tuple[str, ...]] = ("readout",)
    usage: Usage
    steering: list[dict[str, Any]]


class ChatCompletion(_Completion):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class TextCompletion(_Completion):
    object: Literal["text_completion"] = "text_completion"
    choices: list[TextChoice]


class ChunkDelta(WireModel):
    omit_if_none: ClassVar[tuple[str, ...]] = ("role", "content")
    role: Optional[Literal["assistant"]] = None
    content: Optional[str] = None


class ChatChunkChoice(WireModel):
    index: int = 0
    delta: ChunkDelta
    logprobs: None = None
    finish_reason: Optional[FinishReason] = None


class TextChunkChoice(WireModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: Optional[FinishReason] = None


class _Chunk(_OpenAIObject):
    """One server-sent event of a stream: `usage` only on the usage chunk (no choices), `steering` on
    the first chat chunk and, once conditions are decided, on the last; `readout` with the tokens it covers."""


class ChatCompletionChunk(_Chunk):
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    choices: list[ChatChunkChoice]


class TextCompletionChunk(_Chunk):
    object: Literal["text_completion"] = "text_completion"
    choices: list[TextChunkChoice]


def chat_chunk(rid: str, model: str, created: int, *, content: Optional[str] = None, role: Optional[str] = None,
               finish: Optional[str] = None, usage: Optional[Usage] = None, empty: bool = False) -> ChatCompletionChunk:
    """A chat stream chunk; `empty`: the usage chunk, with no choices."""
    choices = [] if empty else [ChatChunkChoice(delta=ChunkDelta(role=role, content=content),
                                                finish_reason=finish_reason(finish) if finish else None)]
    return ChatCompletionChunk(id=rid, created=created, model=model, choices=choices, usage=usage)


def text_chunk(rid: str, model: str, created: int, *, text: str = "", finish: Optional[str] = None,
               usage: Optional[Usage] = None, empty: bool = False) -> TextCompletionChunk:
    """A text-completion stream chunk; `empty`: the usage chunk, with no choices."""
    choices = [] if empty else [TextChunkChoice(text=text, finish_reason=finish_reason(finish) if finish else None)]
    return TextCompletionChunk(id=rid, created=created, model=model, choices=choices, usage=usage)


# -- the served model and the server's state ----------------------------------------------------------
class ModelCard(WireModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "steerlab"
    n_layers: int
    hidden_size: int
    max_context: Optional[int]
    max_tokens_limit: int


class ModelList(WireModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class Health(WireModel):
    status: Literal["ok", "shutting_down"]
    model: str
    n_layers: int
    hidden_size: int
    active: int
    queued: int
    vectors: int


# -- vectors ------------------------------------------------------------------------------------------
class VectorInfo(WireModel):
    """A served vector: what it is (from its metadata), what it weighs, and how it is meant to be used."""

    id: str
    object: Literal["vector"] = "vector"
    method: Any
    model_id: Any
    family: Any
    layers: list[int]
    norms: dict[str, float]
    hidden_size: Any
    per_position: bool
    strength: Any
    positions: Any
    selected_layers: Optional[list[Any]]
    position: Any
    template: Any
    created: Any
    n_train: Any
    bytes: int
    effect: Any
    selection_summary: Any
    extra: dict[str, Any]

    @classmethod
    def of(cls, name: str, vec: SteeringVector) -> "VectorInfo":
        m = vec.meta
        extra = dict(m.extra)
        return cls(
            id=name, method=m.method, model_id=m.model_id, family=m.family, layers=list(vec.layers),
            norms={str(l): round(n, 6) for l, n in vec.norms().items()}, hidden_size=m.hidden_size,
            per_position=vec.per_position, strength=m.strength, positions=m.positions,
            selected_layers=list(m.selected_layers) if m.selected_layers is not None else None,
            position=m.position, template=m.template, created=m.created, n_train=m.n_train, bytes=vector_bytes(vec),
            effect=extra.get("effect"), selection_summary=extra.get("selection_summary"),
            extra={k: v for k, v in extra.items() if k not in ("effect", "selection_summary")})


class VectorList(WireModel):
    object: Literal["list"] = "list"
    data: list[VectorInfo]


class VectorDeleted(WireModel):
    id: str
    object: Literal["vector"] = "vector"
    deleted: Literal[True] = True
