"""`steerlab cae ...` (the Contrastive Activation Engineering study) and `steerlab report RUN_DIR`.

Every command is thin over `steerlab.cae` and writes its result files (CSV per item, JSON per
setting, PNG) into --out. The single-stage commands share one preparation (`prepare`: data split,
model, vector, residual norms) and one way to score (`run_plan`), write and print a sweep (`finish_sweep`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer

from ..errors import SteerlabError
from .common import (check_layer_range, check_out, console, load_model, parse_floats, parse_ints, parse_layers,
                     parse_list, peek_layers, read_vector, run_command, say, set_runtime, text_generator)
from .options import (BEHAVIOUR, DEVICE, DEVICE_MAP, DTYPE, GEN_ENGINE, LAYER, MULTI_TOKEN, N_TRAIN, OUT_DIR, POSITIONS, READING,
                      RELATIVE, SEED, STRENGTHS, THREADS, MODEL, VECTOR, Judge, Runtime, Split, grouped)

cae_app = typer.Typer(help="Contrastive Activation Engineering: behaviour scores, sweeps, OOD, side effects.",
                      no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def _files(name: str) -> list[str]:
    return [f"{name}.json", f"{name}.csv", f"{name}.png"]


@dataclass
class Prepared:
    """What the single-stage commands start from: the split data, the model, the layers, the vector
    (read from --vector or trained as CAA on the train split), residual norms, and the training
    activations when a command needs them."""

    data: Any
    lm: Any
    layers: list[int]
    vec: Any
    norms: dict
    acts: Any = None


def prepare(behaviour: str, n_train: int, n_test: int, seed: int, layers: Optional[list[int]], vector: Optional[Path],
            model: Optional[str], *, need_acts: bool = False, save_to: Optional[Path] = None,
            reading: Optional[str] = None) -> Prepared:
    """Data errors, then a bad vector file, fail before the model loads; then the vector: --vector's
    (checked against the model and the layers) or CAA trained on the train split (kept in `save_to`)."""
    from ..cae.behaviour_data import load_behaviour
    from ..cae.readings import READINGS, reading_activations
    from ..cae.strengths import residual_norms

    if reading is not None and reading not in READINGS:
        raise SteerlabError(f"unknown --reading '{reading}': choose one of {', '.join(READINGS)}")
    data = load_behaviour(behaviour, n_train, n_test, seed=seed)
    raw = read_vector(vector) if not need_acts else None
    lm = load_model(model)
    layers = layers if layers is not None else list(range(lm.n_layers))
    for l in layers:
        lm.blocks.check_layer(l)
    if raw is not None:
        raw.check_compatible(lm)
        missing = [l for l in layers if l not in raw.directions]
        if missing:
            raise SteerlabError(f"{vector} has no direction for layers {missing} (it has {list(raw.layers)})")
        with console.status("measuring residual norms…"):
            norms = residual_norms(lm, data.train[:64], layers)
        return Prepared(data, lm, layers, raw, norms)
    t0 = time.perf_counter()
    say(f"extracting {len(data.train)} training pairs at {len(layers)} layers…")
    acts, norms = reading_activations(lm, data.train, layers, reading, seed=seed, progress=True)
    say(f"extracted training activations in {time.perf_counter() - t0:.0f} s")
    vec = acts.caa_vector(lm)
    if save_to is not None:  # keep the trained vector for later commands (--vector OUT/caa.safetensors)
        path = Path(save_to) / "caa.safetensors"
        if path.exists():
            say(f"kept the existing {path} (this command's vector was not saved)")
        else:
            vec.save(path)
            say(f"saved the CAA vector (layers {list(vec.layers)}) to {path}")
    return Prepared(data, lm, layers, vec, norms, acts)


def run_plan(prep: Prepared, plan, allow_multi_token: bool):
    """Score one sweep plan on the test items."""
    from ..cae.sweeps import run_plans

    return run_plans(prep.lm, prep.data.test, [plan], allow_multi_token=allow_multi_token, progress=True)[0]


def finish_sweep(sweep, out: Optional[Path], name: str, extra: Optional[dict] = None) -> None:
    """Write a scored sweep's files into `out` (if given) and print its table."""
    from rich.table import Table

    from ..cae.sweeps import write_sweep

    files = write_sweep(sweep, out, name, extra={"items": "test", **(extra or {})}) if out is not None else {}
    table = Table(title=f"{sweep.kind} sweep: behaviour score p(match)/(p(match)+p(not match)), test items")
    for c in ("setting", "score [95%]", "effect vs unsteered [95%]"):
        table.add_column(c, justify="right")
    for r in sweep.summary_rows():
        table.add_row(r["label"], f"{r['score']:.3f} [{r['score_low']:.3f}, {r['score_high']:.3f}]",
                      f"{r['effect']:+.3f} [{r['effect_low']:+.3f}, {r['effect_high']:+.3f}]")
    console.print(table)
    say("wrote " + ", ".join(str(p) for p in files.values()) + f" (scoring {sweep.seconds:.0f} s)")


