"""Add steering vectors to the residual stream, at chosen positions, through forward hooks.

Positions are tracked in absolute terms so they stay right under a KV cache (a cached generation step
sees a chunk of length 1) and under left padding (pads are never steered): a pre-hook on the model
reads each forward call's attention mask, or without one the length of its KV cache (found among the
call's arguments by type, whatever keyword the installed transformers names it: `past_key_values`,
`cache`, ...; for a batch of one `generate` passes no mask at all), and the block hooks turn the
current chunk's columns into row-relative token positions.

Position policies (per `Steering` term):
    "all"          every real token of the prompt and every generated token.
    "after_user"   CAA: from the first token after the user's message on (with a chat template the
                   end-of-turn token, the assistant header, any assistant prefix and every generated
                   token), so the position that predicts the first answer or generated token is
                   steered; never later than the last prompt token (raw prompts ending with the
                   user's text). See `encoding.after_user_start`.
    "last_prompt"  PAS: only the last prompt token.
ActAdd vectors ([positions, hidden] directions) are added position by position from the first token
of the user's text, whatever the policy.

Hooks are always removed on exit, exceptions included, so the model is bit-identical afterwards.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterator, Literal, Sequence

import torch

from .activations import read_rows
from .encoding import EncodedBatch
from .errors import SteerlabError, VectorError
from .layers import block_hidden, with_block_hidden
from .position_policies import check_policy, run_start, steered
from .schedules import Schedule
from .vector import SteeringVector

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from .models import LoadedModel

PositionPolicy = Literal["all", "after_user", "last_prompt"]  # `position_policies.POLICIES`
# The one default for a steering term (a `Steering` that names no strength or positions, and
# `Steering.from_vector` for a vector that records none): strength 4 at the CAA positions.
DEFAULT_STRENGTH = 4.0
DEFAULT_POSITIONS: PositionPolicy = "after_user"


DECIDE_MODES = ("exact", "first_token")


@dataclass(frozen=True)
class Steering:
    """One steering term: `h_L <- h_L + strength * vector[L]` at the policy's positions.

    Attributes:
        vector: one SteeringVector for every row, or a sequence with one per batch row (None = no steering
            for that row), for per-request steering in one batch.
        strength: a number, or one per batch row (default `DEFAULT_STRENGTH`, 4.0).
        layers: which of the vector's layers to apply (default: all of them); negative indices count
            from the end (-1 = the last block), normalised once by `normalized`.
        positions: "all", "after_user" or "last_prompt" (see module docs; default `DEFAULT_POSITIONS`,
            "after_user", which needs the encoded batch: `generate` and the engine pass it).
        condition: a `steerlab.condition.Condition` (a condition vector, or `&` / `|` / `~` of them): the
            term applies only to the batch rows whose own prompt fires it, decided once per row before
            the steered pass (`apply_steering`); other rows get exactly the unsteered computation.
        decide: how a condition is decided when a steered layer lies at or below the condition's layer:
            "exact" (the prefill, on reaching the first steered layer, runs the blocks from there to the
            condition's layer ahead once, unsteered, to decide; so a firing row is steered at every position its
            policy names, at the cost of those blocks) or "first_token" (decided on the way up, no extra work;
            those lower layers are then steered from the first generated token on, prompt positions below the
            condition's layer stay unsteered). When every steered layer lies above the condition's, both are
            the same exact decision on the way up.
        schedule: how the strength changes along the positions the term steers (`steerlab.schedules`):
            "constant" (the default), "first:N" (only the first N of them) or "decay:H" (halved every H).
    """

    vector: SteeringVector | Sequence[SteeringVector | None]
    strength: float | Sequence[float] = DEFAULT_STRENGTH
    layers: Sequence[int] | None = None
    positions: PositionPolicy = DEFAULT_POSITIONS
    condition: object | None = None
    decide: str = "exact"
    schedule: str = "constant"

    @classmethod
    def from_vector(cls, vector: SteeringVector, strength: float | None = None, layers: Sequence[int] | None = None,
                    positions: PositionPolicy | None = None) -> "Steering":
        """Steer with `vector` as it was meant to be used: what is not given comes from the vector's metadata
        (`steerlab pas` records its chosen layer, strength and positions), else strength 4 at "after_user"."""
        meta = vector.meta
        return cls(vector,
                   float(strength if strength is not None else meta.strength if meta.strength is not None
                         else DEFAULT_STRENGTH),
                   layers if layers is not None else meta.selected_layers,
                   positions or meta.positions or DEFAULT_POSITIONS)

    def normalized(self, lm, rows: int | None = None) -> "Steering":
        """This term checked against `lm` and put in one canonical form, the only place that does it:
        the position policy is known; layers are valid block indices of `lm`, negative ones counted from
        the end (-1 → n_layers - 1), deduplicated and sorted (None stays None: every layer of the
        vector); strengths are finite floats; per-row vectors and strengths are lists of equal length
        (and of `rows` when given); every vector fits `lm`. Raises a SteerlabError naming the problem."""
        check_policy(self.positions)
        if self.decide not in DECIDE_MODES:
            raise SteerlabError(f"unknown decide mode '{self.decide}': choose one of {', '.join(DECIDE_MODES)}")
        schedule = Schedule.parse(self.schedule).spec
        vectors = _row_values(self, "vector", rows)
        strengths = _row_values(self, "strength", rows)
        if vectors is not None and strengths is not None and len(vectors) != len(strengths):
            raise SteerlabError(f"{len(vectors)} per-row vectors but {len(strengths)} per-row strengths")
        for v in (vectors if vectors is not None else [self.vector]):
            if v is None:
                continue
            if not isinstance(v, SteeringVector):
                raise SteerlabError(f"expected a SteeringVector, got {type(v).__name__}")
            v.check_compatible(lm, allow_other_family=True)
        layers = None
        if self.layers is not None:
            if isinstance(self.layers, (str, bytes)) or not hasattr(self.layers, "__iter__"):
                raise SteerlabError(f"layers must be a sequence of integers, got {self.layers!r}")
            layers = tuple(sorted({lm.blocks.check_layer(l) for l in self.layers}))
        strength = [_strength(x) for x in strengths] if strengths is not None else _strength(self.strength)
        return replace(self, vector=vectors if vectors is not None else self.vector, strength=strength, layers=layers,
                       schedule=schedule)

    def rows(self, start: int, stop: int) -> "Steering":
        """This term for batch rows [start, stop) (per-row fields are sliced, shared ones kept)."""
        v = self.vector if isinstance(self.vector, SteeringVector) else list(self.vector)[start:stop]
        s = self.strength if _is_scalar(self.strength) else list(self.strength)[start:stop]
        return replace(self, vector=v, strength=s)


@dataclass
class _Term:
    delta: torch.Tensor  # [rows (1 = all rows), P, hidden]; P > 1 only for ActAdd vectors
    policy: str
    positional: bool
    gate: "_Gate | None" = None  # a condition decided inside the steered pass (rows where it fired)
    schedule: Schedule | None = None  # None: constant
    copies: dict = field(default_factory=dict, repr=False)

    def on(self, device: torch.device) -> torch.Tensor:
        """The delta on `device`, copied there once (blocks of a model spread over devices each get their
        copy on first use, never one per step)."""
        if self.delta.device == device:
            return self.delta
        if device not in self.copies:
            self.copies[device] = self.delta.to(device)
        return self.copies[device]


class _Gate:
    """A condition decided inside the steered call itself: the prefill's own hidden states at the condition's
    layers (read as `capture_batch` reads them) are scored and, once every leaf is scored, `fired` [rows]
    gates the term.

    When every steered layer lies above every condition layer the steered pass reads them on its way up.
    Otherwise (decide="exact") the prefill looks ahead: on reaching the first steered layer, still unsteered,
    it runs the blocks from there to the condition's deepest layer once more, without hooks or KV cache, to
    decide, and then goes on steering the firing rows at every position. Either way the condition reads the
    unsteered stream, as the separate deciding pass (`resolve_conditions`) does, and the extra work is only
    the blocks between the first steered layer and the condition's, not a prefill up to the condition."""

    def __init__(self, condition, batch: EncodedBatch, early_ok: bool = False, lookahead_from: int | None = None):
        self.condition = condition
        self.batch = batch
        self.early_ok = early_ok  # a layer reached before the decision adds nothing (decide="first_token")
        self.lookahead_from = lookahead_from  # the first steered layer, where a look-ahead decides (else None)
        self.leaves = condition.leaves()
        self.scores: dict[str, torch.Tensor] = {}
        self.fired: torch.Tensor | None = None

    @property
    def layers(self) -> set[int]:
        return {leaf.rule.layer for leaf in self.leaves}

    def observe(self, layer: int, h: torch.Tensor) -> None:
        for leaf in self.leaves:
            if leaf.rule.layer != layer or leaf.name in self.scores:
                continue
            acts = read_rows(h.float(), self.batch, leaf.rule.reading)
            direction = leaf.vector.directions[layer].to(acts.device, torch.float32)
            self.scores[leaf.name] = torch.nn.functional.cosine_similarity(acts, direction[None, :], dim=-1).cpu()
        if self.fired is None and len(self.scores) == len(self.leaves):
            self.fired = self.condition._combine(self.scores)


def _find_cache(values):
    """The KV cache among a forward call's arguments, found by what it is (an object with
    `get_seq_length`), not by the keyword naming it (`past_key_values`, `cache`, ... by transformers version)."""
    for v in values:
        if v is not None and not isinstance(v, (torch.Tensor, str, bytes, numbers.Number)) and callable(
                getattr(v, "get_seq_length", None)):
            return v
    return None


def _cache_length(cache) -> int:
    """Tokens already held by `cache` (the absolute column of the call's first token). The longest layer
    counts: a cache may leave some layers empty (the scoring engine skips blocks below a steered layer)."""
    n = int(cache.get_seq_length())
    layers = getattr(cache, "layers", None)
    if isinstance(layers, (list, tuple)) and len(layers) > 1:
        for i in range(len(layers)):
            try:
                n = max(n, int(cache.get_seq_length(i)))
            except (TypeError, IndexError, AttributeError):
                break
    return n


class _ForwardState:
    """What the current forward call covers: absolute columns, left pads, prompt lengths.

    The absolute column of the call's first token comes from, in order: a 2-D attention mask (it
    spans past and current columns), the KV cache's length (the cache is found among the call's
    arguments by type, under whatever keyword the installed transformers uses), a `cache_position`
    tensor, else 0 (a call without a cache starts a sequence). For a batch of one, transformers'
    `generate` passes no attention mask at all, so the cache is what places each decoding step.
    Left pads come from the mask, or without one from the encoded batch (when it has this many rows).
    """

    def __init__(self, batch: EncodedBatch | None):
        self.batch = batch
        self.cols: torch.Tensor | None = None
        self.pad: torch.Tensor | None = None
        self.prompt_len: torch.Tensor | None = None
        self.rows = 0

    def update(self, args, kwargs) -> None:
        x = kwargs.get("input_ids")
        if x is None and args and isinstance(args[0], torch.Tensor):
            x = args[0]
        if x is None:
            x = kwargs.get("inputs_embeds")
        if x is None:
            raise SteerlabError("steering needs input_ids or inputs_embeds in the model call")
        rows, width = int(x.shape[0]), int(x.shape[1])
        mask = kwargs.get("attention_mask")
        if mask is None and len(args) > 1 and isinstance(args[1], torch.Tensor):
            mask = args[1]  # model(input_ids, attention_mask, ...) called positionally
        device = x.device
        if self.batch is not None and len(self.batch) != rows:
            raise SteerlabError(f"steering was set up for a batch of {len(self.batch)} rows, but the model got {rows}")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2 and mask.shape[0] == rows and mask.shape[1] >= width:
            start = int(mask.shape[1]) - width
            pad = (mask.cumsum(1) == 0).sum(1).to(device)
        else:
            cache = _find_cache(list(kwargs.values()) + list(args[1:]))
            cache_position = kwargs.get("cache_position")
            if cache is not None:
                start = _cache_length(cache)
            elif isinstance(cache_position, torch.Tensor) and cache_position.numel():
                start = int(cache_position.reshape(-1)[0])
            else:
                start = 0
            if self.batch is not None:
                # no mask: the batch's own left pads (none for one row)
                pad = (self.batch.attention_mask.cumsum(1) == 0).sum(1).to(device)
            else:
                pad = torch.zeros(rows, dtype=torch.long, device=device)
        self.cols = torch.arange(start, start + width, device=device)
        self.pad = pad
        self.rows = rows
        if self.batch is not None:
            self.prompt_len = self.batch.lengths.to(device)
        elif start == 0:  # a prefill: this call holds the whole prompt
            self.prompt_len = width - pad


def _row_bounds(policy: str, state: _ForwardState, device: torch.device) -> dict:
    """The per-row positions `position_policies` needs for `policy`, shaped [rows, 1] against [rows, width]
    positions; a clear error where the forward was not given what the policy needs."""
    check_policy(policy)
    if policy == "after_user":
        if state.batch is None:
            raise SteerlabError("positions='after_user' needs the encoded batch (pass batch=steerlab.encode(...))")
        return {"after_user_start": state.batch.after_user_start.to(device)[:, None]}
    if policy == "last_prompt":
        if state.prompt_len is None:
            raise SteerlabError("positions='last_prompt' needs the prompt lengths: pass batch=steerlab.encode(...)")
        return {"prompt_len": state.prompt_len.to(device)[:, None]}
    return {}


def _policy_mask(policy: str, pos: torch.Tensor, state: _ForwardState) -> torch.Tensor:
    return steered(policy, pos, **_row_bounds(policy, state, pos.device))


def _run_start(term: _Term, state: _ForwardState, device: torch.device) -> torch.Tensor | int:
    """Per row ([rows, 1]), the first position `term` steers (row-relative): where its schedule counts from."""
    if term.positional:  # ActAdd: from the user's first token, whatever the policy
        return state.batch.user_start.to(device)[:, None] if state.batch is not None else 0
    return run_start(term.policy, **_row_bounds(term.policy, state, device))


def _is_scalar(x) -> bool:
    """A single strength: a real number (numpy scalars included) or a 0-d tensor."""
    return isinstance(x, numbers.Real) or (isinstance(x, torch.Tensor) and x.dim() == 0)


def _strength(x) -> float:
    if isinstance(x, (str, bytes, bool)) or not _is_scalar(x) or not math.isfinite(float(x)):
        raise SteerlabError(f"a steering strength must be a finite number, got {x!r}")
    return float(x)


def _row_values(term: Steering, what: str, rows: int | None):
    value = getattr(term, what)
    if what == "vector" and isinstance(value, SteeringVector):
        return None
    if what == "strength" and _is_scalar(value):
        return None
    if what == "strength" and isinstance(value, (str, bytes)):
        _strength(value)  # raises: a string is not a list of per-row strengths
    value = list(value)
    if rows is not None and len(value) != rows:
        raise SteerlabError(f"per-row {what}s: got {len(value)} for a batch of {rows} rows")
    return value


def build_terms(lm: LoadedModel, steering: Sequence[Steering], rows: int | None = None,
                gates: Sequence[_Gate | None] | None = None) -> dict[int, list[_Term]]:
    """Per layer, the deltas to add: strength × direction, stacked per row where rows differ (`gates`: per
    term, the in-pass condition that gates it, if any)."""
    by_layer: dict[int, list[_Term]] = {}
    hidden = lm.hidden_size
    dtype = lm.dtype
    for index, term in enumerate(steering):
        gate = gates[index] if gates is not None else None
        if not isinstance(term, Steering):
            raise SteerlabError(f"steering terms must be steerlab.Steering, got {type(term).__name__}")
        term = term.normalized(lm, rows)
        vectors = None if isinstance(term.vector, SteeringVector) else term.vector
        strengths = None if _is_scalar(term.strength) else term.strength
        n = len(vectors) if vectors is not None else (len(strengths) if strengths is not None else 1)
        row_vecs = vectors if vectors is not None else [term.vector] * n
        row_str = strengths if strengths is not None else [term.strength] * n
        present = [v for v in row_vecs if v is not None]
        if not present:
            continue
        layers = list(term.layers) if term.layers is not None else sorted({l for v in present for l in v.layers})
        for layer in layers:
            dirs = []
            for v, s in zip(row_vecs, row_str):
                d = None if v is None else v.directions.get(layer)
                if v is not None and d is None and term.layers is not None:
                    raise VectorError(f"vector has no direction for layer {layer} (it has {list(v.layers)})")
                dirs.append(None if d is None else s * (d if d.dim() == 2 else d[None, :]))
            positions = max(d.shape[0] for d in dirs if d is not None) if any(d is not None for d in dirs) else 0
            if positions == 0:
                continue
            delta = torch.zeros(n, positions, hidden, dtype=torch.float32)
            for i, d in enumerate(dirs):
                if d is not None:
                    delta[i, : d.shape[0]] = d
            positional = any(d is not None and d.shape[0] > 1 for d in dirs) or any(
                v is not None and v.per_position for v in row_vecs
            )
            schedule = Schedule.parse(term.schedule)
            by_layer.setdefault(layer, []).append(_Term(delta.to(lm.device, dtype), term.positions, positional, gate,
                                                        None if schedule.constant else schedule))
    return by_layer


class SteeringHandle:
    """Hooks installed by `apply_steering`; call `remove()` (or use `steer(...)` as a context manager)."""

    def __init__(self, handles: list, decisions: list | None = None):
        self._handles = handles
        # per term: the condition's Decision (fired and scores per row), None for unconditional terms
        self.decisions = decisions or []

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    @property
    def active(self) -> bool:
        return bool(self._handles)


def _layer_hook(terms: list[_Term], state: _ForwardState):
    def hook(module, args, output):
        h = block_hidden(output)
        if state.cols is None or h.shape[1] != state.cols.shape[0]:
            raise SteerlabError("steering hook saw a call it could not place; call the model through its top-level forward")
        pos = state.cols[None, :] - state.pad[:, None].to(h.device)  # [rows, T], row-relative
        pos = pos.to(h.device)
        rows = h.shape[0]
        add = None
        for t in terms:
            delta = t.on(h.device)
            if delta.shape[0] not in (1, rows):
                raise SteerlabError(f"per-row steering was set up for {delta.shape[0]} rows, but the batch has {rows}")
            if t.positional:
                user_start = state.batch.user_start.to(h.device) if state.batch is not None else torch.zeros(rows, dtype=torch.long, device=h.device)
                rel = pos - user_start[:, None]
                valid = (rel >= 0) & (rel < delta.shape[1]) & (pos >= 0)
                idx = rel.clamp(0, delta.shape[1] - 1)
                full = delta.expand(rows, -1, -1)
                piece = torch.gather(full, 1, idx[..., None].expand(-1, -1, full.shape[-1]))
                piece = piece * valid[..., None].to(h.dtype)
            else:
                mask = _policy_mask(t.policy, pos, state)
                piece = mask[..., None].to(h.dtype) * delta[:, 0][:, None, :]
            if t.schedule is not None:
                k = pos - _run_start(t, state, h.device)
                piece = piece * t.schedule.weights(k)[..., None].to(h.device, h.dtype)
            if t.gate is not None:
                if t.gate.fired is None:
                    if t.gate.early_ok:  # decide="first_token": below the condition's layer, not steered yet
                        continue
                    raise SteerlabError("a conditional term was reached before its condition was decided")
                piece = piece * t.gate.fired.to(h.device, h.dtype)[:, None, None]  # exact zeros where not fired
            add = piece if add is None else add + piece
        if add is None:
            return output
        return with_block_hidden(output, h + add)

    return hook


def apply_steering(
    lm: LoadedModel, steering: Steering | Sequence[Steering], *, batch: EncodedBatch | None = None
) -> SteeringHandle:
    """Install steering hooks on `lm` and return a handle to remove them (the functional API).

    Args:
        steering: one or several terms; their deltas add up.
        batch: the encoded batch the model will run on; needed for "after_user", for ActAdd vectors
            with chat templates (to find the user text), and for per-row vectors' row count check.
    """
    terms = [steering] if isinstance(steering, Steering) else list(steering)
    gates = _in_pass_gates(lm, terms, batch)
    if gates is not None:  # decided inside this pass: no separate deciding pass
        terms = [replace(t, condition=None) if isinstance(t, Steering) else t for t in terms]
        decisions: list = list(gates)
    else:
        terms, decisions = resolve_conditions(lm, terms, batch)
    by_layer = build_terms(lm, terms, rows=len(batch) if batch is not None else None, gates=gates)
    if batch is None and getattr(lm, "use_chat_template", False) and any(
            t.positional for layer_terms in by_layer.values() for t in layer_terms):
        # without the batch the user's text would be assumed to start at token 0, inside the template header
        raise SteerlabError("a per-position (ActAdd) vector is added from the start of the user's text; with a chat "
                            "template pass batch=steerlab.encode(...) so that start is known")
    state = _ForwardState(batch)
    handles = [lm.model.register_forward_pre_hook(lambda m, a, k: state.update(a, k), with_kwargs=True, prepend=True)]
    try:
        in_pass = [g for g in (gates or []) if g is not None and g.lookahead_from is None]
        for layer in sorted({l for g in in_pass for l in g.layers}):
            handles.append(lm.blocks[layer].register_forward_hook(_decider_hook(layer, in_pass, state)))
        ahead = [g for g in (gates or []) if g is not None and g.lookahead_from is not None]
        if ahead:
            first = min(g.lookahead_from for g in ahead)
            handles.append(lm.blocks[first].register_forward_pre_hook(_lookahead_hook(lm, first, ahead, state),
                                                                      with_kwargs=True))
        for layer, layer_terms in by_layer.items():
            # prepend: run before hooks registered earlier (e.g. transformers' output_hidden_states
            # capture, installed once and kept), so every observer sees the steered stream.
            hook = _layer_hook(layer_terms, state)
            handles.append(lm.blocks[layer].register_forward_hook(hook, prepend=True))
    except BaseException:
        for h in handles:
            h.remove()
        raise
    return SteeringHandle(handles, decisions)


def _decider_hook(layer: int, gates: Sequence[_Gate | None], state: _ForwardState):
    def hook(module, args, output):
        if state.cols is not None and int(state.cols[0]) == 0:  # the prefill call: the prompts themselves
            h = block_hidden(output)
            for g in gates:
                if g is not None and layer in g.layers:
                    g.observe(layer, h)
    return hook


def _lookahead_hook(lm: LoadedModel, first: int, gates: Sequence[_Gate], state: _ForwardState):
    """Pre-hook of the first steered block: on the prefill call, run blocks first..(deepest condition layer)
    ahead on this call's unsteered input to decide the gates, then let the call go on (now steered).

    The blocks are called through `forward`, so no hook sees the look-ahead (no steering, no read-out, no
    capture), and without the KV cache, so the cache holds each block's keys and values once, from the real
    pass. A prefill starts at column 0, which is what makes attention without the cache the same."""
    last = max(l for g in gates for l in g.layers)

    def hook(module, args, kwargs):
        if state.cols is None or int(state.cols[0]) != 0 or all(g.fired is not None for g in gates):
            return None
        h = args[0] if args else kwargs["hidden_states"]
        rest = args[1:]
        cache = _find_cache(list(kwargs.values()) + list(rest))
        kw = {k: (None if v is cache and cache is not None else v) for k, v in kwargs.items() if k != "hidden_states"}
        if cache is not None and any(v is cache for v in rest):
            raise SteerlabError("conditional steering's look-ahead needs the KV cache passed to blocks by keyword")
        with torch.no_grad():
            for layer in range(first, last + 1):
                h = block_hidden(lm.blocks[layer].forward(h, *rest, **kw))
                for g in gates:
                    if g.fired is None and layer in g.layers:
                        g.observe(layer, h)
        return None
    return hook


def _steered_layers(lm: LoadedModel, term: Steering) -> set[int]:
    if term.layers is not None:
        return {lm.blocks.check_layer(l) for l in term.layers}
    vectors = [term.vector] if isinstance(term.vector, SteeringVector) else [v for v in term.vector if v is not None]
    return {l for v in vectors for l in v.layers}


def _in_pass_gates(lm: LoadedModel, terms: Sequence[Steering], batch: EncodedBatch | None) -> list | None:
    """Gates deciding the conditional terms inside the steered call, each reading the unsteered stream as the
    separate deciding pass would: on the way up when every steered layer (of every term) lies above every
    condition layer, else by a look-ahead from the first steered layer (decide="exact"), or on the way up
    with the layers below the condition's steered from the first generated token (decide="first_token").
    None: decide with the separate pass (no encoded batch, or a condition that is not a Condition tree)."""
    conditional = [t for t in terms if isinstance(t, Steering) and t.condition is not None]
    if not conditional or batch is None or not all(hasattr(t.condition, "leaves") for t in conditional):
        return None
    # per term, so a batch of requests with different modes gives each row what it would get alone
    exact = [t for t in conditional if t.decide != "first_token"]
    steered = [l for t in terms if isinstance(t, Steering) for l in _steered_layers(lm, t)]
    deepest = max((leaf.rule.layer for t in exact for leaf in t.condition.leaves()), default=-1)
    lookahead = min(steered) if steered and min(steered) <= deepest else None
    for t in conditional:
        for leaf in t.condition.leaves():
            leaf.vector.check_compatible(lm, allow_other_family=True)
    return [_Gate(t.condition, batch, early_ok=t.decide == "first_token",
                  lookahead_from=None if t.decide == "first_token" else lookahead)
            if isinstance(t, Steering) and t.condition is not None else None for t in terms]


def resolve_conditions(lm: LoadedModel, terms: Sequence[Steering], batch: EncodedBatch | None):
    """Terms with a condition → the same terms with per-row vectors, None (no steering) on the rows whose
    prompt does not fire the condition; and each conditional term's decision (None for the others).

    The decision is one unsteered forward pass over the batch's prompts that stops after the deepest
    layer the condition reads, made before any steering hook is installed. `apply_steering` decides inside
    the steered call instead wherever it has the encoded batch (the same decisions, and only the blocks from
    the first steered layer up to the condition's run twice, not all blocks up to it: docs/results/cast.md);
    this stays for callers without one and as the reference the tests compare against. Call it once per
    prompt batch (a prefill), not per decoding step: a KV-cached caller resolves first and keeps the
    resolved terms."""
    decisions: list = []
    out: list[Steering] = []
    for term in terms:
        if not isinstance(term, Steering) or term.condition is None:
            out.append(term)
            decisions.append(None)
            continue
        if batch is None:
            raise SteerlabError("a conditional Steering term needs the encoded batch (batch=steerlab.encode(...)): "
                                "the condition is read from each row's prompt")
        decide = getattr(term.condition, "decide", None)
        if decide is None:
            raise SteerlabError(f"condition must be a steerlab.condition.Condition, got {type(term.condition).__name__}")
        decision = decide(lm, batch.to(lm.device))
        rows = len(batch)
        vectors = _row_values(term, "vector", rows) or [term.vector] * rows
        strengths = _row_values(term, "strength", rows) or [term.strength] * rows
        fired = [bool(f) for f in decision.fired.tolist()]
        out.append(replace(term, vector=[v if f else None for v, f in zip(vectors, fired)],
                           strength=[s if f else 0.0 for s, f in zip(strengths, fired)], condition=None))
        decisions.append(decision)
    return out, decisions


@contextlib.contextmanager
def steer(
    lm: LoadedModel,
    vector_or_terms: SteeringVector | Steering | Sequence[Steering],
    strength: float | Sequence[float] = DEFAULT_STRENGTH,
    *,
    layers: Sequence[int] | None = None,
    positions: PositionPolicy = "all",
    batch: EncodedBatch | None = None,
) -> Iterator[SteeringHandle]:
    """Context manager: steer every forward call of `lm.model` inside the block.

    The vector shorthand steers every position by default: a raw forward has no encoded batch, which
    the "after_user" default of `Steering` needs (pass `positions=` and `batch=` for it).
    `steer(lm, vec, 4.0)` adds 4·vec at every position of every layer the vector has;
    `steer(lm, [Steering(a, 4.0), Steering(b, -2.0, layers=[10])])` applies several at once.
    """
    if isinstance(vector_or_terms, SteeringVector):
        terms: Sequence[Steering] = [Steering(vector_or_terms, strength, layers, positions)]
    else:
        terms = vector_or_terms
    handle = apply_steering(lm, terms, batch=batch)
    try:
        yield handle
    finally:
        handle.remove()
