"""The steering a request asks vLLM for, as it travels: one JSON string under one key of
`SamplingParams.extra_args` (what stock `vllm serve` fills from the OpenAI body's `vllm_xargs`).

Pure data (no torch, no vLLM): the client side (`xargs`), the API server and engine core (validation,
the prefix-cache salt) and the workers (the per-step plan) all read the same encoding.

    {"terms": [{"vector": "happy", "strength": 8, "layers": [3], "positions": "after_user",
                "schedule": "decay:16", "digest": "<sha256 of the vector's tensors, optional>"}],
     "after_user": 12}

`schedule` (`steerlab.schedules`; "constant" when left out) weighs the k-th position the term's policy
steers, k = 0 at the policy's first position. A token's add is its terms' summed delta times one weight,
so a request with a schedule gives all its terms that schedule and policy
(`steerlab.schedules.one_weight_per_token`).

`after_user` is the first token the "after_user" policy steers (`steerlab.encoding.after_user_start`);
a client that does not know it (a plain `openai` call) leaves it out and the policy starts at the last
prompt token, which is where `after_user_start` puts it for a prompt that ends with the user's text.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

from ..errors import SteerlabError
from ..position_policies import POLICIES
from ..schedules import Schedule, one_weight_per_token

KEY = "steerlab"  # the extra_args / vllm_xargs key


class SpecError(ValueError):
    """A steering spec that cannot be applied (answered 400 by `vllm serve`: it is a ValueError)."""


@dataclass(frozen=True)
class TermSpec:
    """One term: `h_L <- h_L + w_k * strength * vector[L]` for L in `layers` (None: every layer of the vector),
    w_k the `schedule`'s weight of the k-th position the term steers (1 for "constant")."""

    vector: str
    strength: float
    layers: Optional[tuple[int, ...]] = None
    positions: str = "after_user"
    digest: Optional[str] = None
    schedule: str = "constant"

    def as_dict(self) -> dict:
        out: dict[str, Any] = {"vector": self.vector, "strength": self.strength, "positions": self.positions}
        if self.schedule != "constant":  # absent for constant: specs written before schedules encode the same
            out["schedule"] = self.schedule
        if self.layers is not None:
            out["layers"] = list(self.layers)
        if self.digest is not None:
            out["digest"] = self.digest
        return out


@dataclass(frozen=True)
class RequestSpec:
    terms: tuple[TermSpec, ...]
    after_user: Optional[int] = None

    def __post_init__(self):
        problem = one_weight_per_token((t.schedule, t.positions) for t in self.terms)
        if problem:
            raise SpecError(problem)

    def encode(self) -> str:
        out: dict[str, Any] = {"terms": [t.as_dict() for t in self.terms]}
        if self.after_user is not None:
            out["after_user"] = self.after_user
        return json.dumps(out, sort_keys=True, separators=(",", ":"))

    @property
    def schedule(self) -> Optional[str]:
        """The request's strength schedule when it has one (every term then shares it), else None."""
        return next((t.schedule for t in self.terms if t.schedule != "constant"), None)

    def after_user_start(self, prompt_tokens: int) -> int:
        """The first position "after_user" steers (never past the last prompt token)."""
        last = prompt_tokens - 1
        return last if self.after_user is None else min(self.after_user, last)


def _term(raw: Any, i: int) -> TermSpec:
    if not isinstance(raw, Mapping):
        raise SpecError(f"steering term {i} must be an object")
    unknown = set(raw) - {"vector", "strength", "layers", "positions", "digest", "schedule"}
    if unknown:
        raise SpecError(f"steering term {i}: unknown field(s) {sorted(unknown)}")
    name = raw.get("vector")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise SpecError(f"steering term {i}: 'vector' must be a registered vector's name")
    strength = raw.get("strength", 4.0)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength):
        raise SpecError(f"steering term {i}: 'strength' must be a finite number")
    positions = raw.get("positions", "after_user")
    if positions not in POLICIES:
        raise SpecError(f"steering term {i}: unknown position policy {positions!r} (choose one of {', '.join(POLICIES)})")
    layers = raw.get("layers")
    if layers is not None:
        if not isinstance(layers, list) or not layers or not all(isinstance(l, int) and not isinstance(l, bool)
                                                                   for l in layers):
            raise SpecError(f"steering term {i}: 'layers' must be a non-empty list of integers")
        layers = tuple(sorted(set(layers)))
    digest = raw.get("digest")
    if digest is not None and not isinstance(digest, str):
        raise SpecError(f"steering term {i}: 'digest' must be a string")
    schedule = raw.get("schedule", "constant")
    try:
        schedule = Schedule.parse(schedule if isinstance(schedule, str) else repr(schedule)).spec
    except SteerlabError as e:
        raise SpecError(f"steering term {i}: {e}") from None
    return TermSpec(name, float(strength), layers, positions, digest, schedule)


def decode(value: Any) -> RequestSpec:
    """The spec under `extra_args[KEY]` (a JSON string, or the decoded object). Raises SpecError."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise SpecError(f"'{KEY}' is not valid JSON: {e}") from None
    if not isinstance(value, Mapping) or not isinstance(value.get("terms"), list):
        raise SpecError(f"'{KEY}' must be an object with a 'terms' list")
    unknown = set(value) - {"terms", "after_user"}
    if unknown:
        raise SpecError(f"'{KEY}': unknown field(s) {sorted(unknown)}")
    after_user = value.get("after_user")
    if after_user is not None and (isinstance(after_user, bool) or not isinstance(after_user, int) or after_user < 0):
        raise SpecError(f"'{KEY}': 'after_user' must be a non-negative integer")
    return RequestSpec(tuple(_term(t, i) for i, t in enumerate(value["terms"])), after_user)


def of_extra_args(extra_args: Optional[Mapping[str, Any]]) -> Optional[RequestSpec]:
    """The spec a request carries, or None (no steering; an empty term list is no steering too)."""
    if not extra_args or KEY not in extra_args:
        return None
    spec = decode(extra_args[KEY])
    return spec if spec.terms else None


def salt(spec: RequestSpec, digests: Sequence[str], previous: Optional[str] = None) -> str:
    """The prefix-cache salt of a steered request: everything that changes its KV (the spec and the digest
    of each term's vector as the workers will read it), on top of any salt the client gave."""
    h = hashlib.sha256(spec.encode().encode())
    for d in digests:
        h.update(d.encode())
    if previous:
        h.update(b"|" + previous.encode())
    return "steerlab-" + h.hexdigest()[:32]


def xargs(terms: Sequence[TermSpec | Mapping[str, Any]], after_user: Optional[int] = None) -> dict[str, str]:
    """What a client puts in `vllm_xargs` (openai: `extra_body={"vllm_xargs": xargs([...])}`)."""
    parsed = tuple(t if isinstance(t, TermSpec) else _term(t, i) for i, t in enumerate(terms))
    return {KEY: RequestSpec(parsed, after_user).encode()}


__all__ = ["KEY", "POLICIES", "SpecError", "TermSpec", "RequestSpec", "decode", "of_extra_args", "salt", "xargs"]
