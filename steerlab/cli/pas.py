"""`steerlab pas`, `steerlab pas-transfer`, `steerlab pas-sft`: Painless Activation Steering, thin over
`steerlab.pas`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from ..errors import SteerlabError
from .common import check_layer_spec, check_out, console, load_model, parse_floats, parse_layers, read_vector, \
    run_command, say, set_runtime
from .options import FORCE, MODEL, THREADS, DEVICE, DEVICE_MAP, DTYPE


def _methods(spec: List[str]) -> list[str]:
    from ..methods.pas import PAS_METHODS, normalize_method

    out: list[str] = []
    for part in spec:
        for m in part.split(","):
            m = m.strip()
            if not m:
                continue
            out.extend(PAS_METHODS if m.lower() == "all" else [normalize_method(m)])
    if not out:
        raise SteerlabError("no --method given")
    return list(dict.fromkeys(out))


def _strength_grid(spec: Optional[str], signs: str) -> list[float]:
    from ..pas.runs import default_strengths

    if spec is None:
        return default_strengths(signs)
    vals = parse_floats(spec, "strengths")
    if signs == "both":
        vals = sorted({*vals, *(-v for v in vals)})
    elif signs != "positive":
        raise SteerlabError(f"--signs must be both or positive, got {signs!r}")
    return vals


def _items(data: str, limit: Optional[int]):
    from ..data import load_task

    items = load_task(data)
    return items[:limit] if limit is not None else items


def _vector_names(methods: list[str]) -> dict[str, str]:
    return {m: ("vector.safetensors" if i == 0 else f"vector_{m}.safetensors") for i, m in enumerate(methods)}


def _write_json(path: Path, obj) -> None:
    from ..results import json_safe

    from ..results import with_machine

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(with_machine(obj) if isinstance(obj, dict) else obj), indent=1))
    say(f"wrote {path}")


def pas_run(
    data: str = typer.Option(..., "--data", "-d", help="A task name (e.g. bbq-nationality, truthfulqa-mc1) or a data file."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (vector, results.json, CSVs, plots)."),
    method: List[str] = typer.Option(["ipas-wo"], "--method", help="pasf, ipas-a, ipas-wo, a comma list, or all."),
    seeds: int = typer.Option(5, help="Number of seeds (0..N-1); each reshuffles splits and choice orders."),
    cap: int = typer.Option(4000, help="Use at most this many items (after shuffling)."),
    limit: Optional[int] = typer.Option(None, help="Read only the first N items of the data."),
    layers: Optional[str] = typer.Option(None, help="Layer grid, e.g. 8-16 or 8,10,12 (default: the paper's, scaled)."),
    strengths: Optional[str] = typer.Option(None, help="Strength grid, e.g. 1,4,8 (default: the paper's)."),
    signs: str = typer.Option("both", help="both: also try each strength negated; positive: as given."),
    icl: int = typer.Option(0, "--icl", help="Prefix K in-context exemplars (wrongly answered training items)."),
    chat_template: Optional[bool] = typer.Option(None, "--chat-template/--no-chat-template",
                                                 help="Wrap prompts in the chat template (default: as the model)."),
    choice_shuffle: str = typer.Option("independent", help="independent (default) or per-size (the reference code's fault; demonstration only)."),
    choice_seed: Optional[int] = typer.Option(None, help="Fix every question's choice order across seeds (only the split varies; recurring prompts run once)."),
    batch_size: int = typer.Option(16, help="Prompts per forward pass."),
    plots: bool = typer.Option(True, "--plots/--no-plots", help="Write PNG plots."),
    model: Optional[str] = MODEL,
    threads: Optional[int] = THREADS,
    device: str = DEVICE,
    dtype: Optional[str] = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
    force: bool = FORCE,
) -> None:
    """Painless Activation Steering: vectors from a labelled multiple-choice dataset, layer and strength
    chosen on validation, Delta on test over seeds, with the letter-bias control."""

    def body():
        set_runtime(threads, device, dtype, device_map)
        methods = _methods(method)
        names = _vector_names(methods)
        check_out(out, ["results.json", *names.values()], force)
        check_layer_spec(layers)
        grid = _strength_grid(strengths, signs)
        items = _items(data, limit)
        lm = load_model(model)
        from ..pas.runs import run_pas

        res = run_pas(lm, items, methods, seeds=seeds, cap=cap, layers=parse_layers(layers, lm.n_layers),
                      strengths=grid, chat_template=chat_template, progress=True,
                      choice_shuffle=choice_shuffle, choice_seed=choice_seed, icl_k=icl,
                      dataset=data if not Path(data).is_file() else "", batch_size=batch_size, log=say)
        written = res.save(out, plots=plots, force=force)
        for m, fname in names.items():
            try:
                vec = res.vector(m)
            except SteerlabError as e:
                console.print(f"[yellow]no {m} vector:[/] {escape(str(e))}", highlight=False)
                continue
            vec.save(out / fname, force=force)
            e = vec.meta
            say(f"wrote {out / fname}: {m} layer {e.selected_layers[0]} strength {e.strength:g} "
                f"positions {e.positions} (seed {e.extra['seed']})")
        say(res.summary_table())
        say(f"results: {', '.join(written.values())}")

    run_command(body)


def pas_transfer(
    vector: Path = typer.Argument(..., help="A vector written by `steerlab pas`."),
    data: str = typer.Option(..., "--data", "-d", help="The task or file to evaluate on (e.g. openbookqa)."),
    cap: int = typer.Option(400, help="Evaluate at most this many items."),
    seeds: int = typer.Option(1, help="Seeds (each draws items and choice orders)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the results as JSON here."),
    model: Optional[str] = MODEL,
    threads: Optional[int] = THREADS,
    device: str = DEVICE,
    dtype: Optional[str] = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
    force: bool = typer.Option(False, "--force", help="Overwrite OUT."),
) -> None:
    """Forgetting check: a PAS vector chosen on one task, applied unchanged to another, vs unsteered."""

    def body():
        set_runtime(threads, device, dtype, device_map)
        if out is not None:
            check_out(out, force=force)
        items = _items(data, None)
        vec = read_vector(vector)  # a truncated or NaN file fails before the model load
        lm = load_model(model)
        from ..pas.runs import evaluate_transfer
        from ..pas.stats import summarize

        vec.check_compatible(lm)
        res = [evaluate_transfer(lm, vec, items, seed=s, cap=cap, dataset=data) for s in range(seeds)]
        for r in res:
            say(f"{r.dataset}: {r.n_items} items, L{r.layer}@{r.strength:+g}: unsteered {100 * r.unsteered:.1f}% "
                f"steered {100 * r.steered:.1f}% Delta {100 * r.delta:+.1f}pp "
                f"(balanced {100 * r.letter_bias.balanced_delta:+.1f}pp)")
        s = summarize([r.delta for r in res])
        say(f"Delta over {len(res)} seed(s): {s.format()} pp")
        if out is not None:
            _write_json(out, {"vector": str(vector), "runs": [r.to_dict() for r in res], "delta": s.to_dict()})

    run_command(body)


def pas_sft(
    data: str = typer.Option(..., "--data", "-d", help="Task name or data file."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (results.json)."),
    method: str = typer.Option("ipas-wo", help="PAS variant."),
    seeds: int = typer.Option(1, help="Seeds."),
    cap: int = typer.Option(4000, help="Use at most this many items."),
    steps: int = typer.Option(100, help="LoRA optimiser steps."),
    rank: int = typer.Option(8, help="LoRA rank."),
    lr: float = typer.Option(5e-4, help="Learning rate."),
    batch_size: int = typer.Option(8, help="Training batch size."),
    layers: Optional[str] = typer.Option(None, help="Layer grid (default: the paper's, scaled)."),
    strengths: Optional[str] = typer.Option(None, help="Strength grid (default: the paper's, both signs)."),
    choice_seed: Optional[int] = typer.Option(None, help="Fix every question's choice order across seeds."),
    base: Optional[Path] = typer.Option(None, help="A `steerlab pas` output directory (same data, cap, grid, choice seed) whose base and base+PAS numbers are reused."),
    model: Optional[str] = MODEL,
    threads: Optional[int] = THREADS,
    device: str = DEVICE,
    dtype: Optional[str] = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
    force: bool = FORCE,
) -> None:
    """PAS on a LoRA fine-tuned model vs the tuned model alone vs the base model with PAS."""

    def body():
        set_runtime(threads, device, dtype, device_map)
        check_out(out, ["results.json"], force)
        base_result = None
        if base is not None:
            f = base / "results.json" if base.is_dir() else base
            if not f.is_file():
                raise SteerlabError(f"--base: {f} not found")
            base_result = json.loads(f.read_text())
        check_layer_spec(layers)
        grid = _strength_grid(strengths, "both")
        items = _items(data, None)
        lm = load_model(model)
        from ..pas.sft import SFTConfig, run_sft_comparison

        res = run_sft_comparison(lm, items, method, seeds=seeds, cap=cap,
                                 sft=SFTConfig(steps=steps, rank=rank, lr=lr, batch_size=batch_size),
                                 layers=parse_layers(layers, lm.n_layers), strengths=grid,
                                 choice_seed=choice_seed, dataset=data if not Path(data).is_file() else "",
                                 base=base_result, log=say)
        say(res.summary_table())
        _write_json(out / "results.json", res.to_dict())

    run_command(body)


def register(app: typer.Typer) -> None:
    """Add the PAS commands to the root app."""
    app.command("pas")(pas_run)
    app.command("pas-transfer")(pas_transfer)
    app.command("pas-sft")(pas_sft)
