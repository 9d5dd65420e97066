"""A judge that scores each distinct request once, across processes.

The generalisation protocol judges the same unsteered responses in every cell of a behaviour (both signs,
every method, every seed); with the local judge each score is a forward pass of the model. `CachedJudge`
keeps every score it has seen in a JSONL file keyed by the judge's name and the request, so a request is
scored once per run directory, and a resumed run finds the scores of the runs before it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

from .. import results
from .judge import Judge, JudgeError, JudgeRequest


def request_key(judge_name: str, req: JudgeRequest) -> str:
    """A stable key of one request to one judge."""
    text = json.dumps([judge_name, req.prompt, req.response, req.behaviour, req.criteria], ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class CachedJudge:
    """`judge`, with its scores kept in `path` (appended as they come; read back on creation)."""

    def __init__(self, judge: Judge, path: str | Path) -> None:
        self.judge = judge
        self.name = judge.name
        self.path = Path(path)
        self.scores: dict[str, float] = {}
        if self.path.is_file():
            for r in results.read_jsonl(self.path):
                self.scores[r["key"]] = float(r["score"])

    def score(self, requests: Sequence[JudgeRequest]) -> list[float]:
        keys = [request_key(self.name, r) for r in requests]
        todo: dict[str, JudgeRequest] = {}
        for k, r in zip(keys, requests):
            if k not in self.scores and k not in todo:
                todo[k] = r
        if todo:
            fresh = self.judge.score(list(todo.values()))
            if len(fresh) != len(todo):
                raise JudgeError(f"the judge returned {len(fresh)} scores for {len(todo)} requests")
            new = {k: float(s) for k, s in zip(todo, fresh)}
            results.append_jsonl(self.path, [{"key": k, "score": s} for k, s in new.items()])
            self.scores.update(new)
        return [self.scores[k] for k in keys]
