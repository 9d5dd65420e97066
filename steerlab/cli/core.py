"""The everyday commands: train, generate, effect, info, export-gguf and the demo."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from ..data.demo import DEMO_DATA, DEMO_LAYER, DEMO_STRENGTH, DEMO_TRAIN, demo_pairs
from ..errors import DatasetError, SteerlabError
from ..position_policies import check_policy
from .common import (check_layer_spec, check_out, console, load_model, parse_floats, parse_layers, read_vector,
                     run_command, say, set_runtime)
from .options import MODEL, THREADS, DEVICE, DEVICE_MAP, DTYPE


def load_training_pairs(data: str):
    """Contrast pairs from 'demo', a pairs JSONL ({prompt, positive, negative}) or an MWE file."""
    if data == DEMO_DATA:
        return demo_pairs()[:DEMO_TRAIN]
    path = Path(data)
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    from ..data.io import read_records

    fields = read_records(path)[0].data  # validates the file (empty, malformed JSON with its line)
    if "answer_matching_behavior" in fields:
        from ..data.mwe import load_mwe

        return [item.to_pair() for item in load_mwe(path)]
    from ..data.pairs import load_pairs

    return load_pairs(path)


def _mwe_items(data: str):
    """The MWE items of `data` (None for 'demo' or a pairs file)."""
    path = Path(data)
    if data == DEMO_DATA or not path.is_file():
        return None
    from ..data.io import read_records

    if "answer_matching_behavior" not in read_records(path)[0].data:
        return None
    from ..data.mwe import load_mwe

    return load_mwe(path)


def print_effect(rep) -> None:
    """The table of an EffectReport, its one-line summary and its warning."""
    table = Table(title="effect on held-apart pairs: log p(positive) - log p(negative), nats/token")
    for c in ("strength", "mean gap", "shift vs unsteered", "95% interval"):
        table.add_column(c, justify="right")
    for r in rep.rows():
        table.add_row(f"{r['strength']:+g}", f"{r['mean_gap']:.3f}", f"{r['shift']:+.3f}", f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]")
    console.print(table)
    say(rep.summary())
    if rep.warning:
        console.print(f"[yellow]{escape(rep.warning)}[/yellow]")


def _check_sign(lm, vec, held) -> None:
    """Measure a freshly trained vector on held-apart items/pairs; warn where it acts against its sign."""
    from ..data.records import BehaviourItem

    with console.status(f"measuring the vector on {len(held)} held-apart items…"):
        if isinstance(held[0], BehaviourItem):
            from ..cae.verdicts import sign_check

            rows = sign_check(lm, vec, held)
        else:
            from ..effect import measure_effect

            rep = measure_effect(lm, vec, held, strengths=[-4.0, 4.0])
            print_effect(rep)
            return
    for r in rows:
        say(f"layer {r['layer']}: r=+0.5 {r['effect_plus']:+.3f} [{r['plus_low']:+.3f}, {r['plus_high']:+.3f}], "
            f"r=-0.5 {r['effect_minus']:+.3f} [{r['minus_low']:+.3f}, {r['minus_high']:+.3f}]  {r['verdict']}")
    bad = [r["layer"] for r in rows if r["verdict"] in ("reversed", "sign-blind")]
    good = [r["layer"] for r in rows if r["verdict"] == "as trained"]
    say(f"behaviour score p(match)/(p(match)+p(other)) on {len(held)} held-apart items (unsteered "
        f"{rows[0]['unsteered']:.3f}): as trained at {len(good)} of {len(rows)} layers {good}")
    if bad:
        msg = (f"warning: at layers {bad} this vector does not act as trained on held-apart items (reversed, or both "
               "signs move the score the same way): measure before you use its sign (docs/findings.md)")
        console.print(f"[yellow]{escape(msg)}[/yellow]")


def train(
    data: str = typer.Argument(..., help="Pairs JSONL ({prompt, positive, negative}), an MWE .jsonl file, or 'demo'."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the vector (.safetensors)."),
    layers: Optional[str] = typer.Option(None, help="Layers, e.g. 10 or 8-12 or all (default: all)."),
    method: str = typer.Option("caa", help="caa, pca, actadd, or (issue 26) multiformat (MWE file: A/B, Yes/No and "
                               "free-text CAA combined), bipo (one --layers N, trained by gradient) or persona "
                               "(the model's own answers to the file's first 40 questions under opposing system "
                               "prompts, judged) or persona-bipo (BiPO trained on those answers, --layers named)."),
    position: Optional[str] = typer.Option(None, help="Reading position: last (the answer token; caa and pca's "
                                           "default) or mean; persona: mean (over each answer's response tokens, its "
                                           "default) or last (the answer's last token)."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N pairs."),
    check: Optional[int] = typer.Option(None, help="Hold the last N pairs apart (not trained on) and measure the vector "
                                        "on them, warning where +strength acts against the trained sign. Default: 40 "
                                        "(at most a fifth of the pairs) for Yes/No MWE files (which do, docs/findings.md), "
                                        "0 otherwise."),
    positive: Optional[str] = typer.Option(None, help="ActAdd: the positive prompt (e.g. 'Love')."),
    negative: Optional[str] = typer.Option(None, help="ActAdd: the negative prompt (e.g. 'Hate')."),
    description: Optional[str] = typer.Option(None, help="persona: the trait in one line, completing 'You are an "
                                              "assistant who is ...' (default: the shipped one for the MWE file's name)."),
    judge: bool = typer.Option(True, "--judge/--no-judge", help="persona: keep only answers the local judge scores "
                               "as showing (positive side) / not showing (negative side) the trait."),
    keep: str = typer.Option("absolute", "--persona-keep", help="persona: absolute (keep answers beyond "
                             "--positive-min / --negative-max, the paper's rule) or median (cut both sides at the "
                             "median judged score, for a judge whose scale is shifted)."),
    positive_min: float = typer.Option(0.5, help="persona: keep positive-side answers the judge scores above this."),
    negative_max: float = typer.Option(0.5, help="persona: keep negative-side answers the judge scores below this."),
    steps: int = typer.Option(200, help="bipo, persona-bipo: the most optimiser steps (early stopping on validation "
                              "pairs)."),
    seed: int = typer.Option(0, help="bipo: split and batch order; persona: sampling; persona-bipo: both."),
    engine: str = typer.Option("builtin", "--engine", help="persona: what generates the answers: builtin "
                               "(transformers, in this process) or vllm (the steerlab[vllm] extra)."),
    model: Optional[str] = MODEL,
    threads: Optional[int] = THREADS,
    device: str = DEVICE,
    dtype: Optional[str] = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
) -> None:
    """Train a steering vector from contrast pairs and save it."""
    from .train_methods import GENERATING, OOD_METHODS, MethodArgs, check_method_args, train_method

    def body():
        set_runtime(threads, device, dtype, device_map)
        check_out(out, force=force)
        if method not in ("caa", "pca", "actadd") + OOD_METHODS:
            raise SteerlabError(f"unknown method '{method}': choose caa, pca, actadd, {', '.join(OOD_METHODS)}")
        if engine != "builtin" and method not in GENERATING:
            raise SteerlabError(f"--engine {engine} is for --method {' or '.join(GENERATING)} (the methods that "
                                "generate text)")
        if method == "actadd" and (not positive or not negative):
            raise SteerlabError("--method actadd needs --positive and --negative prompts")
        check_layer_spec(layers)
        pairs = None if method == "actadd" else load_training_pairs(data)
        if pairs is not None and limit is not None:
            pairs = pairs[:limit]
        items = _mwe_items(data) if pairs is not None else None
        if items is not None and limit is not None:
            items = items[:limit]
        if position is not None and method not in ("caa", "pca", "persona"):
            raise SteerlabError(f"--position is for caa, pca and persona, not --method {method}")
        margs = MethodArgs(method, Path(data).stem, description, judge, steps, seed, positive_min, negative_max, engine,
                           keep, position or "mean")
        if method in OOD_METHODS:  # bad method input fails before anything is announced
            check_method_args(margs, items, layers)
        n_check = check if check is not None else (min(40, len(pairs) // 5) if items and items[0].kind == "yesno" else 0)
        if n_check < 0:
            raise SteerlabError("--check must be 0 or more")
        held = None
        if pairs is not None and n_check:
            if len(pairs) < 2 * n_check:
                raise SteerlabError(f"--check {n_check} needs at least {2 * n_check} pairs (have {len(pairs)}); pass --check 0")
            held = items[-n_check:] if items is not None else pairs[-n_check:]
            pairs = pairs[:-n_check]
            items = items[:-n_check] if items is not None else None
            say(f"holding the last {n_check} pairs apart to check the vector's sign (--check 0 to train on all)")
        lm = load_model(model)
        chosen = parse_layers(layers, lm.n_layers)
        from ..methods import train_actadd, train_caa, train_pca

        if method in OOD_METHODS:
            vec = train_method(lm, margs, pairs, items, chosen)
        elif method == "actadd":
            vec = train_actadd(lm, positive, negative, chosen)
        else:
            fn = train_caa if method == "caa" else train_pca
            vec = fn(lm, pairs, chosen, position=position or "last", progress=True)
        vec.save(out, force=force)
        say(f"wrote {out}: {vec}")
        if held is not None:
            _check_sign(lm, vec, held)

    run_command(body)


def _checked_vector(path: Path, lm, allow_other_model: bool, vec=None):
    """The vector at `path` (or `vec`, already read from it), checked against the loaded model."""
    vec = vec if vec is not None else read_vector(path)
    vec.check_compatible(lm, allow_other_family=allow_other_model)
    return vec


def _print_comparison(prompts, plain, steered, label: str) -> None:
    table = Table(show_lines=True)
    table.add_column("prompt", style="bold", ratio=1)
    table.add_column("unsteered", ratio=2)
    table.add_column(label, ratio=2)
    for p, a, b in zip(prompts, plain, steered):
        table.add_row(escape(p), escape(a.strip()), escape(b.strip()))
    console.print(table)


def generate(
    prompt: List[str] = typer.Argument(..., help="One or more prompts (user messages)."),
    vector: Optional[Path] = typer.Option(None, "--vector", "-v", help="Vector file (.safetensors or .gguf)."),
    strength: Optional[float] = typer.Option(None, "--strength", "-s", help="Multiplier alpha in h <- h + alpha * v (default: the vector's chosen strength, else 4)."),
    layers: Optional[str] = typer.Option(None, help="Apply only these layers of the vector."),
    positions: Optional[str] = typer.Option(None, help="all, after_user (CAA) or last_prompt (PAS) (default: the vector's, else after_user)."),
    schedule: str = typer.Option("constant", help="How the strength changes along the steered positions: constant, "
                                 "first:N (only the first N, then unsteered) or decay:H (halved every H)."),
    max_new_tokens: int = typer.Option(48, help="Tokens to generate."),
    compare: bool = typer.Option(False, "--compare", help="Print unsteered and steered outputs side by side."),
    condition: Optional[Path] = typer.Option(None, "--condition", "-c", help="Condition vector file: steer only "
                                             "the prompts that fire it (`steerlab condition train`)."),
    decide: str = typer.Option("exact", "--decide", help="With --condition and a steered layer at or below the "
                               "condition's: exact (a look-ahead in the prefill, every position steered) or "
                               "first_token (no extra work; those layers steered from the first generated token)."),
    allow_other_model: bool = typer.Option(False, help="Use a vector made for another model family."),
    model: Optional[str] = MODEL,
    threads: Optional[int] = THREADS,
    device: str = DEVICE,
    dtype: Optional[str] = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
) -> None:
    """Generate text, optionally steered by a vector (greedy decoding)."""

    def body():
        set_runtime(threads, device, dtype, device_map)
        if compare and vector is None:
            raise SteerlabError("--compare needs --vector")
        if layers is not None and vector is None:
            raise SteerlabError("--layers needs --vector")
        if condition is not None and vector is None:
            raise SteerlabError("--condition needs --vector (the condition decides where that vector is applied)")
        from ..steering import DECIDE_MODES

        if decide not in DECIDE_MODES:
            raise SteerlabError(f"unknown --decide '{decide}': choose one of {', '.join(DECIDE_MODES)}")
        if decide != "exact" and condition is None:
            raise SteerlabError("--decide says how a condition is decided: give --condition too")
        check_layer_spec(layers)
        if positions is not None:
            check_policy(positions)  # before the model load
        from ..schedules import Schedule

        plan = Schedule.parse(schedule)
        if not plan.constant and vector is None:
            raise SteerlabError("--schedule says how the vector's strength changes: give --vector too")
        raw = read_vector(vector)  # a truncated or NaN file fails before the model load
        cond = None
        if condition is not None:
            from .condition import read_condition

            cond = read_condition(condition)
        lm = load_model(model)
        from dataclasses import replace

        from ..generation import generate as steered_generate
        from ..steering import Steering

        steering = None
        if raw is not None:
            vec = _checked_vector(vector, lm, allow_other_model, raw)
            # A vector trained by `steerlab pas` carries its chosen layer/strength/positions.
            steering = replace(Steering.from_vector(vec, strength, parse_layers(layers, lm.n_layers), positions),
                               schedule=plan.spec)
        checks = None
        if cond is not None:
            cond.vector.check_compatible(lm, allow_other_family=allow_other_model)
            steering = replace(steering, condition=cond, decide=decide)
            checks = cond.check(lm, prompt)
        steered = steered_generate(lm, prompt, steering, max_new_tokens=max_new_tokens, progress=True)
        if compare:
            plain = steered_generate(lm, prompt, None, max_new_tokens=max_new_tokens, progress=True)
            label = f"steered (x{steering.strength:g})"
            if checks is not None:
                label += f" if '{cond.name}' fires"
                prompt_labels = [f"{p}\n[{'fired' if c.fired else 'not fired'}, score {c.score:+.3f}]"
                                 for p, c in zip(prompt, checks)]
                _print_comparison(prompt_labels, plain, steered, label)
            else:
                _print_comparison(prompt, plain, steered, label)
        else:
            for i, (p, out) in enumerate(zip(prompt, steered)):
                fired = "" if checks is None else \
                    f" [dim]({'condition fired' if checks[i].fired else 'condition not fired: unsteered'})[/]"
                console.print(f"[bold]{escape(p)}[/]{fired}\n{escape(out)}\n", highlight=False)

    run_command(body)


def info(vector: Path = typer.Argument(..., help="Vector file (.safetensors or .gguf).")) -> None:
    """Show a vector's metadata and per-layer norms."""

    def body():
        vec = read_vector(vector)
        meta = json.loads(vec.meta.to_json())
        table = Table(title=str(vector), show_header=False)
        for k, v in meta.items():
            if k != "layers":
                table.add_row(k, escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v)))
        table.add_row("layers (norm)", ", ".join(f"{l} ({n:.2f})" for l, n in vec.norms().items()))
        console.print(table)

    run_command(body)


