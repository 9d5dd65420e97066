"""The engine seam: what the server asks of whatever runs the model.

Routes, limits, auth, the vector registry, metrics, the playground and the OpenAI schema are written
once, against this interface; an engine only turns `EngineRequest`s into `EngineEvent`s. Two engines
implement it: the built-in continuous-batching engine (`builtin`, plain PyTorch, the default) and
vLLM (`vllm`, the `steerlab[vllm]` extra). Nothing here imports torch-side model code or vLLM, so the
seam costs nothing to import.

A request reaches an engine fully resolved and checked: token ids (the chat template already applied),
the boundaries the position policies need, sampling settings, and steering terms whose vectors are
restricted to the layers they act on. So what a position policy means is decided in one place
(`steerlab.encoding.after_user_start` and `steering_positions` below), whichever engine runs it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Literal, Optional, Protocol, Sequence, Union, runtime_checkable

from ...vector import SteeringVector

if TYPE_CHECKING:  # the type only: the seam imports no tokenizer or model code
    from ...encoding import EncodedBatch

PolicyName = Literal["all", "after_user", "last_prompt"]


# -- what a request carries -------------------------------------------------------------------------
@dataclass(frozen=True)
class ConditionLeaf:
    """A registered condition vector, by name (CAST): fires when its score at the prompt's last token
    passes the threshold recorded in the vector's metadata."""

    name: str
    vector: SteeringVector


@dataclass(frozen=True)
class ConditionNode:
    """and / or / not over conditions (`not` has exactly one child)."""

    op: Literal["and", "or", "not"]
    children: tuple["Condition", ...]


Condition = Union[ConditionLeaf, ConditionNode]


@dataclass(frozen=True)
class SteeringTerm:
    """One resolved steering term of one request (the one shape a term has inside the server):
    `h_L <- h_L + strength * vector[L]` for each L in `layers`, at the positions of `positions`,
    only when `condition` (if any) fires for this request's prompt, decided as `decide` says
    (`steerlab.steering.DECIDE_MODES`: "exact", or "first_token" for layers below the condition's), weighted
    along those positions by `schedule` (`steerlab.schedules`, canonical text: "constant", "first:N", "decay:H")."""

    name: str
    vector: SteeringVector  # restricted to `layers`
    strength: float
    layers: tuple[int, ...]
    positions: PolicyName
    condition: Optional[Condition] = None
    decide: str = "exact"
    schedule: str = "constant"

    @property
    def fingerprint(self) -> str:
        """A short digest of everything that changes the computation (vector bytes, strength, layers,
        positions, condition, schedule), e.g. to salt a prefix cache so steered KV is never shared."""
        h = hashlib.sha256()
        h.update(vector_digest(self.vector).encode())
        h.update(repr((self.strength, self.layers, self.positions)).encode())
        if self.schedule != "constant":
            h.update(b"schedule:" + self.schedule.encode())
        if self.condition is not None:
            h.update(_condition_repr(self.condition).encode())
            h.update(self.decide.encode())
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        """The echo of this term in a response's `steering` field (the condition as a request writes it)."""
        out = {"vector": self.name, "strength": self.strength, "layers": list(self.layers),
               "positions": self.positions}
        if self.schedule != "constant":
            out["schedule"] = self.schedule
        if self.condition is not None:
            out["condition"] = condition_spec(self.condition)
            out["decide"] = self.decide
        return out


@dataclass(frozen=True)
class ReadoutSpec:
    """Per-token projection of the residual stream at `layer` on `vector` (raw and cosine), for the prompt
    and the generated tokens; with `stop_above`/`stop_tokens`, the generation ends (finish_reason
    "content_filter") once the raw projection has stayed above `stop_above` for `stop_tokens` tokens."""

    name: str
    vector: SteeringVector
    layer: int
    stop_above: Optional[float] = None
    stop_tokens: int = 1


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: Optional[int] = None  # None = the model's default (as `model.generate`); 0 = off
    seed: Optional[int] = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks)


