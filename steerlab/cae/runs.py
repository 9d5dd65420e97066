"""The CAE suite: every analysis of the Contrastive Activation Engineering paper for one behaviour, in stages.

    result = run_cae(lm, CAEConfig("openness"), "runs/cae/openness")

Stages (each writes its files as soon as it finishes, and is recorded in ``manifest.json`` with its
wall time; a rerun with the same configuration skips finished stages, so a stopped run resumes):

1. ``data``       split the behaviour's items into train / validation / test by seed (``split.json``).
2. ``extract``    contrast-pair activations of the training items at the sweep layers
                  (``train_activations.safetensors``), the CAA vector (``caa.safetensors``) and the
                  typical residual norm per layer (``norms.json``).
3. ``layers``     layer sweep at ±r on the *validation* items (``layer_sweep.*``); the best layer is
                  the one with the largest effect at +r, chosen there so that the test numbers below
                  are not inflated by the choice.
4. ``sweeps``     on the *test* items, one engine call: strength sweep at the best layer
                  (``strength_sweep.*``), training-sample-count sweep (``sample_count_sweep.*``), and
                  CAA vs one-pair ActAdd at matched norms (``method_comparison.*``).
5. ``ood``        OOD generations at the best layer and +r, judged and projected (``ood*``).
6. ``side_effects`` perplexity and KL on the corpus subset across the strengths (``side_effects.*``).
7. ``report``     ``summary.json`` and the self-contained ``report.html``.

Strengths are relative by default: r means alpha * ||v_L|| = r * mean ||h_L|| (see `sweeps`).
"""

from __future__ import annotations

import json
import platform
import time
import traceback
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import torch

from ..data.io import require_data_root
from ..engine import PairActivations
from ..errors import OutputExistsError, SteerlabError
from ..vector import SteeringVector
from .. import results
from .behaviour_data import load_behaviour
from .readings import train_activations
from .strengths import pair_residual_norms
from .judge import make_judge
from .ood import OOD_KINDS, evaluate_ood, load_ood_cases, plot_ood
from .side_effects import corpus_windows, measure_side_effects, write_side_effects
from .summary import MANIFEST, strength_row, summarize_run
from .sweeps import (
    actadd_vectors,
    flatten_point,
    layer_plan,
    method_plan,
    run_plans,
    sample_count_plan,
    strength_plan,
    write_sweep,
)

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel

STAGES: tuple[str, ...] = ("data", "extract", "layers", "sweeps", "ood", "side_effects", "report")


