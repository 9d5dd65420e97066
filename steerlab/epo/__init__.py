"""Evolutionary prompt optimisation (EPO) against steered models: an optimiser, and the attack study built on it.

    from steerlab.epo import EPOConfig, attack_behaviour
    result = attack_behaviour(lm, "power-seeking-inclination", layer=11, strength=12, config=EPOConfig(iterations=50))

Modules, from the bottom: `targets` (where a sequence goes, what is scored), `objective` (target and
cross-entropy with gradients), `config` (search settings, vocabulary filter), `result` (the frontier
and `epo.json`), `plot`, `search` (the EPO loop: `run_epo`), `attack` (reverse a steered behaviour and
evaluate it on held-apart items), `runs` (`AttackOptions` -> `run_attack`, what `steerlab attack`
calls), `report` (markdown tables of saved runs: `python -m steerlab.epo.report RUN...`).
"""

from .attack import attack_behaviour, attack_string, evaluate_attack, reevaluate
from .config import EPOConfig, allowed_tokens
from .objective import EPOObjective
from .result import EPOResult, EPOStep, FrontierPoint
from .runs import AttackOptions, run_attack
from .search import run_epo
from .targets import TargetItem, behaviour_targets, string_target

__all__ = [
    "EPOConfig", "EPOResult", "EPOStep", "FrontierPoint", "EPOObjective", "TargetItem", "allowed_tokens",
    "behaviour_targets", "string_target", "run_epo", "attack_behaviour", "attack_string", "evaluate_attack",
    "reevaluate", "AttackOptions", "run_attack",
]
