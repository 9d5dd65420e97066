"""Painless Activation Steering end to end: vectors, automatic (layer, strength) choice, seeds, controls.

    from steerlab.pas import run_pas
    res = run_pas(lm, load_task("bbq-nationality"), method="ipas-wo", seeds=5, cap=400)
    print(res.summary_table())            # Delta (test accuracy steered - unsteered), 95% t-interval, p
    res.vector("ipas-wo").save("v.safetensors")   # steers `steerlab generate` at the chosen layer/strength
    res.save("out/")                      # results.json, runs.csv, grid.csv, plots

One seed (`_run_seed`):

1. **Splits** (`splits.make_splits`): shuffle, cap, 60/20/20, every question's choices shuffled
   independently.
2. **Unsteered answers on the training split**: the PAS prompt (`methods.pas.mc_prompt`) is scored;
   the answer is the argmax over the letters.
3. **Vectors** for every requested variant and every grid layer from ONE capture of the distinct
   prompts they need (`methods.pas.pas_activations`).
4. **Selection on validation**: one `engine.score` call with the unsteered setting and every
   (variant, layer, strength) setting at positions="last_prompt"; each variant keeps the setting
   with the best validation accuracy (ties: higher mean gold-letter probability, then smaller
   |strength|, then lower layer). The unsteered model is not a candidate (as in the paper).
5. **Test**: one `score` call, unsteered and each variant's chosen setting; Delta = steered -
   unsteered test accuracy, with the letter-bias control (`bias`).

Letters: p(letter) = p("A") + p(" A"), normalised over the item's letters (`letters`). On the
training split the answers and the PASf activations come from one fused pass
(`letters.answer_and_capture`).

Grid. The paper's layers {8,11,13,14,15,16,17,19,22,25} of 32 are scaled to the model's depth
(`default_layers`; 30 layers: 8,10,12,13,14,15,16,18,21,23) and its strengths
{0.25,0.5,0.75,1,4,7,...,28,32} are used with both signs (`default_strengths`): on small models a
vector can act against the sign it was trained with.

ICL (`icl_k > 0`): k exemplars (prompt + " " + gold letter), drawn with the seed from the training
items the unsteered model got wrong, are prefixed to every multiple-choice prompt (training
answers, PASf activations, validation, test); exemplars leave the training set. iPAS texts
(question + answer) stay unprefixed. The result then has "ICL alone" as the unsteered baseline
and also the plain model's test accuracy (`test_plain`).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Sequence

from tqdm.auto import tqdm

from ..data.prompts import format_mc_prompt, gold_letter
from ..data.records import MCItem
from ..engine import Setting
from ..errors import DatasetError, SteerlabError
from ..methods.pas import PASActivations, PASExample, normalize_method, pas_activations, pas_contrast
from ..position_policies import check_policy
from ..vector import SteeringVector
from .bias import LetterBiasReport, letter_bias_report
from .letters import LetterScores, PromptMemo, score_letters
from .splits import DEFAULT_CAP, DEFAULT_FRACTIONS, PASSplits, Shown, make_splits
from .stats import SeedSummary, summarize

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel

PAPER_LAYERS_32 = (8, 11, 13, 14, 15, 16, 17, 19, 22, 25)
PAPER_STRENGTHS = (0.25, 0.5, 0.75, 1.0, 4.0, 7.0, 10.0, 13.0, 16.0, 19.0, 22.0, 25.0, 28.0, 32.0)


# --------------------------------------------------------------------------------------------- grid


def default_layers(n_layers: int) -> list[int]:
    """The paper's layer grid (of 32) scaled to `n_layers`: round(l * n / 32), deduplicated."""
    if n_layers < 1:
        raise SteerlabError(f"a model needs at least one layer, got {n_layers}")
    return sorted({min(n_layers - 1, max(0, math.floor(l * n_layers / 32 + 0.5))) for l in PAPER_LAYERS_32})


