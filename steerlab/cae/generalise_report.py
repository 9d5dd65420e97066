"""What finished generalisation runs say, per cell and across behaviours (read from their files, no model).

Beside the numbers `run_generalise` puts in `summary.json`, each cell's saved OOD responses give
- *distinct-2*: the mean distinct word-bigram ratio of the responses, unsteered, at +r and at -r (steering that
  loops or stutters shows here before it shows in a judge's score);
- *the monitoring correlation* (issue 26 item 4): Pearson r between a response's projection on the cell's vector
  (its response-token mean at the chosen layer, read unsteered) and the judge's trait score, over the open-ended
  responses of the cell (unsteered once, +r and -r), with a 95 % interval that resamples prompts (a prompt keeps
  its three responses, which are not independent);
- *the unsteered read-out*: the same Pearson r over the *unsteered* responses only (both kinds): how well the vector
  reads the trait in free text before it steers anything (no steered response enters it, so the steering effect
  cannot raise it; `carry_over` compares it with the effect);
- *the open-ended effect per prompt length* (short / medium / long, with `--ood-lengths` naming several): the
  paired steered − unsteered judge score over each length's prompts, with its 95 % bootstrap interval.

`meets_goal` is the issue's bar for one cell: the open-ended effect's 95 % interval above 0 at +r and below 0 at
-r, with the perplexity ratio at most 1.5 at both signs, and a judge that can tell (AUC >= 0.8). The issue adds a
proviso that needs a second cell: the in-distribution effect at +r stays within CAA's interval or above
(`within_caa`, against the behaviour's CAA cells among the reports or `baseline`); `goal_verdict` says both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import results
from .goal import MAX_PPL_RATIO, MIN_JUDGE_AUC
from .sites import Site, as_site, site_label
from .stats import bootstrap_ci
from .text_measures import mean_distinct

Interval = tuple[float, float, float]
SIGNS = {"ood_plus": "+r", "ood_minus": "-r"}
METHODS = ("caa", "multiformat", "bipo", "persona", "persona-bipo")  # the order of columns and figure colours


@dataclass
class CellReport:
    """One (behaviour, method, seed) cell of a generalisation run.

    Attributes:
        behaviour, method, seed, layer, relative: what was run.
        judge_auc: the judge's AUC on the behaviour's labelled validation texts.
        in_plus, in_minus: the in-distribution effect at +r / -r (effect, low, high).
        ood: "open-ended +r" etc. -> (effect, low, high) of the judged OOD effect.
        ppl_plus, ppl_minus: perplexity ratio on the corpus at +r / -r.
        distinct2: "unsteered" / "+r" / "-r" -> mean distinct-2 of the OOD responses.
        monitor_r: (r, low, high) of projection vs judge on the open-ended responses; monitor_n responses.
        readout_r: Pearson r of projection vs judge on the unsteered responses of both kinds (None: too few).
        by_length: "+r" / "-r" -> prompt length -> (effect, low, high) of the judged open-ended effect.
        seconds: stage -> seconds; machine: the machine block of the OOD stage.
        command: the command that reruns (or resumes) this cell.
        unsteered_open: the mean judged score of the unsteered open-ended responses.
        labelled: the judge's mean score on the labelled validation texts, (matching, not matching).
    """

    behaviour: str
    method: str
    seed: int
    layer: Site
    relative: float
    judge_auc: float
    in_plus: Interval
    in_minus: Interval
    ood: dict[str, Interval] = field(default_factory=dict)
    ppl_plus: float = float("nan")
    ppl_minus: float = float("nan")
    distinct2: dict[str, float | None] = field(default_factory=dict)
    monitor_r: Interval | None = None
    monitor_n: int = 0
    readout_r: float | None = None
    by_length: dict[str, dict[str, Interval]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    machine: dict = field(default_factory=dict)
    command: str = ""
    unsteered_open: float | None = None
    labelled: tuple[float, float] | None = None

    @property
    def judge_can_tell(self) -> bool:
        return self.judge_auc >= MIN_JUDGE_AUC

    @property
    def meets_goal(self) -> bool:
        plus, minus = self.ood.get("open-ended +r"), self.ood.get("open-ended -r")
        return (self.judge_can_tell and plus is not None and minus is not None and plus[1] > 0 and minus[2] < 0
                and self.ppl_plus <= MAX_PPL_RATIO and self.ppl_minus <= MAX_PPL_RATIO)


def response_records(cell: Path) -> list[dict]:
    """The cell's scored OOD responses, each with a "sign" ("unsteered", "+r", "-r"); the unsteered responses,
    judged in both stages, once."""
    out, seen = [], set()
    for stage, sign in SIGNS.items():
        path = cell / stage / "ood_scores.json"
        if not path.is_file():
            continue
        for r in results.read_json(path):
            tag = "unsteered" if r["condition"] == "unsteered" else sign
            if tag == "unsteered":
                if r["key"] in seen:
                    continue
                seen.add(r["key"])
            out.append({**r, "sign": tag})
    return out


def effects_by_length(recs: Sequence[dict], kind: str = "open-ended") -> dict[str, dict[str, Interval]]:
    """Per sign and prompt length, the mean paired steered - unsteered judge score of `kind`'s prompts with its
    95 % bootstrap interval (`response_records` rows)."""
    unsteered = {r["key"]: r["judge"] for r in recs if r["sign"] == "unsteered" and r["kind"] == kind}
    out: dict[str, dict[str, Interval]] = {}
    for sign in ("+r", "-r"):
        diffs: dict[str, list[float]] = {}
        for r in recs:
            if r["sign"] == sign and r["kind"] == kind and r["key"] in unsteered:
                diffs.setdefault(r["length"], []).append(r["judge"] - unsteered[r["key"]])
        out[sign] = {n: (float(np.mean(d)), *bootstrap_ci(d)) for n, d in diffs.items()}
    return out


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r (nan when either side is constant)."""
    if len(x) < 3 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def monitor_correlation(records: Sequence[dict], kind: str = "open-ended", *, n_boot: int = 2000,
                        seed: int = 0) -> tuple[Interval | None, int]:
    """Pearson r of projection vs judge score over `kind`'s responses, with a 95 % prompt-resampling interval."""
    rows = [r for r in records if r["kind"] == kind and r.get("projection") is not None]
    if len(rows) < 3:
        return None, len(rows)
    x = np.array([r["projection"] for r in rows], float)
    y = np.array([r["judge"] for r in rows], float)
    prompts = sorted({r["key"] for r in rows})
    members = [np.flatnonzero([r["key"] == p for r in rows]) for p in prompts]
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = np.concatenate([members[i] for i in rng.integers(0, len(prompts), len(prompts))])
        r = pearson(x[idx], y[idx])
        if np.isfinite(r):
            boots.append(r)
    r = pearson(x, y)
    if not boots or not np.isfinite(r):
        return None, len(rows)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return (r, float(lo), float(hi)), len(rows)