def _begin(run: Runtime, out: Optional[Path], names: list[str]) -> None:
    set_runtime(run.threads, run.device, run.dtype, run.device_map)
    if out is not None:
        check_out(out, names, run.force)


@cae_app.command("score")
@grouped
def score(
    behaviour: str = BEHAVIOUR,
    vector: Optional[Path] = VECTOR,
    layer: Optional[int] = typer.Option(None, help="Steer this layer (needs --vector or trains CAA there)."),
    strength: float = typer.Option(0.5, help="Steering strength (relative by default)."),
    relative: bool = RELATIVE,
    positions: str = POSITIONS,
    reading: Optional[str] = READING,
    split: Split = Split(),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the per-item CSV/JSON here."),
    allow_multi_token: bool = MULTI_TOKEN,
    run: Runtime = Runtime(),
) -> None:
    """Behaviour score (with bootstrap 95% interval) on the test split, unsteered and, with --layer, steered at ±strength."""

    def body():
        _begin(run, out, _files("score"))
        from ..cae.behaviour_data import load_behaviour
        from ..cae.scoring import score_behaviour
        from ..cae.sweeps import strength_plan

        if layer is None:
            data = load_behaviour(behaviour, split.n_train, split.n_test, seed=split.seed)
            lm = load_model(run.model)
            u = score_behaviour(lm, data.test, [], allow_multi_token=allow_multi_token, progress=True).unsteered()
            say(f"{data.name} ({data.kind}, {u.n_items} test items, seed {split.seed}): unsteered behaviour score "
                f"{u.score:.3f} [95% {u.score_low:.3f}, {u.score_high:.3f}]")
            return
        prep = prepare(behaviour, split.n_train, split.n_test, split.seed, [layer], vector, run.model, reading=reading)
        plan = strength_plan(prep.vec, prep.data.kind, layer, [strength, -strength], relative=relative, norms=prep.norms,
                             positions=positions)
        finish_sweep(run_plan(prep, plan, allow_multi_token), out, "score")

    run_command(body)


@cae_app.command("layers")
@grouped
def layers(
    behaviour: str = BEHAVIOUR,
    out: Path = OUT_DIR,
    layers: Optional[str] = typer.Option(None, help="Layers, e.g. 0,3,6 or 4-20 or all (default: every --layer-step-th)."),
    layer_step: int = typer.Option(3, help="Without --layers: every N-th layer from 0."),
    strength: float = typer.Option(0.5, help="Swept at +strength and -strength."),
    relative: bool = RELATIVE,
    positions: str = POSITIONS,
    reading: Optional[str] = READING,
    vector: Optional[Path] = VECTOR,
    split: Split = Split(),
    allow_multi_token: bool = MULTI_TOKEN,
    run: Runtime = Runtime(),
) -> None:
    """Layer sweep: behaviour score per layer at ±strength (layer_sweep.csv/json/png)."""

    def body():
        _begin(run, out, _files("layer_sweep"))
        from ..cae.sweeps import layer_plan

        if layer_step < 1:
            raise SteerlabError("--layer-step must be at least 1")
        n_layers = peek_layers(run.model)
        chosen = parse_layers(layers, n_layers) or list(range(0, n_layers, layer_step))
        check_layer_range(chosen, n_layers)  # before the model load
        prep = prepare(behaviour, split.n_train, split.n_test, split.seed, chosen, vector, run.model, save_to=out,
                       reading=reading)
        plan = layer_plan(prep.vec, prep.data.kind, chosen, [strength, -strength], relative=relative, norms=prep.norms,
                          positions=positions)
        sweep = run_plan(prep, plan, allow_multi_token)
        best = sweep.best("effect", **({"relative": strength} if relative else {"strength": strength}))
        finish_sweep(sweep, out, "layer_sweep", extra={"best_layer": best["layer"]})
        say(f"best layer at +{strength:g}: {best['layer']} (effect {best['effect']:+.3f})")

    run_command(body)