def default_strengths(signs: str = "both") -> list[float]:
    """The paper's strengths; signs="both" adds their negatives (negative first), "positive" keeps them."""
    if signs == "positive":
        return list(PAPER_STRENGTHS)
    if signs == "both":
        return [-s for s in reversed(PAPER_STRENGTHS)] + list(PAPER_STRENGTHS)
    raise SteerlabError(f"signs must be 'both' or 'positive', got {signs!r}")


# --------------------------------------------------------------------------------------------- ICL


def icl_prefix(exemplars: Sequence[Shown]) -> str:
    """In-context exemplars: each PAS prompt followed by " <gold letter>", separated by blank lines."""
    return "".join(f"{format_mc_prompt(it, order)} {gold_letter(it, order)}\n\n" for it, order in exemplars)


# --------------------------------------------------------------------------------------------- selection


def select_best(accuracy: Sequence[float], gold_prob: Sequence[float], layers: Sequence[int],
                strengths: Sequence[float]) -> int:
    """Index of the chosen setting: best accuracy, then higher gold probability, smaller |strength|, lower layer."""
    n = len(accuracy)
    if n == 0 or not (len(gold_prob) == len(layers) == len(strengths) == n):
        raise SteerlabError("selection needs one accuracy, gold probability, layer and strength per setting")
    return min(range(n), key=lambda k: (-round(float(accuracy[k]), 12), -float(gold_prob[k]),
                                        abs(float(strengths[k])), int(layers[k]), float(strengths[k])))


@dataclass
class MethodRun:
    """One variant on one seed.

    Attributes:
        layer / strength: the chosen setting (by validation accuracy).
        val_accuracy / test_accuracy: accuracy with it; delta = test_accuracy - test unsteered.
        grid_accuracy: validation accuracy [layers, strengths] of the whole grid.
        letter_bias: the letter-bias control on the test split.
        vector: the chosen single-layer vector (metadata carries the selection), None if skipped.
        skipped: why the variant could not run on this seed ("" if it ran).
    """

    method: str
    layer: int | None = None
    strength: float | None = None
    val_accuracy: float = float("nan")
    test_accuracy: float = float("nan")
    delta: float = float("nan")
    val_delta: float = float("nan")
    grid_accuracy: list[list[float]] = field(default_factory=list)
    letter_bias: LetterBiasReport | None = None
    n_positive: int = 0
    n_negative: int = 0
    fallback: str = ""
    vector: SteeringVector | None = None
    vector_norm: float = float("nan")
    skipped: str = ""

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("method", "layer", "strength", "val_accuracy", "test_accuracy", "delta",
                                           "val_delta", "n_positive", "n_negative", "fallback", "vector_norm",
                                           "skipped", "grid_accuracy")}
        d["letter_bias"] = self.letter_bias.to_dict() if self.letter_bias else None
        return d


@dataclass
class SeedRun:
    """Everything one seed produced (splits, unsteered accuracies, each variant, timings in seconds)."""

    seed: int
    sizes: dict[str, int]
    train_accuracy: float
    val_unsteered: float
    test_unsteered: float
    methods: dict[str, MethodRun]
    wall_s: float
    phases: dict[str, float]
    test_plain: float | None = None  # ICL runs: the plain model (no exemplars, no steering) on test
    icl_exemplars: list[int] = field(default_factory=list)  # item indices of the exemplars

    def to_dict(self) -> dict:
        return {"seed": self.seed, "sizes": self.sizes, "train_accuracy": self.train_accuracy,
                "val_unsteered": self.val_unsteered, "test_unsteered": self.test_unsteered,
                "test_plain": self.test_plain, "icl_exemplars": self.icl_exemplars, "wall_s": self.wall_s,
                "phases": self.phases, "methods": {m: r.to_dict() for m, r in self.methods.items()}}