def unsteered_readout(records: Sequence[dict]) -> float | None:
    """Pearson r of projection vs judge score over the unsteered responses (every kind); None with fewer than three
    or when either side is constant."""
    rows = [r for r in records if r["sign"] == "unsteered" and r.get("projection") is not None]
    r = pearson(np.array([r["projection"] for r in rows], float), np.array([r["judge"] for r in rows], float))
    return r if np.isfinite(r) else None


def rerun_command(run_dir: Path, method: str, seed: int, model: str) -> str:
    """The `steerlab cae generalise` line that reruns (resumes) one cell of `run_dir` (settings from its config)."""
    cfg = results.read_json(run_dir / "config.json")
    parts = [f"steerlab cae generalise {Path(cfg['behaviour']).stem} -o {run_dir}"]
    if cfg["layers"]:
        parts.append(f"--layers {','.join(str(l) for l in cfg['layers'])}")
    if cfg.get("bands"):
        parts.append(f"--bands {','.join(site_label(tuple(b)) for b in cfg['bands'])}")
    parts.append(f"--methods {method} --seeds {seed}")
    from .generalise import GeneraliseConfig

    defaults = {f.name: f.default for f in fields(GeneraliseConfig)}
    for key in ("relative", "n_train", "n_val", "n_test", "split_seed", "ood_lengths", "ood_limit", "max_new_tokens",
                "bipo_steps", "bipo_batch", "persona_keep", "persona_reading", "select_on", "open_questions",
                "positions", "schedule"):
        default = defaults[key]
        default = list(default) if isinstance(default, tuple) else default  # config.json holds lists
        value = cfg.get(key, default)
        if value != default:
            value = ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) \
                if isinstance(value, list) else value
            parts.append(f"--{key.replace('_', '-')} {value}")
    if method in ("persona", "persona-bipo") and not cfg.get("persona_judge", True):
        parts.append("--no-persona-judge")
    judge = results.read_json(run_dir / "judge_check.json").get("judge", "local") \
        if (run_dir / "judge_check.json").is_file() else "local"
    if judge.startswith("local:"):  # a local judge on another model than the one under study
        parts.append(f"--judge-model {judge[len('local:'):]}")
    parts.append(f"--model {model} --threads 1" if model else "--threads 1")
    return " ".join(parts)


