"""Analyses built on steered models: behaviour scores, out-of-distribution checks, side effects, EPO.

Import what you need from the submodules (e.g. `steerlab.analysis.epo`); this package re-exports nothing.
"""