@dataclass
class PASConfig:
    """How `run_pas` runs (see its docstring)."""

    methods: tuple[str, ...] = ("ipas-wo",)
    seeds: tuple[int, ...] = (0,)
    cap: int | None = DEFAULT_CAP
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    layers: tuple[int, ...] = ()
    strengths: tuple[float, ...] = ()
    positions: str = "last_prompt"
    chat_template: bool = True
    choice_shuffle: str = "independent"
    choice_seed: int | None = None
    icl_k: int = 0
    dataset: str = ""
    batch_size: int = 16

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class PASResult:
    """Runs of one dataset over seeds and variants. `summary()` aggregates Delta over seeds."""

    config: PASConfig
    model_id: str
    runs: list[SeedRun]
    wall_s: float = 0.0

    @property
    def methods(self) -> tuple[str, ...]:
        return self.config.methods

    def deltas(self, method: str, kind: str = "delta") -> list[float]:
        """Per-seed Delta ("delta"), letter-balanced Delta ("balanced_delta") or validation Delta ("val_delta")."""
        out = []
        for r in self.runs:
            m = r.methods.get(method)
            if m is None or m.skipped:
                continue
            if kind == "balanced_delta":
                out.append(m.letter_bias.balanced_delta)
            else:
                out.append(getattr(m, kind))
        return out

    def summary(self, method: str) -> dict:
        """Delta and the letter-balanced Delta with t-intervals, mean accuracies, chosen settings."""
        method = normalize_method(method)
        ran = [r for r in self.runs if method in r.methods and not r.methods[method].skipped]
        mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
        d = {
            "method": method, "n_seeds": len(ran), "skipped": [r.methods[method].skipped for r in self.runs
                                                              if method in r.methods and r.methods[method].skipped],
            "delta": summarize(self.deltas(method)).to_dict(),
            "balanced_delta": summarize(self.deltas(method, "balanced_delta")).to_dict(),
            "test_unsteered": mean([r.test_unsteered for r in ran]),
            "test_steered": mean([r.methods[method].test_accuracy for r in ran]),
            "val_unsteered": mean([r.val_unsteered for r in ran]),
            "val_steered": mean([r.methods[method].val_accuracy for r in ran]),
            "chosen": [(r.methods[method].layer, r.methods[method].strength) for r in ran],
            "majority_train": mean([r.methods[method].letter_bias.majority_train for r in ran]),
            "majority_test": mean([r.methods[method].letter_bias.majority_test for r in ran]),
            "pred_shift": mean([r.methods[method].letter_bias.pred_shift for r in ran]),
            "top_letter_share_steered": mean([r.methods[method].letter_bias.top_letter_share_steered for r in ran]),
            "top_letter_share_unsteered": mean([max(r.methods[method].letter_bias.pred_unsteered.values()) for r in ran]),
            "wall_s_per_seed": mean([r.wall_s for r in self.runs]),
        }
        plain = [r.test_plain for r in ran if r.test_plain is not None]
        if plain:
            d["test_plain"] = mean(plain)
        return d

    def best_seed(self, method: str) -> SeedRun:
        """The seed whose chosen setting has the best validation accuracy (never chosen on test)."""
        method = normalize_method(method)
        ran = [r for r in self.runs if method in r.methods and not r.methods[method].skipped]
        if not ran:
            reasons = "; ".join(r.methods[method].skipped for r in self.runs if method in r.methods)
            raise SteerlabError(f"{method} produced no vector on any seed: {reasons}")
        return max(ran, key=lambda r: (r.methods[method].val_accuracy, -r.seed))

    def vector(self, method: str | None = None) -> SteeringVector:
        """The chosen vector of the best-validation seed; its metadata says layer, strength, positions and results."""
        method = normalize_method(method or self.methods[0])
        run = self.best_seed(method)
        vec = run.methods[method].vector
        if vec is None:
            raise SteerlabError(f"the {method} vector of seed {run.seed} was not kept (keep_vectors=False)")
        from ..results import json_safe

        s = self.summary(method)
        extra = {**vec.meta.extra, "selection_summary": json_safe({
            "delta": s["delta"], "balanced_delta": s["balanced_delta"], "test_unsteered": s["test_unsteered"],
            "test_steered": s["test_steered"], "chosen_per_seed": s["chosen"], "n_seeds": s["n_seeds"]})}
        return SteeringVector(vec.directions, replace(vec.meta, extra=extra))

    def to_dict(self) -> dict:
        return {"model_id": self.model_id, "config": self.config.to_dict(), "wall_s": self.wall_s,
                "summary": {m: self.summary(m) for m in self.methods},
                "runs": [r.to_dict() for r in self.runs]}

    def summary_table(self) -> str:
        """A plain-text table: per variant, test accuracies, Delta and balanced Delta (pp, 95% t-interval), p."""
        lines = [f"{'method':8} {'seeds':>5} {'unsteered':>9} {'steered':>8} {'Delta pp [95% CI]':>24} "
                 f"{'p(D>0)':>7} {'balanced Delta pp':>24} {'s/seed':>7}"]
        for m in self.methods:
            s = self.summary(m)
            d, b = SeedSummary(**s["delta"]), SeedSummary(**s["balanced_delta"])
            p = "n/a" if math.isnan(d.p_greater) else f"{d.p_greater:.3f}"
            lines.append(f"{m:8} {s['n_seeds']:>5} {100 * s['test_unsteered']:>9.1f} {100 * s['test_steered']:>8.1f} "
                         f"{d.format():>24} {p:>7} {b.format():>24} {s['wall_s_per_seed']:>7.0f}")
        return "\n".join(lines)

    def save(self, out_dir, *, plots: bool = True, force: bool = False) -> dict[str, str]:
        """Write results.json, runs.csv, grid.csv (and PNG plots); see `report.save_result`."""
        from .report import save_result

        return save_result(self, out_dir, plots=plots, force=force)


