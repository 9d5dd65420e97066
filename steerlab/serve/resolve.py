"""Per-request steering: what a request's `steering` field asks for, checked against the registered
vectors and the model, becomes the seam's `SteeringTerm`s (the one shape a term has inside the server,
whatever engine runs it); conditions become `ConditionLeaf` / `ConditionNode` trees; a `readout` field
becomes `ReadoutSpec`s.

Defaults a request omits come from the vector's metadata (`steerlab.Steering.from_vector`), so a
term means what it means in `steerlab.generate`. Every mistake is a `SteeringRequestError` naming the
field (400, or 404 for an unknown vector), never a failure inside an engine.
"""

from __future__ import annotations

import math
from typing import Sequence

from ..errors import SteerlabError, VectorError
from ..monitoring import default_layer
from ..schedules import Schedule
from ..position_policies import POLICIES
from ..steering import DECIDE_MODES, Steering
from ..vector import SteeringVector
from .engines.base import Condition, ConditionLeaf, ConditionNode, ReadoutSpec, SteeringTerm

MAX_TERMS = 8  # steering objects per request
MAX_ABS_STRENGTH = 1000.0  # |strength| above this is refused (vectors are un-normalised; typical values are 1-20)


class SteeringRequestError(SteerlabError):
    """A steering field a client got wrong (answered with 400, or 404 for an unknown vector)."""

    def __init__(self, message: str, status: int = 400, param: str = "steering"):
        super().__init__(message)
        self.status = status
        self.param = param


MAX_CONDITION_LEAVES = 8
MAX_CONDITION_DEPTH = 4


def parse_condition(spec, vectors: dict[str, SteeringVector], lm, param: str) -> Condition:
    """A request's condition (a registered condition vector's name, or {"and"|"or": [...]} / {"not": ...}
    of them) → a condition tree; SteeringRequestError naming what is wrong."""
    from ..condition import rule_of

    leaves = [0]

    def build(node, depth: int) -> Condition:
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
                rule_of(vectors[node])  # a condition vector, with a usable decision rule
                vectors[node].check_compatible(lm, allow_other_family=True)
            except VectorError as e:
                raise SteeringRequestError(f"'{node}': {e}", param=param) from None
            return ConditionLeaf(node, vectors[node])
        if isinstance(node, dict) and len(node) == 1:
            (op, arg), = node.items()
            if op == "not":
                return ConditionNode("not", (build(arg, depth + 1),))
            if op in ("and", "or"):
                if not isinstance(arg, list) or not arg:
                    raise SteeringRequestError(f"'{op}' takes a non-empty list of conditions", param=param)
                return ConditionNode(op, tuple(build(a, depth + 1) for a in arg))
        raise SteeringRequestError('a condition is a vector name or {"and": [...]}, {"or": [...]}, {"not": ...}',
                                   param=param)

    return build(spec, 0)


