"""OpenAI request models: what the official client sends, plus `steering` and `readout` (responses: `responses`)."""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MAX_TOKENS = 128
MAX_STOPS = 4


class SteeringSpec(BaseModel):
    """One steering term; omitted fields come from the vector's metadata."""

    model_config = ConfigDict(extra="forbid")
    vector: str = Field(..., min_length=1, max_length=64)
    strength: Optional[float] = Field(None, allow_inf_nan=False)
    layers: Optional[list[int]] = Field(None, max_length=1024)
    positions: Optional[str] = Field(None, max_length=32)
    # CAST: a registered condition vector's name, or {"and": [...]}, {"or": [...]}, {"not": ...} of them
    condition: Union[str, dict, None] = None
    # how the condition is decided when a steered layer lies at or below the condition's ("exact" or "first_token")
    decide: Optional[str] = Field(None, max_length=16)
    # how the strength changes along the steered positions: "constant", "first:N" or "decay:H"
    schedule: Optional[str] = Field(None, max_length=32)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart], None] = None
    name: Optional[str] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Common(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(..., max_length=512)
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2, allow_inf_nan=False)
    top_p: float = Field(1.0, gt=0, le=1, allow_inf_nan=False)
    seed: Optional[int] = Field(None, ge=0, lt=2**64)
    top_k: Optional[int] = Field(None, ge=0, le=1 << 20)  # extension (as vLLM): default = what steerlab.generate uses
    ignore_eos: bool = False  # extension (as vLLM): always generate max_tokens
    stop: Union[str, list[str], None] = None
    n: int = 1
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: float = Field(0.0, allow_inf_nan=False)
    frequency_penalty: float = Field(0.0, allow_inf_nan=False)
    logit_bias: Optional[dict] = None
    user: Optional[str] = None
    steering: Union[SteeringSpec, list[SteeringSpec], None] = None
    # read-out (CAST issue): a vector name, {vector, layer?, stop_above?, stop_tokens?} or a list of them;
    # checked by `resolve.resolve_readout`, which names the wrong field (a union here would not)
    readout: Any = None

    def steering_list(self) -> list[dict]:
        s = self.steering
        if s is None:
            return []
        return [t.model_dump() for t in (s if isinstance(s, list) else [s])]

    def stop_list(self) -> list[str]:
        s = self.stop
        return [] if s is None else ([s] if isinstance(s, str) else list(s))

    def unsupported(self) -> Optional[tuple[str, str]]:
        """(param, message) for a requested feature this server would otherwise silently ignore."""
        if self.n != 1:
            return "n", f"only n=1 is supported, got {self.n}"
        if self.presence_penalty or self.frequency_penalty:
            return "presence_penalty", "presence/frequency penalties are not supported"
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported"
        stops = self.stop_list()
        if len(stops) > MAX_STOPS or any(not s for s in stops):
            return "stop", f"stop takes up to {MAX_STOPS} non-empty strings"
        return None


class ChatCompletionRequest(_Common):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=256)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = None
    tools: Optional[list] = None
    tool_choice: Optional[Union[str, dict]] = None
    response_format: Optional[dict] = None

    def new_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def unsupported(self):
        if self.logprobs or self.top_logprobs:
            return "logprobs", "logprobs are not supported"
        if self.tools or (self.tool_choice not in (None, "none")):
            return "tools", "tools are not supported"
        if self.response_format and self.response_format.get("type", "text") != "text":
            return "response_format", "only response_format type 'text' is supported"
        return super().unsupported()


class CompletionRequest(_Common):
    prompt: Union[str, list[str]]
    max_tokens: Optional[int] = Field(None, ge=1)
    echo: bool = False
    best_of: Optional[int] = None
    suffix: Optional[str] = None
    logprobs: Optional[int] = None

    def new_tokens(self) -> Optional[int]:
        return self.max_tokens

    def prompt_text(self) -> str:
        p = self.prompt
        if isinstance(p, list):
            if len(p) != 1:
                raise ValueError(f"prompt must be one string (a list of {len(p)} would need n>1 batching per request; "
                                 "send separate requests: they share batches anyway)")
            return p[0]
        return p

    def unsupported(self):
        if self.echo:
            return "echo", "echo is not supported"
        if self.best_of not in (None, 1):
            return "best_of", "best_of > 1 is not supported"
        if self.suffix:
            return "suffix", "suffix is not supported"
        if self.logprobs:
            return "logprobs", "logprobs are not supported"
        return super().unsupported()