@cae_app.command("strengths")
@grouped
def strengths(
    behaviour: str = BEHAVIOUR,
    out: Path = OUT_DIR,
    layer: int = LAYER,
    strengths: str = typer.Option(STRENGTHS, help="Comma-separated strengths (both signs)."),
    relative: bool = RELATIVE,
    positions: str = POSITIONS,
    reading: Optional[str] = READING,
    vector: Optional[Path] = VECTOR,
    split: Split = Split(),
    allow_multi_token: bool = MULTI_TOKEN,
    run: Runtime = Runtime(),
) -> None:
    """Strength sweep at one layer (strength_sweep.csv/json/png)."""

    def body():
        _begin(run, out, _files("strength_sweep"))
        from ..cae.sweeps import strength_plan

        values = parse_floats(strengths, "strengths", allow_empty=True)
        prep = prepare(behaviour, split.n_train, split.n_test, split.seed, [layer], vector, run.model, save_to=out,
                       reading=reading)
        plan = strength_plan(prep.vec, prep.data.kind, layer, values, relative=relative, norms=prep.norms,
                             positions=positions)
        finish_sweep(run_plan(prep, plan, allow_multi_token), out, "strength_sweep")

    run_command(body)


@cae_app.command("samples")
@grouped
def samples(
    behaviour: str = BEHAVIOUR,
    out: Path = OUT_DIR,
    layer: int = LAYER,
    counts: str = typer.Option("10,20,40,80,160", help="Training-sample counts (nested subsets)."),
    strength: float = typer.Option(0.5, help="Strength (relative: the full vector's alpha for this r)."),
    relative: bool = RELATIVE,
    positions: str = POSITIONS,
    split: Split = Split(),
    allow_multi_token: bool = MULTI_TOKEN,
    run: Runtime = Runtime(),
) -> None:
    """Training-sample-count sweep (sample_count_sweep.csv/json/png) and where gains flatten."""

    def body():
        _begin(run, out, _files("sample_count_sweep"))
        from ..cae.sweeps import flatten_point, sample_count_plan

        ns = parse_ints(counts, "counts")
        if ns and max(ns) > split.n_train:
            raise SteerlabError(f"the largest count ({max(ns)}) exceeds --n-train ({split.n_train})")
        prep = prepare(behaviour, split.n_train, split.n_test, split.seed, [layer], None, run.model, need_acts=True)
        plan = sample_count_plan(prep.lm, prep.acts, prep.data.kind, ns, layer, strength, relative=relative,
                                 norms=prep.norms, positions=positions)
        sweep = run_plan(prep, plan, allow_multi_token)
        flat = flatten_point(sweep.to_json())
        finish_sweep(sweep, out, "sample_count_sweep", extra={"flatten": flat})
        say(f"gains flatten at n = {flat['n']} ({flat['reason']})")

    run_command(body)


@cae_app.command("compare")
@grouped
def compare(
    behaviour: str = BEHAVIOUR,
    out: Path = OUT_DIR,
    layer: int = LAYER,
    positive: str = typer.Option("Love", help="ActAdd's positive prompt."),
    negative: str = typer.Option("Hate", help="ActAdd's negative prompt."),
    strengths: str = typer.Option("-1,-0.5,0.5,1", help="Relative strengths (norm-matched across vectors)."),
    positions: str = POSITIONS,
    split: Split = Split(),
    allow_multi_token: bool = MULTI_TOKEN,
    run: Runtime = Runtime(),
) -> None:
    """CAA (many pairs) vs one-pair ActAdd on the same test items (method_comparison.csv/json/png)."""

    def body():
        _begin(run, out, _files("method_comparison"))
        from ..cae.sweeps import actadd_vectors, method_plan

        values = parse_floats(strengths, "strengths", allow_empty=True)
        prep = prepare(behaviour, split.n_train, split.n_test, split.seed, [layer], None, run.model)
        vectors = {"caa": prep.vec, **actadd_vectors(prep.lm, positive, negative, [layer])}
        plan = method_plan(vectors, prep.data.kind, layer, values, relative=True, norms=prep.norms, positions=positions)
        finish_sweep(run_plan(prep, plan, allow_multi_token), out, "method_comparison")

    run_command(body)