def _interval(v) -> Interval | None:
    return None if v is None or isinstance(v, str) else (float(v[0]), float(v[1]), float(v[2]))


def cell_report(run_dir: Path, row: dict, model: str | None = None, behaviour: str | None = None) -> CellReport:
    """One summary row of `run_dir` with what its cell's files add (see the module docstring); `model` for the rerun
    command (None: the cell's vector's model id)."""
    cell = run_dir / row["method"] / f"seed{row['seed']}"
    ind = results.read_json(cell / "in_distribution.json")
    ood = {}
    for stage, sign in SIGNS.items():
        for kind in ("open-ended", "choice-qa", "custom"):
            v = _interval(row.get(f"{stage}_{kind}"))
            if v is not None:
                ood[f"{kind} {sign}"] = v
    recs = response_records(cell)
    distinct = {s: mean_distinct([r["response"] for r in recs if r["sign"] == s]) for s in ("unsteered", "+r", "-r")}
    monitor, n = monitor_correlation(recs)
    plus_ood = cell / "ood_plus" / "ood.json"
    machine = results.read_json(plus_ood).get("machine", {}) if plus_ood.is_file() else {}
    if model is None and (cell / "vector.safetensors").is_file():
        from ..models import EMBEDDED_MODEL_ID
        from ..vector import SteeringVector

        model = SteeringVector.load(cell / "vector.safetensors").meta.model_id
        if model == EMBEDDED_MODEL_ID:  # the default model: its rerun command names none
            model = ""
    ppl = row["ppl_ratio"]
    rel = row["relative"]
    open_unsteered = [r["judge"] for r in recs if r["sign"] == "unsteered" and r["kind"] == "open-ended"]
    check = results.read_json(run_dir / "judge_check.json") if (run_dir / "judge_check.json").is_file() else {}
    labelled = (float(check["mean_matching"]), float(check["mean_not_matching"])) \
        if "mean_matching" in check and "mean_not_matching" in check else None
    command = rerun_command(Path(run_dir), row["method"], int(row["seed"]), "MODEL" if model is None else model)
    if machine.get("dtype") in ("bfloat16", "float32", "float16"):
        # the directory refuses other numerics, and `auto` picks by the CPU: name the one the cell was made in
        command = f"STEERLAB_DTYPE={machine['dtype']} " + command
    return CellReport(behaviour or Path(run_dir).name, row["method"], int(row["seed"]), as_site(row["layer"]), float(rel),
                      float(row["judge_auc"]), (ind["effect_plus"], ind["plus_low"], ind["plus_high"]),
                      (ind["effect_minus"], ind["minus_low"], ind["minus_high"]), ood,
                      float(ppl.get(f"{rel:+g}", float("nan"))), float(ppl.get(f"{-rel:+g}", float("nan"))),
                      distinct, monitor, n, unsteered_readout(recs), effects_by_length(recs), dict(row.get("seconds", {})), machine,
                      command, unsteered_open=float(np.mean(open_unsteered)) if open_unsteered else None,
                      labelled=labelled)


def collect(run_dirs: Sequence[str | Path], model: str | None = None) -> list[CellReport]:
    """Every summarised cell of every run directory (a directory without summary.json is skipped)."""
    out = []
    for d in map(Path, run_dirs):
        path = d / "summary.json"
        if path.is_file():
            summary = results.read_json(path)
            out += [cell_report(d, row, model, summary.get("behaviour")) for row in summary["rows"]]
    return out


def _fmt(v: Interval | None) -> str:
    return "–" if v is None else f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"


