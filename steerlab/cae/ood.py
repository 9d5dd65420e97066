"""Out-of-distribution check (CAE paper): does a vector trained on MWE questions steer realistic prompts?

For each OOD prompt (``ood/choice-qa`` decision prompts, ``ood/open-ended`` questions with a
``criteria`` rubric) the model answers twice with greedy decoding, unsteered and steered (same
prompts, one batch, per-row steering), and every response is kept (``ood_generations.jsonl``,
appended batch by batch). Then each response is scored three ways:

* **judge**: a `judge.Judge` (the local model by default, or an OpenAI-compatible endpoint) gives a
  score in [0, 1] for the behaviour, using the prompt's rubric where there is one;
* **projection** (judge-free): the mean over the response's tokens of <h_L, v_L / ||v_L||>, read
  *unsteered* on prompt + response, i.e. how far the text itself lies along the steering direction;
* **log-probability gap** (judge-free, only for prompts that carry an answer pair
  ``answer_matching_behavior`` / ``answer_not_matching_behavior``): log p(matching) − log p(not
  matching) after the prompt, steered vs unsteered. The shipped OOD files have no answer pairs.

The OOD effect of each measure is the mean per-prompt difference steered − unsteered with a bootstrap
interval, per prompt kind.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..data.io import read_records
from ..data.mwe import MATCHING, NOT_MATCHING
from ..data.ood import LENGTHS, load_ood_dir
from ..encoding import encode, format_prompt
from ..errors import DatasetError, SteerlabError
from ..generation import TextGenerator, generate
from ..vector import SteeringVector
from .. import results
from .stats import bootstrap_ci
from .sites import Site, anchor_layer, as_site
from .strengths import steering_terms
from .judge import Judge, JudgeRequest

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel

OOD_KINDS: tuple[str, ...] = ("choice-qa", "open-ended")
CONDITIONS: tuple[str, ...] = ("unsteered", "steered")


@dataclass(frozen=True)
class OODCase:
    """One OOD prompt.

    Attributes:
        kind: "choice-qa", "open-ended" or a user label.
        length: "short", "medium", "long" (or "" for user files).
        id: the prompt's id in its file.
        prompt: the user message.
        criteria: the rubric, if any.
        matching, not_matching: an optional answer pair for the log-probability gap.
    """

    kind: str
    length: str
    id: int
    prompt: str
    criteria: str | None = None
    matching: str | None = None
    not_matching: str | None = None

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.length}/{self.id}"


def load_ood_cases(behaviour: str, *, kinds: Sequence[str] = OOD_KINDS, lengths: Sequence[str] = ("short",),
                   limit: int | None = None, data_root: str | Path | None = None) -> list[OODCase]:
    """The shipped OOD prompts of a behaviour: for each kind and length, the first `limit` prompts."""
    for k in kinds:
        if k not in OOD_KINDS:
            raise DatasetError(f"unknown OOD kind {k!r}: choose from {', '.join(OOD_KINDS)}")
    for n in lengths:
        if n not in LENGTHS:
            raise DatasetError(f"unknown OOD length {n!r}: choose from {', '.join(LENGTHS)}")
    cases: list[OODCase] = []
    for kind in kinds:
        found = load_ood_dir(data_root, kind, behaviour=behaviour, lengths=lengths)  # type: ignore[arg-type]
        for length in lengths:
            for p in found.get(length, [])[:limit]:
                cases.append(OODCase(kind, length, p.id, p.prompt, p.criteria))
    if not cases:
        raise DatasetError(f"no OOD prompts for behaviour {behaviour!r} (kinds {list(kinds)}, lengths {list(lengths)})")
    return cases


def load_ood_file(path: str | Path, *, kind: str = "custom") -> list[OODCase]:
    """A user OOD file (JSON list or JSONL) of {prompt, id?, criteria?, answer_matching_behavior?,
    answer_not_matching_behavior?}; the answer pair, when present, must be complete."""
    cases = []
    for row in read_records(path):
        prompt = row.text("prompt")
        pid = row.field("id", required=False, default=row.index)
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise row.error(f"field 'id' must be an integer, got {pid!r}")
        m = row.text(MATCHING, required=False)
        n = row.text(NOT_MATCHING, required=False)
        if (m is None) != (n is None):
            raise row.error(f"give both '{MATCHING}' and '{NOT_MATCHING}' or neither")
        cases.append(OODCase(kind, "", pid, prompt, row.text("criteria", required=False),
                             m.strip() if m else None, n.strip() if n else None))
    return cases


# ---------------------------------------------------------------------------------------------
# Generations
# ---------------------------------------------------------------------------------------------


@dataclass
class OODGeneration:
    """One response: the case, the condition ("unsteered"/"steered"), the text, and where and how the steered ones
    were steered (records written before `positions` existed were steered at "answer", before `schedule` at a
    constant strength)."""

    key: str
    kind: str
    length: str
    id: int
    condition: str
    layer: Site
    strength: float
    prompt: str
    response: str
    criteria: str | None = None
    positions: str = "answer"
    schedule: str = "constant"


def generate_ood(lm: LoadedModel, cases: Sequence[OODCase], vector: SteeringVector, layer: Site, strength: float, *,
                 positions: str = "answer", schedule: str = "constant", max_new_tokens: int = 64, batch_size: int = 8,
                 out_path: str | Path | None = None, done: dict[tuple[str, str], OODGeneration] | None = None,
                 on_batch: Callable[[int, int], None] | None = None,
                 generator: TextGenerator = generate) -> list[OODGeneration]:
    """Greedy responses to every case, unsteered and steered, in batches (each response kept).

    Args:
        positions: "answer" (= "after_user": from the first token after the user's message, so the
            assistant header, the last prompt token and every generated token, as in behaviour scoring)
            or any `steerlab.steer` policy.
        out_path: a JSONL file each batch's generations are appended to as soon as they exist.
        done: generations already on disk, by (key, condition); they are not regenerated.
        generator: what generates (`steerlab.generate`; the vLLM engine's with `--engine vllm`).
    """
    done = dict(done or {})
    jobs = [(c, cond) for c in cases for cond in CONDITIONS if (c.key, cond) not in done]
    batches = [jobs[s:s + batch_size] for s in range(0, len(jobs), batch_size)]
    for b, chunk in enumerate(batches):
        vecs = [vector if cond == "steered" else None for _, cond in chunk]
        strengths = [float(strength) if cond == "steered" else 0.0 for _, cond in chunk]
        terms = [type(t)(vecs, strengths, t.layers, t.positions, schedule=t.schedule)
                 for t in steering_terms(vector, layer, strength, "yesno", positions, schedule)]
        texts = generator(lm, [c.prompt for c, _ in chunk], terms, max_new_tokens=max_new_tokens, batch_size=len(chunk))
        new = [OODGeneration(c.key, c.kind, c.length, c.id, cond, as_site(layer), float(strength) if cond == "steered" else 0.0,
                             c.prompt, text, c.criteria, positions, schedule) for (c, cond), text in zip(chunk, texts)]
        if out_path is not None:
            results.append_jsonl(out_path, [asdict(g) for g in new])
        for g in new:
            done[(g.key, g.condition)] = g
        if on_batch is not None:
            on_batch(b + 1, len(batches))
    return [done[(c.key, cond)] for c in cases for cond in CONDITIONS]


def read_generations(path: str | Path) -> dict[tuple[str, str], OODGeneration]:
    """Generations saved by `generate_ood` (the last record of each (key, condition) wins)."""
    out = {}
    for r in results.read_jsonl(path):
        g = OODGeneration(**r)
        out[(g.key, g.condition)] = g
    return out


# ---------------------------------------------------------------------------------------------
# Judge-free measures
# ---------------------------------------------------------------------------------------------


def response_projections(lm: LoadedModel, generations: Sequence[OODGeneration], vector: SteeringVector, layer: Site, *,
                         batch_size: int = 8) -> list[float | None]:
    """Mean of <h_L, v̂_L> over each response's tokens, read unsteered on prompt + response (a band is read at
    its first layer, `sites.anchor_layer`).

    None for an empty response (there is nothing to project).
    """
    from ..activations import capture_batch

    layer = anchor_layer(layer)
    d = vector[layer].float()
    if d.dim() != 1:
        raise SteerlabError("projections need a single direction per layer (not a per-position ActAdd vector)")
    unit = d / d.norm().clamp_min(1e-12)
    out: list[float | None] = [None] * len(generations)
    todo = [k for k, g in enumerate(generations) if g.response.strip()]
    for s in range(0, len(todo), batch_size):
        idx = todo[s:s + batch_size]
        prompts = [format_prompt(lm, generations[k].prompt, generations[k].response) for k in idx]
        batch = encode(lm, prompts, indices=idx)
        acts = capture_batch(lm, batch, [layer], "all")[layer]
        for j, k in enumerate(idx):
            start = int(batch.assistant_start[j])
            h = acts[j][start:]
            if h.shape[0] == 0:
                continue
            out[k] = float((h.float() @ unit).mean())
    return out


def logprob_gaps(lm: LoadedModel, cases: Sequence[OODCase], vector: SteeringVector, layer: Site, strength: float, *,
                 positions: str = "answer", schedule: str = "constant") -> dict[str, tuple[float, float]]:
    """{case key: (unsteered gap, steered gap)}, gap = log p(matching) − log p(not matching), for cases with a pair."""
    from ..engine import ScoringItem, Setting, score

    with_pair = [c for c in cases if c.matching and c.not_matching]
    if not with_pair:
        return {}
    items = [ScoringItem(format_prompt(lm, c.prompt, ""), (c.matching, c.not_matching), target=0) for c in with_pair]
    settings = [Setting.unsteered(), Setting(steering_terms(vector, layer, strength, "yesno", positions, schedule))]
    lp = score(lm, items, settings).logprobs.double()
    gap = lp[:, :, 0] - lp[:, :, 1]
    return {c.key: (float(gap[0, i]), float(gap[1, i])) for i, c in enumerate(with_pair)}


# ---------------------------------------------------------------------------------------------
# The OOD evaluation
# ---------------------------------------------------------------------------------------------


@dataclass
class OODMeasure:
    """One measure's OOD effect on one kind of prompt: means per condition, paired difference."""

    measure: str
    kind: str
    n: int
    unsteered: float
    steered: float
    effect: float
    effect_low: float
    effect_high: float


