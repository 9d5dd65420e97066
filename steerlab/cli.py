"""The `steerlab` command line: a thin layer over the Python API.

Every command turns a SteerlabError into one red line and exit code 1 (2 for usage errors, from typer).
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from .errors import DatasetError, OutputExistsError, SteerlabError

app = typer.Typer(
    help="Activation steering for language models: train vectors, steer generation, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

DEMO_DATA = "demo"
DEMO_TRAIN = 40  # the demo file's last 8 pairs are held apart for measuring the effect
DEMO_LAYER = 12  # measured: monotonic, as trained, largest shift of the middle layers (docs/findings.md)
DEMO_STRENGTH = 6.0


def _fail(msg: str) -> None:
    err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _run(fn):
    """Run a command body, mapping steerlab's errors to one clean line."""
    try:
        return fn()
    except SteerlabError as e:
        _fail(str(e))
    except FileNotFoundError as e:
        _fail(f"file not found: {e.filename or e}")
    except KeyboardInterrupt:
        _fail("interrupted")


def parse_layers(spec: Optional[str], n_layers: int) -> Optional[list[int]]:
    """'10', '8,10,12', '8-12', 'all' (or None) → layer list; negative numbers count from the end."""
    if spec is None or spec.strip().lower() == "all":
        return None if spec is None else list(range(n_layers))
    layers: list[int] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                a, b = part[0] + part[1:].split("-", 1)[0], part[1:].split("-", 1)[1]
                layers.extend(range(int(a), int(b) + 1))
            else:
                layers.append(int(part))
        except ValueError:
            raise SteerlabError(f"cannot read layers '{spec}': use e.g. 10, 8,10,12, 8-12 or all") from None
    return layers