@cae_app.command("ood")
@grouped
def ood(
    behaviour: str = BEHAVIOUR,
    out: Path = OUT_DIR,
    layer: int = LAYER,
    strength: float = typer.Option(0.5, help="Strength (relative by default)."),
    relative: bool = RELATIVE,
    positions: str = POSITIONS,
    vector: Optional[Path] = VECTOR,
    kinds: str = typer.Option("choice-qa,open-ended", help="OOD prompt kinds."),
    lengths: str = typer.Option("short", help="OOD prompt lengths (short, medium, long)."),
    limit: Optional[int] = typer.Option(10, help="Prompts per kind and length."),
    prompts_file: Optional[Path] = typer.Option(None, "--prompts", help="Your own OOD prompts (JSON/JSONL of {prompt, "
                                                                         "criteria?, answer_matching_behavior?, ...})."),
    max_new_tokens: int = typer.Option(48, help="Tokens per response."),
    batch_size: int = typer.Option(8, help="Responses generated together (with --engine vllm, vLLM batches these "
                                   "further: give it 64 or more)."),
    judge: Judge = Judge(),
    n_train: int = N_TRAIN,
    seed: int = SEED,
    engine: str = GEN_ENGINE,
    run: Runtime = Runtime(),
) -> None:
    """Steered vs unsteered responses to OOD prompts, judged and projected (ood_generations.jsonl, ood.json, ood.png).

    Generations already in OUT/ood_generations.jsonl for the same layer and strength are reused."""

    def body():
        generator = text_generator(engine)
        try:
            evaluate(generator)
        finally:
            if hasattr(generator, "close"):
                generator.close()

    def evaluate(generator):
        _begin(run, out, ["ood.json"])
        judge.check()
        from ..cae.strengths import raw_strength
        from ..cae.ood import evaluate_ood, load_ood_cases, load_ood_file, plot_ood

        name = Path(behaviour).stem
        cases = load_ood_file(prompts_file) if prompts_file is not None else load_ood_cases(
            name, kinds=list(parse_list(kinds)), lengths=list(parse_list(lengths)), limit=limit)
        prep = prepare(behaviour, n_train, 1, seed, [layer], vector, run.model)
        alpha = raw_strength(strength, prep.vec, layer, prep.norms[layer]) if relative else strength
        res = evaluate_ood(prep.lm, name, cases, prep.vec.select([layer]), layer, alpha, judge.make(prep.lm),
                           out_dir=out, positions=positions, max_new_tokens=max_new_tokens, batch_size=batch_size,
                           log=say, generator=generator)
        plot_ood(res.to_json(), None, out / "ood.png")
        for m in res.measures:
            say(f"{m.measure:12s} {m.kind:10s} n={m.n:3d} unsteered {m.unsteered:+.3f} steered {m.steered:+.3f} "
                f"effect {m.effect:+.3f} [95% {m.effect_low:+.3f}, {m.effect_high:+.3f}]")
        say(f"wrote {out}/ood_generations.jsonl, ood_scores.json, ood.json, ood.png")

    run_command(body)


@cae_app.command("judge-check")
@grouped
def judge_check(
    behaviour: str = BEHAVIOUR,
    n: int = typer.Option(40, help="Behaviour items to build labelled texts from."),
    seed: int = SEED,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory to write judge_check.json into."),
    judge: Judge = Judge(),
    run: Runtime = Runtime(),
) -> None:
    """How well does the judge separate behaviour-matching from non-matching texts (AUC on MWE statements/choices)?"""

    def body():
        _begin(run, out, ["judge_check.json"])
        from .. import results
        from ..cae.behaviour_data import load_behaviour
        from ..cae.judge import check_judge

        data = load_behaviour(behaviour, n, 1, seed=seed)
        judge.check()
        lm = load_model(run.model) if judge.judge == "local" and not judge.judge_model else None
        t0 = time.perf_counter()
        res = check_judge(judge.make(lm), data.train, data.name)
        seconds = time.perf_counter() - t0
        say(f"{data.name}: judge {res.judge} AUC {res.auc:.3f} (mean score {res.mean_matching:.3f} on "
            f"{res.n_matching} matching texts, {res.mean_not_matching:.3f} on {res.n_not_matching} others; {seconds:.0f} s)")
        if out is not None:
            results.write_json(out / "judge_check.json", {**res.to_json(), "seconds": seconds, "seed": seed, "n_items": n})
            say(f"wrote {out / 'judge_check.json'}")

    run_command(body)