@dataclass(frozen=True)
class CAEConfig:
    """Everything a CAE run depends on (saved in the manifest; a rerun must match it to resume).

    Attributes:
        behaviour: a CAE behaviour name or an MWE-format file.
        n_train, n_val, n_test: disjoint item counts (split by `seed`).
        layers: the layers swept (None: every `layer_step`-th layer from 0).
        sweep_strength: r of the layer sweep (run at +r and -r) and the strength used downstream
            (sample counts, OOD, the perplexity cost "at the chosen strength").
        strengths: the strength sweep and the side-effect curve (both signs).
        relative: strengths are relative (alpha * ||v|| = r * mean ||h_L||) or raw alphas.
        counts: training-sample counts (nested prefixes of the training items).
        positions: steering positions for behaviour scores and OOD generation ("answer", see `behaviour`).
        actadd_positive, actadd_negative: the one pair of the ActAdd vectors.
        ood_kinds, ood_lengths, ood_limit: which OOD prompts (limit per kind and length).
        max_new_tokens: OOD response length.
        judge, judge_url, judge_model, judge_key_env: "local" or "openai" (+ endpoint, model, key variable).
        corpus, ppl_tokens, ppl_window: perplexity subset (default corpus: the data root's WikiText-2 test).
        n_boot: bootstrap resamples; batch_size: items per engine batch.
        data_root: where the data lives (default: steerlab's default data root).
    """

    behaviour: str
    n_train: int = 200
    n_val: int = 60
    n_test: int = 100
    seed: int = 0
    layers: tuple[int, ...] | None = None
    layer_step: int = 3
    sweep_strength: float = 0.5
    strengths: tuple[float, ...] = (-1.0, -0.5, -0.25, -0.1, 0.1, 0.25, 0.5, 1.0)
    relative: bool = True
    counts: tuple[int, ...] = (10, 20, 40, 80, 160)
    positions: str = "answer"
    actadd_positive: str = "Love"
    actadd_negative: str = "Hate"
    ood_kinds: tuple[str, ...] = OOD_KINDS
    ood_lengths: tuple[str, ...] = ("short",)
    ood_limit: int | None = 10
    max_new_tokens: int = 48
    judge: str = "local"
    judge_url: str | None = None
    judge_model: str | None = None
    judge_key_env: str | None = "OPENAI_API_KEY"
    corpus: str | None = None
    ppl_tokens: int = 2048
    ppl_window: int = 256
    n_boot: int = 2000
    batch_size: int = 16
    data_root: str | None = None

    def __post_init__(self) -> None:
        for name in ("layers", "strengths", "counts", "ood_kinds", "ood_lengths"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, tuple):
                object.__setattr__(self, name, tuple(v))
        if self.sweep_strength <= 0:
            raise SteerlabError(f"sweep_strength must be positive (it is run at both signs), got {self.sweep_strength}")
        if self.layer_step < 1:
            raise SteerlabError(f"layer_step must be >= 1, got {self.layer_step}")
        if self.counts and max(self.counts) > self.n_train:
            raise SteerlabError(f"the largest sample count ({max(self.counts)}) exceeds n_train ({self.n_train})")

    def sweep_layers(self, n_layers: int) -> list[int]:
        layers = list(self.layers) if self.layers is not None else list(range(0, n_layers, self.layer_step))
        bad = [l for l in layers if not 0 <= l < n_layers]
        if bad:
            raise SteerlabError(f"layers {bad} are out of range for a model with {n_layers} layers")
        return layers

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "CAEConfig":
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in known})


# ---------------------------------------------------------------------------------------------
# Manifest: what ran, how long it took, what failed
# ---------------------------------------------------------------------------------------------


class Manifest:
    """``manifest.json`` of a run directory: the config, the model, and each stage's status and time."""

    def __init__(self, out_dir: Path, config: CAEConfig, lm, *, force: bool):
        self.path = out_dir / MANIFEST
        data = results.read_json(self.path) if self.path.is_file() else None
        if data is not None and data.get("config") != config.to_dict():
            if not force:
                raise OutputExistsError(f"{out_dir} holds a run with a different configuration; pass force=True "
                                        f"(--force) to start it over, or choose another directory")
            data = None
        if data is not None and data.get("model_id") != lm.model_id and not force:
            raise OutputExistsError(f"{out_dir} holds a run of model {data.get('model_id')}, not {lm.model_id}")
        self.data = data or {"config": config.to_dict(), "model_id": lm.model_id, "n_layers": lm.n_layers,
                             "torch_threads": torch.get_num_threads(), "machine": platform.platform(),
                             "stages": {}}
        self.data.setdefault("stages", {})
        self.save()

    def done(self, stage: str) -> bool:
        return self.data["stages"].get(stage, {}).get("status") == "done"

    def record(self, stage: str, status: str, seconds: float, **extra) -> None:
        self.data["stages"][stage] = {"status": status, "seconds": round(seconds, 2),
                                      "finished": time.strftime("%Y-%m-%d %H:%M:%S"), **extra}
        self.save()

    def save(self) -> None:
        results.write_json(self.path, self.data)


# ---------------------------------------------------------------------------------------------
# Activations on disk (the extraction is the most expensive stage; a resumed run reuses it)
# ---------------------------------------------------------------------------------------------


def save_activations(acts: PairActivations, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {f"{side}.{l}": getattr(acts, side)[l].contiguous() for side in ("positive", "negative") for l in acts.layers}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"layers": json.dumps(list(acts.layers)), "info": json.dumps(acts.info)})
    tmp.replace(path)


def load_activations(path: Path, pairs) -> PairActivations:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        layers = tuple(json.loads(meta["layers"]))
        pos = {l: f.get_tensor(f"positive.{l}") for l in layers}
        neg = {l: f.get_tensor(f"negative.{l}") for l in layers}
    if any(t.shape[0] != len(pairs) for t in pos.values()):
        raise SteerlabError(f"{path} does not match the training split; rerun with force=True")
    return PairActivations(list(pairs), layers, pos, neg, json.loads(meta.get("info", "{}")))