@dataclass
class OODResult:
    """Scores of every response and the effects per measure and kind."""

    behaviour: str
    layer: Site
    strength: float
    judge: str
    records: list[dict]
    measures: list[OODMeasure] = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"kind": "ood", "behaviour": self.behaviour, "layer": self.layer, "strength": self.strength,
                "judge": self.judge, "config": self.config, "seconds": self.seconds,
                "measures": [asdict(m) for m in self.measures]}

    def measure(self, measure: str, kind: str = "all") -> OODMeasure | None:
        return next((m for m in self.measures if m.measure == measure and m.kind == kind), None)


def _effects(records: list[dict], measure: str, kinds: Sequence[str], n_boot: int, seed: int) -> list[OODMeasure]:
    out = []
    for kind in [*kinds, "all"]:
        pairs = {}
        for r in records:
            if kind != "all" and r["kind"] != kind:
                continue
            v = r.get(measure)
            if v is None:
                continue
            pairs.setdefault(r["key"], {})[r["condition"]] = v
        both = [(p["unsteered"], p["steered"]) for p in pairs.values() if len(p) == 2]
        if not both:
            continue
        u = np.array([a for a, _ in both])
        s = np.array([b for _, b in both])
        lo, hi = bootstrap_ci(s - u, n_boot=n_boot, seed=seed)
        out.append(OODMeasure(measure, kind, len(both), float(u.mean()), float(s.mean()), float((s - u).mean()), lo, hi))
    return out


