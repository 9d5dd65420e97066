"""Painless Activation Steering vectors (Cui & Chen 2025; GUIDE §3): PASf, iPASa, iPASwo.

Every variant is a mean difference of residual-stream activations read at the **last prompt token**,
with no normalisation, at layer L = the output of decoder block L (the layer where it is later
added; steerlab does not copy the reference code's read-at-block-input off-by-one, GUIDE §1).

The input is a labelled multiple-choice training set together with the unsteered model's answer to
each item (`PASExample`: the item, the order its choices were shown in, the predicted choice):

    PASf    positives: the multiple-choice prompts the model answers correctly;
            negatives: those it answers wrongly.                          (unpaired: mean - mean)
    iPASa   positives: question + correct answer text, for correct items;
            negatives: question + predicted answer text, for wrong items. (unpaired: mean - mean)
    iPASwo  wrong items only, paired: question + correct answer text vs
            question + predicted (wrong) answer text.                     (paired: mean of differences)

"question + answer text" (`answer_prompt`): the item's context and question form the user turn and
the answer text opens the assistant turn when the chat template is used; without it the text is
`context + question + " " + answer` (as the reference code's f"{question} {answer}"). The PASf
prompt (`mc_prompt`) is the PAS multiple-choice prompt of `steerlab.data.format_mc_prompt`, with
the choices in the order the model saw them.

Missing sides are errors naming the dataset: no wrong answers means no negatives for any variant;
no correct answers leaves PASf without positives (iPASa then falls back to iPASwo's positives, the
correct answers of the wrong items, and records that in the vector's metadata).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Mapping, Sequence

import torch

from ..activations import capture
from ..data.prompts import format_mc_prompt
from ..data.records import MCItem
from ..encoding import Prompt, format_prompt
from ..errors import DatasetError, SteerlabError
from ..vector import SteeringVector, hash_texts
from .caa import mean_difference
from .common import make_meta

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel

PASMethod = Literal["pasf", "ipas-a", "ipas-wo"]
PAS_METHODS: tuple[str, ...] = ("pasf", "ipas-a", "ipas-wo")
_ALIASES = {
    "pasf": "pasf", "pas-f": "pasf", "pas_f": "pasf", "pas-full": "pasf",
    "ipasa": "ipas-a", "ipas-a": "ipas-a", "ipas_a": "ipas-a", "ipas-all": "ipas-a",
    "ipaswo": "ipas-wo", "ipas-wo": "ipas-wo", "ipas_wo": "ipas-wo", "ipas-wrong-only": "ipas-wo",
}


def normalize_method(name: str) -> str:
    """The canonical PAS variant name ('pasf', 'ipas-a', 'ipas-wo') for a spelling such as 'iPASwo'."""
    key = str(name).strip().lower().replace(" ", "-")
    if key not in _ALIASES:
        raise SteerlabError(f"unknown PAS method {name!r}: choose one of {', '.join(PAS_METHODS)}")
    return _ALIASES[key]


@dataclass(frozen=True)
class PASExample:
    """One training item as PAS sees it.

    Attributes:
        item: the multiple-choice item.
        order: the order its choices were shown in (position k shows `item.choices[order[k]]`).
        predicted: index into `item.choices` of the unsteered model's answer.
        prefix: text shown before the question (in-context exemplars), "" for none.
    """

    item: MCItem
    order: tuple[int, ...]
    predicted: int
    prefix: str = ""

    def __post_init__(self) -> None:
        n = len(self.item.choices)
        if not isinstance(self.predicted, int) or not 0 <= self.predicted < n:
            raise DatasetError(f"{_where(self.item)}: predicted choice {self.predicted!r} is not one of its {n} choices")

    @property
    def correct(self) -> bool:
        return self.predicted == self.item.gold


def _where(item: MCItem, dataset: str = "") -> str:
    return f"{dataset or item.source or 'dataset'} item {item.index}"


def question_text(item: MCItem) -> str:
    """The item's context (if any) and question, as iPAS shows them before an answer."""
    parts = [item.context.strip()] if item.context else []
    parts.append(item.question.strip())
    return "\n".join(parts)


def mc_prompt(lm: LoadedModel,
              item: MCItem, order: Sequence[int], *, prefix: str = "", chat_template: bool | None = None) -> Prompt:
    """The PAS multiple-choice prompt (choices in `order`, ending "Answer:"), after `prefix`, as a user turn."""
    return format_prompt(lm, prefix + format_mc_prompt(item, order), chat_template=chat_template)


