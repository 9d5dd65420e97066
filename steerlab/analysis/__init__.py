"""Analyses built on steered models: behaviour scores, out-of-distribution checks, side effects, EPO.

Contrastive Activation Engineering: `behaviour` (scores with bootstrap intervals), `sweeps`, `ood`,
`judge`, `side_effects` and `cae` (the staged suite runner); `steerlab.report` renders a run directory.

Import what you need from the submodules (e.g. `steerlab.analysis.epo`); this package re-exports nothing.
"""