def evaluate_ood(lm: LoadedModel,
                 behaviour: str, cases: Sequence[OODCase], vector: SteeringVector, layer: Site, strength: float,
                 judge: Judge, *, out_dir: str | Path | None = None, positions: str = "answer",
                 schedule: str = "constant",
                 max_new_tokens: int = 64, batch_size: int = 8, n_boot: int = 2000, seed: int = 0,
                 log: Callable[[str], None] = lambda s: None, generator: TextGenerator = generate) -> OODResult:
    """Generate (or reuse saved generations), judge, project and gap-score; write files as it goes.

    Files in `out_dir`: ood_generations.jsonl (appended per batch; reused on a rerun),
    ood_scores.jsonl (one record per response with every measure), ood.json (effects).
    """
    out = Path(out_dir) if out_dir is not None else None
    gen_path = out / "ood_generations.jsonl" if out else None
    seconds = {}
    t = time.perf_counter()
    done = read_generations(gen_path) if gen_path is not None and gen_path.is_file() else {}
    # an unsteered response does not depend on the layer, strength or positions, so it is reused whatever they were
    done = {k: g for k, g in done.items()
            if g.condition == "unsteered" or (as_site(g.layer) == as_site(layer) and abs(g.strength - strength) < 1e-9
                                              and g.positions == positions and g.schedule == schedule)}
    if done:
        log(f"reusing {len(done)} saved generations")
    gens = generate_ood(lm, cases, vector, layer, strength, positions=positions, schedule=schedule,
                        max_new_tokens=max_new_tokens,
                        batch_size=batch_size, out_path=gen_path, done=done,
                        on_batch=lambda b, n: log(f"generated batch {b}/{n}"), generator=generator)
    seconds["generate"] = time.perf_counter() - t

    t = time.perf_counter()
    requests = [JudgeRequest(g.prompt, g.response, behaviour, g.criteria) for g in gens]
    log(f"judging {len(requests)} responses")
    judged = judge.score(requests)
    if len(judged) != len(requests):
        raise SteerlabError(f"the judge returned {len(judged)} scores for {len(requests)} responses")
    seconds["judge"] = time.perf_counter() - t

    t = time.perf_counter()
    log("projections and log-prob gaps")
    proj = response_projections(lm, gens, vector, layer, batch_size=batch_size) if not vector.per_position else [None] * len(gens)
    gaps = logprob_gaps(lm, cases, vector, layer, strength, schedule=schedule, positions=positions)
    seconds["judge_free"] = time.perf_counter() - t

    records = []
    for g, j, p in zip(gens, judged, proj):
        r = {**asdict(g), "judge": float(j), "projection": p}
        if g.key in gaps:
            r["logprob_gap"] = gaps[g.key][0 if g.condition == "unsteered" else 1]
        records.append(r)
    kinds = sorted({c.kind for c in cases})
    measures = []
    for m in ("judge", "projection", "logprob_gap"):
        measures += _effects(records, m, kinds, n_boot, seed)
    config = {"n_cases": len(cases), "kinds": kinds, "lengths": sorted({c.length for c in cases}),
              "positions": positions, "max_new_tokens": max_new_tokens, "judge": judge.name}
    if schedule != "constant":
        config["schedule"] = schedule
    result = OODResult(behaviour, as_site(layer), float(strength), judge.name, records, measures, seconds, config)
    if out is not None:
        results.write_json(out / "ood_scores.json", records)
        results.write_result(out / "ood.json", result.to_json())
    return result


