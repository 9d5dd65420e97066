"""What an EPO run found (`EPOResult`: the Pareto frontier, the history, metadata) and its `epo.json` file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import OutputExistsError, SteerlabError
from .config import EPOConfig

RESULT_FILE = "epo.json"
PLOT_FILE = "epo_frontier.png"
FORMAT_VERSION = 1


@dataclass
class FrontierPoint:
    """One sequence on the Pareto frontier.

    Attributes:
        ids: its token ids; text: the ids decoded.
        target: the objective's target (mean over the attack items), higher = stronger attack.
        xent: its mean per-token cross-entropy (nats), lower = more natural.
        iteration: the iteration at which it was first evaluated (0 = initial population).
        heldout: filled by an evaluation (e.g. behaviour scores on held-apart items).
    """

    ids: list[int]
    text: str
    target: float
    xent: float
    iteration: int
    heldout: dict = field(default_factory=dict)


@dataclass
class EPOStep:
    """The population after one iteration (iteration 0 = the initial population)."""

    iteration: int
    ids: list[list[int]]
    target: list[float]
    xent: list[float]
    best_target: float
    n_evaluated: int
    seconds: float
    restarted: bool = False


@dataclass
class EPOResult:
    """What an EPO run found.

    Attributes:
        config: the search settings.
        lambdas: the fluency weight of each slot.
        frontier: Pareto frontier of every evaluated sequence, sorted by cross-entropy (ascending;
            the target then rises along it).
        history: the population after every iteration.
        seconds: wall time of the search (the objective's set-up excluded).
        setup_seconds: wall time of the objective's set-up (heads' KV cache).
        n_evaluated: distinct sequences evaluated.
        reference: reference values for reports, e.g. {"natural_target": ..., "natural_xent": ...}.
        evaluation: held-apart evaluation (see `attack`), empty if none was run.
        meta: what was attacked (model, target, steering, placement...).
    """

    config: EPOConfig
    lambdas: list[float]
    frontier: list[FrontierPoint]
    history: list[EPOStep]
    seconds: float
    setup_seconds: float = 0.0
    n_evaluated: int = 0
    reference: dict = field(default_factory=dict)
    evaluation: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @property
    def seconds_per_iteration(self) -> float:
        return self.seconds / max(1, self.config.iterations)

    @property
    def best(self) -> FrontierPoint:
        """The frontier point with the highest target."""
        return max(self.frontier, key=lambda p: p.target)

    def best_target_curve(self) -> list[float]:
        """Best target found so far after each iteration (non-decreasing)."""
        return [s.best_target for s in self.history]

    def to_dict(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "lambdas": list(self.lambdas),
            "frontier": [asdict(p) for p in self.frontier],
            "history": [asdict(s) for s in self.history],
            "seconds": self.seconds,
            "setup_seconds": self.setup_seconds,
            "seconds_per_iteration": self.seconds_per_iteration,
            "n_evaluated": self.n_evaluated,
            "reference": self.reference,
            "evaluation": self.evaluation,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "EPOResult":
        if d.get("format_version") != FORMAT_VERSION:
            raise SteerlabError(f"unsupported epo.json format version {d.get('format_version')!r}")
        return cls(
            config=EPOConfig.from_dict(d["config"]),
            lambdas=list(d["lambdas"]),
            frontier=[FrontierPoint(**p) for p in d["frontier"]],
            history=[EPOStep(**s) for s in d["history"]],
            seconds=float(d["seconds"]),
            setup_seconds=float(d.get("setup_seconds", 0.0)),
            n_evaluated=int(d.get("n_evaluated", 0)),
            reference=dict(d.get("reference", {})),
            evaluation=dict(d.get("evaluation", {})),
            meta=dict(d.get("meta", {})),
        )

    def save(self, run_dir: str | Path, *, force: bool = False, plot: bool = True) -> Path:
        """Write `epo.json` (and `epo_frontier.png`) into `run_dir`; returns the JSON path.

        Refuses to overwrite an existing `epo.json` unless `force`.
        """
        run_dir = Path(run_dir)
        path = run_dir / RESULT_FILE
        if path.exists() and not force:
            raise OutputExistsError(f"{path} exists; pass force=True (--force) to overwrite it")
        run_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)
        if plot:
            self.plot(run_dir / PLOT_FILE)
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> "EPOResult":
        """Read `epo.json` from a run directory (or the file itself)."""
        path = Path(run_dir)
        if path.is_dir():
            path = path / RESULT_FILE
        if not path.is_file():
            raise SteerlabError(f"{path}: no EPO result there")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise SteerlabError(f"{path}: not valid JSON ({e})") from e
        return cls.from_dict(data)

    def plot(self, path: str | Path) -> Path:
        """A PNG of the frontier (target vs cross-entropy) and, when evaluated, held-apart scores."""
        from .plot import plot_result

        return plot_result(self, Path(path))
