"""ScoreTable: candidate log-probabilities per (setting, item, candidate), with tidy exports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

from ..errors import SteerlabError
from .items import ScoringItem, Setting


@dataclass
class ScoreTable:
    """Scores of every candidate of every item under every setting.

    Attributes:
        logprobs: [n_settings, n_items, max_candidates] summed token log-probabilities of each
            candidate given its prompt (teacher forcing); NaN where an item has fewer candidates.
        settings: the settings, in the order of dimension 0.
        items: the items, in the order of dimension 1.
        info: how the table was computed (e.g. which reuse path ran), for reports.
    """

    logprobs: torch.Tensor
    settings: list[Setting]
    items: list[ScoringItem]
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        expect = (len(self.settings), len(self.items))
        if tuple(self.logprobs.shape[:2]) != expect:
            raise SteerlabError(f"logprobs of shape {tuple(self.logprobs.shape)} do not match {expect} settings x items")

    @property
    def n_candidates(self) -> torch.Tensor:
        """Candidates per item, [n_items]."""
        return torch.tensor([len(it.candidates) for it in self.items])

    def probs(self, normalize: bool = True) -> torch.Tensor:
        """Candidate probabilities [n_settings, n_items, max_candidates] (NaN-padded).

        normalize=True divides by the item's candidates' total (e.g. p(A) / (p(A) + p(B)), computed
        in log space); False gives the raw sequence probabilities exp(logprob).
        """
        lp = self.logprobs.double()
        if normalize:
            masked = torch.where(torch.isnan(lp), torch.full_like(lp, -torch.inf), lp)
            lp = lp - torch.logsumexp(masked, dim=-1, keepdim=True)
        return lp.exp().float()

    def _target_index(self, targets: Sequence[int | str] | None) -> torch.Tensor:
        if targets is None:
            missing = [i for i, it in enumerate(self.items) if it.target is None]
            if missing:
                raise SteerlabError(f"items {missing[:5]} have no target: pass targets= or set ScoringItem.target")
            return torch.tensor([it.target for it in self.items])
        if len(targets) != len(self.items):
            raise SteerlabError(f"{len(targets)} targets for {len(self.items)} items")
        idx = []
        for k, (t, it) in enumerate(zip(targets, self.items)):
            if isinstance(t, str):
                if t not in it.candidates:
                    raise SteerlabError(f"item {k}: target {t!r} is not one of its candidates {it.candidates!r}")
                t = it.candidates.index(t)
            if not 0 <= int(t) < len(it.candidates):
                raise SteerlabError(f"item {k}: target index {t} out of range")
            idx.append(int(t))
        return torch.tensor(idx)

    def target_probs(self, targets: Sequence[int | str] | None = None, normalize: bool = True) -> torch.Tensor:
        """[n_settings, n_items] probability of each item's target candidate (CAA's behaviour score
        per item is `target_probs()` with the matching answer as target). Targets default to
        `ScoringItem.target`; give indices or candidate strings to override."""
        idx = self._target_index(targets)
        p = self.probs(normalize)
        return p.gather(2, idx[None, :, None].expand(p.shape[0], -1, 1)).squeeze(2)

    def predictions(self) -> torch.Tensor:
        """[n_settings, n_items] index of the most probable candidate."""
        lp = torch.where(torch.isnan(self.logprobs), torch.full_like(self.logprobs, -torch.inf), self.logprobs)
        return lp.argmax(-1)

    def accuracy(self, targets: Sequence[int | str] | None = None) -> torch.Tensor:
        """[n_settings, n_items] 1.0 where the most probable candidate is the target, else 0.0."""
        return (self.predictions() == self._target_index(targets)[None, :]).float()

    def setting_index(self, setting: Setting | str) -> int:
        """Index of a setting (by object or by label)."""
        for k, s in enumerate(self.settings):
            if s is setting or s == setting or s.label == setting:
                return k
        raise SteerlabError(f"no setting {setting!r} in this table")

    def to_frame(self):
        """Tidy pandas DataFrame: one row per (setting, item, candidate).

        Columns: setting (index), label, layer, strength, positions, item (index), candidate,
        candidate_index, is_target, logprob, prob (normalized over the item's candidates).
        `layer` is <NA> unless the setting steers exactly one layer; `strength` is 0.0 unsteered.
        """
        import pandas as pd

        probs = self.probs(True)
        rows = []
        for s, setting in enumerate(self.settings):
            for i, item in enumerate(self.items):
                for j, cand in enumerate(item.candidates):
                    rows.append((s, setting.label, setting.layer, setting.strength, setting.positions, i, cand, j,
                                 None if item.target is None else item.target == j,
                                 float(self.logprobs[s, i, j]), float(probs[s, i, j])))
        frame = pd.DataFrame(rows, columns=["setting", "label", "layer", "strength", "positions", "item", "candidate",
                                            "candidate_index", "is_target", "logprob", "prob"])
        frame["layer"] = frame["layer"].astype("Int64")
        return frame
