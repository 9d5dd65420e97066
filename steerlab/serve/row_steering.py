"""Per-request steering: resolve what a request asks for against the registered vectors, and turn the
rows of a running batch into `steerlab.Steering` terms with one vector and strength per row.

The batch terms go through `steerlab.steer.apply_steering`, so the position policies ("all",
"after_user", "last_prompt") and ActAdd per-position vectors mean exactly what they mean in
`steerlab.generate`; the scheduler only supplies the rows' token boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from ..errors import SteerlabError
from ..steering import POLICIES, Steering
from ..vector import SteeringVector

MAX_TERMS = 8  # steering objects per request
MAX_ABS_STRENGTH = 1000.0  # |strength| above this is refused (vectors are un-normalised; typical values are 1-20)


class SteeringRequestError(SteerlabError):
    """A steering field a client got wrong (answered with 400, or 404 for an unknown vector)."""

    def __init__(self, message: str, status: int = 400, param: str = "steering"):
        super().__init__(message)
        self.status = status
        self.param = param


@dataclass(frozen=True)
class RowTerm:
    """One resolved steering term of one request: the vector restricted to the chosen layers."""

    name: str
    vector: SteeringVector
    strength: float
    layers: tuple[int, ...]
    positions: str
    condition: object | None = None  # a steerlab.condition.Condition, decided at prefill from the prompt
    condition_spec: object | None = None  # as the request wrote it (the echo)

    def describe(self) -> dict:
        out = {"vector": self.name, "strength": self.strength, "layers": list(self.layers),
               "positions": self.positions}
        if self.condition_spec is not None:
            out["condition"] = self.condition_spec
        return out


MAX_CONDITION_LEAVES = 8
MAX_CONDITION_DEPTH = 4


def parse_condition(spec, vectors: dict[str, SteeringVector], lm, param: str):
    """A request's condition (a registered condition vector's name, or {"and"|"or": [...]} / {"not": ...}
    of them) → a steerlab.condition.Condition; SteeringRequestError naming what is wrong."""
    from ..condition import AllOf, AnyOf, ConditionVector, Not
    from ..errors import VectorError

    leaves = [0]

    def build(node, depth: int):
        if depth > MAX_CONDITION_DEPTH:
            raise SteeringRequestError(f"condition nests deeper than {MAX_CONDITION_DEPTH} levels", param=param)
        if isinstance(node, str):
            leaves[0] += 1
            if leaves[0] > MAX_CONDITION_LEAVES:
                raise SteeringRequestError(f"at most {MAX_CONDITION_LEAVES} conditions per term", param=param)
            if node not in vectors:
                served = ", ".join(sorted(vectors)) or "none"
                raise SteeringRequestError(f"no condition vector named '{node}' (served: {served})", 404, param)
            try:
                leaf = ConditionVector(vectors[node], node)
                leaf.vector.check_compatible(lm, allow_other_family=True)
            except VectorError as e:
                raise SteeringRequestError(f"'{node}': {e}", param=param) from None
            return leaf
        if isinstance(node, dict) and len(node) == 1:
            (op, arg), = node.items()
            if op == "not":
                return Not(build(arg, depth + 1))
            if op in ("and", "or"):
                if not isinstance(arg, list) or not arg:
                    raise SteeringRequestError(f"'{op}' takes a non-empty list of conditions", param=param)
                children = [build(a, depth + 1) for a in arg]
                return AllOf(children) if op == "and" else AnyOf(children)
        raise SteeringRequestError('a condition is a vector name or {"and": [...]}, {"or": [...]}, {"not": ...}',
                                   param=param)

    return build(spec, 0)


def resolve(specs: Sequence[dict], vectors: dict[str, SteeringVector], lm) -> list[RowTerm]:
    """Request steering objects ({vector, strength?, layers?, positions?, condition?}) → checked RowTerms.

    What a request omits comes from the vector's metadata (`Steering.from_vector`)."""
    if len(specs) > MAX_TERMS:
        raise SteeringRequestError(f"at most {MAX_TERMS} steering terms per request, got {len(specs)}")
    out = []
    for i, spec in enumerate(specs):
        param = f"steering[{i}]" if len(specs) > 1 else "steering"
        name = spec.get("vector")
        if name not in vectors:
            served = ", ".join(sorted(vectors)) or "none"
            raise SteeringRequestError(f"no vector named '{name}' (served: {served})", 404, f"{param}.vector")
        vec = vectors[name]
        layers = spec.get("layers")
        if layers is not None:
            if len(layers) == 0:
                raise SteeringRequestError("'layers' is empty: omit it to use the vector's layers, or name some",
                                           param=f"{param}.layers")
            missing = [l for l in layers if l not in vec.directions]
            if missing:
                raise SteeringRequestError(f"vector '{name}' has no layers {missing} (it has {list(vec.layers)})",
                                           param=f"{param}.layers")
            if len(set(layers)) != len(layers):
                raise SteeringRequestError(f"'layers' repeats a layer: {list(layers)}", param=f"{param}.layers")
        positions = spec.get("positions")
        if positions is not None and positions not in POLICIES:
            raise SteeringRequestError(f"unknown positions '{positions}': choose one of {', '.join(POLICIES)}",
                                       param=f"{param}.positions")
        st = Steering.from_vector(vec, spec.get("strength"), layers, positions)
        if st.positions not in POLICIES:  # a vector file recording an unknown policy
            raise SteeringRequestError(f"vector '{name}' records positions '{st.positions}'; pass one of "
                                       f"{', '.join(POLICIES)}", param=f"{param}.positions")
        strength = float(st.strength)
        if not math.isfinite(strength) or abs(strength) > MAX_ABS_STRENGTH:
            raise SteeringRequestError(f"strength must be finite with |strength| <= {MAX_ABS_STRENGTH:g}, got {strength}",
                                       param=f"{param}.strength")
        chosen = tuple(int(l) for l in (st.layers if st.layers is not None else vec.layers))
        bad = [l for l in chosen if l not in vec.directions or not 0 <= l < lm.n_layers]
        if bad or not chosen:
            raise SteeringRequestError(f"vector '{name}' cannot be applied at layers {list(bad or chosen)} "
                                       f"(it has {list(vec.layers)}, the model {lm.n_layers} layers)",
                                       param=f"{param}.layers")
        sub = vec if chosen == vec.layers else vec.select(chosen)
        peak = max(float(t.abs().max()) for t in sub.directions.values())
        if not math.isfinite(peak * strength):
            raise SteeringRequestError(f"strength {strength} times vector '{name}' overflows", param=f"{param}.strength")
        spec_condition = spec.get("condition")
        condition = None if spec_condition is None else \
            parse_condition(spec_condition, vectors, lm, f"{param}.condition")
        out.append(RowTerm(name, sub, strength, chosen, st.positions, condition, spec_condition))
    return out


def batch_terms(rows: Sequence[Sequence[RowTerm]]) -> list[Steering]:
    """The steering of a whole batch: per (term index, policy), one Steering with a vector per row.

    A row without a k-th term (or whose k-th term has another policy) gets None (no steering) in that
    Steering; rows that are not steered at all add nothing. An all-unsteered batch gives []."""
    keys: list[tuple[int, str]] = []
    for terms in rows:
        for k, t in enumerate(terms):
            if (k, t.positions) not in keys:
                keys.append((k, t.positions))
    out = []
    for k, policy in keys:
        vecs, strengths = [], []
        for terms in rows:
            t = terms[k] if k < len(terms) and terms[k].positions == policy else None
            vecs.append(t.vector if t is not None else None)
            strengths.append(t.strength if t is not None else 0.0)
        out.append(Steering(vecs, strengths, None, policy))
    return out
