"""The fair comparison of training methods out of distribution (issue 26 item 2), run resumably.

For one behaviour, every method gets the same model, the same training items and the same choice
rule; per method and seed one cell directory holds, each written once and skipped on a rerun:

    vector.safetensors      the method's vector at the candidate layers, trained on the train items
    selection.json          the layer (and, given several candidate strengths, the strength) chosen on the
                            validation items (neither MWE test items nor OOD prompts): the largest
                            effect(+r) - effect(-r) (`verdicts.sign_check`); among several strengths, the
                            largest whose perplexity ratio on a validation slice of the corpus (the tokens
                            after the measured ones) stays within MAX_PPL_RATIO at both signs (`choose_setting`);
                            or, with select_on="open-ended", on judged open answers to the validation items' stems
                            (`open_selection.choose_on_open_answers`)
    in_distribution.json    effect at +r and -r on the test items at that layer (bootstrap CI)
    ood_plus/, ood_minus/   `ood.evaluate_ood` at +r and -r (judged, projections, log-prob gaps)
    side_effects.json       perplexity ratio and KL on the corpus at +r and -r

A BiPO cell also keeps each layer's run (bipo_layerL.safetensors) as it finishes; a persona cell its judged
answers (persona_samples.json); a persona-BiPO cell (BiPO trained on the persona recipe's judged answers,
`steerlab.methods.persona_bipo`) both; so an interrupted cell resumes where it stopped.

The split is the same for every method (`behaviour_data.load_behaviour` with `split_seed`); the method
seed varies BiPO's order and persona's sampling (CAA and multi-format CAA do not sample: one seed).
`judge_check.json` (once per run) scores the judge on the validation items' labelled texts; the summary
says "judge cannot tell" where its AUC is below 0.8. Strengths are relative: alpha * |v_L| = r * mean
|h_L| (`strengths.raw_strength`), so methods whose vectors differ in size are compared at equal push.
Every steered pass of a cell (the choice, the in-distribution effect, the OOD responses) adds the vector at the
run's `positions`: "answer" (CAA's: from the end of the user's message on, so the prompt is read unsteered) or
"all" (the prompt's tokens too, as persona vectors are applied); the corpus perplexity is always measured
steering every token.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from .. import results
from ..data.ood import LENGTHS
from ..errors import SteerlabError
from ..generation import TextGenerator, generate
from ..schedules import Schedule
from ..methods.persona import KEEP_RULES, persona_questions
from ..methods.responses import READINGS
from ..vector import SteeringVector
from .behaviour_data import load_behaviour
from .goal import MAX_PPL_RATIO, MIN_JUDGE_AUC
from .judge import Judge, check_judge
from .judge_cache import CachedJudge
from .numerics import NUMERICS, check_numerics, model_numerics
from .open_selection import choose_on_open_answers
from .sites import Site, as_site, site_label, site_layers, site_steering
from .ood import evaluate_ood, load_ood_cases, load_ood_file
from .side_effects import CorpusWindows, corpus_windows, measure_side_effects
from .strengths import POSITION_POLICIES, residual_norms
from .verdicts import sign_check

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel

GENERALISE_METHODS: tuple[str, ...] = ("caa", "multiformat", "bipo", "persona", "persona-bipo")
#: The methods a run compares unless told otherwise (the issue's four).
DEFAULT_METHODS: tuple[str, ...] = ("caa", "multiformat", "bipo", "persona")
#: Methods that train one layer at a time (no bands).
PER_LAYER = ("bipo", "persona-bipo")
#: Methods whose vector does not depend on a seed (run once whatever `seeds` says).
DETERMINISTIC = ("caa", "multiformat")
#: Settings that only say which cells an invocation runs: a resumed directory may differ in them.
CELL_CHOICE = ("methods", "seeds")
#: The run directory's unsteered OOD responses, shared by every cell (`share_unsteered`).
UNSTEERED = "unsteered_ood_generations.jsonl"
#: How a cell chooses its layer and strength: on the validation items' A/B letters (`choose_setting`) or on judged
#: open answers to their stems (`open_selection.choose_on_open_answers`).
SELECT_RULES: tuple[str, ...] = ("mwe", "open-ended")
#: The run directory's judge scores, shared by every cell (`judge_cache.CachedJudge`).
JUDGE_SCORES = "judge_scores.jsonl"
#: A persona-BiPO cell's judged answers (its training data), kept for a rerun and for reading.
PERSONA_SAMPLES = "persona_samples.json"


@dataclass(frozen=True)
class GeneraliseConfig:
    """One comparison.

    Attributes:
        behaviour: a CAE behaviour name or an MWE file.
        methods: a subset of `GENERALISE_METHODS`.
        layers: candidate layers (each method's vector has a direction at each; BiPO trains one per layer).
        bands: candidate bands of consecutive layers steered together (multi-layer vectors, `sites`): each layer of
            a band gets r / k of its residual norm; the vector is trained at every layer of every band too.
        relative: the relative strength r (steered at +r and -r), or several candidates: each cell chooses one
            with its layer on validation data (`choose_setting`).
        n_train, n_val, n_test: MWE items for training, for choosing the layer, for the in-distribution effect.
        seeds: method seeds (BiPO, persona).
        split_seed: the train/val/test split, shared by every method.
        ood_kinds, ood_lengths, ood_limit: which OOD prompts (per kind and length, the first `ood_limit`).
        ood_file: a user OOD file (`ood.load_ood_file`, kind "custom") instead of the shipped prompts, for a
            behaviour the CAE data has none for.
        max_new_tokens: OOD generation length.
        corpus: the perplexity corpus; corpus_tokens, window: how much of it.
        bipo_steps: BiPO's step budget per layer.
        persona_questions, persona_samples, persona_tokens: persona's questions (from the train items), answers
            per question and side, tokens per answer.
        description: persona's trait description (None: the shipped one).
        persona_judge: filter persona's answers with the run's judge.
        persona_keep: persona's keep rule ("median": cuts at the median judged score, robust to a local judge's
            shifted scale; "absolute": the paper's 0.5 cuts).
        persona_reading: how persona reads each kept answer: "mean" over its response tokens (the paper's) or its
            "last" token.
        bipo_batch: contrast pairs per BiPO step.
        select_on: how each cell chooses its layer and strength (`SELECT_RULES`): "mwe", the validation items'
            letter answers (`choose_setting`); "open-ended", judged open answers to the first `open_questions` of
            their stems (`open_selection.choose_on_open_answers`).
        open_questions: validation questions answered per candidate with select_on="open-ended".
        positions: where every steered pass of a cell adds the vector (`strengths.POSITION_POLICIES`): "answer"
            (from the end of the user's message on) or "all" (the prompt's tokens too).
        schedule: how the strength changes along the steered positions (`steerlab.schedules`): "constant",
            "first:N" or "decay:H", in every steered pass (and the corpus perplexity, from each window's start).
    """

    behaviour: str
    methods: tuple[str, ...] = DEFAULT_METHODS
    layers: tuple[int, ...] = (10,)
    bands: tuple[tuple[int, ...], ...] = ()
    relative: float | tuple[float, ...] = 0.5
    n_train: int = 40
    n_val: int = 20
    n_test: int = 40
    seeds: tuple[int, ...] = (0,)
    split_seed: int = 0
    ood_kinds: tuple[str, ...] = ("choice-qa", "open-ended")
    ood_lengths: tuple[str, ...] = ("short",)
    ood_limit: int | None = None
    ood_file: str | None = None
    max_new_tokens: int = 48
    corpus: str | None = None
    corpus_tokens: int = 1024
    window: int = 128
    bipo_steps: int = 50
    persona_questions: int = 20
    persona_samples: int = 2
    persona_tokens: int = 48
    description: str | None = None
    persona_judge: bool = True
    persona_keep: str = "median"
    persona_reading: str = "mean"
    bipo_batch: int = 8
    select_on: str = "mwe"
    open_questions: int = 10
    positions: str = "answer"
    schedule: str = "constant"

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in GENERALISE_METHODS]
        if bad or not self.methods:
            raise SteerlabError(f"methods must be among {', '.join(GENERALISE_METHODS)}; got {', '.join(self.methods) or 'none'}")
        if not (self.layers or self.bands) or not self.seeds:
            raise SteerlabError("give at least one candidate layer or band, and one seed")
        if any(len(b) < 2 or list(b) != list(range(b[0], b[0] + len(b))) for b in self.bands):
            raise SteerlabError(f"a band is two or more consecutive layers, got {[list(b) for b in self.bands]}")
        if self.bands and set(PER_LAYER) & set(self.methods):
            raise SteerlabError("bands need a direction at every layer of the band and BiPO trains one layer at a "
                                f"time: run {' and '.join(m for m in PER_LAYER if m in self.methods)} in a directory "
                                "without --bands")
        if not self.strengths or not all(r > 0 for r in self.strengths):
            raise SteerlabError("the relative strength r must be > 0 (the run steers at +r and -r)")
        bad = [n for n in self.ood_lengths if n not in LENGTHS]
        if bad or not self.ood_lengths:
            raise SteerlabError(f"OOD lengths must be among {', '.join(LENGTHS)}; got {', '.join(bad) or 'none'}")
        if self.persona_keep not in KEEP_RULES:
            raise SteerlabError(f"persona_keep must be one of {', '.join(KEEP_RULES)}, not {self.persona_keep!r}")
        if self.persona_reading not in READINGS:
            raise SteerlabError(f"persona_reading must be one of {', '.join(READINGS)}, not {self.persona_reading!r}")
        if self.select_on not in SELECT_RULES:
            raise SteerlabError(f"select_on must be one of {', '.join(SELECT_RULES)}, not {self.select_on!r}")
        if self.positions not in POSITION_POLICIES:
            raise SteerlabError(f"positions must be one of {', '.join(POSITION_POLICIES)}, not {self.positions!r}")
        if Schedule.parse(self.schedule).spec != self.schedule:
            raise SteerlabError(f"write the schedule as {Schedule.parse(self.schedule).spec!r}, not {self.schedule!r}")
        if self.open_questions < 2:
            raise SteerlabError("open_questions must be at least 2 (the choice compares answers over questions)")
        if self.bipo_steps < 1 or self.bipo_batch < 1:
            raise SteerlabError("bipo_steps and bipo_batch must be at least 1")

    @property
    def sites(self) -> tuple[Site, ...]:
        """The candidate sites: every layer, then every band."""
        return (*self.layers, *self.bands)

    @property
    def train_layers(self) -> tuple[int, ...]:
        """Every layer a vector needs a direction at (the candidate layers, then the bands' other layers)."""
        return tuple(dict.fromkeys(l for site in self.sites for l in site_layers(site)))

    @property
    def strengths(self) -> tuple[float, ...]:
        """The candidate relative strengths (one: no choice to make)."""
        r = self.relative
        return (float(r),) if isinstance(r, (int, float)) else tuple(float(x) for x in r)

    def record(self) -> dict:
        """The settings as config.json holds them (one strength as a number, as runs before the choice wrote)."""
        out = json.loads(json.dumps(asdict(self)))  # as JSON reads it back (tuples: lists)
        out["relative"] = self.strengths[0] if len(self.strengths) == 1 else list(self.strengths)
        return out


@dataclass(frozen=True)
class Split:
    """One behaviour's items cut three ways (the same for every method).

    Attributes:
        name: the behaviour; train, val, test: disjoint item lists.
    """

    name: str
    train: list
    val: list
    test: list

    def record(self) -> dict:
        return {"behaviour": self.name, **{k: [it.index for it in getattr(self, k)] for k in ("train", "val", "test")}}


def split_behaviour(cfg: GeneraliseConfig) -> Split:
    """`cfg.behaviour` split into n_train / n_val / n_test items with `cfg.split_seed`."""
    data = load_behaviour(cfg.behaviour, cfg.n_train, cfg.n_val + cfg.n_test, seed=cfg.split_seed)
    return Split(data.name, data.train, data.test[:cfg.n_val], data.test[cfg.n_val:])


def cell_seeds(method: str, seeds: Sequence[int]) -> list[int]:
    """The seeds a method runs with: one for the deterministic methods."""
    return [seeds[0]] if method in DETERMINISTIC else list(seeds)


def _bipo_by_layer(lm: LoadedModel, pairs, layers: Sequence[int], config, parts: Path | None) -> list[SteeringVector]:
    """One BiPO run per layer (one shared reference pass), each saved in `parts` as it finishes and reused from there
    on a rerun, so an interrupted cell keeps its finished layers."""
    from ..methods.bipo import train_bipo_layers

    part = {l: parts / f"bipo_layer{l}.safetensors" if parts is not None else None for l in layers}
    trained = {l: SteeringVector.load(part[l]) for l in layers if part[l] is not None and part[l].is_file()}

    def keep(res) -> None:
        layer = res.vector.layers[0]
        trained[layer] = res.vector
        if part[layer] is not None:
            res.vector.save(part[layer], force=True)

    missing = [l for l in layers if l not in trained]
    if missing:
        train_bipo_layers(lm, pairs, missing, config, progress=True, on_result=keep)
    return [trained[l] for l in layers]


def _persona_samples(lm: LoadedModel, trait, questions, config, scorer, generator, parts: Path | None):
    """The persona recipe's judged answers, saved in `parts` (persona_samples.json) and read back on a rerun."""
    from ..methods.persona import PersonaSample, generate_samples, judge_samples

    path = parts / PERSONA_SAMPLES if parts is not None else None
    if path is not None and path.is_file():
        return [PersonaSample(**s) for s in json.loads(path.read_text())]
    samples = judge_samples(generate_samples(lm, trait, questions, config, progress=True, generator=generator),
                            scorer, config)
    if path is not None:
        results.write_json(path, [s.to_json() for s in samples])
    return samples


def train_vector(lm: LoadedModel, method: str, train, layers: Sequence[int], seed: int, cfg: GeneraliseConfig,
                 judge: Judge | None, generator: TextGenerator = generate, parts: Path | None = None) -> SteeringVector:
    """`method`'s vector from the train items at `layers` (BiPO and persona-BiPO: one run per layer, sharing one
    reference pass, joined; with `parts`, each layer's run, and persona's and persona-BiPO's judged answers, are saved
    there as they finish and reused, so an interrupted cell keeps them)."""
    from ..methods import BiPOConfig, PersonaConfig, completion_pairs, load_trait, persona_questions, train_caa
    from ..methods.bipo import join_layer_runs
    from ..methods.multiformat import train_multiformat
    from ..methods.persona import persona_vector
    from ..methods.persona_bipo import check_persona_pairs, persona_bipo_vector, persona_pairs
    from .trait_judge import trait_scorer

    if method == "caa":
        return train_caa(lm, [it.to_pair() for it in train], layers)
    if method == "multiformat":
        return train_multiformat(lm, train, layers)
    bipo = BiPOConfig(max_steps=cfg.bipo_steps, batch_size=cfg.bipo_batch, seed=seed)
    if method == "bipo":
        return join_layer_runs(_bipo_by_layer(lm, completion_pairs(train), layers, bipo, parts))
    trait = load_trait(Path(cfg.behaviour).stem, cfg.description)
    scorer = trait_scorer(judge, trait.name, trait.description) if (judge is not None and cfg.persona_judge) else None
    pc = PersonaConfig(samples_per_question=cfg.persona_samples, max_new_tokens=cfg.persona_tokens, seed=seed,
                       keep=cfg.persona_keep, reading=cfg.persona_reading)
    questions = persona_questions(train)[:cfg.persona_questions]
    samples = _persona_samples(lm, trait, questions, pc, scorer, generator, parts)
    if method == "persona":
        return persona_vector(lm, trait, samples, layers, pc, judged=scorer is not None, progress=True)
    pairs = persona_pairs(samples)
    check_persona_pairs(trait, samples, pairs)
    return persona_bipo_vector(_bipo_by_layer(lm, pairs, layers, bipo, parts), trait, samples, pairs, pc)


def share_unsteered(source: Path, target: Path) -> None:
    """Copy the unsteered OOD generations of `source` into `target` when `target` does not exist yet: the run
    directory keeps one set (`UNSTEERED`) that every cell's OOD stage starts from, so the unsteered responses are
    generated once per behaviour, not twice per cell (`evaluate_ood` reuses them; the judge cache their scores)."""
    if target.is_file() or not source.is_file():
        return
    rows = [r for r in results.read_jsonl(source) if r.get("condition") == "unsteered"]
    if rows:
        target.parent.mkdir(parents=True, exist_ok=True)
        results.append_jsonl(target, rows)


def _done(path: Path) -> bool:
    return path.is_file()


@dataclass
class CellResult:
    """What one (method, seed) cell measured (see the module docstring)."""

    method: str
    seed: int
    layer: Site
    relative: float
    in_distribution: dict = field(default_factory=dict)
    ood: dict = field(default_factory=dict)
    side_effects: dict = field(default_factory=dict)
    seconds: dict = field(default_factory=dict)


def choose_setting(lm: LoadedModel, vec: SteeringVector, val, layers: Sequence[Site], strengths: Sequence[float],
                   val_windows: CorpusWindows | None, *, positions: str = "answer", schedule: str = "constant",
                   log: Callable[[str], None] = lambda s: None) -> dict:
    """The layer and strength a cell steers at, chosen on validation data only (selection.json's content).

    Every (layer, r) is scored on the validation items at +r and -r (one engine call); the largest
    effect(+r) - effect(-r) wins. With several strengths the winner must also keep the perplexity ratio on
    `val_windows` (a corpus slice the reported perplexity does not use) within MAX_PPL_RATIO at both signs:
    candidates are checked from the best down and the first that passes is taken (none: the one with the lowest
    perplexity ratio), so a strength is only given up for the cost the goal counts. A layer may be a band (`sites`).
    """
    rows = sign_check(lm, vec, val, list(layers), strength=list(strengths), positions=positions, schedule=schedule)
    order = sorted(rows, key=lambda r: r["effect_plus"] - r["effect_minus"], reverse=True)
    if len(strengths) == 1:
        return {"layer": order[0]["layer"], "relative": order[0]["relative"], "rows": rows}
    if val_windows is None:
        raise SteerlabError("choosing among several strengths needs validation corpus windows")
    norms = residual_norms(lm, val, sorted({l for site in layers for l in site_layers(site)}))
    checked = []
    for row in order:
        r, layer = row["relative"], row["layer"]
        log(f"  validation perplexity at layer {site_label(layer)}, r=±{r:g}")
        v, lay, alpha = site_steering(vec, layer, r, norms)
        side = measure_side_effects(lm, v, lay, [alpha, -alpha], val_windows, relative=[r, -r], schedule=schedule)
        row["val_ppl_ratio"] = max(x.perplexity_ratio for x in side.rows if x.relative)
        checked.append(row)
        if row["val_ppl_ratio"] <= MAX_PPL_RATIO:
            break
    best = next((x for x in checked if x["val_ppl_ratio"] <= MAX_PPL_RATIO),
                min(checked, key=lambda x: x["val_ppl_ratio"]))
    return {"layer": best["layer"], "relative": best["relative"], "rows": rows, "max_ppl_ratio": MAX_PPL_RATIO,
            "within_ppl": best["val_ppl_ratio"] <= MAX_PPL_RATIO, "val_corpus": {
                "start_token": val_windows.start_token, "n_tokens": val_windows.n_predicted}}


def run_cell(lm: LoadedModel, method: str, seed: int, data, cases, windows, judge: Judge, cfg: GeneraliseConfig,
             cell: Path, log: Callable[[str], None], generator: TextGenerator = generate,
             val_windows: CorpusWindows | None = None) -> CellResult:
    """One (method, seed) cell, each stage skipped when its file exists (`val_windows`: the corpus slice that
    `choose_setting` checks the perplexity on, needed with several candidate strengths)."""
    cell.mkdir(parents=True, exist_ok=True)
    seconds = json.loads((cell / "seconds.json").read_text()) if (cell / "seconds.json").is_file() else {}

    def timed(stage: str, fn):
        t = time.perf_counter()
        out = fn()
        seconds[stage] = round(time.perf_counter() - t, 2)
        results.write_json(cell / "seconds.json", seconds)
        return out

    vec_path = cell / "vector.safetensors"
    if _done(vec_path):
        vec = SteeringVector.load(vec_path)
    else:
        log(f"{method} seed {seed}: training")
        vec = timed("train", lambda: train_vector(lm, method, data.train, cfg.train_layers, seed, cfg, judge,
                                                  generator, parts=cell))
        vec.save(vec_path, force=True)
    sel_path = cell / "selection.json"
    if not _done(sel_path):
        what = "the layer" if len(cfg.strengths) == 1 else "the layer and strength"
        if cfg.select_on == "open-ended":
            questions = persona_questions(data.val)[:cfg.open_questions]
            log(f"{method} seed {seed}: choosing {what} on judged answers to {len(questions)} validation questions")
            choice = timed("select", lambda: choose_on_open_answers(
                lm, vec, data.val, questions, cfg.sites, cfg.strengths, val_windows, judge, data.name,
                max_new_tokens=cfg.max_new_tokens, generator=generator, positions=cfg.positions,
                schedule=cfg.schedule, log=log))
        else:
            log(f"{method} seed {seed}: choosing {what} on {len(data.val)} validation items")
            choice = timed("select", lambda: choose_setting(lm, vec, data.val, cfg.sites, cfg.strengths,
                                                            val_windows, positions=cfg.positions,
                                                            schedule=cfg.schedule, log=log))
        results.write_json(sel_path, choice)
    selection = json.loads(sel_path.read_text())
    layer, rel = as_site(selection["layer"]), float(selection["relative"])
    ind_path = cell / "in_distribution.json"
    if not _done(ind_path):
        log(f"{method} seed {seed}: in-distribution effect at layer {site_label(layer)}, r={rel:g}")
        rows = timed("in_distribution", lambda: sign_check(lm, vec, data.test, [layer], strength=rel,
                                                           positions=cfg.positions, schedule=cfg.schedule))
        results.write_json(ind_path, rows[0])
    norms: dict[int, float] = {}

    def steering(r: float) -> tuple[SteeringVector, Site, float]:  # only a stage still to run needs the norms
        if not norms:
            norms.update(residual_norms(lm, data.val, list(site_layers(layer))))
        return site_steering(vec, layer, r, norms)

    ood = {}
    for sign, name in ((1.0, "ood_plus"), (-1.0, "ood_minus")):
        path = cell / name / "ood.json"
        if not _done(path):
            log(f"{method} seed {seed}: OOD at r={sign * rel:+g}")
            share_unsteered(cell.parent.parent / UNSTEERED, cell / name / "ood_generations.jsonl")
            v, lay, alpha = steering(sign * rel)
            timed(name, lambda: evaluate_ood(lm, data.name, cases, v, lay, alpha, judge, out_dir=cell / name,
                                             positions=cfg.positions, schedule=cfg.schedule,
                                             max_new_tokens=cfg.max_new_tokens, generator=generator,
                                             log=lambda s: log(f"  {s}")))
        ood[name] = json.loads(path.read_text())
        share_unsteered(cell / name / "ood_generations.jsonl", cell.parent.parent / UNSTEERED)
    side_path = cell / "side_effects.json"
    if not _done(side_path):
        log(f"{method} seed {seed}: perplexity and KL")
        v, lay, alpha = steering(rel)
        side = timed("side_effects", lambda: measure_side_effects(lm, v, lay, [alpha, -alpha], windows,
                                                                  relative=[rel, -rel], schedule=cfg.schedule))
        results.write_json(side_path, {"layer": layer, "rows": [asdict(r) for r in side.rows]})
    return CellResult(method, seed, layer, rel, json.loads(ind_path.read_text()), ood,
                      json.loads(side_path.read_text()), seconds)


def summary_cells(cfg: GeneraliseConfig, out: Path) -> list[tuple[str, int]]:
    """The cells this invocation runs, and the finished cells earlier invocations left in `out` (a method or seed
    run on its own joins the summary), in method order."""
    cells = {(m, s) for m in cfg.methods for s in cell_seeds(m, cfg.seeds)}
    for m in GENERALISE_METHODS:
        for side in (out / m).glob("seed*/side_effects.json"):
            seed = side.parent.name[len("seed"):]
            if seed.isdigit():
                cells.add((m, int(seed)))
    return sorted(cells, key=lambda c: (GENERALISE_METHODS.index(c[0]), c[1]))


def _ood_effect(ood: dict, kind: str) -> dict | None:
    for m in ood.get("measures", []):
        if m["measure"] == "judge" and m["kind"] == kind:
            return m
    return None


def run_generalise(lm: LoadedModel, cfg: GeneraliseConfig, out_dir: str | Path, judge: Judge, *,
                   log: Callable[[str], None] = lambda s: None, generator: TextGenerator = generate) -> dict:
    """Every cell of the comparison (see the module docstring) and `summary.json`: one row per method and seed
    with the in-distribution effect, the judged OOD effect per kind and sign, the perplexity ratio, the judge's
    AUC and whether it can tell. `generator` makes the persona answers and the OOD responses (`steerlab.generate`;
    the vLLM engine's with `--engine vllm`)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = split_behaviour(cfg)
    val = data.val
    config = {**cfg.record(), "split": data.record()}
    cfg_path = out / "config.json"
    numerics = model_numerics(lm)
    check_numerics(out, numerics)
    if cfg_path.is_file():
        # a setting added after the run was made is read as its default, so older run directories resume
        old = {**GeneraliseConfig(cfg.behaviour).record(), **json.loads(cfg_path.read_text())}
        # which cells to run may grow between invocations (a method or seed added later); everything else must match
        diff = sorted(k for k in set(old) | set(config)
                      if k not in CELL_CHOICE and k != NUMERICS and old.get(k) != config.get(k))
        if diff:
            raise SteerlabError(f"{out} holds a run with another configuration (differs in {', '.join(diff)}): "
                                "resume with the same settings or use another directory")
        if NUMERICS not in old:  # a directory from before the record: its cells agree (checked above), keep it now
            results.write_json(cfg_path, {**json.loads(cfg_path.read_text()), NUMERICS: numerics})
    else:
        results.write_json(cfg_path, {**config, NUMERICS: numerics})
    if cfg.ood_file:
        cases = load_ood_file(cfg.ood_file)[:cfg.ood_limit]
    else:
        cases = load_ood_cases(data.name, kinds=cfg.ood_kinds, lengths=cfg.ood_lengths, limit=cfg.ood_limit)
    kinds = sorted({c.kind for c in cases})
    from ..data import require_data_root

    corpus = cfg.corpus or str(require_data_root() / "corpus" / "wikitext-2-test.txt")
    windows = corpus_windows(lm, corpus, n_tokens=cfg.corpus_tokens, window=cfg.window)
    val_windows = corpus_windows(lm, corpus, n_tokens=cfg.corpus_tokens, window=cfg.window,
                                 start_token=cfg.corpus_tokens) \
        if len(cfg.strengths) > 1 or cfg.select_on == "open-ended" else None
    jc_path = out / "judge_check.json"
    judged_by = json.loads(jc_path.read_text()).get("judge", judge.name) if _done(jc_path) else judge.name
    if judged_by != judge.name:
        raise SteerlabError(f"{out} was judged by {judged_by!r}, this run's judge is {judge.name!r}: use the same "
                            "judge or another directory")
    judge = CachedJudge(judge, out / JUDGE_SCORES)
    if not _done(jc_path):
        log("checking the judge on the validation items' labelled texts")
        jc = check_judge(judge, val, data.name)
        results.write_json(jc_path, {k: v for k, v in jc.to_json().items() if k != "scores"})
    judge_auc = float(json.loads(jc_path.read_text())["auc"])
    rows = []
    for method, seed in summary_cells(cfg, out):
        r = run_cell(lm, method, seed, data, cases, windows, judge, cfg, out / method / f"seed{seed}", log,
                     generator, val_windows)
        row = {"method": method, "seed": seed, "layer": r.layer, "relative": r.relative,
               "in_distribution_plus": r.in_distribution["effect_plus"],
               "in_distribution_plus_ci": [r.in_distribution["plus_low"], r.in_distribution["plus_high"]],
               "in_distribution_minus": r.in_distribution["effect_minus"],
               "judge_auc": judge_auc, "judge_can_tell": judge_auc >= MIN_JUDGE_AUC,
               "ppl_ratio": {f"{x['relative']:+g}": x["perplexity_ratio"] for x in r.side_effects["rows"] if x["relative"]},
               "seconds": r.seconds}
        for name, res in r.ood.items():
            for kind in kinds:
                m = _ood_effect(res, kind)
                if m is not None:
                    row[f"{name}_{kind}"] = (m["effect"], m["effect_low"], m["effect_high"]) \
                        if judge_auc >= MIN_JUDGE_AUC else "judge cannot tell"
        rows.append(row)
    summary = {"behaviour": data.name, "rows": rows, "judge_auc": judge_auc}
    results.write_json(out / "summary.json", summary)
    return summary