@dataclass(frozen=True)
class EngineRequest:
    """An engine-neutral generation request. Token indices are row-relative (no padding)."""

    request_id: str
    token_ids: tuple[int, ...]
    user_start: int  # first token of the user's text (ActAdd's first position)
    after_user: int  # first "after_user" position (`encoding.after_user_start`)
    sampling: SamplingSettings
    steering: tuple[SteeringTerm, ...] = ()
    readout: tuple[ReadoutSpec, ...] = ()

    @property
    def prompt_tokens(self) -> int:
        return len(self.token_ids)

    @classmethod
    def of(cls, enc: "EncodedBatch", request_id: str, sampling: SamplingSettings,
           steering: Sequence[SteeringTerm] = (), readout: Sequence[ReadoutSpec] = ()) -> "EngineRequest":
        """A one-row encoding (`steerlab.encode`, the server's `prompts.encode_one`) as an engine request: its
        token ids and the boundaries the position policies need (`encoding.after_user_start`, computed once)."""
        if len(enc) != 1:
            raise ValueError(f"an engine request is one prompt, got a batch of {len(enc)}")
        n = int(enc.lengths[0])
        ids = enc.input_ids[0, enc.input_ids.shape[1] - n:].tolist()
        return cls(request_id, tuple(int(t) for t in ids), int(enc.user_start[0]), int(enc.after_user_start[0]),
                   sampling, tuple(steering), tuple(readout))


def steering_positions(policy: str, position: int, *, prompt_tokens: int, after_user: int) -> bool:
    """Whether absolute token `position` (0 = first prompt token; generated tokens follow the prompt) is
    steered under `policy`. The one definition of the policies for any engine that does not run
    `steerlab.steering`'s hooks (the built-in engine's hooks compute the same masks in batch)."""
    if policy == "all":
        return position >= 0
    if policy == "after_user":
        return position >= after_user
    if policy == "last_prompt":
        return position == prompt_tokens - 1
    raise ValueError(f"unknown position policy '{policy}'")


# -- what an engine reports -------------------------------------------------------------------------
@dataclass(frozen=True)
class FirstToken:
    at: float  # time.monotonic() of the first generated token


@dataclass(frozen=True)
class ConditionsDecided:
    """Sent once, after prefill, for a request with conditional terms: per term index, whether it fired,
    and per condition name its score."""

    fired: tuple[Optional[bool], ...]  # one per steering term; None for a term without a condition
    scores: dict[str, float]

    def echo(self, term: SteeringTerm, index: int) -> dict:
        """What the `steering` echo adds for term `index`: `fired` and its own conditions' scores."""
        if index >= len(self.fired) or self.fired[index] is None or term.condition is None:
            return {}
        names = condition_names(term.condition)
        return {"fired": self.fired[index], "condition_scores": {n: self.scores[n] for n in names if n in self.scores}}


@dataclass(frozen=True)
class TextDelta:
    text: str
    # per read-out name: one projection per token this delta covers ({"raw": [...], "cosine": [...]})
    readout: Optional[dict[str, dict[str, list[float]]]] = None


@dataclass(frozen=True)
class Finished:
    text: str
    # "cancelled": the request was cancelled (its client went away); no route answers with it
    finish_reason: Literal["stop", "length", "content_filter", "cancelled"]
    prompt_tokens: int
    completion_tokens: int
    readout: Optional[dict[str, dict[str, list[float]]]] = None  # whole prompt + generation


@dataclass(frozen=True)
class Failed:
    status: int  # 500 (engine fault) or 503 (shutting down)
    message: str


EngineEvent = Union[FirstToken, ConditionsDecided, TextDelta, Finished, Failed]


class QueueFull(Exception):
    """The waiting queue is at its limit (answered with 429 and Retry-After)."""


class ShuttingDown(Exception):
    """The engine is stopping (answered with 503 and Retry-After)."""


@dataclass(frozen=True)
class ModelInfo:
    """What the request side knows of the served model: no weights, only what prompts, vector checks
    (`SteeringVector.check_compatible`), /v1/models and /health need. A `LoadedModel` has the same fields."""

    model_id: str
    family: str
    n_layers: int
    hidden_size: int
    max_context: Optional[int]
    tokenizer: object  # a transformers tokenizer, the request side's own copy
    use_chat_template: bool

    @classmethod
    def of(cls, lm) -> "ModelInfo":
        """From a `LoadedModel` (or anything with these fields), with its own copy of the tokenizer: request
        threads tokenize while the engine's thread decodes, and a fast tokenizer is not safe to share."""
        import copy

        return cls(lm.model_id, lm.family, lm.n_layers, lm.hidden_size, lm.max_context, copy.deepcopy(lm.tokenizer),
                   lm.use_chat_template)


@runtime_checkable
class RequestHandle(Protocol):
    def cancel(self) -> None:
        """Stop generating for this request (a client went away); no further events after the next step."""


