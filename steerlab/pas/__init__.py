"""The Painless Activation Steering study: PAS vectors with an automatic (layer, strength) choice, over seeds.

    from steerlab.pas import run_pas
    res = run_pas(lm, load_task("bbq-nationality"), method="ipas-wo", seeds=5, cap=400)

The vectors themselves are a method (`steerlab.methods.pas`, `steerlab.train_pas`); this package is
the study around them. Modules: `splits` (60/20/20 splits, choice orders), `letters` (letter scoring
through the engine), `bias` (letter-bias control), `stats` (across-seed t-intervals), `runs`
(`run_pas`, `evaluate_transfer`), `report` (results.json, CSV tables, plots), `sft` (PAS on a
LoRA-tuned model).
"""

from .runs import PASConfig, PASResult, evaluate_transfer, run_pas

__all__ = ["PASConfig", "PASResult", "run_pas", "evaluate_transfer"]