def _templated(lm: LoadedModel, chat_template: bool | None) -> bool:
    if chat_template is None:
        return bool(getattr(lm, "use_chat_template", False))
    return bool(chat_template)


def answer_prompt(lm: LoadedModel, item: MCItem, choice: int, *, chat_template: bool | None = None) -> Prompt:
    """iPAS text: the question followed by the text of choice `choice` (see the module docstring)."""
    answer = item.choices[choice].strip()
    if _templated(lm, chat_template):
        return format_prompt(lm, question_text(item), answer, chat_template=True)
    return format_prompt(lm, question_text(item), " " + answer, chat_template=False)


@dataclass
class PASContrast:
    """The prompts a PAS variant contrasts.

    Attributes:
        method: canonical variant name.
        positive / negative: prompts whose last-token activations are averaged.
        paired: True when positive[i] and negative[i] come from the same item (iPASwo).
        n_correct / n_wrong: training items the unsteered model answered correctly / wrongly.
        fallback: what was substituted for a missing side, or "" (see the module docstring).
    """

    method: str
    positive: list[Prompt]
    negative: list[Prompt]
    paired: bool
    n_correct: int
    n_wrong: int
    fallback: str = ""


def pas_contrast(lm: LoadedModel, examples: Sequence[PASExample], method: str, *, dataset: str = "",
                 chat_template: bool | None = None) -> PASContrast:
    """Positive and negative prompts of one variant for these training examples.

    Raises DatasetError (naming `dataset`) when a side the variant needs is empty.
    """
    method = normalize_method(method)
    examples = list(examples)
    name = dataset or (examples[0].item.source if examples else "") or "dataset"
    if not examples:
        raise DatasetError(f"{name}: no training items for {method}")
    correct = [e for e in examples if e.correct]
    wrong = [e for e in examples if not e.correct]
    n = len(examples)
    if not wrong:
        raise DatasetError(
            f"{name}: the unsteered model answers all {n} training items correctly, so {method} has no negatives "
            f"(nothing to steer away from); use more items or a harder task"
        )
    fallback = ""
    mc = lambda e: mc_prompt(lm, e.item, e.order, prefix=e.prefix, chat_template=chat_template)  # noqa: E731
    ans = lambda e, c: answer_prompt(lm, e.item, c, chat_template=chat_template)  # noqa: E731
    if method == "pasf":
        if not correct:
            raise DatasetError(
                f"{name}: the unsteered model answers none of the {n} training items correctly, so pasf has no "
                f"positives; use ipas-wo (it needs wrong answers only)"
            )
        pos, neg, paired = [mc(e) for e in correct], [mc(e) for e in wrong], False
    elif method == "ipas-a":
        neg, paired = [ans(e, e.predicted) for e in wrong], False
        if correct:
            pos = [ans(e, e.item.gold) for e in correct]
        else:
            pos = [ans(e, e.item.gold) for e in wrong]
            fallback = (f"no correctly answered training item: positives are the correct answers of the {len(wrong)} "
                        f"wrong items (as ipas-wo)")
    else:
        pos = [ans(e, e.item.gold) for e in wrong]
        neg = [ans(e, e.predicted) for e in wrong]
        paired = True
    return PASContrast(method, pos, neg, paired, len(correct), len(wrong), fallback)


def contrast_direction(positive: torch.Tensor, negative: torch.Tensor, paired: bool) -> torch.Tensor:
    """mean(positive) - mean(negative) in float64 (the mean of row differences when paired)."""
    if positive.dim() != 2 or negative.dim() != 2 or positive.shape[1] != negative.shape[1]:
        raise SteerlabError(f"activation shapes do not match: {tuple(positive.shape)} vs {tuple(negative.shape)}")
    if len(positive) == 0 or len(negative) == 0:
        raise SteerlabError("a PAS direction needs at least one positive and one negative activation")
    if paired:
        return mean_difference(positive, negative)
    return (positive.double().mean(0) - negative.double().mean(0)).float()


