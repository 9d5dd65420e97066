"""What the engine scores (items: a prompt and its candidate continuations) and under what (settings).

A `ScoringItem` is a prompt with the continuations whose probabilities we want, e.g. a CAA A/B
question formatted with an open "(" and the candidates ("A", "B"). A `Setting` is one steering
configuration: a tuple of `steerlab.Steering` terms, `()` meaning unsteered.

How a candidate is tokenized (`tokenize_item`): the scored text is `prompt.text + candidate`. We
tokenize the prompt and the whole text and take the extra ids, after checking that the prompt's ids
are a prefix of the whole text's ids. When they are not (a tokenizer merges the prompt's last
characters with the candidate's first, e.g. a prompt ending in a space), the candidate is tokenized
alone (without special tokens) and appended to the prompt's ids; `TokenizedItem.fallback` records
which candidates took that path. Either way the scored sequence is `prompt ids + candidate ids`, and
the naive reference (`score_naive`) runs exactly those ids.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Sequence

from ..encoding import Prompt, as_prompt, tokenize_prompts
from ..errors import PromptTooLongError, SteerlabError
from ..position_policies import check_policy
from ..steering import Steering
from ..vector import SteeringVector

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel


@dataclass(frozen=True)
class ScoringItem:
    """A prompt and the continuations to score after it.

    Attributes:
        prompt: a `steerlab.Prompt`, or a plain user message (formatted for the model with
            `steerlab.format_prompt`, i.e. the chat template when the model has one).
        candidates: continuations appended right after the prompt text, e.g. ("A", "B").
        target: optional index into `candidates` of the answer an evaluation tracks (the
            behaviour-matching or the correct answer); used by `ScoreTable.target_probs` and the
            sweeps' summaries, ignored by scoring itself.
    """

    prompt: "str | Prompt"
    candidates: tuple[str, ...]
    target: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.candidates, str) or not isinstance(self.candidates, Sequence):
            raise SteerlabError(f"candidates must be a sequence of strings, got {type(self.candidates).__name__}")
        if not isinstance(self.candidates, tuple):
            object.__setattr__(self, "candidates", tuple(self.candidates))
        if not isinstance(self.prompt, (str, Prompt)):
            raise SteerlabError(f"a scoring prompt must be a str or a steerlab.Prompt, got {type(self.prompt).__name__}")
        if not self.candidates:
            raise SteerlabError("a scoring item needs at least one candidate")
        for c in self.candidates:
            if not isinstance(c, str) or not c:
                raise SteerlabError(f"candidates must be non-empty strings, got {c!r}")
        if len(set(self.candidates)) != len(self.candidates):
            raise SteerlabError(f"duplicate candidates {self.candidates!r}: each continuation must be listed once")
        if self.target is not None and not (isinstance(self.target, int) and 0 <= self.target < len(self.candidates)):
            raise SteerlabError(f"target {self.target!r} is not an index into {len(self.candidates)} candidates")


def _check_term(term: Steering) -> Steering:
    if not isinstance(term, Steering):
        raise SteerlabError(f"a Setting holds steerlab.Steering terms, got {type(term).__name__}")
    if not isinstance(term.vector, SteeringVector):
        raise SteerlabError("a Setting's Steering terms take one SteeringVector (per-row vectors are the engine's business)")
    strength = term.strength
    if hasattr(strength, "dim") and strength.dim() == 0:  # a 0-d tensor
        strength = float(strength)
    if isinstance(strength, bool) or not isinstance(strength, numbers.Real) or not math.isfinite(float(strength)):
        raise SteerlabError(f"a Setting's strength must be a finite number, got {term.strength!r}")
    check_policy(term.positions)
    layers = term.layers
    if layers is not None:
        layers = tuple(int(l) for l in layers)
        # negative layers count from the end: the engine resolves them against the model (Steering.normalized)
        missing = [l for l in layers if l >= 0 and l not in term.vector.directions]
        if missing:
            raise SteerlabError(f"the vector has no direction for layer(s) {missing} (it has {list(term.vector.layers)})")
    return replace(term, strength=float(strength), layers=layers)


@dataclass(frozen=True)
class Setting:
    """One steering configuration to score under: the terms of `steerlab.steer`, `()` = unsteered.

    Each term holds one `SteeringVector` and a scalar strength; its `layers` (default: all of the
    vector's layers) and `positions` policy mean exactly what they mean for `steerlab.steer`.
    """

    steering: tuple[Steering, ...] = ()
    label: str = ""

    def __post_init__(self) -> None:
        terms = self.steering
        if isinstance(terms, Steering):
            terms = (terms,)
        object.__setattr__(self, "steering", tuple(_check_term(t) for t in terms))
        if not self.label:
            object.__setattr__(self, "label", self._default_label())

    @classmethod
    def unsteered(cls) -> "Setting":
        """No steering: the model as it is."""
        return cls((), "unsteered")

    @classmethod
    def single(cls, vector: SteeringVector, layer: int, strength: float, positions: str = "all",
               label: str = "") -> "Setting":
        """Add `strength * vector[layer]` at layer `layer`, at the positions of `positions`."""
        return cls((Steering(vector, float(strength), layers=(int(layer),), positions=positions),), label)

    # -- descriptors used by tables -----------------------------------------------------------
    @property
    def is_unsteered(self) -> bool:
        return not self.steering

    @property
    def layers(self) -> tuple[int, ...]:
        """Every layer some term steers, sorted."""
        out: set[int] = set()
        for t in self.steering:
            out.update(t.layers if t.layers is not None else t.vector.layers)
        return tuple(sorted(out))

    @property
    def layer(self) -> int | None:
        """The steered layer when there is exactly one, else None."""
        layers = self.layers
        return layers[0] if len(layers) == 1 else None

    @property
    def strength(self) -> float | None:
        """The strength shared by every term (0.0 unsteered), None when terms differ."""
        if not self.steering:
            return 0.0
        values = {float(t.strength) for t in self.steering}
        return values.pop() if len(values) == 1 else None

    @property
    def positions(self) -> str | None:
        """The position policy shared by every term (None unsteered or when terms differ)."""
        values = {t.positions for t in self.steering}
        return values.pop() if len(values) == 1 else None

    def _default_label(self) -> str:
        if not self.steering:
            return "unsteered"
        parts = []
        for t in self.steering:
            layers = t.layers if t.layers is not None else t.vector.layers
            where = f"L{layers[0]}" if len(layers) == 1 else f"L{layers[0]}-{layers[-1]}x{len(layers)}"
            parts.append(f"{where}@{t.strength:g}/{t.positions}" + ("" if t.schedule == "constant" else f"/{t.schedule}"))
        return " + ".join(parts)


@dataclass
class TokenizedItem:
    """An item as token ids: the prompt's ids and boundaries, and each candidate's continuation ids.

    `user_start` / `assistant_start` / `user_end` are token indices into `prompt_ids` (as in `EncodedBatch`);
    `fallback[j]` is True when candidate j was tokenized alone (see the module docstring).
    """

    prompt_ids: list[int]
    user_start: int
    assistant_start: int
    candidate_ids: list[list[int]]
    fallback: list[bool] = field(default_factory=list)
    user_end: int | None = None  # default: assistant_start

    def __post_init__(self):
        if self.user_end is None:
            self.user_end = self.assistant_start

    @property
    def n_prompt(self) -> int:
        return len(self.prompt_ids)

    @property
    def longest(self) -> int:
        return max(len(c) for c in self.candidate_ids)


def tokenize_items(lm: LoadedModel, items: Sequence[ScoringItem]) -> list[TokenizedItem]:
    """Token ids of each item's prompt and candidates (see the module docstring for the rule)."""
    tok = lm.tokenizer
    prompts = [as_prompt(lm, it.prompt) for it in items]
    rows = tokenize_prompts(lm, prompts)
    out = []
    limit = lm.max_context
    for k, (it, p, (ids, u, a, e)) in enumerate(zip(items, prompts, rows)):
        if not ids:
            raise SteerlabError(f"item {k}: the prompt is empty after tokenization")
        cands, fallback = [], []
        for c in it.candidates:
            full = list(tok(p.text + c, add_special_tokens=not p.templated).input_ids)
            if len(full) > len(ids) and full[: len(ids)] == ids:
                extra, fell = full[len(ids):], False
            else:
                extra, fell = list(tok(c, add_special_tokens=False).input_ids), True
            if not extra:
                raise SteerlabError(f"item {k}: candidate {c!r} tokenizes to nothing")
            cands.append(extra)
            fallback.append(fell)
        item = TokenizedItem(list(ids), int(u), int(a), cands, fallback, user_end=int(e))
        if limit is not None and item.n_prompt + item.longest > limit:
            raise PromptTooLongError(
                f"item {k}: prompt ({item.n_prompt} tokens) plus its longest candidate ({item.longest}) "
                f"exceeds the model's context window of {limit}"
            )
        out.append(item)
    return out