# --------------------------------------------------------------------------------------------- the run


def _seeds(seeds: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(seeds, bool):
        raise SteerlabError(f"seeds must be a count or a list of seeds, got {seeds!r}")
    if isinstance(seeds, int):
        if seeds < 1:
            raise SteerlabError(f"the number of seeds must be positive, got {seeds}")
        return tuple(range(seeds))
    out = tuple(int(s) for s in seeds)
    if not out:
        raise SteerlabError("no seeds given")
    return out


def run_pas(
    lm: LoadedModel,
    items: Sequence[MCItem],
    method: str | Sequence[str] = "ipas-wo",
    *,
    seeds: int | Sequence[int] = 1,
    cap: int | None = DEFAULT_CAP,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    layers: Sequence[int] | None = None,
    strengths: Sequence[float] | None = None,
    positions: str = "last_prompt",
    chat_template: bool | None = None,
    choice_shuffle: str = "independent",
    choice_seed: int | None = None,
    icl_k: int = 0,
    dataset: str = "",
    batch_size: int = 16,
    keep_vectors: bool = True,
    progress: bool = False,
    log=None,
) -> PASResult:
    """Painless Activation Steering on a labelled multiple-choice dataset (see the module docstring).

    Args:
        lm: a LoadedModel.
        items: the dataset (`steerlab.data.load_task(...)`).
        method: "pasf", "ipas-a", "ipas-wo", or several (they share splits, answers and one capture).
        seeds: a count (0..n-1) or explicit seeds; each reshuffles items, splits and choice orders.
        cap, fractions: at most `cap` items, split train/validation/test.
        layers, strengths: the grid (default: `default_layers(lm.n_layers)`, `default_strengths("both")`).
        positions: where the vector is added ("last_prompt", as PAS).
        chat_template: wrap prompts in the chat template (default: as `lm`).
        choice_shuffle: "independent" (default); "per-size" reproduces the reference code's fault.
        choice_seed: None (default) draws every question's choice order anew with each seed; an int
            fixes the orders across seeds (only the split varies), so the unsteered answers and
            activations of a recurring prompt are computed once (`PromptMemo`).
        icl_k: in-context exemplars prefixed to every multiple-choice prompt (0 = none).
        dataset: the name used in messages and results (default: the items' source).
        keep_vectors: keep each seed's chosen vector in the result.
        log: optional callable receiving one-line progress messages.
    """
    t_all = time.perf_counter()
    methods = tuple(dict.fromkeys(normalize_method(m) for m in ([method] if isinstance(method, str) else method)))
    if not methods:
        raise SteerlabError("no PAS method given")
    items = list(items)
    if not items:
        raise DatasetError(f"{dataset or 'dataset'}: no items")
    name = dataset or items[0].source or "dataset"
    check_policy(positions)
    grid_layers = tuple(default_layers(lm.n_layers) if layers is None else sorted({lm.blocks.check_layer(l) for l in layers}))
    grid_strengths = tuple(default_strengths() if strengths is None else [float(s) for s in strengths])
    if not grid_layers or not grid_strengths:
        raise SteerlabError("the grid needs at least one layer and one strength")
    if any(not math.isfinite(s) for s in grid_strengths):
        raise SteerlabError(f"strengths must be finite numbers, got {grid_strengths}")
    if icl_k < 0:
        raise SteerlabError(f"icl_k must be >= 0, got {icl_k}")
    templated = bool(lm.use_chat_template if chat_template is None else chat_template)
    config = PASConfig(methods, _seeds(seeds), cap, tuple(fractions), grid_layers, grid_strengths, positions,
                       templated, choice_shuffle, choice_seed, icl_k, name, batch_size)
    runs = []
    memo = PromptMemo()
    for seed in tqdm(config.seeds, desc=f"PAS {name or 'data'}: seeds", unit="seed", disable=not progress):
        splits = make_splits(items, seed, cap=cap, fractions=fractions, choice_shuffle=choice_shuffle,  # type: ignore[arg-type]
                             choice_seed=choice_seed, dataset=name)
        run = _run_seed(lm, splits, config, memo, keep_vectors=keep_vectors, progress=progress)
        runs.append(run)
        if log is not None:
            parts = ", ".join(f"{m} L{r.layer}@{r.strength:+g} {100 * r.delta:+.1f}pp" if not r.skipped else f"{m} skipped"
                              for m, r in run.methods.items())
            log(f"{name} seed {seed}: unsteered test {100 * run.test_unsteered:.1f}% | {parts} | {run.wall_s:.0f}s")
    return PASResult(config, lm.model_id, runs, time.perf_counter() - t_all)


@dataclass
class _Training:
    """Step 1 of a seed: the training examples with the unsteered answers (after any ICL exemplars)."""

    shown: list[Shown]
    examples: list[PASExample]
    accuracy: float
    prefix: str = ""
    exemplars: list[int] = field(default_factory=list)


def _train_answers(lm: LoadedModel, splits: PASSplits, config: PASConfig, memo: PromptMemo) -> _Training:
    """Unsteered answers on the training split; with ICL, exemplars drawn from its wrong answers are
    taken out and the remaining items answered again after them."""
    name = splits.dataset
    train = list(splits.train)
    read = "pasf" in config.methods  # the PASf prompts are the prompts being answered: read them in that pass
    answer = dict(chat_template=config.chat_template, batch_size=config.batch_size, dataset=name)
    scores = memo.answer(lm, train, config.layers, read=read and not config.icl_k, **answer)
    prefix, exemplars = "", []
    if config.icl_k:
        wrong = [k for k, c in enumerate(scores.correct[0].tolist()) if not c]
        if not wrong:
            raise DatasetError(f"{name} seed {splits.seed}: the model answers every training item correctly; no wrong "
                               f"items to draw in-context exemplars from")
        pick = set(random.Random(f"icl-{splits.seed}").sample(wrong, min(config.icl_k, len(wrong))))
        prefix = icl_prefix([train[k] for k in sorted(pick)])
        exemplars = [train[k][0].index for k in sorted(pick)]
        train = [x for k, x in enumerate(train) if k not in pick]
        if not train:
            raise DatasetError(f"{name} seed {splits.seed}: no training items left after taking {len(pick)} exemplars")
        scores = memo.answer(lm, train, config.layers, prefix=prefix, read=read, **answer)
    examples = [PASExample(it, order, p, prefix) for (it, order), p in zip(train, scores.pred_choices(0))]
    return _Training(train, examples, float(scores.accuracy[0]), prefix, exemplars)


def _build_vectors(lm: LoadedModel, training: _Training, splits: PASSplits, config: PASConfig, memo: PromptMemo, *,
                   progress: bool) -> tuple[dict[str, SteeringVector], PASActivations | None, dict[str, str]]:
    """Step 2: every runnable variant's vector at every grid layer from one capture; {variant: why not}
    for the variants whose contrast is empty (an error when none can run)."""
    where = f"{splits.dataset} seed {splits.seed}"
    skipped: dict[str, str] = {}
    for m in config.methods:
        try:
            pas_contrast(lm, training.examples, m, dataset=where, chat_template=config.chat_template)
        except DatasetError as e:
            skipped[m] = str(e)
    runnable = [m for m in config.methods if m not in skipped]
    if not runnable:
        raise DatasetError("; ".join(skipped.values()))
    acts = pas_activations(lm, training.examples, runnable, config.layers, dataset=where,
                           chat_template=config.chat_template, batch_size=config.batch_size, progress=progress,
                           known=memo.acts)
    memo.add_acts(list(acts.index), acts.acts)
    vectors = {m: acts.vector(lm, m, n_train=len(training.examples), extra={"dataset": splits.dataset,
                                                                              "seed": splits.seed})
               for m in runnable}
    return vectors, acts, skipped


def _choose(val: LetterScores, config: PASConfig, n_methods: int) -> list[int]:
    """Step 4: per variant (blocks of layers x strengths after the unsteered setting 0), the setting index."""
    nL, nS = len(config.layers), len(config.strengths)
    acc, gold = val.accuracy.tolist(), val.gold_prob.tolist()
    grid_layers = [l for l in config.layers for _ in config.strengths]
    grid_strengths = [s for _ in config.layers for s in config.strengths]
    out = []
    for i in range(n_methods):
        lo = 1 + i * nL * nS
        out.append(lo + select_best(acc[lo:lo + nL * nS], gold[lo:lo + nL * nS], grid_layers, grid_strengths))
    return out


def _run_seed(lm: LoadedModel, splits: PASSplits, config: PASConfig, memo: PromptMemo, *, keep_vectors: bool,
              progress: bool) -> SeedRun:
    t0 = time.perf_counter()
    phases: dict[str, float] = {}
    kw = dict(chat_template=config.chat_template, batch_size=config.batch_size, progress=progress,
              dataset=splits.dataset)

    tic = time.perf_counter()
    training = _train_answers(lm, splits, config, memo)
    phases["train_answers"] = time.perf_counter() - tic

    tic = time.perf_counter()
    vectors, acts, skipped = _build_vectors(lm, training, splits, config, memo, progress=progress)
    ok = list(vectors)
    phases["vectors"] = time.perf_counter() - tic

    tic = time.perf_counter()  # 3. validation: unsteered + every (variant, layer, strength), one engine call
    settings = [Setting.unsteered()] + [Setting.single(vectors[m], l, s, config.positions, label=f"{m} L{l}@{s:g}")
                                        for m in ok for l in config.layers for s in config.strengths]
    val = score_letters(lm, splits.val, settings, prefix=training.prefix, **kw)
    phases["validation_grid"] = time.perf_counter() - tic

    tic = time.perf_counter()  # 4-5. choose on validation, then test
    chosen = _choose(val, config, len(ok))
    test = score_letters(lm, splits.test, [Setting.unsteered()] + [settings[c] for c in chosen],
                         prefix=training.prefix, **kw)
    test_plain = None
    if training.prefix:  # the plain model (no exemplars) on the same test items
        answer = dict(chat_template=config.chat_template, batch_size=config.batch_size, dataset=splits.dataset)
        test_plain = float(memo.answer(lm, splits.test, [], read=False, **answer).accuracy[0])
    phases["test"] = time.perf_counter() - tic

    val_acc, test_acc = val.accuracy.tolist(), test.accuracy.tolist()
    gold = [gold_letter(it, o) for it, o in splits.test]
    n_choices = [len(it.choices) for it, _ in splits.test]
    train_gold = [gold_letter(it, o) for it, o in training.shown]
    nL, nS = len(config.layers), len(config.strengths)
    methods = {m: MethodRun(m, skipped=why) for m, why in skipped.items()}
    for i, m in enumerate(ok):
        c = chosen[i]
        layer, strength = settings[c].layer, settings[c].strength
        lo = 1 + i * nL * nS
        record = {"val_accuracy": val_acc[c], "val_unsteered": val_acc[0], "test_accuracy": test_acc[1 + i],
                  "test_unsteered": test_acc[0], "delta": test_acc[1 + i] - test_acc[0]}
        vec = _chosen_vector(vectors[m], layer, strength, config, record) if keep_vectors else None
        contrast = acts.contrasts[m]
        methods[m] = MethodRun(
            m, layer, strength, val_acc[c], test_acc[1 + i], record["delta"], val_acc[c] - val_acc[0],
            [[val_acc[lo + a * nS + b] for b in range(nS)] for a in range(nL)],
            letter_bias_report(gold, test.pred_letters(0), test.pred_letters(1 + i), n_choices, train_gold),
            len(contrast.positive), len(contrast.negative), contrast.fallback, vec, float(vectors[m][layer].norm()))
    return SeedRun(splits.seed, splits.sizes, training.accuracy, val_acc[0], test_acc[0],
                   {m: methods[m] for m in config.methods}, time.perf_counter() - t0, phases, test_plain,
                   training.exemplars)


def _chosen_vector(vector: SteeringVector, layer: int, strength: float, config: PASConfig,
                   record: dict) -> SteeringVector:
    """The variant's direction at the chosen layer, its metadata carrying the choice (typed fields:
    `steerlab generate --vector` steers with them) and the run's results (extra)."""
    base = vector.select([layer])
    return SteeringVector(base.directions, replace(
        base.meta, selected_layers=(layer,), strength=strength, positions=config.positions, extra={
        **base.meta.extra, "chat_template": config.chat_template, "choice_shuffle": config.choice_shuffle,
        "choice_seed": config.choice_seed, "icl_k": config.icl_k, **record, "grid_layers": list(config.layers),
        "grid_strengths": list(config.strengths)}))


# --------------------------------------------------------------------------------------------- transfer


@dataclass(frozen=True)
class TransferResult:
    """A vector chosen on one task, applied unchanged to another (forgetting check)."""

    dataset: str
    n_items: int
    layer: int
    strength: float
    unsteered: float
    steered: float
    delta: float
    letter_bias: LetterBiasReport

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("dataset", "n_items", "layer", "strength", "unsteered", "steered", "delta")}
        d["letter_bias"] = self.letter_bias.to_dict()
        return d


