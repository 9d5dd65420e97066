"""`steerlab train --method multiformat|bipo|persona|persona-bipo`: the out-of-distribution candidates (issue 26).

`check_method_args` runs before any model load (bad input is one line, at once); `train_method` builds
the vector on the loaded model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ..errors import SteerlabError

#: The methods of this module; `steerlab train` handles caa, pca and actadd itself.
OOD_METHODS: tuple[str, ...] = ("multiformat", "bipo", "persona", "persona-bipo")
#: The methods that generate text (the persona recipe's answers): --engine applies to them.
GENERATING: tuple[str, ...] = ("persona", "persona-bipo")

#: Questions the persona method answers from the command line (the first of the file's, after --limit): the
#: paper's 40 (20 to extract from, 20 to evaluate on) at most, so a 1,000-item file is not 4,000 generations.
PERSONA_QUESTIONS = 40


@dataclass(frozen=True)
class MethodArgs:
    """The `train` options these methods read.

    Attributes:
        method: one of `OOD_METHODS`.
        behaviour: the MWE file's behaviour name (its stem); "" for a pairs file.
        description: persona, persona-bipo: the trait's one-line description (None: the shipped one).
        judge: persona, persona-bipo: filter answers with the local judge.
        steps: bipo, persona-bipo: the most optimiser steps.
        seed: bipo's split and order, persona's sampling (persona-bipo: both).
        positive_min, negative_max: persona, persona-bipo: the judge's keep thresholds.
        engine: persona, persona-bipo: what generates the answers ("builtin" or "vllm").
        keep: persona, persona-bipo: the keep rule ("absolute" or "median", `PersonaConfig.keep`).
        reading: persona: how an answer is read ("mean" over its response tokens or its "last" token).
    """

    method: str
    behaviour: str
    description: Optional[str]
    judge: bool
    steps: int
    seed: int
    positive_min: float = 0.5
    negative_max: float = 0.5
    engine: str = "builtin"
    keep: str = "absolute"
    reading: str = "mean"


def check_method_args(args: MethodArgs, items, layers: Optional[str]) -> None:
    """Refuse bad input before the model loads: MWE items where the method needs them, one layer for BiPO and
    explicit layers for persona-BiPO, a known trait (or a description) for persona and persona-BiPO."""
    if args.method in ("multiformat", *GENERATING) and items is None:
        raise SteerlabError(f"--method {args.method} needs an MWE behaviour file (with answer_matching_behavior), "
                            "not a pairs file or 'demo'")
    if args.method == "bipo":
        spec = (layers or "").strip()
        if not spec.lstrip("-").isdigit():
            raise SteerlabError("--method bipo trains one layer: pass --layers N (e.g. --layers 12)")
        if args.steps < 1:
            raise SteerlabError("--steps must be at least 1")
    if args.method == "persona-bipo":
        if not (layers or "").strip() or (layers or "").strip() == "all":
            raise SteerlabError("--method persona-bipo trains each layer it is given by gradient: name them, "
                                "e.g. --layers 12 or --layers 10,12")
        if args.steps < 1:
            raise SteerlabError("--steps must be at least 1")
    if args.method in GENERATING:
        from ..serve.engines import engine_module
        from ..methods.persona import PersonaConfig, load_trait

        engine_module(args.engine)  # an unknown engine or a missing vLLM: one line, before the load

        load_trait(args.behaviour, args.description)
        PersonaConfig(positive_min=args.positive_min, negative_max=args.negative_max, keep=args.keep,
                      reading=args.reading)


def train_method(lm, args: MethodArgs, pairs, items, layers: Optional[Sequence[int]]):
    """The vector of `args.method` (see `steerlab.methods`), with progress bars."""
    if args.method == "multiformat":
        from ..methods.multiformat import train_multiformat

        return train_multiformat(lm, items, layers, progress=True)
    if args.method == "bipo":
        from ..methods.bipo import BiPOConfig, completion_pairs, train_bipo

        data = completion_pairs(items) if items is not None else pairs
        return train_bipo(lm, data, layers[0], BiPOConfig(max_steps=args.steps, seed=args.seed), progress=True)
    from ..methods.persona import PersonaConfig, load_trait, persona_questions, train_persona
    from ..methods.persona_bipo import train_persona_bipo

    trait = load_trait(args.behaviour, args.description)
    judge = None
    if args.judge:
        from ..cae.judge import LocalJudge
        from ..cae.trait_judge import trait_scorer

        judge = trait_scorer(LocalJudge(lm, progress=True), trait.name, trait.description)
    cfg = PersonaConfig(seed=args.seed, positive_min=args.positive_min, negative_max=args.negative_max, keep=args.keep,
                        reading=args.reading)
    from .common import text_generator

    generator = text_generator(args.engine)
    questions = persona_questions(items)[:PERSONA_QUESTIONS]
    try:
        if args.method == "persona-bipo":
            from ..methods.bipo import BiPOConfig

            return train_persona_bipo(lm, trait, questions, layers, cfg, BiPOConfig(max_steps=args.steps, seed=args.seed),
                                      judge, progress=True, generator=generator)
        return train_persona(lm, trait, questions, layers, cfg, judge, progress=True, generator=generator)
    finally:
        if hasattr(generator, "close"):
            generator.close()