def markdown_table(reports: Sequence[CellReport], baseline: Sequence[CellReport] = ()) -> str:
    """One row per cell: its layer and strength r, OOD open-ended and choice-qa effects at +r and -r,
    in-distribution effects, perplexity ratios, distinct-2, the monitoring correlation, the judge's AUC and minutes;
    "judge cannot tell" where the judge's AUC is below 0.8; the goal column is `goal_verdict` against the CAA cells of
    `reports` and `baseline`."""
    head = ("| behaviour | method | seed | layer | r | OOD open-ended +r | OOD open-ended −r | choice-qa +r | "
            "choice-qa −r | in-dist +r | in-dist −r | ppl +r / −r | distinct-2 unst. / +r / −r | monitor r | judge AUC | goal | min |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in reports:
        def ood(key: str) -> str:
            return _fmt(c.ood.get(key)) if c.judge_can_tell else "judge cannot tell"

        d = " / ".join("–" if c.distinct2.get(s) is None else f"{c.distinct2[s]:.2f}" for s in ("unsteered", "+r", "-r"))
        lines.append(f"| {c.behaviour} | {c.method} | {c.seed} | {site_label(c.layer)} | {c.relative:g} | "
                     f"{ood('open-ended +r')} | {ood('open-ended -r')} | {ood('choice-qa +r')} | {ood('choice-qa -r')} | {_fmt(c.in_plus)} | "
                     f"{_fmt(c.in_minus)} | {c.ppl_plus:.2f} / {c.ppl_minus:.2f} | {d} | {_fmt(c.monitor_r)} | "
                     f"{c.judge_auc:.2f} | {goal_verdict(c, [*reports, *baseline])} | "
                     f"{sum(c.seconds.values()) / 60:.0f} |")
    return "\n".join(lines)


def length_table(reports: Sequence[CellReport], lengths: Sequence[str] = ("short", "medium", "long")) -> str:
    """One row per cell: the judged open-ended effect at +r and at -r on each prompt length (95 % intervals);
    "judge cannot tell" cells are left out."""
    head = "| behaviour | method | seed | " + " | ".join(f"{s} {n}" for s in ("+r", "−r") for n in lengths) + " |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in reports:
        if c.judge_can_tell:
            cells = [_fmt(c.by_length.get(s, {}).get(n)) for s in ("+r", "-r") for n in lengths]
            lines.append(f"| {c.behaviour} | {c.method} | {c.seed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def within_caa(cell: CellReport, reference: Sequence[CellReport]) -> bool | None:
    """Whether `cell`'s in-distribution effect at +r is within its behaviour's CAA interval or above (at least the
    lowest CAA lower bound among `reference`); None when `reference` has no CAA cell of the behaviour."""
    lows = [c.in_plus[1] for c in reference if c.behaviour == cell.behaviour and c.method == "caa"]
    return None if not lows else bool(cell.in_plus[0] >= min(lows))


def goal_verdict(cell: CellReport, reference: Sequence[CellReport]) -> str:
    """The goal column: "yes", "no", "no (in-dist below CAA)" (the OOD bar met, the proviso not) or
    "yes (no CAA cell)" (the OOD bar met, nothing to hold the in-distribution effect against)."""
    if not cell.meets_goal:
        return "no"
    ok = within_caa(cell, reference)
    return "yes" if ok else ("yes (no CAA cell)" if ok is None else "no (in-dist below CAA)")


def counts_as_met(cell: CellReport, reference: Sequence[CellReport]) -> bool:
    """The goal met, its proviso not failed against `reference`'s CAA cells ("yes" or "yes (no CAA cell)")."""
    return cell.meets_goal and within_caa(cell, reference) is not False


def goal_counts(reports: Sequence[CellReport], baseline: Sequence[CellReport] = ()) -> dict[str, tuple[int, int]]:
    """Per method: (behaviours where some seed meets the goal with the in-distribution proviso not failed against
    the CAA cells of `reports` and `baseline`, behaviours measured)."""
    out: dict[str, tuple[set, set]] = {}
    reference = [*reports, *baseline]
    for c in reports:
        met, seen = out.setdefault(c.method, (set(), set()))
        seen.add(c.behaviour)
        if counts_as_met(c, reference):
            met.add(c.behaviour)
    return {m: (len(met), len(seen)) for m, (met, seen) in out.items()}


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values))