def export_gguf(
    vector: Path = typer.Argument(..., help="Vector file (.safetensors)."),
    out: Path = typer.Argument(..., help="Output .gguf (llama.cpp control vector)."),
    skip_layer0: bool = typer.Option(False, help="Drop layer 0 (llama.cpp ignores it) instead of refusing."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
) -> None:
    """Export a vector as a llama.cpp control vector (use with --control-vector-scaled FILE:SCALE)."""

    def body():
        from ..vector import export_gguf as write_gguf

        check_out(out, force=force)
        vec = read_vector(vector)
        if skip_layer0 and 0 in vec.layers:
            vec = vec.select([l for l in vec.layers if l != 0])
        write_gguf(vec, out, force=force)
        say(f"wrote {out} ({len(vec.layers)} layers)")

    run_command(body)


def effect(
    vector: Path = typer.Argument(..., help="Vector file."),
    data: str = typer.Argument(..., help="Held-apart pairs: pairs JSONL, MWE file, or 'demo' (its held-apart part)."),
    layers: Optional[str] = typer.Option(None, help="Layers to apply (default: all of the vector's)."),
    strengths: str = typer.Option("-8,-4,4,8", help="Comma-separated strengths."),
    positions: str = typer.Option("after_user", help="all, after_user or last_prompt."),
    offset: int = typer.Option(0, help="Skip the first N pairs (e.g. the ones the vector was trained on: "
                                       "`train --limit 200` then `effect --offset 200`)."),
    limit: Optional[int] = typer.Option(None, help="Use at most N pairs (after --offset)."),
    model: Optional[str] = MODEL,
    threads: Optional[int] = THREADS,
    device: str = DEVICE,
    dtype: Optional[str] = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
) -> None:
    """Measure the direction and size of a vector's effect on held-apart pairs.

    With a file the vector was trained on, hold items apart with --offset (train used the first
    --limit N pairs; measure on the rest with --offset N)."""

    def body():
        set_runtime(threads, device, dtype, device_map)
        ss = parse_floats(strengths, "strengths")
        check_layer_spec(layers)
        check_policy(positions)
        if offset < 0:
            raise SteerlabError("--offset must be 0 or more")
        if limit is not None and limit < 1:
            raise SteerlabError("--limit must be at least 1")
        pairs = demo_pairs()[DEMO_TRAIN:] if data == DEMO_DATA else load_training_pairs(data)
        if offset >= len(pairs):
            raise SteerlabError(f"--offset {offset} leaves no pairs: {data} has {len(pairs)}")
        pairs = pairs[offset:offset + limit if limit is not None else None]
        raw = read_vector(vector)
        lm = load_model(model)
        vec = _checked_vector(vector, lm, False, raw)
        from ..effect import measure_effect

        say(f"measuring on {len(pairs)} pairs at strengths {', '.join(f'{s:+g}' for s in ss)}…")
        rep = measure_effect(lm, vec, pairs, layers=parse_layers(layers, lm.n_layers), strengths=ss, positions=positions)
        print_effect(rep)

    run_command(body)


def demo(
    layer: int = typer.Option(DEMO_LAYER, help="Layer to train and steer."),
    strength: float = typer.Option(DEMO_STRENGTH, help="Steering strength."),
    max_new_tokens: int = typer.Option(40, help="Tokens per generation."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also save the trained vector here."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
    model: Optional[str] = MODEL,
    threads: Optional[int] = THREADS,
    device: str = DEVICE,
    dtype: Optional[str] = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
) -> None:
    """The main job on the embedded model: train a vector on the shipped contrast pairs, measure its
    effect on held-apart pairs, and show unsteered vs steered generations side by side."""

    def body():
        set_runtime(threads, device, dtype, device_map)
        if out is not None:
            check_out(out, force=force)
        pairs = demo_pairs()
        train_pairs, held = pairs[:DEMO_TRAIN], pairs[DEMO_TRAIN:]
        lm = load_model(model)
        from ..effect import measure_effect
        from ..generation import generate as steered_generate
        from ..methods import train_caa
        from ..steering import Steering

        say(f"training a CAA vector on {len(train_pairs)} cheerful-vs-gloomy pairs at layer {layer}…")
        vec = train_caa(lm, train_pairs, [layer], position="mean", progress=True)
        if out is not None:
            vec.save(out, force=force)
            say(f"saved {out}")
        rep = measure_effect(lm, vec, held, strengths=[-strength, strength], positions="after_user")
        print_effect(rep)
        prompts = [p.prompt for p in held[:4]]
        # One batch, three rows per prompt: unsteered, +strength, -strength (per-row steering).
        rows = [p for p in prompts for _ in range(3)]
        strengths = [0.0, strength, -strength] * len(prompts)
        outs = steered_generate(lm, rows, Steering([vec] * len(rows), strengths, positions="after_user"),
                                max_new_tokens=max_new_tokens, batch_size=len(rows), progress=True)
        table = Table(show_lines=True, title=f"greedy generations, vector at layer {layer}")
        table.add_column("prompt", style="bold", ratio=1)
        for head in ("unsteered", f"cheerful (x{strength:+g})", f"gloomy (x{-strength:+g})"):
            table.add_column(head, ratio=2)
        for i, p in enumerate(prompts):
            table.add_row(escape(p), *(escape(o.strip()) for o in outs[3 * i:3 * i + 3]))
        console.print(table)

    run_command(body)


def register(app: typer.Typer) -> None:
    """Add the everyday commands to the root app."""
    for fn in (train, generate, info):
        app.command()(fn)
    app.command("export-gguf")(export_gguf)
    app.command()(effect)
    app.command()(demo)