@cae_app.command("side-effects")
@grouped
def side_effects(
    behaviour: str = BEHAVIOUR,
    out: Path = OUT_DIR,
    layer: int = typer.Option(..., help="Layer to steer (at every position)."),
    strengths: str = typer.Option(STRENGTHS, help="Comma-separated strengths."),
    relative: bool = RELATIVE,
    vector: Optional[Path] = VECTOR,
    corpus: Optional[Path] = typer.Option(None, help="Text corpus (default: the data root's corpus/wikitext-2-test.txt)."),
    tokens: int = typer.Option(2048, help="Tokens of the corpus to score (from its start)."),
    window: int = typer.Option(256, help="Tokens per window."),
    schedule: str = typer.Option("constant", help="How the strength changes along each window's tokens: constant, "
                                 "first:N (only the first N, then unsteered) or decay:H (halved every H)."),
    n_train: int = N_TRAIN,
    seed: int = SEED,
    run: Runtime = Runtime(),
) -> None:
    """Perplexity and KL(unsteered || steered) on a fixed corpus subset across strengths (side_effects.*)."""

    def body():
        from ..schedules import Schedule

        plan = Schedule.parse(schedule)  # before the run directory and the model
        _begin(run, out, _files("side_effects"))
        from ..cae.strengths import raw_strength
        from ..cae.side_effects import corpus_windows, measure_side_effects, write_side_effects
        from ..data.io import require_data_root

        values = parse_floats(strengths, "strengths", allow_empty=True)
        path = corpus or require_data_root() / "corpus" / "wikitext-2-test.txt"
        prep = prepare(behaviour, n_train, 1, seed, [layer], vector, run.model)
        windows = corpus_windows(prep.lm, path, n_tokens=tokens, window=window)
        alphas = [raw_strength(v, prep.vec, layer, prep.norms[layer]) for v in values] if relative else values
        res = measure_side_effects(prep.lm, prep.vec, layer, alphas, windows, relative=values if relative else None,
                                   schedule=plan.spec, partial_path=out / "side_effects.partial.json",
                                   on_batch=lambda b, n: say(f"batch {b}/{n}"))
        files = write_side_effects(res, out)
        (out / "side_effects.partial.json").unlink(missing_ok=True)
        for r in res.rows:
            say(f"strength {r.strength:+8.3f} (r={r.relative}) perplexity {r.perplexity:8.2f} "
                f"(x{r.perplexity_ratio:.2f}) KL {r.kl:.4f} [{r.kl_low:.4f}, {r.kl_high:.4f}]")
        say("wrote " + ", ".join(str(p) for p in files.values()))

    run_command(body)