@runtime_checkable
class Engine(Protocol):
    """Runs requests. `submit` never blocks on the model; events arrive on `emit`, called from the
    engine's own thread (the caller hops them onto its event loop)."""

    name: str  # "builtin" or "vllm"
    model: ModelInfo
    # what the engine runs beyond plain steering: "conditions" (CAST), "readout", "mixed_schedules" (terms of
    # one request on different strength schedules); the server answers a request that needs a missing one
    # with a 400 before submitting it
    features: frozenset[str]

    def submit(self, request: EngineRequest, emit: Callable[[EngineEvent], None]) -> RequestHandle:
        """Queue `request`; raises QueueFull or ShuttingDown."""

    @property
    def queued(self) -> int: ...

    @property
    def active(self) -> int: ...

    @property
    def capacity(self) -> int:
        """Rows that can run at once (admission counts free slots as well as the waiting queue)."""

    @property
    def closing(self) -> bool: ...

    def begin_shutdown(self) -> None:
        """Refuse new requests; running ones finish."""

    def close(self, grace_s: float = 10.0) -> None:
        """Wait up to `grace_s` for running requests, then fail the rest (503) and release the model."""

    def on_batch(self, observe: Callable[[int], None]) -> None:
        """Call `observe(rows)` for each forward pass (the batch-size histogram of /metrics); an engine that
        cannot see its batches never calls it."""


def run_requests(engine: Engine, requests: Sequence[EngineRequest], timeout_s: float = 3600.0) -> list[Finished]:
    """Submit `requests` to `engine` at once (it batches them as its slots allow) and wait for their results, in
    order: batch work (studies, parity checks), not the server. A request that fails raises RuntimeError with
    the engine's message; one that does not finish in `timeout_s` raises TimeoutError."""
    import threading

    done, lock = threading.Event(), threading.Lock()
    results: dict[str, EngineEvent] = {}

    def emitter(rid: str) -> Callable[[EngineEvent], None]:
        def emit(event: EngineEvent) -> None:
            if isinstance(event, (Finished, Failed)):
                with lock:
                    results[rid] = event
                    if len(results) == len(requests):
                        done.set()
        return emit

    if not requests:
        return []
    for r in requests:
        engine.submit(r, emitter(r.request_id))
    if not done.wait(timeout_s):
        raise TimeoutError(f"{len(requests) - len(results)} of {len(requests)} requests did not finish in {timeout_s:.0f} s")
    failed = [e for e in results.values() if isinstance(e, Failed)]
    if failed:
        raise RuntimeError(failed[0].message)
    return [results[r.request_id] for r in requests]


def vector_digest(vector: SteeringVector) -> str:
    """sha256 of a vector's tensors (layer order fixed), for fingerprints and worker-side caches."""
    h = hashlib.sha256()
    for layer in sorted(vector.directions):
        t = vector.directions[layer].detach().to("cpu").contiguous()
        h.update(str(layer).encode())
        h.update(str(t.dtype).encode())
        h.update(t.numpy().tobytes() if t.dtype.is_floating_point and str(t.dtype) != "torch.bfloat16"
                 else t.float().numpy().tobytes())
    return h.hexdigest()


def condition_spec(c: Condition):
    """A condition tree as a request writes it: a name, {"and"|"or": [...]} or {"not": ...}."""
    if isinstance(c, ConditionLeaf):
        return c.name
    if c.op == "not":
        return {"not": condition_spec(c.children[0])}
    return {c.op: [condition_spec(x) for x in c.children]}


def condition_names(c: Condition) -> list[str]:
    """The condition vectors' names in a tree, each once, in order."""
    if isinstance(c, ConditionLeaf):
        return [c.name]
    out: list[str] = []
    for x in c.children:
        out += [n for n in condition_names(x) if n not in out]
    return out


def _condition_repr(c: Condition) -> str:
    if isinstance(c, ConditionLeaf):
        return f"{c.name}:{vector_digest(c.vector)[:16]}"
    return f"{c.op}(" + ",".join(_condition_repr(x) for x in c.children) + ")"


__all__ = ["Engine", "EngineRequest", "EngineEvent", "SteeringTerm", "ReadoutSpec", "SamplingSettings",
           "Condition", "ConditionLeaf", "ConditionNode", "FirstToken", "ConditionsDecided", "TextDelta",
           "Finished", "Failed", "QueueFull", "ShuttingDown", "RequestHandle", "ModelInfo", "steering_positions", "run_requests",
           "vector_digest", "condition_spec", "condition_names", "PolicyName"]