@dataclass
class PASActivations:
    """Last-token activations of every distinct prompt the requested variants need (one capture).

    Attributes:
        contrasts: {method: PASContrast}.
        layers: the layers read.
        index: prompt text -> row in `acts`.
        acts: {layer: [n_distinct_prompts, hidden]}.
    """

    contrasts: dict[str, PASContrast]
    layers: tuple[int, ...]
    index: dict[str, int]
    acts: dict[int, torch.Tensor]
    info: dict = field(default_factory=dict)

    def side(self, method: str, which: Literal["positive", "negative"], layer: int) -> torch.Tensor:
        rows = [self.index[p.text] for p in getattr(self.contrasts[method], which)]
        return self.acts[layer][torch.tensor(rows, dtype=torch.long)]

    def vector(self, lm, method: str, *, n_train: int, extra: dict | None = None) -> SteeringVector:
        """The variant's SteeringVector over all captured layers."""
        method = normalize_method(method)
        c = self.contrasts[method]
        directions = {l: contrast_direction(self.side(method, "positive", l), self.side(method, "negative", l), c.paired)
                      for l in self.layers}
        texts = [p.text for p in c.positive] + ["\x01"] + [p.text for p in c.negative]
        templated = bool(c.positive and c.positive[0].templated)
        meta = make_meta(lm, method=method, layers=self.layers, position="last", data_hash=hash_texts(texts),
                         n_train=n_train, template="chat" if templated else "raw", technique="pas",
                         n_positive=len(c.positive), n_negative=len(c.negative), n_correct=c.n_correct,
                         n_wrong=c.n_wrong, paired=c.paired, fallback=c.fallback, **(extra or {}))
        return SteeringVector(directions, meta)


def pas_activations(lm: LoadedModel, examples: Sequence[PASExample], methods: Sequence[str], layers: Sequence[int], *,
                    dataset: str = "", chat_template: bool | None = None, batch_size: int = 16,
                    progress: bool = False, known: Mapping[str, Mapping[int, torch.Tensor]] | None = None
                    ) -> PASActivations:
    """Capture, once, the last-token activations of every distinct prompt the variants `methods` need.

    `known`: activations already read, {prompt text: {layer: [hidden]}} (e.g. the PASf prompts read
    while answering them, or prompts of an earlier seed); those prompts are not re-run.
    """
    methods = list(dict.fromkeys(normalize_method(m) for m in methods))
    if not methods:
        raise SteerlabError("no PAS method requested")
    layers = sorted({lm.blocks.check_layer(l) for l in layers})
    if not layers:
        raise SteerlabError("no layers requested")
    contrasts = {m: pas_contrast(lm, examples, m, dataset=dataset, chat_template=chat_template) for m in methods}
    index: dict[str, int] = {}
    prompts: list[Prompt] = []
    for c in contrasts.values():
        for p in (*c.positive, *c.negative):
            if p.text not in index:
                index[p.text] = len(prompts)
                prompts.append(p)
    known = known or {}
    reuse = [k for k, p in enumerate(prompts) if p.text in known and all(l in known[p.text] for l in layers)]
    todo = sorted(set(range(len(prompts))) - set(reuse))
    acts = {l: torch.empty(len(prompts), lm.hidden_size) for l in layers}
    if todo:
        got = capture(lm, [prompts[k] for k in todo], layers, "last", batch_size=batch_size, progress=progress)
        for l in layers:
            acts[l][torch.tensor(todo)] = got[l]
    for k in reuse:
        for l in layers:
            acts[l][k] = known[prompts[k].text][l].float()
    return PASActivations(contrasts, tuple(layers), index, acts,
                          {"distinct_prompts": len(prompts), "captured": len(todo), "reused": len(reuse)})


def train_pas(lm: LoadedModel,
              examples: Sequence[PASExample], method: str = "ipas-wo", layers: Sequence[int] | None = None, *,
              dataset: str = "", chat_template: bool | None = None, batch_size: int = 16,
              progress: bool = False) -> SteeringVector:
    """A PAS vector (all of `layers`, default every layer) from examples with the unsteered model's answers.

    To choose a layer and strength automatically, use `steerlab.pas.run_pas`.
    """
    layers = list(range(lm.n_layers)) if layers is None else list(layers)
    acts = pas_activations(lm, examples, [method], layers, dataset=dataset, chat_template=chat_template,
                           batch_size=batch_size, progress=progress)
    return acts.vector(lm, normalize_method(method), n_train=len(list(examples)))