@cae_app.command("run")
@grouped
def run_suite(
    behaviour: str = typer.Option(..., "--behaviour", "-b", help="A CAE behaviour or an MWE .jsonl file."),
    out: Path = OUT_DIR,
    n_train: int = N_TRAIN,
    n_val: int = typer.Option(60, help="Validation items (the best layer is chosen on them)."),
    n_test: int = typer.Option(100, help="Test items (scored)."),
    seed: int = SEED,
    layers: Optional[str] = typer.Option(None, help="Layers to sweep (default: every --layer-step-th)."),
    layer_step: int = typer.Option(3, help="Without --layers: every N-th layer from 0."),
    strength: float = typer.Option(0.5, help="Layer-sweep strength (±) and the chosen strength downstream."),
    strengths: str = typer.Option(STRENGTHS, help="Strength sweep and cost curve."),
    relative: bool = RELATIVE,
    counts: str = typer.Option("10,20,40,80,160", help="Training-sample counts."),
    positions: str = POSITIONS,
    positive: str = typer.Option("Love", help="ActAdd's positive prompt."),
    negative: str = typer.Option("Hate", help="ActAdd's negative prompt."),
    ood_kinds: str = typer.Option("choice-qa,open-ended", help="OOD prompt kinds."),
    ood_lengths: str = typer.Option("short", help="OOD prompt lengths."),
    ood_limit: Optional[int] = typer.Option(10, help="OOD prompts per kind and length."),
    max_new_tokens: int = typer.Option(48, help="OOD response length."),
    judge: Judge = Judge(),
    corpus: Optional[str] = typer.Option(None, help="Perplexity corpus (default: wikitext-2-test.txt)."),
    ppl_tokens: int = typer.Option(2048, help="Perplexity tokens."),
    ppl_window: int = typer.Option(256, help="Perplexity window."),
    n_boot: int = typer.Option(2000, help="Bootstrap resamples."),
    stages: Optional[str] = typer.Option(None, help="Only these stages (comma-separated): data, extract, layers, sweeps, "
                                                    "ood, side_effects, report."),
    threads: Optional[int] = THREADS,
    device: str = DEVICE,
    dtype: Optional[str] = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
    model: Optional[str] = MODEL,
    force: bool = typer.Option(False, "--force", help="Start over in a directory holding another run."),
) -> None:
    """The whole CAE suite for one behaviour, in resumable stages (see steerlab.cae.runs)."""

    def body():
        set_runtime(threads, device, dtype, device_map)
        judge.check()
        from ..cae.behaviour_data import load_behaviour
        from ..cae.runs import CAEConfig, run_cae

        n_layers = peek_layers(model)
        chosen_layers = parse_layers(layers, n_layers) if layers else None
        if chosen_layers:
            check_layer_range(chosen_layers, n_layers)
        cfg = CAEConfig(
            behaviour=behaviour, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed,
            layers=tuple(chosen_layers) if chosen_layers else None, layer_step=layer_step,
            sweep_strength=strength, strengths=tuple(parse_floats(strengths, "strengths", allow_empty=True)),
            relative=relative, counts=tuple(parse_ints(counts, "counts")), positions=positions,
            actadd_positive=positive, actadd_negative=negative, ood_kinds=parse_list(ood_kinds),
            ood_lengths=parse_list(ood_lengths), ood_limit=ood_limit, max_new_tokens=max_new_tokens,
            judge=judge.judge, judge_url=judge.judge_url, judge_model=judge.judge_model,
            judge_key_env=judge.judge_key_env or None, corpus=corpus, ppl_tokens=ppl_tokens, ppl_window=ppl_window,
            n_boot=n_boot)
        load_behaviour(behaviour, n_train, n_val + n_test, seed=seed)  # bad data fails before the model loads
        lm = load_model(model)
        t0 = time.perf_counter()
        summary = run_cae(lm, cfg, out, stages=list(parse_list(stages)) if stages else None, force=force, progress=True)
        say(f"done in {time.perf_counter() - t0:.0f} s; report: {out / 'report.html'}")
        e = summary.get("effect_at_best")
        if e:
            say(f"best layer {summary.get('best_layer')}: effect {e['effect']:+.3f} "
                f"[{e['effect_low']:+.3f}, {e['effect_high']:+.3f}] at r={e.get('relative')}")

    run_command(body)


def report(
    run_dir: Path = typer.Argument(..., help="A run directory (or a directory of run directories)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (default: RUN_DIR/report.html or .md)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="html (images inlined) or md (images as files)."),
    force: bool = typer.Option(False, "--force", help="Overwrite the output file."),
) -> None:
    """Turn a run directory into one self-contained HTML page (or Markdown with images)."""

    def body():
        from ..cae.report import write_report

        say(f"wrote {write_report(run_dir, out, fmt=fmt, force=force)}")

    run_command(body)


def register(app: typer.Typer) -> None:
    """Add `steerlab cae ...` and `steerlab report` to the root app."""
    from .generalise import generalise  # its own module (one command); registered here, so no import circle

    cae_app.command("generalise")(generalise)
    app.add_typer(cae_app, name="cae")
    app.command("report")(report)
