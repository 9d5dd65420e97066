"""The Contrastive Activation Engineering study: how well, where and at what cost CAA vectors steer behaviours.

    from steerlab.cae import CAEConfig, run_cae
    summary = run_cae(lm, CAEConfig("openness"), "runs/cae/openness")

Modules, from the bottom: `behaviour` (behaviour scores with bootstrap intervals; each job in its own module: `behaviour_data`, `prompts`, `strengths`, `stats`, `scoring`, `readings`, `verdicts`), `judge` (LLM
judges), `sweeps` (layer, strength, sample-count and method sweeps), `ood` (out-of-distribution
generations, judged and projected), `side_effects` (perplexity and KL cost), `summary` (a run
directory's headline numbers), `report` (a run directory as one HTML/Markdown page), `runs`
(the staged suite, `run_cae`), and `generalise` (training methods compared out of distribution; each cell
chooses its setting on validation by `verdicts` or by `open_selection`, judged open answers; `generalise_report`
makes the table).
"""

from .runs import STAGES, CAEConfig, run_cae
from .report import write_report
from .summary import summarize_run

__all__ = ["CAEConfig", "STAGES", "run_cae", "summarize_run", "write_report"]