def plot_ood(data: dict, in_distribution: dict | None, path: str | Path) -> Path:
    """Two panels: the judge's OOD effect per kind next to the in-distribution effect (both probabilities
    in [0, 1]), and the judge-free projection effect per kind (residual-stream units), with 95% intervals."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(8.0, 4.0), dpi=110, gridspec_kw={"width_ratios": [3, 2]})
    panels = {"left": [], "right": []}
    if in_distribution is not None:
        panels["left"].append(("in-distribution\np(match)", in_distribution["effect"], in_distribution["effect_low"],
                               in_distribution["effect_high"], "tab:blue"))
    for m in data["measures"]:
        if m["kind"] == "all":
            continue
        if m["measure"] == "judge":
            panels["left"].append((f"OOD {m['kind']}\njudge", m["effect"], m["effect_low"], m["effect_high"], "tab:orange"))
        elif m["measure"] == "projection":
            panels["right"].append((f"{m['kind']}", m["effect"], m["effect_low"], m["effect_high"], "tab:green"))
        elif m["measure"] == "logprob_gap":
            panels["right"].append((f"{m['kind']}\nlogp gap", m["effect"], m["effect_low"], m["effect_high"], "tab:gray"))
    if not panels["left"] and not panels["right"]:
        raise SteerlabError("nothing to plot: no OOD measures")
    for ax, bars, ylabel in ((left, panels["left"], "steered − unsteered (probability)"),
                             (right, panels["right"], "steered − unsteered projection on v̂")):
        if not bars:
            ax.set_axis_off()
            continue
        xs = np.arange(len(bars))
        ax.bar(xs, [b[1] for b in bars], color=[b[4] for b in bars],
               yerr=np.array([[b[1] - b[2] for b in bars], [b[3] - b[1] for b in bars]]), capsize=4)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(xs, [b[0] for b in bars], fontsize=7)
        ax.set_ylabel(ylabel, fontsize=8)
    left.set_title("behaviour: in-distribution vs OOD judge", fontsize=9)
    right.set_title("judge-free: response projection", fontsize=9)
    fig.suptitle(f"OOD vs in-distribution (layer {data['layer']}, alpha {data['strength']:.3g})", fontsize=10)
    return results.save_figure(fig, path)
