"""Conditional steering and read-out on the command line: `steerlab condition train|check` and
`steerlab monitor` (the logic is in `steerlab.condition` and `steerlab.monitoring`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.text import Text

from ..errors import SteerlabError
from .common import check_out, console, load_model, parse_layers, read_vector, run_command, say, set_runtime
from .options import FORCE, MODEL, THREADS, DEVICE, DEVICE_MAP, DTYPE

condition_app = typer.Typer(help="Condition vectors (CAST): steer only when the prompt is about something.",
                            no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


def read_prompt_args(prompts: List[str]) -> list[str]:
    """PROMPTS arguments: each an existing file of prompts (one per line, or JSONL with `prompt`), or a prompt."""
    from ..data.prompt_sets import load_prompts

    out: list[str] = []
    for p in prompts:
        path = Path(p)
        out.extend(load_prompts(path) if path.is_file() else [p])
    if not out:
        raise SteerlabError("no prompts given")
    return out


def read_condition(path: Path, name: Optional[str] = None):
    """A condition vector file, checked to be one, before the model loads."""
    from ..condition import ConditionVector

    return ConditionVector(read_vector(path), name or path.stem)


@condition_app.command("train")
def train(
    positive: Path = typer.Option(..., "--positive", help="Prompts the condition should fire on (one per line, "
                                                          "or JSONL with a `prompt` field)."),
    negative: Path = typer.Option(..., "--negative", help="Prompts it should not fire on (same formats)."),
    out: Path = typer.Option(..., "--out", "-o", help="Output condition vector (.safetensors)."),
    layers: Optional[str] = typer.Option(None, help="Candidate layers, e.g. 4-20 or 6,8,10 (default: all)."),
    reading: str = typer.Option("last,mean", help="Where prompts are read: last (the last prompt token), mean "
                                                  "(over the prompt), or both (the better one is kept)."),
    validation: float = typer.Option(0.25, help="Fraction of each set held out to choose layer and threshold."),
    limit: Optional[int] = typer.Option(None, help="Use at most this many prompts of each set."),
    seed: int = typer.Option(0, help="Seed of the train/validation split."),
    force: bool = FORCE,
    model: Optional[str] = MODEL,
    threads: Optional[int] = THREADS,
    device: str = DEVICE,
    dtype: Optional[str] = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
) -> None:
    """Train a condition vector; layer, reading, threshold and comparator are chosen by validation F1."""

    def body():
        from ..data.prompt_sets import load_prompts

        set_runtime(threads, device, dtype, device_map)
        check_out(out, force=force)
        readings = tuple(r.strip() for r in reading.split(",") if r.strip())
        bad = [r for r in readings if r not in ("last", "mean")]
        if bad or not readings:
            raise SteerlabError(f"--reading: unknown {bad or reading!r}; use last, mean or last,mean")
        if limit is not None and limit < 2:
            raise SteerlabError("--limit must be at least 2")
        pos, neg = load_prompts(positive), load_prompts(negative)
        if limit is not None:
            pos, neg = pos[:limit], neg[:limit]
        lm = load_model(model)
        from ..condition import ConditionVector, train_condition

        vec = train_condition(lm, pos, neg, parse_layers(layers, lm.n_layers), readings=readings,
                              validation_fraction=validation, seed=seed, progress=True)
        vec.save(out, force=force)
        r = ConditionVector(vec).rule
        say(f"saved {out}")
        say(f"layer {r.layer}, reading {r.reading}, fires when score {r.comparator} {r.threshold:.4f}")
        say(f"validation ({r.n_validation} prompts): F1 {r.f1:.3f}, precision {r.precision:.3f}, "
            f"recall {r.recall:.3f}, accuracy {r.accuracy:.3f}; best F1 per reading: "
            + ", ".join(f"{k} {v:.3f}" for k, v in r.best_f1_by_reading.items()))

    run_command(body)


@condition_app.command("check")
def check(
    condition: Path = typer.Argument(..., help="Condition vector file."),
    prompts: List[str] = typer.Argument(..., help="Prompts, or files of prompts (one per line, or JSONL)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line: prompt, fired, score."),
    model: Optional[str] = MODEL,
    threads: Optional[int] = THREADS,
    device: str = DEVICE,
    dtype: Optional[str] = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
) -> None:
    """Whether a condition fires for each prompt, and its score."""

    def body():
        set_runtime(threads, device, dtype, device_map)
        cond = read_condition(condition)
        texts = read_prompt_args(prompts)
        lm = load_model(model)
        cond.vector.check_compatible(lm)
        results = cond.check(lm, texts, progress=not as_json and len(texts) > 16)
        for c in results:
            if as_json:
                print(json.dumps({"prompt": c.prompt, "fired": c.fired, "score": round(c.score, 6)}))
            else:
                mark = "[bold green]fired[/]" if c.fired else "[dim]quiet[/]"
                console.print(f"{mark} {c.score:+.4f}  {escape(c.prompt)}", highlight=False)
        if not as_json:
            r = cond.rule
            say(f"{sum(c.fired for c in results)}/{len(results)} fired (layer {r.layer}, score {r.comparator} "
                f"{r.threshold:.4f})")

    run_command(body)


def monitor(
    prompt: List[str] = typer.Argument(..., help="One or more prompts (user messages)."),
    vector: Path = typer.Option(..., "--vector", "-v", help="The vector to watch (.safetensors or .gguf)."),
    layer: Optional[int] = typer.Option(None, help="Layer to read (default: the vector's selected or middle layer)."),
    strength: float = typer.Option(0.0, "--strength", "-s", help="Also steer with the vector at this strength "
                                                                 "(0: just watch)."),
    max_new_tokens: int = typer.Option(48, help="Tokens to generate."),
    stop_above: Optional[float] = typer.Option(None, help="End the generation when the projection stays above this."),
    stop_tokens: int = typer.Option(3, help="... for this many generated tokens in a row."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per prompt: tokens, raw, cosine, text."),
    model: Optional[str] = MODEL,
    threads: Optional[int] = THREADS,
    device: str = DEVICE,
    dtype: Optional[str] = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
) -> None:
    """Generate and colour each token by the vector's projection (red: along it, blue: against it)."""

    def body():
        from ..monitoring import StopRule, readout
        from ..steering import Steering

        set_runtime(threads, device, dtype, device_map)
        if max_new_tokens < 0:
            raise SteerlabError("--max-new-tokens must be >= 0")
        stop = StopRule(stop_above, stop_tokens) if stop_above is not None else None
        vec = read_vector(vector)
        lm = load_model(model)
        vec.check_compatible(lm)
        steering = Steering(vec, strength, [layer] if layer is not None else None) if strength else None
        for r in readout(lm, prompt, vec, layer=layer, steering=steering, max_new_tokens=max_new_tokens, stop=stop,
                         progress=not as_json):
            if as_json:
                print(json.dumps({"prompt": r.prompt, "text": r.text, "finish_reason": r.finish_reason,
                                  "layer": r.layer, "n_prompt": r.n_prompt, "tokens": r.tokens,
                                  "raw": [round(x, 4) for x in r.raw], "cosine": [round(x, 5) for x in r.cosine]}))
                continue
            console.print(_coloured(r))
            say(f"layer {r.layer}: mean projection {r.mean('prompt'):+.2f} over the prompt, "
                f"{r.mean('generated'):+.2f} over the answer (cosine {r.mean('generated', 'cosine'):+.3f}); "
                f"finish: {r.finish_reason}\n")

    run_command(body)


def _coloured(r) -> Text:
    """The prompt's user text dimmed and the answer's tokens coloured by projection (scale: the answer's
    largest |projection|)."""
    text = Text()
    text.append(r.prompt + "\n", style="bold")
    gen = r.raw[r.n_prompt:]
    scale = max((abs(x) for x in gen), default=1.0) or 1.0
    for tok, x in zip(r.tokens[r.n_prompt:], gen):
        level = min(1.0, abs(x) / scale)
        shade = int(255 * (1 - level))
        colour = f"rgb(255,{shade},{shade})" if x > 0 else f"rgb({shade},{shade},255)"
        text.append(tok, style=f"black on {colour}")
    return text


def register(app: typer.Typer) -> None:
    app.add_typer(condition_app, name="condition")
    app.command()(monitor)
