"""Where and how hard a behaviour item is steered: position policies, engine settings, relative strengths.

"answer" positions (the default) are `steerlab.steer`'s "after_user": from the first token after the
user's message on, so the token whose logits give the A/B letter or the Yes/No word is steered. A relative
strength r means alpha * ||v_L|| = r * (mean ||h_L|| at the answer-predicting token), so r is the same push
whatever the vector's norm.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch

from ..data.records import BehaviourItem
from ..engine import Setting
from ..errors import SteerlabError
from ..steering import Steering
from ..vector import SteeringVector
from .prompts import behaviour_prompt

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel

#: Steering position policies for behaviour scoring ("answer" is defined in the module docstring).
POSITION_POLICIES: tuple[str, ...] = ("answer", "all", "after_user", "last_prompt")


def steering_terms(vector: SteeringVector, layer: int | Sequence[int], strength: float, kind: str,
                   positions: str = "answer", schedule: str = "constant") -> tuple[Steering, ...]:
    """The `Steering` terms that put `strength * vector[layer]` at `positions` for items of `kind`, weighted along
    those positions by `schedule` (`steerlab.schedules`).

    "answer": "after_user" for every kind of item (from the first token after the user's message, so the
    token predicting the A/B letter or the Yes/No word is steered). Other policies pass through.
    A per-position (ActAdd) vector is one term: it is added from the user's first token in any case.
    """
    if positions not in POSITION_POLICIES:
        raise SteerlabError(f"unknown positions '{positions}': choose one of {', '.join(POSITION_POLICIES)}")
    layers = (int(layer),) if isinstance(layer, (int, np.integer)) else tuple(int(l) for l in layer)
    if vector.per_position:  # ActAdd directions are added from the user's first token whatever the policy
        return (Steering(vector, float(strength), layers, "all", schedule=schedule),)
    if positions == "answer":
        positions = "after_user"
    return (Steering(vector, float(strength), layers, positions, schedule=schedule),)


def behaviour_setting(vector: SteeringVector, layer: int | Sequence[int], strength: float, kind: str,
                      positions: str = "answer", label: str = "", schedule: str = "constant") -> Setting:
    """An engine Setting steering one layer or several at one strength (see `steering_terms`); strength 0 gives
    the unsteered setting."""
    if float(strength) == 0.0:
        return Setting.unsteered()
    return Setting(steering_terms(vector, layer, strength, kind, positions, schedule),
                   label or f"L{layer}@{strength:g}/{positions}")


def direction_norm(vector: SteeringVector, layer: int) -> float:
    """||v_L||; for a per-position (ActAdd) direction, the mean norm of its position rows."""
    d = vector[layer].float()
    n = float(d.norm(dim=-1).mean()) if d.dim() == 2 else float(d.norm())
    if not math.isfinite(n) or n == 0.0:
        raise SteerlabError(f"the vector's direction at layer {layer} has norm {n}: it cannot be scaled")
    return n


def raw_strength(relative: float, vector: SteeringVector, layer: int, residual_norm: float) -> float:
    """The raw alpha with alpha * ||v_L|| = relative * (typical ||h_L||)."""
    if not math.isfinite(residual_norm) or residual_norm <= 0:
        raise SteerlabError(f"residual norm at layer {layer} must be positive, got {residual_norm}")
    return float(relative) * float(residual_norm) / direction_norm(vector, layer)


def residual_norms(lm: LoadedModel,
                   items: Sequence[BehaviourItem], layers: Sequence[int], *, batch_size: int = 16) -> dict[int, float]:
    """Mean ||h_L|| at the answer-predicting token of the items' prompts (unsteered), per layer."""
    from ..activations import capture

    prompts = [behaviour_prompt(lm, it) for it in items]
    acts = capture(lm, prompts, list(layers), "last", batch_size=batch_size)
    return {int(l): float(a.norm(dim=-1).mean()) for l, a in acts.items()}


def pair_residual_norms(acts) -> dict[int, float]:
    """Mean ||h_L|| over both sides of extracted pair activations (`engine.PairActivations`)."""
    return {int(l): float(torch.cat([acts.positive[l], acts.negative[l]]).norm(dim=-1).mean()) for l in acts.layers}
