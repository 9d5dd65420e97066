"""BiPO on the persona recipe's answers: the optimised vector, trained on free text.

BiPO trained on MWE completions moves the MWE answers more than any other method and carries little of it over to
open generation (docs/results/generalisation.md): its data are two written answer options, and that contrast is
what it learns. This trains the same objective on the model's own free-text answers. The persona recipe
(`steerlab.methods.persona`) answers each question under a positive and a negative system prompt and keeps the
answers the judge scores as showing / not showing the trait; every kept positive answer paired with every kept
negative answer to the same question is a BiPO pair (`persona_pairs`), with the bare question as the prompt (no
system prompt, as when the vector is used). BiPO then trains v so that +v raises the likelihood of the
trait-showing answer over the other relative to the unsteered model, and -v the reverse (`steerlab.methods.bipo`),
one run per layer sharing one reference pass.

Its data budget is persona's (the same questions, answers and judge); its cost is persona's generation and judging
plus BiPO's steps on 48-token completions.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Sequence

from ..data.records import ContrastPair
from ..errors import DatasetError
from ..vector import SteeringVector
from .bipo import BiPOConfig, BiPOResult, join_layer_runs, train_bipo_layers
from .persona import PersonaConfig, PersonaSample, Trait, TraitScorer, generate_samples, judge_samples, side_auc

if TYPE_CHECKING:  # the types only: importing models would load transformers
    from ..generation import TextGenerator
    from ..models import LoadedModel

METHOD = "persona-bipo"


def persona_pairs(samples: Sequence[PersonaSample]) -> list[ContrastPair]:
    """Every kept positive answer paired with every kept negative answer to the same question (questions in the
    order they first appear, answers in theirs)."""
    by_question: dict[str, dict[str, list[str]]] = {}
    for s in samples:
        sides = by_question.setdefault(s.question, {"positive": [], "negative": []})
        if s.kept and s.response.strip():
            sides[s.side].append(s.response)
    return [ContrastPair(q, pos, neg) for q, sides in by_question.items()
            for pos in sides["positive"] for neg in sides["negative"]]


def check_persona_pairs(trait: Trait, samples: Sequence[PersonaSample], pairs: Sequence[ContrastPair]) -> None:
    """DatasetError naming the counts when the kept answers make fewer than two pairs (BiPO's least)."""
    if len(pairs) < 2:
        kept = {side: sum(s.kept and s.side == side for s in samples) for side in ("positive", "negative")}
        raise DatasetError(
            f"{trait.name}: the judge kept {kept['positive']} positive and {kept['negative']} negative answers, "
            f"which pair up (same question) into {len(pairs)} BiPO pairs; BiPO needs at least 2 (more questions or "
            "answers per question, another keep rule, or no judge)")


@dataclass
class PersonaBiPOResult:
    """The vector (one BiPO direction per layer), each layer's run, the answers and the pairs made of them."""

    vector: SteeringVector
    runs: dict[int, BiPOResult]
    samples: list[PersonaSample] = field(default_factory=list)
    pairs: list[ContrastPair] = field(default_factory=list)


def persona_bipo_vector(runs: Sequence[SteeringVector], trait: Trait, samples: Sequence[PersonaSample],
                        pairs: Sequence[ContrastPair], persona: PersonaConfig) -> SteeringVector:
    """The layers' BiPO runs as one vector whose metadata names the method, the trait and the answers it came from."""
    vec = join_layer_runs(runs)
    extra = dict(vec.meta.extra, trait=trait.name, description=trait.description, judge_side_auc=side_auc(samples),
                 n_pairs=len(pairs), n_generated=len(samples), questions=len({s.question for s in samples}),
                 n_positive=sum(s.kept and s.side == "positive" for s in samples),
                 n_negative=sum(s.kept and s.side == "negative" for s in samples),
                 samples_per_question=persona.samples_per_question, max_new_tokens=persona.max_new_tokens,
                 keep=persona.keep, persona_seed=persona.seed)
    return SteeringVector(dict(vec.directions), replace(vec.meta, method=METHOD, extra=extra))


def train_persona_bipo_detailed(lm: LoadedModel, trait: Trait, questions: Sequence[str], layers: Sequence[int],
                                persona: PersonaConfig | None = None, bipo: BiPOConfig | None = None,
                                judge: TraitScorer | None = None, *, samples: Sequence[PersonaSample] | None = None,
                                progress: bool = False, generator: "TextGenerator | None" = None,
                                on_result: Callable[[BiPOResult], None] | None = None) -> PersonaBiPOResult:
    """`train_persona_bipo`, also returning each layer's run, the answers and the pairs. `samples`: judged answers
    from an earlier run (generation and judging are skipped); `on_result` receives each layer's run as it finishes."""
    persona = persona or PersonaConfig()
    bipo = bipo or BiPOConfig(seed=persona.seed)
    if samples is None:
        samples = judge_samples(generate_samples(lm, trait, questions, persona, progress=progress, generator=generator),
                                judge, persona)
    samples = list(samples)
    pairs = persona_pairs(samples)
    check_persona_pairs(trait, samples, pairs)
    runs = train_bipo_layers(lm, pairs, layers, bipo, progress=progress, on_result=on_result)
    vec = persona_bipo_vector([r.vector for r in runs.values()], trait, samples, pairs, persona)
    return PersonaBiPOResult(vec, runs, samples, pairs)


def train_persona_bipo(lm: LoadedModel, trait: Trait, questions: Sequence[str], layers: Sequence[int],
                       persona: PersonaConfig | None = None, bipo: BiPOConfig | None = None,
                       judge: TraitScorer | None = None, *, progress: bool = False,
                       generator: "TextGenerator | None" = None) -> SteeringVector:
    """A BiPO vector per layer of `layers`, trained on the model's own judged answers to `questions` under the
    trait's opposing system prompts (see the module docstring).

    Args:
        trait: the trait and its system prompts (`load_trait`).
        questions: user questions (e.g. `persona_questions(items)`).
        layers: the layers to train (each its own run; one shared reference pass).
        persona: generation and keep settings (`PersonaConfig`; its seed is the sampling seed).
        bipo: the optimiser's settings (`BiPOConfig`; default: its defaults with the persona seed).
        judge: (question, response) pairs -> trait scores in [0, 1]; None keeps every non-empty answer.
        generator: what generates the answers (`steerlab.generate` unless given).
    """
    return train_persona_bipo_detailed(lm, trait, questions, layers, persona, bipo, judge, progress=progress,
                                       generator=generator).vector