def resolve(specs: Sequence[dict], vectors: dict[str, SteeringVector], lm) -> list[SteeringTerm]:
    """Request steering objects ({vector, strength?, layers?, positions?, condition?, decide?, schedule?}) → checked terms
    (`lm`: the served model's `ModelInfo`, or a `LoadedModel`).

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
        decide = spec.get("decide")
        if decide is not None and decide not in DECIDE_MODES:
            raise SteeringRequestError(f"unknown decide mode '{decide}': choose one of {', '.join(DECIDE_MODES)}",
                                       param=f"{param}.decide")
        if decide is not None and condition is None:
            raise SteeringRequestError("'decide' says how a condition is decided: give a 'condition' too, or drop it",
                                       param=f"{param}.decide")
        try:
            schedule = Schedule.parse(spec.get("schedule")).spec
        except SteerlabError as e:
            raise SteeringRequestError(str(e), param=f"{param}.schedule") from None
        out.append(SteeringTerm(name, sub, strength, chosen, st.positions, condition, decide or "exact", schedule))
    return out


MAX_READOUTS = 8  # read-out vectors per request
_READOUT_KEYS = ("vector", "layer", "stop_above", "stop_tokens")


class ReadoutRequestError(SteeringRequestError):
    """A `readout` field a client got wrong (400, or 404 for an unknown vector)."""

    def __init__(self, message: str, status: int = 400, param: str = "readout"):
        super().__init__(message, status, param)


def resolve_readout(spec, vectors: dict[str, SteeringVector], lm) -> tuple[ReadoutSpec, ...]:
    """A request's `readout` field → checked `ReadoutSpec`s (`lm`: the served model's `ModelInfo` or a
    `LoadedModel`).

    The field is a registered vector's name, an object {vector, layer?, stop_above?, stop_tokens?}, or a list
    of those; the layer defaults to the one `steerlab.readout` reads (`monitoring.default_layer`)."""
    if spec is None:
        return ()
    items = spec if isinstance(spec, list) else [spec]
    if len(items) > MAX_READOUTS:
        raise ReadoutRequestError(f"at most {MAX_READOUTS} read-out vectors per request, got {len(items)}")
    out: list[ReadoutSpec] = []
    for i, item in enumerate(items):
        param = f"readout[{i}]" if isinstance(spec, list) else "readout"
        if isinstance(item, str):
            item = {"vector": item}
        if not isinstance(item, dict):
            raise ReadoutRequestError('a read-out is a vector name or {"vector": NAME, "layer": L, "stop_above": X, '
                                      f'"stop_tokens": K}}, got {type(item).__name__}', param=param)
        unknown = sorted(set(item) - set(_READOUT_KEYS))
        if unknown:
            raise ReadoutRequestError(f"unknown read-out field(s) {unknown}: a read-out takes "
                                      f"{', '.join(_READOUT_KEYS)}", param=param)
        name = item.get("vector")
        if not isinstance(name, str) or not name:
            raise ReadoutRequestError("'vector' must be a registered vector's name", param=f"{param}.vector")
        if name not in vectors:
            served = ", ".join(sorted(vectors)) or "none"
            raise ReadoutRequestError(f"no vector named '{name}' (served: {served})", 404, f"{param}.vector")
        if any(s.name == name for s in out):
            raise ReadoutRequestError(f"vector '{name}' is read out twice (the response keys read-outs by name)",
                                      param=f"{param}.vector")
        vec = vectors[name]
        try:
            vec.check_compatible(lm, allow_other_family=True)
        except VectorError as e:
            raise ReadoutRequestError(f"'{name}': {e}", param=f"{param}.vector") from None
        layer = _readout_layer(item.get("layer"), vec, name, lm, f"{param}.layer")
        direction = vec.directions[layer]
        if direction.dim() != 1:
            raise ReadoutRequestError(f"vector '{name}' has several directions per layer (ActAdd): read-out needs one",
                                      param=f"{param}.vector")
        norm = float(direction.float().norm())
        if not math.isfinite(norm) or norm == 0.0:
            raise ReadoutRequestError(f"vector '{name}' has no direction at layer {layer} (its norm is {norm})",
                                      param=f"{param}.layer")
        stop_above, stop_tokens = item.get("stop_above"), item.get("stop_tokens")
        if stop_above is not None:
            number = isinstance(stop_above, (int, float)) and not isinstance(stop_above, bool)
            if not number or not math.isfinite(stop_above):
                raise ReadoutRequestError(f"'stop_above' must be a finite number, got {stop_above!r}",
                                          param=f"{param}.stop_above")
            stop_above = float(stop_above)
        if stop_tokens is not None:
            if stop_above is None:
                raise ReadoutRequestError("'stop_tokens' needs 'stop_above' (the threshold it counts tokens above)",
                                          param=f"{param}.stop_tokens")
            if isinstance(stop_tokens, bool) or not isinstance(stop_tokens, int) or stop_tokens < 1:
                raise ReadoutRequestError(f"'stop_tokens' must be an integer >= 1, got {stop_tokens!r}",
                                          param=f"{param}.stop_tokens")
        out.append(ReadoutSpec(name, vec, layer, stop_above, 1 if stop_tokens is None else stop_tokens))
    return tuple(out)


def _readout_layer(layer, vec: SteeringVector, name: str, lm, param: str) -> int:
    """The checked layer of a read-out: given (negative counts from the end, as `steerlab.readout`) or the default."""
    if layer is None:
        layer = default_layer(vec)
    elif isinstance(layer, bool) or not isinstance(layer, int):
        raise ReadoutRequestError(f"'layer' must be an integer, got {layer!r}", param=param)
    n = lm.n_layers
    if not -n <= layer < n:
        raise ReadoutRequestError(f"layer {layer} is out of range: the model has {n} layers (0..{n - 1})", param=param)
    layer %= n
    if layer not in vec.directions:
        raise ReadoutRequestError(f"vector '{name}' has no direction at layer {layer} (it has {list(vec.layers)})",
                                  param=param)
    return layer