def overview_entry(cells: Sequence[CellReport], reference: Sequence[CellReport]) -> str:
    """One behaviour's cells of one method (its seeds) in one table entry: the judged open-ended effect at +r / -r
    and the perplexity ratio at +r (means over the seeds), and at how many seeds the cell meets the goal
    (`counts_as_met`); where the judge cannot tell, the in-distribution effect at +r / -r instead."""
    if not cells:
        return "–"
    n = len(cells)
    seeds = f"{n} seed{'s' if n > 1 else ''}"
    told = [c for c in cells if c.judge_can_tell]
    if not told:
        return (f"judge cannot tell · in-dist {_mean([c.in_plus[0] for c in cells]):+.3f} / "
                f"{_mean([c.in_minus[0] for c in cells]):+.3f} · {seeds}")
    plus = [c.ood["open-ended +r"][0] for c in told if "open-ended +r" in c.ood]
    minus = [c.ood["open-ended -r"][0] for c in told if "open-ended -r" in c.ood]
    met = sum(counts_as_met(c, reference) for c in cells)
    effects = " / ".join("–" if not v else f"{_mean(v):+.3f}" for v in (plus, minus))
    return f"{effects} · ×{_mean([c.ppl_plus for c in cells]):.2f} · goal {met}/{n}"


def overview_table(reports: Sequence[CellReport], baseline: Sequence[CellReport] = ()) -> str:
    """Behaviours × methods, a cell's seeds pooled into one entry (`overview_entry`), the goal held against the
    CAA cells of `reports` and `baseline`; a last row counts the behaviours where the goal is met at every seed
    measured and at some seed."""
    reference = [*reports, *baseline]
    methods = [m for m in METHODS if any(c.method == m for c in reports)]
    methods += sorted({c.method for c in reports} - set(methods))
    behaviours = sorted({c.behaviour for c in reports})
    head = "| behaviour | " + " | ".join(methods) + " |"
    lines = [head, "|" + "---|" * (len(methods) + 1)]
    for b in behaviours:
        lines.append(f"| {b} | " + " | ".join(
            overview_entry([c for c in reports if c.behaviour == b and c.method == m], reference) for m in methods) + " |")
    counts = []
    for m in methods:
        per = [[counts_as_met(c, reference) for c in reports if c.behaviour == b and c.method == m]
               for b in behaviours]
        per = [v for v in per if v]
        counts.append(f"every seed {sum(all(v) for v in per)} · some seed {sum(any(v) for v in per)} · of {len(per)}")
    lines.append("| goal met | " + " | ".join(counts) + " |")
    return "\n".join(lines)


def plot(reports: Sequence[CellReport], path: str | Path) -> Path:
    """The open-ended OOD effect at +r and -r per behaviour and method (95 % intervals), one panel per sign."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    behaviours = sorted({c.behaviour for c in reports})
    methods = [m for m in METHODS if any(c.method == m for c in reports)]
    fig, axes = plt.subplots(1, 2, figsize=(10, max(2.5, 0.6 + 0.3 * len(behaviours) * len(methods))), dpi=110,
                             sharey=True)
    colours = dict(zip(METHODS, ("tab:gray", "tab:blue", "tab:orange", "tab:green", "tab:purple")))
    for ax, sign in zip(axes, ("+r", "-r")):
        labelled: set[str] = set()  # each method named once per panel, at its first plotted cell
        for bi, b in enumerate(behaviours):
            if not any(c.behaviour == b and c.judge_can_tell for c in reports):
                ax.text(0, bi, "judge cannot tell", ha="center", va="center", fontsize=7, color="gray")
                continue
            for mi, m in enumerate(methods):
                cells = [c for c in reports if c.behaviour == b and c.method == m and c.judge_can_tell
                         and f"open-ended {sign}" in c.ood]
                for si, c in enumerate(cells):
                    e, lo, hi = c.ood[f"open-ended {sign}"]
                    y = bi + (mi - (len(methods) - 1) / 2) * 0.18 + si * 0.04
                    ax.errorbar(e, y, xerr=[[e - lo], [hi - e]], fmt="o", ms=3, color=colours[m], capsize=2,
                                label=None if m in labelled else m)
                    labelled.add(m)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_title(f"OOD open-ended judged effect at {sign}", fontsize=9)
        ax.set_xlabel("steered − unsteered judge score", fontsize=8)
    axes[0].set_yticks(range(len(behaviours)), behaviours, fontsize=7)
    axes[0].invert_yaxis()
    handles, labels = axes[0].get_legend_handles_labels()
    bottom = 0.0
    if handles:  # below the panels, where it hides no interval
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=7, frameon=False)
        bottom = 0.6 / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def to_json(reports: Sequence[CellReport]) -> list[dict]:
    """The reports as JSON rows (for the results directory)."""
    return [dict(asdict(c), judge_can_tell=c.judge_can_tell, meets_goal=c.meets_goal) for c in reports]