def _check_output(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass --force to overwrite it")


def demo_pairs():
    """The contrast pairs shipped with steerlab (cheerful vs gloomy answers to everyday questions)."""
    from .data.pairs import load_pairs

    with resources.as_file(resources.files("steerlab") / "resources" / "demo_contrast.jsonl") as p:
        return load_pairs(p)


def _load_training_pairs(data: str):
    """Contrast pairs from 'demo', a pairs JSONL ({prompt, positive, negative}) or an MWE file."""
    if data == DEMO_DATA:
        return demo_pairs()[:DEMO_TRAIN]
    path = Path(data)
    if not path.is_file():
        raise DatasetError(f"dataset file not found: {path}")
    from .data.io import read_records

    fields = read_records(path)[0].data  # validates the file (empty, malformed JSON with its line)
    if "answer_matching_behavior" in fields:
        from .data.mwe import load_mwe

        return [item.to_pair() for item in load_mwe(path)]
    from .data.pairs import load_pairs

    return load_pairs(path)


def _load_model(model: Optional[str]):
    from .models import load_model

    with console.status(f"loading {model or 'the embedded SmolLM2-135M-Instruct'}…"):
        return load_model(model)


ModelOpt = typer.Option(None, "--model", "-m", help="Hugging Face id, local directory or .gguf file (default: embedded SmolLM2-135M-Instruct).")


@app.command()
def train(
    data: str = typer.Argument(..., help="Pairs JSONL ({prompt, positive, negative}), an MWE .jsonl file, or 'demo'."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the vector (.safetensors)."),
    layers: Optional[str] = typer.Option(None, help="Layers, e.g. 10 or 8-12 or all (default: all)."),
    method: str = typer.Option("caa", help="caa, pca or actadd."),
    position: str = typer.Option("last", help="Reading position: last (answer token) or mean."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N pairs."),
    positive: Optional[str] = typer.Option(None, help="ActAdd: the positive prompt (e.g. 'Love')."),
    negative: Optional[str] = typer.Option(None, help="ActAdd: the negative prompt (e.g. 'Hate')."),
    model: Optional[str] = ModelOpt,
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
) -> None:
    """Train a steering vector from contrast pairs and save it."""

    def body():
        _check_output(out, force)
        if method not in ("caa", "pca", "actadd"):
            raise SteerlabError(f"unknown method '{method}': choose caa, pca or actadd")
        if method == "actadd" and (not positive or not negative):
            raise SteerlabError("--method actadd needs --positive and --negative prompts")
        pairs = None if method == "actadd" else _load_training_pairs(data)
        if pairs is not None and limit is not None:
            pairs = pairs[:limit]
        lm = _load_model(model)
        chosen = parse_layers(layers, lm.n_layers)
        from .methods import train_actadd, train_caa, train_pca

        if method == "actadd":
            vec = train_actadd(lm, positive, negative, chosen)
        else:
            fn = train_caa if method == "caa" else train_pca
            vec = fn(lm, pairs, chosen, position=position, progress=True)
        vec.save(out, force=force)
        console.print(f"wrote {out}: {vec}")

    _run(body)


def _load_vector(path: Path, lm, allow_other_model: bool):
    from .vector import SteeringVector

    vec = SteeringVector.load(path)
    vec.check_compatible(lm, allow_other_family=allow_other_model)
    return vec


@app.command()
def generate(
    prompt: List[str] = typer.Argument(..., help="One or more prompts (user messages)."),
    vector: Optional[Path] = typer.Option(None, "--vector", "-v", help="Vector file (.safetensors or .gguf)."),
    strength: Optional[float] = typer.Option(None, "--strength", "-s", help="Multiplier alpha in h <- h + alpha * v (default: the vector's chosen strength, else 4)."),
    layers: Optional[str] = typer.Option(None, help="Apply only these layers of the vector."),
    positions: Optional[str] = typer.Option(None, help="all, after_user (CAA) or last_prompt (PAS) (default: the vector's, else after_user)."),
    max_new_tokens: int = typer.Option(48, help="Tokens to generate."),
    compare: bool = typer.Option(False, "--compare", help="Print unsteered and steered outputs side by side."),
    allow_other_model: bool = typer.Option(False, help="Use a vector made for another model family."),
    model: Optional[str] = ModelOpt,
) -> None:
    """Generate text, optionally steered by a vector (greedy decoding)."""

    def body():
        lm = _load_model(model)
        from .generate import generate as gen
        from .steer import Steering

        steering = None
        if vector is not None:
            vec = _load_vector(vector, lm, allow_other_model)
            # A vector trained by `steerlab pas` carries its chosen layer/strength/positions.
            steering = Steering.from_vector(vec, strength, parse_layers(layers, lm.n_layers), positions)
        elif compare:
            raise SteerlabError("--compare needs --vector")
        steered = gen(lm, prompt, steering, max_new_tokens=max_new_tokens, progress=len(prompt) > 4)
        if compare:
            plain = gen(lm, prompt, None, max_new_tokens=max_new_tokens)
            _print_comparison(prompt, plain, steered, f"steered (x{steering.strength:g})")
        else:
            for p, out in zip(prompt, steered):
                console.print(f"[bold]{p}[/]\n{out}\n", highlight=False)

    _run(body)


def _print_comparison(prompts, plain, steered, label: str) -> None:
    table = Table(show_lines=True)
    table.add_column("prompt", style="bold", ratio=1)
    table.add_column("unsteered", ratio=2)
    table.add_column(label, ratio=2)
    for p, a, b in zip(prompts, plain, steered):
        table.add_row(p, a.strip(), b.strip())
    console.print(table)


@app.command()
def info(vector: Path = typer.Argument(..., help="Vector file (.safetensors or .gguf).")) -> None:
    """Show a vector's metadata and per-layer norms."""

    def body():
        from .vector import SteeringVector

        vec = SteeringVector.load(vector)
        meta = json.loads(vec.meta.to_json())
        table = Table(title=str(vector), show_header=False)
        for k, v in meta.items():
            if k != "layers":
                table.add_row(k, json.dumps(v) if isinstance(v, (dict, list)) else str(v))
        table.add_row("layers (norm)", ", ".join(f"{l} ({n:.2f})" for l, n in vec.norms().items()))
        console.print(table)

    _run(body)


@app.command("export-gguf")
def export_gguf_cmd(
    vector: Path = typer.Argument(..., help="Vector file (.safetensors)."),
    out: Path = typer.Argument(..., help="Output .gguf (llama.cpp control vector)."),
    skip_layer0: bool = typer.Option(False, help="Drop layer 0 (llama.cpp ignores it) instead of refusing."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
) -> None:
    """Export a vector as a llama.cpp control vector (use with --control-vector-scaled FILE:SCALE)."""

    def body():
        from .gguf_io import export_gguf
        from .vector import SteeringVector

        vec = SteeringVector.load(vector)
        if skip_layer0 and 0 in vec.layers:
            vec = vec.select([l for l in vec.layers if l != 0])
        export_gguf(vec, out, force=force)
        console.print(f"wrote {out} ({len(vec.layers)} layers)")

    _run(body)


@app.command()
def effect(
    vector: Path = typer.Argument(..., help="Vector file."),
    data: str = typer.Argument(..., help="Held-apart pairs: pairs JSONL, MWE file, or 'demo' (its held-apart part)."),
    layers: Optional[str] = typer.Option(None, help="Layers to apply (default: all of the vector's)."),
    strengths: str = typer.Option("-8,-4,4,8", help="Comma-separated strengths."),
    positions: str = typer.Option("after_user", help="all, after_user or last_prompt."),
    limit: Optional[int] = typer.Option(None, help="Use at most N pairs."),
    model: Optional[str] = ModelOpt,
) -> None:
    """Measure the direction and size of a vector's effect on held-apart pairs."""

    def body():
        pairs = demo_pairs()[DEMO_TRAIN:] if data == DEMO_DATA else _load_training_pairs(data)
        if limit is not None:
            pairs = pairs[:limit]
        lm = _load_model(model)
        vec = _load_vector(vector, lm, False)
        from .effect import measure_effect

        try:
            ss = [float(s) for s in strengths.split(",")]
        except ValueError:
            raise SteerlabError(f"cannot read strengths '{strengths}'") from None
        rep = measure_effect(lm, vec, pairs, layers=parse_layers(layers, lm.n_layers), strengths=ss, positions=positions)
        _print_effect(rep)

    _run(body)


def _print_effect(rep) -> None:
    table = Table(title="effect on held-apart pairs: log p(positive) - log p(negative), nats/token")
    for c in ("strength", "mean gap", "shift vs unsteered", "95% interval"):
        table.add_column(c, justify="right")
    for r in rep.rows():
        table.add_row(f"{r['strength']:+g}", f"{r['mean_gap']:.3f}", f"{r['shift']:+.3f}", f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]")
    console.print(table)
    console.print(rep.summary())


@app.command()
def demo(
    layer: int = typer.Option(DEMO_LAYER, help="Layer to train and steer."),
    strength: float = typer.Option(DEMO_STRENGTH, help="Steering strength."),
    max_new_tokens: int = typer.Option(40, help="Tokens per generation."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Also save the trained vector here."),
    force: bool = typer.Option(False, "--force", help="Overwrite OUT if it exists."),
    model: Optional[str] = ModelOpt,
) -> None:
    """The main job on the embedded model: train a vector on the shipped contrast pairs, measure its
    effect on held-apart pairs, and show unsteered vs steered generations side by side."""

    def body():
        if out is not None:
            _check_output(out, force)
        pairs = demo_pairs()
        train_pairs, held = pairs[:DEMO_TRAIN], pairs[DEMO_TRAIN:]
        lm = _load_model(model)
        from .effect import measure_effect
        from .generate import generate as gen
        from .methods import train_caa
        from .steer import Steering

        console.print(f"training a CAA vector on {len(train_pairs)} cheerful-vs-gloomy pairs at layer {layer}…")
        vec = train_caa(lm, train_pairs, [layer], position="mean", progress=True)
        if out is not None:
            vec.save(out, force=force)
            console.print(f"saved {out}")
        rep = measure_effect(lm, vec, held, strengths=[-strength, strength], positions="after_user")
        _print_effect(rep)
        prompts = [p.prompt for p in held[:4]]
        # One batch, three rows per prompt: unsteered, +strength, -strength (per-row steering).
        rows = [p for p in prompts for _ in range(3)]
        strengths = [0.0, strength, -strength] * len(prompts)
        outs = gen(lm, rows, Steering([vec] * len(rows), strengths, positions="after_user"),
                   max_new_tokens=max_new_tokens, batch_size=len(rows))
        table = Table(show_lines=True, title=f"greedy generations, vector at layer {layer}")
        table.add_column("prompt", style="bold", ratio=1)
        for head in ("unsteered", f"cheerful (x{strength:+g})", f"gloomy (x{-strength:+g})"):
            table.add_column(head, ratio=2)
        for i, p in enumerate(prompts):
            table.add_row(p, *(o.strip() for o in outs[3 * i:3 * i + 3]))
        console.print(table)

    _run(body)


# Commands of the analysis areas live in their own modules, each with `register(app)`.
@app.command()
def serve(
    vector: List[str] = typer.Option([], "--vector", "-v", help="A vector to serve, as NAME=PATH or PATH (named after "
                                     "the file); repeat for several."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port."),
    max_batch: int = typer.Option(32, help="Most prompts run together in one batch (across requests)."),
    batch_window_ms: float = typer.Option(10.0, help="How long the first request waits for others to share its batch."),
    max_new_tokens_limit: int = typer.Option(512, help="Largest max_new_tokens a request may ask for."),
    allow_other_model: bool = typer.Option(False, help="Serve vectors made for another model family."),
    model: Optional[str] = ModelOpt,
) -> None:
    """Serve generation over HTTP (POST /generate, GET /vectors, GET /health), steering per request."""

    def body():
        try:
            import uvicorn
        except ImportError:
            raise SteerlabError('the server needs FastAPI and uvicorn: pip install "steerlab[server]"') from None
        from .server import create_app, load_vectors

        lm = _load_model(model)
        vectors = load_vectors(vector, lm, allow_other_model=allow_other_model)
        api = create_app(lm, vectors, max_new_tokens_limit=max_new_tokens_limit, window_s=batch_window_ms / 1000,
                         max_batch=max_batch)
        console.print(f"serving {lm.model_id} with vectors: {', '.join(vectors) or 'none'} on http://{host}:{port}")
        uvicorn.run(api, host=host, port=port, log_level="info")

    _run(body)


_EXTENSIONS: tuple[str, ...] = ("cli_cae", "cli_pas", "cli_epo", "cli_models")
for _name in _EXTENSIONS:
    __import__(f"{__package__}.{_name}", fromlist=["register"]).register(app)


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