def evaluate_transfer(lm: LoadedModel,
                      vector: SteeringVector, items: Sequence[MCItem], *, seed: int = 0, cap: int | None = 400,
                      layer: int | None = None, strength: float | None = None, positions: str | None = None,
                      chat_template: bool | None = None, dataset: str = "", batch_size: int = 16) -> TransferResult:
    """Accuracy on `items` (shuffled with `seed`, first `cap`, own choice orders) unsteered vs steered with
    `vector` at its chosen layer/strength/positions (from its metadata unless given)."""
    from .splits import check_items, choice_orders

    items = list(items)
    name = dataset or (items[0].source if items else "") or "dataset"
    if not items:
        raise DatasetError(f"{name}: no items")
    check_items(items, name)
    meta = vector.meta
    layer = int(layer if layer is not None else (meta.selected_layers or [vector.layers[0]])[0])
    if strength is None:
        if meta.strength is None:
            raise SteerlabError("the vector records no chosen strength: pass strength=")
        strength = meta.strength
    positions = positions or meta.positions or "last_prompt"
    order = list(range(len(items)))
    random.Random(f"transfer-{seed}").shuffle(order)
    kept = [items[i] for i in order[: cap or len(order)]]
    shown = list(zip(kept, choice_orders(kept, seed)))
    res = score_letters(lm, shown, [Setting.unsteered(), Setting.single(vector, layer, strength, positions)],
                        chat_template=chat_template, batch_size=batch_size)
    acc = res.accuracy.tolist()
    gold = [gold_letter(it, o) for it, o in shown]
    report = letter_bias_report(gold, res.pred_letters(0), res.pred_letters(1), [len(it.choices) for it in kept], gold)
    return TransferResult(name, len(kept), layer, float(strength), acc[0], acc[1], acc[1] - acc[0], report)
