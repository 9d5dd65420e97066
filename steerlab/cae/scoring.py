"""Behaviour scores of engine settings on MWE items: p(match)/(p(match)+p(not match)), effects against
unsteered, answer-balanced effects, each with a bootstrap interval (items are paired)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..data.records import BehaviourItem
from ..engine import ScoreTable, Setting, score
from ..errors import DatasetError, SteerlabError
from .prompts import scoring_items
from .stats import balanced_bootstrap_ci, bootstrap_ci

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel


@dataclass
class SettingScore:
    """The behaviour score of one setting on a set of items, and its effect against unsteered.

    Attributes:
        label: the setting's label.
        n_items: items scored.
        score, score_low, score_high: mean p(match)/(p(match)+p(not match)) and its bootstrap interval.
        effect, effect_low, effect_high: mean per-item (this − unsteered) and its bootstrap interval
            (0 for the unsteered setting itself).
        meta: what the setting was (layer, strength, relative strength, method, n_train, ...).
        by_answer: per matching answer ("A", "B", "Yes", "No"): n, score and effect on those items
            only. A vector that pushes one letter/word instead of the behaviour shows up here as
            effects of opposite signs that cancel in the mean.
        balanced, balanced_low, balanced_high: the answer-balanced effect — the mean of the
            per-answer mean effects, each answer weighted equally, with a stratified bootstrap
            interval (resampling within each answer group). It does not depend on how many test
            items match with each answer, so a pure answer-token push contributes ~0 to it.
    """

    label: str
    n_items: int
    score: float
    score_low: float
    score_high: float
    effect: float
    effect_low: float
    effect_high: float
    meta: dict = field(default_factory=dict)
    by_answer: dict = field(default_factory=dict)
    balanced: float = 0.0
    balanced_low: float = 0.0
    balanced_high: float = 0.0

    def row(self) -> dict:
        """A flat dict (meta first) for tables; by_answer flattened to effect_if_<answer> columns."""
        d = asdict(self)
        meta = d.pop("meta")
        by = d.pop("by_answer")
        flat = {f"effect_if_{a}": v["effect"] for a, v in sorted(by.items())}
        flat.update({f"n_if_{a}": v["n"] for a, v in sorted(by.items())})
        return {**meta, **d, **flat}


@dataclass
class BehaviourResult:
    """Behaviour scores of several settings on the same items.

    Attributes:
        table: the engine's ScoreTable (settings x items x [matching, not matching]).
        items: the behaviour items, in table order.
        meta: per setting, a dict describing it (layer, strength, ...), in table order.
        scores: per setting, its SettingScore.
        baseline: index of the unsteered setting.
    """

    table: ScoreTable
    items: list[BehaviourItem]
    meta: list[dict]
    scores: list[SettingScore]
    baseline: int

    @property
    def p_match(self) -> np.ndarray:
        """[settings, items] p(match)/(p(match)+p(not match))."""
        return self.table.target_probs().double().numpy()

    def unsteered(self) -> SettingScore:
        return self.scores[self.baseline]

    def per_item_rows(self) -> list[dict]:
        """One dict per (setting, item): setting meta, item index in its file, p_match, both log-probs."""
        p = self.p_match
        lp = self.table.logprobs.double().numpy()
        rows = []
        for s, meta in enumerate(self.meta):
            for i, it in enumerate(self.items):
                rows.append({**meta, "label": self.table.settings[s].label, "item": it.index,
                             "p_match": float(p[s, i]), "logp_match": float(lp[s, i, 0]),
                             "logp_not_match": float(lp[s, i, 1])})
        return rows

    def summary_rows(self) -> list[dict]:
        return [s.row() for s in self.scores]


def summarize(table: ScoreTable, items: Sequence[BehaviourItem], meta: Sequence[dict], *, n_boot: int = 2000,
              seed: int = 0) -> BehaviourResult:
    """Scores and effects (with bootstrap intervals) of every setting of `table`."""
    baseline = next((k for k, s in enumerate(table.settings) if s.is_unsteered), None)
    if baseline is None:
        raise SteerlabError("behaviour scores need the unsteered setting in the table (Setting.unsteered())")
    p = table.target_probs().double().numpy()
    if not np.all(np.isfinite(p)):
        bad = sorted({int(i) for i in np.argwhere(~np.isfinite(p))[:, 1]})
        raise SteerlabError(f"non-finite answer probabilities for items {bad[:5]} (a model producing NaN?)")
    answers = np.array([it.matching for it in items])
    scores = []
    for s, setting in enumerate(table.settings):
        lo, hi = bootstrap_ci(p[s], n_boot=n_boot, seed=seed)
        d = p[s] - p[baseline]
        elo, ehi = (0.0, 0.0) if s == baseline else bootstrap_ci(d, n_boot=n_boot, seed=seed)
        by = {str(a): {"n": int((answers == a).sum()), "score": float(p[s][answers == a].mean()),
                       "effect": float(d[answers == a].mean())} for a in sorted(set(answers.tolist()))}
        bal = (0.0, 0.0, 0.0) if s == baseline else balanced_bootstrap_ci(d, answers, n_boot=n_boot, seed=seed)
        scores.append(SettingScore(setting.label, int(p.shape[1]), float(p[s].mean()), lo, hi, float(d.mean()),
                                   elo, ehi, dict(meta[s]), by, *bal))
    return BehaviourResult(table, list(items), [dict(m) for m in meta], scores, baseline)


def score_behaviour(lm: LoadedModel,
                    items: Sequence[BehaviourItem], settings: Sequence[Setting], meta: Sequence[dict] | None = None,
                    *, allow_multi_token: bool = False, n_boot: int = 2000, seed: int = 0, batch_size: int = 16,
                    progress: bool = False) -> BehaviourResult:
    """Behaviour scores of `items` under every setting (the unsteered one is added first if missing).

    Args:
        items: MWE behaviour items (all of one kind).
        settings: engine settings, e.g. from `behaviour_setting`.
        meta: one dict per setting describing it (copied into the results); default {}.
    """
    settings = list(settings)
    meta = [dict(m) for m in meta] if meta is not None else [{} for _ in settings]
    if len(meta) != len(settings):
        raise SteerlabError(f"{len(meta)} meta entries for {len(settings)} settings")
    if not any(s.is_unsteered for s in settings):
        settings.insert(0, Setting.unsteered())
        meta.insert(0, {})
    kinds = {it.kind for it in items}
    if len(kinds) > 1:
        raise DatasetError("items mix A/B and Yes/No questions; score each set on its own")
    engine_items = scoring_items(lm, items, allow_multi_token=allow_multi_token)
    table = score(lm, engine_items, settings, batch_size=batch_size, progress=progress)
    return summarize(table, items, meta, n_boot=n_boot, seed=seed)
