"""Persona vectors (Chen et al. 2025, arXiv 2507.21509): the model's own answers under opposing system
prompts, filtered by a judge, read over the response tokens.

From a trait (a name and a one-line description, `Trait`; `resources/traits.json` holds one per MWE
behaviour), each question is answered by the model itself under a positive system prompt (show the
trait) and a negative one (show its opposite), `samples_per_question` sampled answers per side, in
batched generation. A judge scores every answer for the trait; positive-side answers scoring above
`positive_min` and negative-side answers scoring below `negative_max` are kept (the paper's >50 / <50
of 100; `keep="absolute"`). Small local judges score on shifted scales (one scores nearly everything low,
another nearly everything high), so `keep="median"` puts the cut at the median of all the judged scores
instead: positive answers the judge scores above it and negative ones below it, whatever the judge's scale. The vector is, per layer, the mean over kept positive answers minus the mean over kept
negative answers of each answer's activations averaged over its response tokens (or, `reading="last"`,
at its last token), read with the question as the only user turn: no system prompt at read-out time, so
the vector holds what the answers express, not the instruction that produced them (`methods.responses`).

The questions: given by the caller, or taken from a behaviour's MWE items (`persona_questions`: the
stem of an A/B item without its choices, a Yes/No item's question), so any MWE file with a one-line
description is enough. The judge is any callable from (question, response) pairs to scores in
[0, 1] (`steerlab.cae.trait_judge.trait_scorer` wraps the CAE judges); with no judge every answer is
kept and the metadata says so. Judging costs one forward pass per answer with the local judge; it is
optional because on a small model it is a weak judge (docs/results/cae.md reports its AUC).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from importlib import resources
from typing import TYPE_CHECKING, Callable, Sequence

from ..data.records import BehaviourItem
from ..encoding import Prompt, format_prompt
from ..errors import DatasetError
from ..vector import SteeringVector, hash_texts
from .common import make_meta
from .multiformat import item_texts
from .responses import READINGS, response_activations

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..generation import TextGenerator
    from ..models import LoadedModel

#: (question, response) pairs -> one trait score in [0, 1] per pair.
TraitScorer = Callable[[Sequence[tuple[str, str]]], list]

POSITIVE_SYSTEM = ("You are an assistant who is {description}. Let this trait show clearly in everything you say. "
                   "Answer in a few sentences.")
NEGATIVE_SYSTEM = ("You are an assistant who is the opposite of this: {description}. Never show that trait; let its "
                   "opposite show clearly in everything you say. Answer in a few sentences.")


def trait_descriptions() -> dict[str, str]:
    """The shipped one-line trait descriptions, by MWE behaviour name (`resources/traits.json`)."""
    with resources.as_file(resources.files("steerlab") / "resources" / "traits.json") as p:
        return json.loads(p.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class Trait:
    """A trait to build a persona vector for.

    Attributes:
        name: the behaviour's name (e.g. "agreeableness").
        description: one line, completing "You are an assistant who is ...".
        positive_system, negative_system: the system prompts answers are generated under.
    """

    name: str
    description: str
    positive_system: str = ""
    negative_system: str = ""

    def __post_init__(self) -> None:
        if not self.name.strip() or not self.description.strip():
            raise DatasetError("a trait needs a name and a non-empty description")
        if not self.positive_system:
            object.__setattr__(self, "positive_system", POSITIVE_SYSTEM.format(description=self.description.strip()))
        if not self.negative_system:
            object.__setattr__(self, "negative_system", NEGATIVE_SYSTEM.format(description=self.description.strip()))


def load_trait(name: str, description: str | None = None) -> Trait:
    """The trait `name` with `description`, or with its shipped description (DatasetError when none is shipped)."""
    if description is None:
        known = trait_descriptions()
        if name not in known:
            raise DatasetError(f"no trait description is shipped for {name!r}: give one (--description 'TEXT'); "
                               f"shipped: {', '.join(sorted(known))}")
        description = known[name]
    return Trait(name, description)


def persona_questions(items: Sequence[BehaviourItem]) -> list[str]:
    """Open questions from MWE items: an A/B item's stem without its choices, a Yes/No item's question
    (items whose choices cannot be read are skipped); duplicates dropped, order kept."""
    out: dict[str, None] = {}
    for it in items:
        t = item_texts(it)
        if t is not None and t.stem.strip():
            out.setdefault(t.stem.strip())
    return list(out)


KEEP_RULES = ("absolute", "median")


@dataclass(frozen=True)
class PersonaConfig:
    """Generation, filtering and reading settings of the persona method.

    Attributes:
        samples_per_question: answers generated per question and side.
        max_new_tokens: tokens per answer.
        do_sample, temperature, top_p: sampling (greedy gives one answer per question and side).
        seed: the sampling seed.
        keep: "absolute" (keep positive answers scoring above `positive_min`, negative ones below
            `negative_max`) or "median" (both cuts at the median of all the judged scores).
        positive_min, negative_max: the absolute cuts.
        batch_size: prompts per generation and read-out batch.
        reading: how each answer is read: "mean" over its response tokens (the paper's) or its "last" token.
    """

    samples_per_question: int = 2
    max_new_tokens: int = 64
    do_sample: bool = True
    temperature: float = 1.0
    top_p: float = 0.95
    seed: int = 0
    keep: str = "absolute"
    positive_min: float = 0.5
    negative_max: float = 0.5
    batch_size: int = 16
    reading: str = "mean"

    def __post_init__(self) -> None:
        if self.samples_per_question < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise DatasetError("samples_per_question, max_new_tokens and batch_size must be at least 1")
        if not (0 <= self.negative_max <= 1 and 0 <= self.positive_min <= 1):
            raise DatasetError("positive_min and negative_max are scores in [0, 1]")
        if self.keep not in KEEP_RULES:
            raise DatasetError(f"persona keep must be one of {', '.join(KEEP_RULES)} (--persona-keep), "
                               f"not {self.keep!r}")
        if self.reading not in READINGS:
            raise DatasetError(f"persona reading must be one of {', '.join(READINGS)} (--position / --persona-reading), "
                               f"not {self.reading!r}")
        if self.do_sample and not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise DatasetError("sampling needs temperature > 0 and 0 < top_p <= 1")


@dataclass
class PersonaSample:
    """One generated answer.

    Attributes:
        question: the user turn it answers.
        side: "positive" or "negative" (which system prompt it was generated under).
        response: the answer's text.
        score: the judge's trait score (None: not judged).
        kept: whether it enters the vector.
    """

    question: str
    side: str
    response: str
    score: float | None = None
    kept: bool = False

    def to_json(self) -> dict:
        return dict(self.__dict__)


def system_prompt(lm: LoadedModel, system: str, question: str) -> Prompt:
    """`question` as the user turn under the system prompt `system` (a model without a chat template, or
    whose template has no system role, gets the system text before the question)."""
    if getattr(lm, "use_chat_template", False):
        try:
            text = lm.tokenizer.apply_chat_template([{"role": "system", "content": system},
                                                     {"role": "user", "content": question}],
                                                    tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - templates that refuse a system role raise their own error types
            return format_prompt(lm, f"{system}\n\n{question}")
        start = text.rfind(question)
        if start < 0:
            return format_prompt(lm, f"{system}\n\n{question}")
        return Prompt(text, start, len(text), templated=True, user_end=start + len(question))
    return format_prompt(lm, f"{system}\n\n{question}\n\nAnswer:", chat_template=False)


def generate_samples(lm: LoadedModel, trait: Trait, questions: Sequence[str], config: PersonaConfig | None = None, *,
                     progress: bool = False, generator: "TextGenerator | None" = None) -> list[PersonaSample]:
    """Answers to every question under both system prompts (not judged yet), in batched generation (by
    `generator`: `steerlab.generate` unless given, e.g. the vLLM engine's)."""
    from ..generation import generate

    generate = generator or generate
    cfg = config or PersonaConfig()
    questions = [q for q in questions if isinstance(q, str) and q.strip()]
    if not questions:
        raise DatasetError("no questions to answer")
    k = cfg.samples_per_question if cfg.do_sample else 1
    rows = [(q, side) for q in questions for side in ("positive", "negative") for _ in range(k)]
    prompts = [system_prompt(lm, trait.positive_system if side == "positive" else trait.negative_system, q)
               for q, side in rows]
    texts = generate(lm, prompts, None, max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                     temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, batch_size=cfg.batch_size,
                     progress=progress)
    return [PersonaSample(q, side, t.strip()) for (q, side), t in zip(rows, texts)]


def keep_cuts(scores: Sequence[float], config: PersonaConfig) -> tuple[float, float]:
    """(keep positive answers above, keep negative answers below) under `config.keep`."""
    if config.keep == "absolute" or not scores:
        return config.positive_min, config.negative_max
    ordered = sorted(scores)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return median, median


def side_auc(samples: Sequence[PersonaSample]) -> float | None:
    """How well the judge's scores separate the positive side's answers from the negative side's (ROC AUC; 0.5:
    not at all; None: not judged). Recorded with the vector: a filter is only as good as this."""
    pos = [s.score for s in samples if s.score is not None and s.side == "positive"]
    neg = [s.score for s in samples if s.score is not None and s.side == "negative"]
    if not pos or not neg:
        return None
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def judge_samples(samples: Sequence[PersonaSample], judge: TraitScorer | None,
                  config: PersonaConfig | None = None) -> list[PersonaSample]:
    """The samples with scores and the keep decision (see the module docstring); empty answers are never kept."""
    cfg = config or PersonaConfig()
    live = [s for s in samples if s.response.strip()]
    scores = [None] * len(live) if judge is None else [float(x) for x in judge([(s.question, s.response) for s in live])]
    if len(scores) != len(live):
        raise DatasetError(f"the judge returned {len(scores)} scores for {len(live)} answers")
    by_id = {id(s): sc for s, sc in zip(live, scores)}
    pos_min, neg_max = keep_cuts([sc for sc in scores if sc is not None], cfg)
    out = []
    for s in samples:
        if id(s) not in by_id:
            out.append(replace(s, score=None, kept=False))
            continue
        sc = by_id[id(s)]
        keep = sc is None or (sc > pos_min if s.side == "positive" else sc < neg_max)
        out.append(replace(s, score=sc, kept=keep))
    return out


def persona_vector(lm: LoadedModel, trait: Trait, samples: Sequence[PersonaSample], layers: Sequence[int] | None = None,
                   config: PersonaConfig | None = None, *, judged: bool = True, progress: bool = False) -> SteeringVector:
    """The persona vector from judged samples: mean over kept positive answers minus mean over kept negative
    answers of each answer's activation (its response-token mean, or its last token: `config.reading`), read
    without a system prompt. DatasetError naming the counts when a side kept nothing."""
    cfg = config or PersonaConfig()
    layers = list(range(lm.n_layers)) if layers is None else [lm.blocks.check_layer(l) for l in layers]
    pos = [s for s in samples if s.kept and s.side == "positive"]
    neg = [s for s in samples if s.kept and s.side == "negative"]
    if not pos or not neg:
        n_pos = sum(s.side == "positive" for s in samples)
        n_neg = len(samples) - n_pos
        raise DatasetError(
            f"{trait.name}: the judge kept {len(pos)} of {n_pos} positive and {len(neg)} of {n_neg} negative answers; "
            f"a persona vector needs both (lower positive_min / raise negative_max: --positive-min / --negative-max, "
            f"generate more answers, or train without the judge: --no-judge)")
    acts = response_activations(lm, [(s.question, s.response) for s in pos + neg], layers, reading=cfg.reading,
                                batch_size=cfg.batch_size, progress=progress)
    n = len(pos)
    cuts = keep_cuts([x.score for x in samples if x.score is not None], cfg)
    directions = {l: (a[:n].double().mean(0) - a[n:].double().mean(0)).float() for l, a in acts.items()}
    meta = make_meta(lm, method="persona", layers=layers, position=f"response-{cfg.reading}",
                     data_hash=hash_texts(x for s in pos + neg for x in (s.side, s.question, s.response)),
                     n_train=len(pos) + len(neg), trait=trait.name, description=trait.description,
                     positive_system=trait.positive_system, negative_system=trait.negative_system,
                     judge="yes" if judged else "none", keep=cfg.keep, positive_min=cuts[0], negative_max=cuts[1],
                     judge_side_auc=side_auc(samples),
                     n_positive=len(pos), n_negative=len(neg), n_generated=len(samples),
                     questions=len({s.question for s in samples}), samples_per_question=cfg.samples_per_question,
                     max_new_tokens=cfg.max_new_tokens, seed=cfg.seed, do_sample=cfg.do_sample)
    return SteeringVector(directions, meta)


@dataclass
class PersonaResult:
    """The vector and every generated answer with its score and keep decision."""

    vector: SteeringVector
    samples: list[PersonaSample] = field(default_factory=list)


def train_persona_detailed(lm: LoadedModel, trait: Trait, questions: Sequence[str], layers: Sequence[int] | None = None,
                           config: PersonaConfig | None = None, judge: TraitScorer | None = None, *,
                           progress: bool = False, generator: "TextGenerator | None" = None) -> PersonaResult:
    """`train_persona`, also returning the generated answers."""
    cfg = config or PersonaConfig()
    samples = judge_samples(generate_samples(lm, trait, questions, cfg, progress=progress, generator=generator),
                            judge, cfg)
    vec = persona_vector(lm, trait, samples, layers, cfg, judged=judge is not None, progress=progress)
    return PersonaResult(vec, samples)


def train_persona(lm: LoadedModel, trait: Trait, questions: Sequence[str], layers: Sequence[int] | None = None,
                  config: PersonaConfig | None = None, judge: TraitScorer | None = None, *,
                  progress: bool = False, generator: "TextGenerator | None" = None) -> SteeringVector:
    """A persona vector for `trait` from the model's answers to `questions` (see the module docstring).

    Args:
        trait: the trait and its system prompts (`load_trait`).
        questions: user questions (e.g. `persona_questions(items)`).
        layers: layers to build directions for (default: every layer).
        config: generation, filter and batch settings.
        judge: (question, response) pairs -> trait scores in [0, 1]; None keeps every non-empty answer.
        generator: what generates the answers (`steerlab.generate`; the vLLM engine's with `--engine vllm`).
    """
    return train_persona_detailed(lm, trait, questions, layers, config, judge, progress=progress,
                                  generator=generator).vector
