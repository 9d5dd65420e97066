"""`steerlab cae ...` (Contrastive Activation Engineering analyses) and `steerlab report RUN_DIR`.

Registered on the main app by `steerlab.cli` (see its `_EXTENSIONS`). Every command is thin over
`steerlab.analysis` and writes its result files (CSV per item, JSON per setting, PNG) into `--out`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import List, Optional

import typer

from .errors import SteerlabError


def _cli():
    """`steerlab.cli`, imported lazily: it imports this module while it builds the app (and may be
    running as `__main__`), so a top-level import here would be circular."""
    from . import cli

    return cli


def _run(fn):
    return _cli()._run(fn)


def _load_model(model):
    return _cli()._load_model(model)


def parse_layers(spec, n_layers):
    return _cli().parse_layers(spec, n_layers)


class _Console:
    """Forwards to the CLI's rich console (resolved at call time)."""

    def __getattr__(self, name):
        return getattr(_cli().console, name)


console = _Console()

cae_app = typer.Typer(help="Contrastive Activation Engineering: behaviour scores, sweeps, OOD, side effects.",
                      no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

BehaviourArg = typer.Argument(..., help="A CAE behaviour (e.g. openness, power-seeking-inclination) or an MWE .jsonl file.")
OutOpt = typer.Option(..., "--out", "-o", help="Directory for the result files.")
ModelOpt = typer.Option(None, "--model", "-m", help="Hugging Face id, local directory or .gguf (default: embedded SmolLM2).")
VectorOpt = typer.Option(None, "--vector", "-v", help="Use this vector file instead of training CAA on the train split.")
NTrainOpt = typer.Option(200, help="Training items (the CAA vector's pairs).")
NTestOpt = typer.Option(100, help="Test items (scored).")
SeedOpt = typer.Option(0, help="Split seed (train and test are disjoint).")
RelOpt = typer.Option(True, "--relative/--raw", help="Strengths relative to the layer's residual norm "
                                                   "(alpha*||v|| = r*mean||h_L||) or raw alphas.")
PosOpt = typer.Option("answer", help="Steering positions: answer (from the token predicting the answer), all, "
                                     "after_user, last_prompt.")
ForceOpt = typer.Option(False, "--force", help="Overwrite existing result files.")
ThreadsOpt = typer.Option(None, help="torch CPU threads (default: torch's choice).")
MultiOpt = typer.Option(False, "--allow-multi-token", help="Score Yes/No answers the tokenizer splits as whole sequences.")


def _floats(spec: str, what: str) -> list[float]:
    try:
        return [float(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise SteerlabError(f"cannot read {what} '{spec}': give comma-separated numbers, e.g. -1,-0.5,0.5,1") from None


def _ints(spec: str, what: str) -> list[int]:
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise SteerlabError(f"cannot read {what} '{spec}': give comma-separated integers, e.g. 10,20,40") from None


def _threads(n: Optional[int]) -> None:
    if n is not None:
        import torch

        if n < 1:
            raise SteerlabError("--threads must be at least 1")
        torch.set_num_threads(n)


def _check_out(out: Path, names: list[str], force: bool) -> None:
    from .analysis._io import check_fresh

    check_fresh([out / n for n in names], force)


class _Prepared:
    """Model, data split, vector and residual norms shared by the single-stage commands."""

    def __init__(self, behaviour: str, n_train: int, n_test: int, seed: int, layers: list[int] | None,
                 vector: Optional[Path], model: Optional[str], need_acts: bool = False, save_to: Optional[Path] = None):
        from .analysis.behaviour import load_behaviour, pair_residual_norms, residual_norms
        from .analysis.sweeps import train_activations
        from .vector import SteeringVector

        self.data = load_behaviour(behaviour, n_train, n_test, seed=seed)  # data errors before the model loads
        self.lm = _load_model(model)
        self.layers = layers if layers is not None else list(range(self.lm.n_layers))
        for l in self.layers:
            self.lm.blocks.check_layer(l)
        self.acts = None
        if vector is not None and not need_acts:
            self.vec = SteeringVector.load(vector)
            self.vec.check_compatible(self.lm)
            missing = [l for l in self.layers if l not in self.vec.directions]
            if missing:
                raise SteerlabError(f"{vector} has no direction for layers {missing} (it has {list(self.vec.layers)})")
            with console.status("measuring residual norms…"):
                self.norms = residual_norms(self.lm, self.data.train[:64], self.layers)
        else:
            t0 = time.perf_counter()
            with console.status(f"extracting {len(self.data.train)} training pairs at {len(self.layers)} layers…"):
                self.acts = train_activations(self.lm, self.data.train, self.layers)
            console.print(f"extracted training activations in {time.perf_counter() - t0:.0f} s")
            self.vec = self.acts.caa_vector(self.lm)
            self.norms = pair_residual_norms(self.acts)
            if save_to is not None:  # keep the trained vector for later commands (--vector OUT/caa.safetensors)
                path = Path(save_to) / "caa.safetensors"
                if path.exists():
                    console.print(f"kept the existing {path} (this command's vector was not saved)")
                else:
                    self.vec.save(path)
                    console.print(f"saved the CAA vector (layers {list(self.vec.layers)}) to {path}")

    @property
    def test(self):
        return self.data.test


def _report_sweep(sweep, files) -> None:
    from rich.table import Table

    table = Table(title=f"{sweep.kind} sweep: behaviour score p(match)/(p(match)+p(not match)), test items")
    for c in ("setting", "score [95%]", "effect vs unsteered [95%]"):
        table.add_column(c, justify="right")
    for r in sweep.summary_rows():
        table.add_row(r["label"], f"{r['score']:.3f} [{r['score_low']:.3f}, {r['score_high']:.3f}]",
                      f"{r['effect']:+.3f} [{r['effect_low']:+.3f}, {r['effect_high']:+.3f}]")
    console.print(table)
    console.print("wrote " + ", ".join(str(p) for p in files.values()) + f" (scoring {sweep.seconds:.0f} s)")


@cae_app.command("score")
def score_cmd(
    behaviour: str = BehaviourArg,
    vector: Optional[Path] = VectorOpt,
    layer: Optional[int] = typer.Option(None, help="Steer this layer (needs --vector or trains CAA there)."),
    strength: float = typer.Option(0.5, help="Steering strength (relative by default)."),
    relative: bool = RelOpt,
    positions: str = PosOpt,
    n_train: int = NTrainOpt,
    n_test: int = NTestOpt,
    seed: int = SeedOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also write the per-item CSV/JSON here."),
    allow_multi_token: bool = MultiOpt,
    threads: Optional[int] = ThreadsOpt,
    model: Optional[str] = ModelOpt,
    force: bool = ForceOpt,
) -> None:
    """Behaviour score (with bootstrap 95% interval) on the test split, unsteered and, with --layer, steered at ±strength."""

    def body():
        _threads(threads)
        from .analysis.behaviour import load_behaviour, score_behaviour
        from .analysis.sweeps import run_plans, strength_plan, write_sweep

        if out is not None:
            _check_out(out, ["score.json", "score.csv", "score.png"], force)
        if layer is None:
            data = load_behaviour(behaviour, n_train, n_test, seed=seed)
            lm = _load_model(model)
            res = score_behaviour(lm, data.test, [], allow_multi_token=allow_multi_token)
            u = res.unsteered()
            console.print(f"{data.name} ({data.kind}, {u.n_items} test items, seed {seed}): unsteered behaviour score "
                          f"{u.score:.3f} [95% {u.score_low:.3f}, {u.score_high:.3f}]")
            return
        prep = _Prepared(behaviour, n_train, n_test, seed, [layer], vector, model)
        plan = strength_plan(prep.vec, prep.data.kind, layer, [strength, -strength], relative=relative, norms=prep.norms,
                             positions=positions)
        sweep = run_plans(prep.lm, prep.test, [plan], allow_multi_token=allow_multi_token)[0]
        files = write_sweep(sweep, out, "score") if out is not None else {}
        _report_sweep(sweep, files)

    _run(body)


@cae_app.command("layers")
def layers_cmd(
    behaviour: str = BehaviourArg,
    out: Path = OutOpt,
    layers: Optional[str] = typer.Option(None, help="Layers, e.g. 0,3,6 or 4-20 or all (default: every --layer-step-th)."),
    layer_step: int = typer.Option(3, help="Without --layers: every N-th layer from 0."),
    strength: float = typer.Option(0.5, help="Swept at +strength and -strength."),
    relative: bool = RelOpt,
    positions: str = PosOpt,
    vector: Optional[Path] = VectorOpt,
    n_train: int = NTrainOpt,
    n_test: int = NTestOpt,
    seed: int = SeedOpt,
    allow_multi_token: bool = MultiOpt,
    threads: Optional[int] = ThreadsOpt,
    model: Optional[str] = ModelOpt,
    force: bool = ForceOpt,
) -> None:
    """Layer sweep: behaviour score per layer at ±strength (layer_sweep.csv/json/png)."""

    def body():
        _threads(threads)
        from .analysis.sweeps import layer_plan, run_plans, write_sweep

        _check_out(out, ["layer_sweep.json", "layer_sweep.csv", "layer_sweep.png"], force)
        if layer_step < 1:
            raise SteerlabError("--layer-step must be at least 1")
        n_layers = _peek_layers(model)
        chosen = parse_layers(layers, n_layers) or list(range(0, n_layers, layer_step))
        prep = _Prepared(behaviour, n_train, n_test, seed, chosen, vector, model, save_to=out)
        plan = layer_plan(prep.vec, prep.data.kind, chosen, [strength, -strength], relative=relative, norms=prep.norms,
                          positions=positions)
        sweep = run_plans(prep.lm, prep.test, [plan], allow_multi_token=allow_multi_token)[0]
        best = sweep.best("effect", **({"relative": strength} if relative else {"strength": strength}))
        files = write_sweep(sweep, out, "layer_sweep", extra={"items": "test", "best_layer": best["layer"]})
        _report_sweep(sweep, files)
        console.print(f"best layer at +{strength:g}: {best['layer']} (effect {best['effect']:+.3f})")

    _run(body)


def _peek_layers(model: Optional[str]) -> int:
    """Number of decoder layers (from the config; the embedded model has 30) without loading weights twice."""
    if model is None:
        return 30
    from transformers import AutoConfig

    from .zoo import resolve

    known = resolve(model)  # a known model name: its installed GGUF, converted once (cached)
    if known is not None:
        from .models import _gguf_as_checkpoint

        model = str(_gguf_as_checkpoint(known))
    elif model.endswith(".gguf"):
        from .models import _gguf_as_checkpoint

        model = str(_gguf_as_checkpoint(Path(model)))
    try:
        cfg = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise SteerlabError(f"could not read the config of '{model}': {str(e).splitlines()[0]}") from None
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(getattr(cfg, "num_hidden_layers", None) or getattr(cfg, "n_layer"))


@cae_app.command("strengths")
def strengths_cmd(
    behaviour: str = BehaviourArg,
    out: Path = OutOpt,
    layer: int = typer.Option(..., help="Layer to steer."),
    strengths: str = typer.Option("-1,-0.5,-0.25,-0.1,0.1,0.25,0.5,1", help="Comma-separated strengths (both signs)."),
    relative: bool = RelOpt,
    positions: str = PosOpt,
    vector: Optional[Path] = VectorOpt,
    n_train: int = NTrainOpt,
    n_test: int = NTestOpt,
    seed: int = SeedOpt,
    allow_multi_token: bool = MultiOpt,
    threads: Optional[int] = ThreadsOpt,
    model: Optional[str] = ModelOpt,
    force: bool = ForceOpt,
) -> None:
    """Strength sweep at one layer (strength_sweep.csv/json/png)."""

    def body():
        _threads(threads)
        from .analysis.sweeps import run_plans, strength_plan, write_sweep

        _check_out(out, ["strength_sweep.json", "strength_sweep.csv", "strength_sweep.png"], force)
        values = _floats(strengths, "strengths")
        prep = _Prepared(behaviour, n_train, n_test, seed, [layer], vector, model, save_to=out)
        plan = strength_plan(prep.vec, prep.data.kind, layer, values, relative=relative, norms=prep.norms,
                             positions=positions)
        sweep = run_plans(prep.lm, prep.test, [plan], allow_multi_token=allow_multi_token)[0]
        _report_sweep(sweep, write_sweep(sweep, out, "strength_sweep", extra={"items": "test"}))

    _run(body)


@cae_app.command("samples")
def samples_cmd(
    behaviour: str = BehaviourArg,
    out: Path = OutOpt,
    layer: int = typer.Option(..., help="Layer to steer."),
    counts: str = typer.Option("10,20,40,80,160", help="Training-sample counts (nested subsets)."),
    strength: float = typer.Option(0.5, help="Strength (relative: the full vector's alpha for this r)."),
    relative: bool = RelOpt,
    positions: str = PosOpt,
    n_train: int = NTrainOpt,
    n_test: int = NTestOpt,
    seed: int = SeedOpt,
    allow_multi_token: bool = MultiOpt,
    threads: Optional[int] = ThreadsOpt,
    model: Optional[str] = ModelOpt,
    force: bool = ForceOpt,
) -> None:
    """Training-sample-count sweep (sample_count_sweep.csv/json/png) and where gains flatten."""

    def body():
        _threads(threads)
        from .analysis.sweeps import flatten_point, run_plans, sample_count_plan, write_sweep

        _check_out(out, ["sample_count_sweep.json", "sample_count_sweep.csv", "sample_count_sweep.png"], force)
        ns = _ints(counts, "counts")
        if ns and max(ns) > n_train:
            raise SteerlabError(f"the largest count ({max(ns)}) exceeds --n-train ({n_train})")
        prep = _Prepared(behaviour, n_train, n_test, seed, [layer], None, model, need_acts=True)
        plan = sample_count_plan(prep.lm, prep.acts, prep.data.kind, ns, layer, strength, relative=relative,
                                 norms=prep.norms, positions=positions)
        sweep = run_plans(prep.lm, prep.test, [plan], allow_multi_token=allow_multi_token)[0]
        flat = flatten_point(sweep.to_json())
        _report_sweep(sweep, write_sweep(sweep, out, "sample_count_sweep", extra={"items": "test", "flatten": flat}))
        console.print(f"gains flatten at n = {flat['n']} ({flat['reason']})")

    _run(body)


@cae_app.command("compare")
def compare_cmd(
    behaviour: str = BehaviourArg,
    out: Path = OutOpt,
    layer: int = typer.Option(..., help="Layer to steer."),
    positive: str = typer.Option("Love", help="ActAdd's positive prompt."),
    negative: str = typer.Option("Hate", help="ActAdd's negative prompt."),
    strengths: str = typer.Option("-1,-0.5,0.5,1", help="Relative strengths (norm-matched across vectors)."),
    positions: str = PosOpt,
    n_train: int = NTrainOpt,
    n_test: int = NTestOpt,
    seed: int = SeedOpt,
    allow_multi_token: bool = MultiOpt,
    threads: Optional[int] = ThreadsOpt,
    model: Optional[str] = ModelOpt,
    force: bool = ForceOpt,
) -> None:
    """CAA (many pairs) vs one-pair ActAdd on the same test items (method_comparison.csv/json/png)."""

    def body():
        _threads(threads)
        from .analysis.sweeps import actadd_vectors, method_plan, run_plans, write_sweep

        _check_out(out, ["method_comparison.json", "method_comparison.csv", "method_comparison.png"], force)
        values = _floats(strengths, "strengths")
        prep = _Prepared(behaviour, n_train, n_test, seed, [layer], None, model)
        vectors = {"caa": prep.vec, **actadd_vectors(prep.lm, positive, negative, [layer])}
        plan = method_plan(vectors, prep.data.kind, layer, values, relative=True, norms=prep.norms, positions=positions)
        sweep = run_plans(prep.lm, prep.test, [plan], allow_multi_token=allow_multi_token)[0]
        _report_sweep(sweep, write_sweep(sweep, out, "method_comparison", extra={"items": "test"}))

    _run(body)


@cae_app.command("ood")
def ood_cmd(
    behaviour: str = BehaviourArg,
    out: Path = OutOpt,
    layer: int = typer.Option(..., help="Layer to steer."),
    strength: float = typer.Option(0.5, help="Strength (relative by default)."),
    relative: bool = RelOpt,
    positions: str = PosOpt,
    vector: Optional[Path] = VectorOpt,
    kinds: str = typer.Option("choice-qa,open-ended", help="OOD prompt kinds."),
    lengths: str = typer.Option("short", help="OOD prompt lengths (short, medium, long)."),
    limit: Optional[int] = typer.Option(10, help="Prompts per kind and length."),
    prompts_file: Optional[Path] = typer.Option(None, "--prompts", help="Your own OOD prompts (JSON/JSONL of {prompt, "
                                                                         "criteria?, answer_matching_behavior?, ...})."),
    max_new_tokens: int = typer.Option(48, help="Tokens per response."),
    judge: str = typer.Option("local", help="local (the loaded model, offline) or openai (an OpenAI-compatible endpoint)."),
    judge_url: Optional[str] = typer.Option(None, help="Endpoint base URL, e.g. https://api.openai.com/v1."),
    judge_model: Optional[str] = typer.Option(None, help="Model name at the endpoint."),
    judge_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable holding the API key ('' for none)."),
    n_train: int = NTrainOpt,
    seed: int = SeedOpt,
    threads: Optional[int] = ThreadsOpt,
    model: Optional[str] = ModelOpt,
    force: bool = ForceOpt,
) -> None:
    """Steered vs unsteered responses to OOD prompts, judged and projected (ood_generations.jsonl, ood.json, ood.png).

    Generations already in OUT/ood_generations.jsonl for the same layer and strength are reused."""

    def body():
        _threads(threads)
        from .analysis.behaviour import raw_strength
        from .analysis.judge import make_judge
        from .analysis.ood import evaluate_ood, load_ood_cases, load_ood_file, plot_ood

        _check_out(out, ["ood.json"], force)
        name = Path(behaviour).stem
        cases = load_ood_file(prompts_file) if prompts_file is not None else load_ood_cases(
            name, kinds=[k.strip() for k in kinds.split(",")], lengths=[x.strip() for x in lengths.split(",")], limit=limit)
        prep = _Prepared(behaviour, n_train, 1, seed, [layer], vector, model)
        j = make_judge(judge, prep.lm, base_url=judge_url, model=judge_model, key_env=judge_key_env or None)
        alpha = raw_strength(strength, prep.vec, layer, prep.norms[layer]) if relative else strength
        res = evaluate_ood(prep.lm, name, cases, prep.vec.select([layer]), layer, alpha, j, out_dir=out,
                           positions=positions, max_new_tokens=max_new_tokens, log=console.print)
        plot_ood(res.to_json(), None, out / "ood.png")
        for m in res.measures:
            console.print(f"{m.measure:12s} {m.kind:10s} n={m.n:3d} unsteered {m.unsteered:+.3f} steered {m.steered:+.3f} "
                          f"effect {m.effect:+.3f} [95% {m.effect_low:+.3f}, {m.effect_high:+.3f}]")
        console.print(f"wrote {out}/ood_generations.jsonl, ood_scores.json, ood.json, ood.png")

    _run(body)


@cae_app.command("judge-check")
def judge_check_cmd(
    behaviour: str = BehaviourArg,
    n: int = typer.Option(40, help="Behaviour items to build labelled texts from."),
    seed: int = SeedOpt,
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory to write judge_check.json into."),
    judge: str = typer.Option("local", help="local or openai."),
    judge_url: Optional[str] = typer.Option(None, help="Endpoint base URL."),
    judge_model: Optional[str] = typer.Option(None, help="Model name at the endpoint."),
    judge_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable with the API key ('' for none)."),
    threads: Optional[int] = ThreadsOpt,
    model: Optional[str] = ModelOpt,
    force: bool = ForceOpt,
) -> None:
    """How well does the judge separate behaviour-matching from non-matching texts (AUC on MWE statements/choices)?"""

    def body():
        _threads(threads)
        from .analysis import _io
        from .analysis.behaviour import load_behaviour
        from .analysis.judge import check_judge, make_judge

        if out is not None:
            _check_out(out, ["judge_check.json"], force)
        data = load_behaviour(behaviour, n, 1, seed=seed)
        lm = _load_model(model) if judge == "local" else None
        j = make_judge(judge, lm, base_url=judge_url, model=judge_model, key_env=judge_key_env or None)
        t0 = time.perf_counter()
        res = check_judge(j, data.train, data.name)
        seconds = time.perf_counter() - t0
        console.print(f"{data.name}: judge {res.judge} AUC {res.auc:.3f} (mean score {res.mean_matching:.3f} on "
                      f"{res.n_matching} matching texts, {res.mean_not_matching:.3f} on {res.n_not_matching} others; "
                      f"{seconds:.0f} s)")
        if out is not None:
            _io.write_json(out / "judge_check.json", {**res.to_json(), "seconds": seconds, "seed": seed, "n_items": n})
            console.print(f"wrote {out / 'judge_check.json'}")

    _run(body)


@cae_app.command("side-effects")
def side_effects_cmd(
    behaviour: str = BehaviourArg,
    out: Path = OutOpt,
    layer: int = typer.Option(..., help="Layer to steer (at every position)."),
    strengths: str = typer.Option("-1,-0.5,-0.25,-0.1,0.1,0.25,0.5,1", help="Comma-separated strengths."),
    relative: bool = RelOpt,
    vector: Optional[Path] = VectorOpt,
    corpus: Optional[Path] = typer.Option(None, help="Text corpus (default: the data root's corpus/wikitext-2-test.txt)."),
    tokens: int = typer.Option(2048, help="Tokens of the corpus to score (from its start)."),
    window: int = typer.Option(256, help="Tokens per window."),
    n_train: int = NTrainOpt,
    seed: int = SeedOpt,
    threads: Optional[int] = ThreadsOpt,
    model: Optional[str] = ModelOpt,
    force: bool = ForceOpt,
) -> None:
    """Perplexity and KL(unsteered || steered) on a fixed corpus subset across strengths (side_effects.*)."""

    def body():
        _threads(threads)
        from .analysis.behaviour import raw_strength
        from .analysis.side_effects import corpus_windows, measure_side_effects, write_side_effects
        from .data.io import require_data_root

        _check_out(out, ["side_effects.json", "side_effects.csv", "side_effects.png"], force)
        values = _floats(strengths, "strengths")
        path = corpus or require_data_root() / "corpus" / "wikitext-2-test.txt"
        prep = _Prepared(behaviour, n_train, 1, seed, [layer], vector, model)
        windows = corpus_windows(prep.lm, path, n_tokens=tokens, window=window)
        alphas = [raw_strength(v, prep.vec, layer, prep.norms[layer]) for v in values] if relative else values
        res = measure_side_effects(prep.lm, prep.vec, layer, alphas, windows, relative=values if relative else None,
                                   partial_path=out / "side_effects.partial.json",
                                   on_batch=lambda b, n: console.print(f"batch {b}/{n}"))
        files = write_side_effects(res, out)
        (out / "side_effects.partial.json").unlink(missing_ok=True)
        for r in res.rows:
            console.print(f"strength {r.strength:+8.3f} (r={r.relative}) perplexity {r.perplexity:8.2f} "
                          f"(x{r.perplexity_ratio:.2f}) KL {r.kl:.4f} [{r.kl_low:.4f}, {r.kl_high:.4f}]")
        console.print("wrote " + ", ".join(str(p) for p in files.values()))

    _run(body)


@cae_app.command("run")
def run_cmd(
    behaviour: str = typer.Option(..., "--behaviour", "-b", help="A CAE behaviour or an MWE .jsonl file."),
    out: Path = OutOpt,
    n_train: int = NTrainOpt,
    n_val: int = typer.Option(60, help="Validation items (the best layer is chosen on them)."),
    n_test: int = NTestOpt,
    seed: int = SeedOpt,
    layers: Optional[str] = typer.Option(None, help="Layers to sweep (default: every --layer-step-th)."),
    layer_step: int = typer.Option(3, help="Without --layers: every N-th layer from 0."),
    strength: float = typer.Option(0.5, help="Layer-sweep strength (±) and the chosen strength downstream."),
    strengths: str = typer.Option("-1,-0.5,-0.25,-0.1,0.1,0.25,0.5,1", help="Strength sweep and cost curve."),
    relative: bool = RelOpt,
    counts: str = typer.Option("10,20,40,80,160", help="Training-sample counts."),
    positions: str = PosOpt,
    positive: str = typer.Option("Love", help="ActAdd's positive prompt."),
    negative: str = typer.Option("Hate", help="ActAdd's negative prompt."),
    ood_kinds: str = typer.Option("choice-qa,open-ended", help="OOD prompt kinds."),
    ood_lengths: str = typer.Option("short", help="OOD prompt lengths."),
    ood_limit: Optional[int] = typer.Option(10, help="OOD prompts per kind and length."),
    max_new_tokens: int = typer.Option(48, help="OOD response length."),
    judge: str = typer.Option("local", help="local or openai."),
    judge_url: Optional[str] = typer.Option(None, help="OpenAI-compatible endpoint base URL."),
    judge_model: Optional[str] = typer.Option(None, help="Model name at the endpoint."),
    judge_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable with the API key ('' for none)."),
    corpus: Optional[str] = typer.Option(None, help="Perplexity corpus (default: wikitext-2-test.txt)."),
    ppl_tokens: int = typer.Option(2048, help="Perplexity tokens."),
    ppl_window: int = typer.Option(256, help="Perplexity window."),
    n_boot: int = typer.Option(2000, help="Bootstrap resamples."),
    stages: Optional[str] = typer.Option(None, help="Only these stages (comma-separated): data, extract, layers, sweeps, "
                                                    "ood, side_effects, report."),
    threads: Optional[int] = ThreadsOpt,
    model: Optional[str] = ModelOpt,
    force: bool = typer.Option(False, "--force", help="Start over in a directory holding another run."),
) -> None:
    """The whole CAE suite for one behaviour, in resumable stages (see steerlab.analysis.cae)."""

    def body():
        _threads(threads)
        from .analysis.cae import CAEConfig, run_cae

        n_layers = _peek_layers(model)
        cfg = CAEConfig(
            behaviour=behaviour, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed,
            layers=tuple(parse_layers(layers, n_layers)) if layers else None, layer_step=layer_step,
            sweep_strength=strength, strengths=tuple(_floats(strengths, "strengths")), relative=relative,
            counts=tuple(_ints(counts, "counts")), positions=positions, actadd_positive=positive,
            actadd_negative=negative, ood_kinds=tuple(k.strip() for k in ood_kinds.split(",") if k.strip()),
            ood_lengths=tuple(x.strip() for x in ood_lengths.split(",") if x.strip()), ood_limit=ood_limit,
            max_new_tokens=max_new_tokens, judge=judge, judge_url=judge_url, judge_model=judge_model,
            judge_key_env=judge_key_env or None, corpus=corpus, ppl_tokens=ppl_tokens, ppl_window=ppl_window,
            n_boot=n_boot)
        from .analysis.behaviour import load_behaviour

        load_behaviour(behaviour, n_train, n_val + n_test, seed=seed)  # bad data fails before the model loads
        lm = _load_model(model)
        chosen = [s.strip() for s in stages.split(",")] if stages else None
        t0 = time.perf_counter()
        summary = run_cae(lm, cfg, out, stages=chosen, force=force)
        console.print(f"done in {time.perf_counter() - t0:.0f} s; report: {out / 'report.html'}")
        e = summary.get("effect_at_best")
        if e:
            console.print(f"best layer {summary.get('best_layer')}: effect {e['effect']:+.3f} "
                          f"[{e['effect_low']:+.3f}, {e['effect_high']:+.3f}] at r={e.get('relative')}")

    _run(body)


def report_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory (or a directory of run directories)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output file (default: RUN_DIR/report.html or .md)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="html (images inlined) or md (images as files)."),
    force: bool = typer.Option(False, "--force", help="Overwrite the output file."),
) -> None:
    """Turn a run directory into one self-contained HTML page (or Markdown with images)."""

    def body():
        from .report import write_report

        path = write_report(run_dir, out, fmt=fmt, force=force)
        console.print(f"wrote {path}")

    _run(body)


def register(app: typer.Typer) -> None:
    """Add `steerlab cae ...` and `steerlab report` to the main app."""
    app.add_typer(cae_app, name="cae")
    app.command("report")(report_cmd)