# ---------------------------------------------------------------------------------------------
# The suite
# ---------------------------------------------------------------------------------------------


def _default_log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_cae(lm: LoadedModel,
            config: CAEConfig, out_dir: str | Path, *, stages: Sequence[str] | None = None, force: bool = False,
            log: Callable[[str], None] = _default_log, progress: bool = False) -> dict:
    """Run (or resume) the CAE suite for one behaviour; returns the summary (also in ``summary.json``).

    Args:
        stages: run only these stages (and reuse the files of earlier ones); default all.
        force: start over in a directory that holds a run with another configuration.
        progress: progress bars on extraction and scoring batches.

    A stage that fails is recorded as failed in the manifest (with the error) and the error is
    raised; every file written before it stays.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    wanted = list(STAGES) if stages is None else list(stages)
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise SteerlabError(f"unknown stages {unknown}: choose from {', '.join(STAGES)}")
    manifest = Manifest(out, config, lm, force=force)
    state: dict = {}

    def stage(name: str, fn: Callable[[], dict | None]) -> None:
        if name not in wanted:
            return
        if manifest.done(name) and not force:
            log(f"{name}: done earlier ({manifest.data['stages'][name]['seconds']:.0f} s), skipping")
            return
        log(f"{name}: starting")
        t0 = time.perf_counter()
        try:
            extra = fn() or {}
        except BaseException as e:
            manifest.record(name, "failed", time.perf_counter() - t0, error=f"{type(e).__name__}: {e}",
                            traceback=traceback.format_exc(limit=4))
            raise
        seconds = time.perf_counter() - t0
        manifest.record(name, "done", seconds, **extra)
        log(f"{name}: done in {seconds:.0f} s")

    data = load_behaviour(config.behaviour, config.n_train, config.n_val + config.n_test, seed=config.seed,
                          data_root=config.data_root)
    val, test = data.test[: config.n_val], data.test[config.n_val:]
    if config.n_val < 1:
        raise SteerlabError("n_val must be at least 1: the best layer is chosen on validation items")
    layers = config.sweep_layers(lm.n_layers)
    kind = data.kind
    kw = dict(n_boot=config.n_boot, seed=config.seed, batch_size=config.batch_size, progress=progress)

    def do_data():
        rec = data.split_record()
        rec["val"], rec["test"] = rec["test"][: config.n_val], rec["test"][config.n_val:]
        results.write_json(out / "split.json", rec)
        return {"kind": kind, "n_items": {"train": len(data.train), "val": len(val), "test": len(test)}}

    def acts() -> PairActivations:
        if "acts" not in state:
            state["acts"] = load_activations(out / "train_activations.safetensors", [it.to_pair() for it in data.train])
        return state["acts"]

    def norms() -> dict[int, float]:
        return {int(k): v["residual"] for k, v in results.read_json(out / "norms.json").items()}

    def caa() -> SteeringVector:
        return SteeringVector.load(out / "caa.safetensors")

    def do_extract():
        a = train_activations(lm, data.train, layers, batch_size=config.batch_size, progress=progress)
        state["acts"] = a
        save_activations(a, out / "train_activations.safetensors")
        vec = a.caa_vector(lm)
        vec.save(out / "caa.safetensors", force=True)
        res = pair_residual_norms(a)
        results.write_json(out / "norms.json", {str(l): {"residual": res[l], "vector": float(vec[l].norm()),
                                                     "ratio": float(vec[l].norm()) / res[l]} for l in layers})
        return {"pairs": len(a), "tokens_run": a.info.get("tokens_run")}

    def do_layers():
        plan = layer_plan(caa(), kind, layers, [config.sweep_strength, -config.sweep_strength],
                          relative=config.relative, norms=norms(), positions=config.positions)
        sweep = run_plans(lm, val, [plan], **kw)[0]
        key = "relative" if config.relative else "strength"
        best = sweep.best("effect", **{key: config.sweep_strength})
        write_sweep(sweep, out, "layer_sweep", extra={"items": "validation", "best_layer": best["layer"]})
        return {"best_layer": best["layer"], "val_effect": best["effect"]}

    def best_layer() -> int:
        return int(results.read_json(out / "layer_sweep.json")["best_layer"])

    def do_sweeps():
        layer = best_layer()
        vec, nrm = caa(), norms()
        rel = dict(relative=config.relative, norms=nrm, positions=config.positions)
        plans = [strength_plan(vec, kind, layer, config.strengths, **rel)]
        if config.counts:
            plans.append(sample_count_plan(lm, acts(), kind, config.counts, layer, config.sweep_strength, **rel))
        others = actadd_vectors(lm, config.actadd_positive, config.actadd_negative, [layer])
        rel_m = dict(relative=True, norms=nrm, positions=config.positions)
        compare_at = sorted({config.sweep_strength, -config.sweep_strength, *[s for s in config.strengths if s != 0]})
        if not config.relative:  # norm-matching needs relative strengths; use the sweep strength's r equivalents
            compare_at = [1.0, -1.0]
        plans.append(method_plan({"caa": vec.select([layer]), **others}, kind, layer, compare_at, **rel_m))
        sweeps = run_plans(lm, test, plans, **kw)
        names = {"strength": "strength_sweep", "sample_count": "sample_count_sweep", "method": "method_comparison"}
        for sw in sweeps:
            extra = {"items": "test", "best_layer": layer}
            if sw.kind == "sample_count":
                extra["flatten"] = flatten_point(sw.to_json())
            write_sweep(sw, out, names[sw.kind], extra=extra)
        return {"layer": layer, "settings": sum(len(p.settings) for p in plans) + 1, "score_seconds": sweeps[0].seconds}

    def chosen_alpha(layer: int, vec: SteeringVector) -> float:
        if not config.relative:
            return float(config.sweep_strength)
        from .strengths import raw_strength

        return raw_strength(config.sweep_strength, vec, layer, norms()[layer])

    def do_ood():
        layer = best_layer()
        vec = caa().select([layer])
        alpha = chosen_alpha(layer, vec)
        cases = load_ood_cases(data.name, kinds=config.ood_kinds, lengths=config.ood_lengths, limit=config.ood_limit,
                               data_root=config.data_root)
        judge = make_judge(config.judge, lm, base_url=config.judge_url, model=config.judge_model,
                           key_env=config.judge_key_env, progress=progress)
        res = evaluate_ood(lm, data.name, cases, vec, layer, alpha, judge, out_dir=out, positions=config.positions,
                           max_new_tokens=config.max_new_tokens, batch_size=8, n_boot=config.n_boot, seed=config.seed,
                           log=lambda s: log(f"ood: {s}"))
        ind = strength_row(out, config.sweep_strength if config.relative else None, alpha)
        plot_ood(res.to_json(), ind, out / "ood.png")
        return {"n_cases": len(cases), "seconds_by_part": res.seconds}

    def do_side_effects():
        layer = best_layer()
        vec = caa().select([layer])
        path = config.corpus or str(require_data_root(config.data_root) / "corpus" / "wikitext-2-test.txt")
        windows = corpus_windows(lm, path, n_tokens=config.ppl_tokens, window=config.ppl_window)
        if config.relative:
            from .strengths import raw_strength

            alphas = [raw_strength(r, vec, layer, norms()[layer]) for r in config.strengths]
            rels = list(config.strengths)
        else:
            alphas, rels = list(config.strengths), None
        res = measure_side_effects(lm, vec, layer, alphas, windows, relative=rels, positions="all",
                                   n_boot=config.n_boot, seed=config.seed, partial_path=out / "side_effects.partial.json",
                                   on_batch=lambda b, n: log(f"side effects: batch {b}/{n}"))
        write_side_effects(res, out)
        (out / "side_effects.partial.json").unlink(missing_ok=True)
        return {"tokens": windows.n_predicted}

    def do_report():
        summary = summarize_run(out)
        results.write_result(out / "summary.json", summary)
        from .report import write_report

        write_report(out, out / "report.html", force=True)
        return {}

    stage("data", do_data)
    stage("extract", do_extract)
    stage("layers", do_layers)
    stage("sweeps", do_sweeps)
    stage("ood", do_ood)
    stage("side_effects", do_side_effects)
    stage("report", do_report)
    return summarize_run(out)
