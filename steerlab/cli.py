"""The `steerlab` command line: a thin layer over the Python API.

Every command turns a SteerlabError into one red line and exit code 1 (2 for usage errors, from typer).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .data.demo import DEMO_DATA, DEMO_LAYER, DEMO_STRENGTH, DEMO_TRAIN, demo_pairs
from .errors import DatasetError, OutputExistsError, SteerlabError

app = typer.Typer(
    help="Activation steering for language models: train vectors, steer generation, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)



def cli_words(msg: str) -> str:
    """The library's messages name Python arguments (`force=True`); on the command line they name flags."""
    return msg.replace("force=True (--force)", "--force").replace("pass force=True", "pass --force") \
              .replace("with force=True", "with --force")


def _fail(msg: str) -> None:
    # escape(): a message is text, not rich markup (`pip install "steerlab[server]"` must keep its brackets).
    err_console.print(f"[bold red]error:[/] {escape(cli_words(msg))}", highlight=False, soft_wrap=True)
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


def check_layer_spec(spec: Optional[str]) -> None:
    """Check the syntax of a --layers value before the model is loaded (ranges are checked after)."""
    parse_layers(spec, 0)


def _floats_opt(spec: str, what: str) -> list[float]:
    try:
        vals = [float(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise SteerlabError(f"cannot read {what} '{spec}': give comma-separated numbers, e.g. -8,-4,4,8") from None
    if not vals:
        raise SteerlabError(f"{what} is empty")
    return vals


def _check_output(path: Path, force: bool) -> None:
    if path.exists() and not force:
        raise OutputExistsError(f"{path} already exists; pass --force to overwrite it")


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


def _mwe_items(data: str):
    """The MWE items of `data` (None for 'demo' or a pairs file)."""
    path = Path(data)
    if data == DEMO_DATA or not path.is_file():
        return None
    from .data.io import read_records

    if "answer_matching_behavior" not in read_records(path)[0].data:
        return None
    from .data.mwe import load_mwe

    return load_mwe(path)


def _check_sign(lm, vec, held) -> None:
    """Measure a freshly trained vector on held-apart items/pairs; warn where it acts against its sign."""
    from .data.records import BehaviourItem

    with console.status(f"measuring the vector on {len(held)} held-apart items…"):
        if isinstance(held[0], BehaviourItem):
            from .cae.behaviour import sign_check

            rows = sign_check(lm, vec, held)
        else:
            from .effect import measure_effect

            rep = measure_effect(lm, vec, held, strengths=[-4.0, 4.0])
            _print_effect(rep)
            return
    for r in rows:
        console.print(f"layer {r['layer']}: r=+0.5 {r['effect_plus']:+.3f} [{r['plus_low']:+.3f}, {r['plus_high']:+.3f}], "
                      f"r=-0.5 {r['effect_minus']:+.3f} [{r['minus_low']:+.3f}, {r['minus_high']:+.3f}]  {r['verdict']}")
    bad = [r["layer"] for r in rows if r["verdict"] in ("reversed", "sign-blind")]
    good = [r["layer"] for r in rows if r["verdict"] == "as trained"]
    console.print(f"behaviour score p(match)/(p(match)+p(other)) on {len(held)} held-apart items (unsteered "
                  f"{rows[0]['unsteered']:.3f}): as trained at {len(good)} of {len(rows)} layers {good}")
    if bad:
        msg = (f"warning: at layers {bad} this vector does not act as trained on held-apart items (reversed, or both "
               "signs move the score the same way): measure before you use its sign (docs/findings.md)")
        console.print(f"[yellow]{escape(msg)}[/yellow]")


def _load_model(model: Optional[str]):
    from .models import load_model

    with console.status(escape(f"loading {model or 'the embedded SmolLM2-135M-Instruct'}…")):
        return load_model(model)


def _read_vector(path: Optional[Path]):
    """Read and validate a vector file (truncated, NaN, not steerlab's) before the model is loaded."""
    if path is None:
        return None
    from .vector import SteeringVector

    return SteeringVector.load(path)


ModelOpt = typer.Option(None, "--model", "-m", help="Hugging Face id, local directory or .gguf file (default: embedded SmolLM2-135M-Instruct).")


@app.command()
def train(
    data: str = typer.Argument(..., help="Pairs JSONL ({prompt, positive, negative}), an MWE .jsonl file, or 'demo'."),
    out: Path = typer.Option(..., "--out", "-o", help="Where to write the vector (.safetensors)."),
    layers: Optional[str] = typer.Option(None, help="Layers, e.g. 10 or 8-12 or all (default: all)."),
    method: str = typer.Option("caa", help="caa, pca or actadd."),
    position: str = typer.Option("last", help="Reading position: last (answer token) or mean."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N pairs."),
    check: Optional[int] = typer.Option(None, help="Hold the last N pairs apart (not trained on) and measure the vector "
                                        "on them, warning where +strength acts against the trained sign. Default: 40 "
                                        "(at most a fifth of the pairs) for Yes/No MWE files (which do, docs/findings.md), "
                                        "0 otherwise."),
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
        check_layer_spec(layers)
        pairs = None if method == "actadd" else _load_training_pairs(data)
        if pairs is not None and limit is not None:
            pairs = pairs[:limit]
        items = _mwe_items(data) if pairs is not None else None
        if items is not None and limit is not None:
            items = items[:limit]
        n_check = check if check is not None else (min(40, len(pairs) // 5) if items and items[0].kind == "yesno" else 0)
        if n_check < 0:
            raise SteerlabError("--check must be 0 or more")
        held = None
        if pairs is not None and n_check:
            if len(pairs) < 2 * n_check:
                raise SteerlabError(f"--check {n_check} needs at least {2 * n_check} pairs (have {len(pairs)}); pass --check 0")
            held = items[-n_check:] if items is not None else pairs[-n_check:]
            pairs = pairs[:-n_check]
            console.print(f"holding the last {n_check} pairs apart to check the vector's sign (--check 0 to train on all)")
        lm = _load_model(model)
        chosen = parse_layers(layers, lm.n_layers)
        from .methods import train_actadd, train_caa, train_pca

        if method == "actadd":
            vec = train_actadd(lm, positive, negative, chosen)
        else:
            fn = train_caa if method == "caa" else train_pca
            vec = fn(lm, pairs, chosen, position=position, progress=True)
        vec.save(out, force=force)
        console.print(f"wrote {out}: {vec}", markup=False)
        if held is not None:
            _check_sign(lm, vec, held)

    _run(body)


def _load_vector(path: Path, lm, allow_other_model: bool, vec=None):
    """The vector at `path` (or `vec`, already read from it), checked against the loaded model."""
    vec = vec if vec is not None else _read_vector(path)
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
        if compare and vector is None:
            raise SteerlabError("--compare needs --vector")
        if layers is not None and vector is None:
            raise SteerlabError("--layers needs --vector")
        check_layer_spec(layers)
        raw = _read_vector(vector)  # a truncated or NaN file fails before the model load
        lm = _load_model(model)
        from .generation import generate as gen
        from .steering import Steering

        steering = None
        if raw is not None:
            vec = _load_vector(vector, lm, allow_other_model, raw)
            # A vector trained by `steerlab pas` carries its chosen layer/strength/positions.
            steering = Steering.from_vector(vec, strength, parse_layers(layers, lm.n_layers), positions)
        steered = gen(lm, prompt, steering, max_new_tokens=max_new_tokens, progress=True)
        if compare:
            plain = gen(lm, prompt, None, max_new_tokens=max_new_tokens, progress=True)
            _print_comparison(prompt, plain, steered, f"steered (x{steering.strength:g})")
        else:
            for p, out in zip(prompt, steered):
                console.print(f"[bold]{escape(p)}[/]\n{escape(out)}\n", highlight=False)

    _run(body)


def _print_comparison(prompts, plain, steered, label: str) -> None:
    table = Table(show_lines=True)
    table.add_column("prompt", style="bold", ratio=1)
    table.add_column("unsteered", ratio=2)
    table.add_column(label, ratio=2)
    for p, a, b in zip(prompts, plain, steered):
        table.add_row(escape(p), escape(a.strip()), escape(b.strip()))
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
                table.add_row(k, escape(json.dumps(v) if isinstance(v, (dict, list)) else str(v)))
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
        from .vector import export_gguf
        from .vector import SteeringVector

        _check_output(out, force)
        vec = SteeringVector.load(vector)
        if skip_layer0 and 0 in vec.layers:
            vec = vec.select([l for l in vec.layers if l != 0])
        export_gguf(vec, out, force=force)
        console.print(f"wrote {out} ({len(vec.layers)} layers)", markup=False)

    _run(body)


@app.command()
def effect(
    vector: Path = typer.Argument(..., help="Vector file."),
    data: str = typer.Argument(..., help="Held-apart pairs: pairs JSONL, MWE file, or 'demo' (its held-apart part)."),
    layers: Optional[str] = typer.Option(None, help="Layers to apply (default: all of the vector's)."),
    strengths: str = typer.Option("-8,-4,4,8", help="Comma-separated strengths."),
    positions: str = typer.Option("after_user", help="all, after_user or last_prompt."),
    offset: int = typer.Option(0, help="Skip the first N pairs (e.g. the ones the vector was trained on: "
                                       "`train --limit 200` then `effect --offset 200`)."),
    limit: Optional[int] = typer.Option(None, help="Use at most N pairs (after --offset)."),
    model: Optional[str] = ModelOpt,
) -> None:
    """Measure the direction and size of a vector's effect on held-apart pairs.

    With a file the vector was trained on, hold items apart with --offset (train used the first
    --limit N pairs; measure on the rest with --offset N)."""

    def body():
        ss = _floats_opt(strengths, "strengths")
        check_layer_spec(layers)
        if offset < 0:
            raise SteerlabError("--offset must be 0 or more")
        if limit is not None and limit < 1:
            raise SteerlabError("--limit must be at least 1")
        pairs = demo_pairs()[DEMO_TRAIN:] if data == DEMO_DATA else _load_training_pairs(data)
        if offset >= len(pairs):
            raise SteerlabError(f"--offset {offset} leaves no pairs: {data} has {len(pairs)}")
        pairs = pairs[offset:offset + limit if limit is not None else None]
        raw = _read_vector(vector)
        lm = _load_model(model)
        vec = _load_vector(vector, lm, False, raw)
        from .effect import measure_effect

        console.print(f"measuring on {len(pairs)} pairs at strengths {', '.join(f'{s:+g}' for s in ss)}…")
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
    console.print(rep.summary(), markup=False)
    if rep.warning:
        console.print(f"[yellow]{escape(rep.warning)}[/yellow]")


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
        from .generation import generate as gen
        from .methods import train_caa
        from .steering import Steering

        console.print(f"training a CAA vector on {len(train_pairs)} cheerful-vs-gloomy pairs at layer {layer}…")
        vec = train_caa(lm, train_pairs, [layer], position="mean", progress=True)
        if out is not None:
            vec.save(out, force=force)
            console.print(f"saved {out}", markup=False)
        rep = measure_effect(lm, vec, held, strengths=[-strength, strength], positions="after_user")
        _print_effect(rep)
        prompts = [p.prompt for p in held[:4]]
        # One batch, three rows per prompt: unsteered, +strength, -strength (per-row steering).
        rows = [p for p in prompts for _ in range(3)]
        strengths = [0.0, strength, -strength] * len(prompts)
        outs = gen(lm, rows, Steering([vec] * len(rows), strengths, positions="after_user"),
                   max_new_tokens=max_new_tokens, batch_size=len(rows), progress=True)
        table = Table(show_lines=True, title=f"greedy generations, vector at layer {layer}")
        table.add_column("prompt", style="bold", ratio=1)
        for head in ("unsteered", f"cheerful (x{strength:+g})", f"gloomy (x{-strength:+g})"):
            table.add_column(head, ratio=2)
        for i, p in enumerate(prompts):
            table.add_row(escape(p), *(escape(o.strip()) for o in outs[3 * i:3 * i + 3]))
        console.print(table)

    _run(body)


# Commands of the analysis areas live in their own modules, each with `register(app)`.
@app.command()
def serve(
    vector: List[str] = typer.Option([], "--vector", "-v", help="A vector to serve, as NAME=PATH or PATH (named after "
                                     "the file); repeat for several. More can be registered at run time."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    port: int = typer.Option(8000, help="Port."),
    max_batch: int = typer.Option(32, help="Most requests decoded together (continuous batching)."),
    batch_window_ms: float = typer.Option(10.0, help="When idle, how long a first request waits for others to prefill with it."),
    max_new_tokens_limit: int = typer.Option(512, help="Largest max_tokens a request may ask for."),
    max_queue: int = typer.Option(256, help="Most requests waiting for a batch slot; beyond it 429 with Retry-After."),
    max_body_bytes: int = typer.Option(1 << 20, help="Largest request body (413 beyond); vector uploads: --max-upload-bytes."),
    max_upload_bytes: int = typer.Option(32 << 20, help="Largest vector upload."),
    api_key: Optional[str] = typer.Option(None, envvar="STEERLAB_API_KEY", help="Require 'Authorization: Bearer KEY' "
                                          "on every route but /health (default: $STEERLAB_API_KEY, else none)."),
    shutdown_grace_s: float = typer.Option(10.0, help="On SIGINT/SIGTERM, seconds running requests get to finish."),
    allow_other_model: bool = typer.Option(False, help="Serve vectors made for another model family."),
    model: Optional[str] = ModelOpt,
) -> None:
    """Serve an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models, /v1/vectors, /metrics,
    /health) with steering per request; routes in steerlab/serve/API.md."""

    def body():
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError:
            raise SteerlabError('the server needs FastAPI and uvicorn: pip install "steerlab[server]"') from None
        from .serve import create_app, load_vectors
        from .serve.app import run

        lm = _load_model(model)
        vectors = load_vectors(vector, lm, allow_other_model=allow_other_model)
        api = create_app(lm, vectors, api_key=api_key or None, max_batch=max_batch, max_queue=max_queue,
                         window_s=batch_window_ms / 1000, max_new_tokens_limit=max_new_tokens_limit,
                         max_body_bytes=max_body_bytes, max_upload_bytes=max_upload_bytes,
                         allow_other_model=allow_other_model, shutdown_grace_s=shutdown_grace_s)
        console.print(f"serving {lm.model_id} with vectors: {', '.join(vectors) or 'none'} on http://{host}:{port}/v1"
                      + (" (API key required)" if api_key else ""))
        run(api, host=host, port=port, shutdown_grace_s=shutdown_grace_s)

    _run(body)


_EXTENSIONS: tuple[str, ...] = ("cli_cae", "cli_pas", "cli_epo", "cli_models")
for _name in _EXTENSIONS:
    __import__(f"{__package__}.{_name}", fromlist=["register"]).register(app)


def main() -> None:  # pragma: no cover - entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
