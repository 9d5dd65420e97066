"""A CAE judge as the persona method's trait scorer ((question, response) pairs -> scores in [0, 1])."""

from __future__ import annotations

from typing import Sequence

from .judge import Judge, JudgeRequest


def trait_scorer(judge: Judge, behaviour: str, description: str | None = None):
    """Score (question, response) pairs for `behaviour` with `judge`; `description` (the trait's one line)
    goes to the judge as its criteria, so a behaviour the judge has no description for is still named."""
    criteria = f"The answer shows this trait: {description.strip()}." if description else None

    def score(pairs: Sequence[tuple[str, str]]) -> list[float]:
        return judge.score([JudgeRequest(q, r, behaviour, criteria) for q, r in pairs])

    return score
