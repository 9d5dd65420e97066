"""What every command shares: the consoles, the one way an error reaches the user, input parsing that
can fail before a model is loaded, and the model/vector loaders with their status lines.

Every command body runs through `run_command`: a SteerlabError (or a missing file) becomes one red line
and exit code 1; typer's own usage errors exit with 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Sequence, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import LayerError, SteerlabError

console = Console()
err_console = Console(stderr=True)

T = TypeVar("T")


def say(text: str) -> None:
    """Print `text` literally: messages carry paths, labels and generated text, whose brackets rich would
    otherwise read as markup and drop."""
    console.print(text, markup=False, highlight=False)


def cli_words(msg: str) -> str:
    """The library's messages name Python arguments (`force=True`); on the command line they name flags."""
    return msg.replace("force=True (--force)", "--force").replace("pass force=True", "pass --force") \
              .replace("with force=True", "with --force")


def fail(msg: str) -> None:
    """One red line on stderr, exit code 1."""
    # escape(): a message is text, not rich markup (`pip install "steerlab[server]"` must keep its brackets).
    err_console.print(f"[bold red]error:[/] {escape(cli_words(msg))}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


RUNTIME_ENV = ("STEERLAB_DEVICE", "STEERLAB_DTYPE", "STEERLAB_DEVICE_MAP")


def run_command(body: Callable[[], T]) -> T:
    """Run a command body, mapping steerlab's errors to one clean line. What `set_runtime` puts in the
    environment lasts for the command only (a command run in-process, e.g. from tests, leaves none behind)."""
    import os

    saved = {k: os.environ.get(k) for k in RUNTIME_ENV}
    try:
        return body()
    except SteerlabError as e:
        fail(str(e))
    except FileNotFoundError as e:
        fail(f"file not found: {e.filename or e}")
    except KeyboardInterrupt:
        fail("interrupted")
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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


def check_layer_range(layers: Sequence[int], n_layers: int) -> None:
    """Every layer within the model's depth (read without loading it: `peek_layers`)."""
    bad = [l for l in layers if not -n_layers <= l < n_layers]
    if bad:
        raise LayerError(f"layer {bad[0]} is out of range: this model has {n_layers} decoder blocks (0..{n_layers - 1})")


def parse_floats(spec: str, what: str, *, allow_empty: bool = False) -> list[float]:
    """'-8,-4,4,8' → [-8.0, -4.0, 4.0, 8.0]; `what` names the option in the error."""
    try:
        vals = [float(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise SteerlabError(f"cannot read {what} '{spec}': give comma-separated numbers, e.g. -1,-0.5,0.5,1") from None
    if not vals and not allow_empty:
        raise SteerlabError(f"{what} is empty")
    return vals


def parse_ints(spec: str, what: str) -> list[int]:
    """'10,20,40' → [10, 20, 40]."""
    try:
        return [int(x) for x in spec.split(",") if x.strip()]
    except ValueError:
        raise SteerlabError(f"cannot read {what} '{spec}': give comma-separated integers, e.g. 10,20,40") from None


def parse_list(spec: str) -> tuple[str, ...]:
    """'a, b,,c' → ('a', 'b', 'c')."""
    return tuple(x.strip() for x in spec.split(",") if x.strip())


def check_out(out: Path, names: Sequence[str] = (), force: bool = False) -> None:
    """Refuse to overwrite `out` (a file), or the files `names` inside the directory `out`, unless --force."""
    from ..results import check_fresh

    check_fresh([out / n for n in names] if names else [out], force)


def set_threads(n: Optional[int]) -> None:
    """--threads: torch's intra-op threads (None: torch's choice)."""
    if n is not None:
        if n < 1:
            raise SteerlabError("--threads must be at least 1")
        import torch

        torch.set_num_threads(n)


def set_runtime(threads: Optional[int], device: Optional[str] = None, dtype: Optional[str] = None,
                device_map: Optional[str] = None) -> None:
    """--threads, --device, --dtype and --device-map: checked at once (a device this machine lacks is one line
    naming those it has, before any model loads) and handed to every model load of this command through the
    environment variables `load_model` reads (STEERLAB_DEVICE, STEERLAB_DTYPE, STEERLAB_DEVICE_MAP), so the
    studies' own loads see them too."""
    import os

    set_threads(threads)
    from ..hardware import choose_device, choose_dtype, detect

    machine = detect()
    if device is not None:
        os.environ["STEERLAB_DEVICE"] = choose_device(device, machine)
    # the command line's default is auto (the Python API's stays float32): bfloat16 only where it is fast
    dtype = dtype if dtype is not None else os.environ.get("STEERLAB_DTYPE") or "auto"
    choose_dtype(dtype, os.environ.get("STEERLAB_DEVICE", "cpu"), machine)  # an unknown name fails here
    os.environ["STEERLAB_DTYPE"] = dtype
    if device_map is not None:
        if device_map != "auto":
            raise SteerlabError(f"--device-map takes auto, got '{device_map}'")
        os.environ["STEERLAB_DEVICE_MAP"] = device_map


def text_generator(engine: str):
    """The studies' text generator for `--engine` (checked before any model loads): `steerlab.generate`, or the
    vLLM engine's (started on first use; close it with `.close()`)."""
    from ..serve.engines import engine_module

    engine_module(engine)  # an unknown engine or a missing vLLM: one line, now
    if engine == "builtin":
        from ..generation import generate

        return generate
    from ..serve.engines.vllm import TextGenerator

    return TextGenerator()


def load_model(model: Optional[str]):
    """Load --model (None: the embedded model) under a status line."""
    from ..models import load_model as load

    with console.status(escape(f"loading {model or 'the embedded SmolLM2-135M-Instruct'}…")):
        lm = load(model)
    if lm.extra.get("dtype_note"):
        err_console.print(escape(lm.extra["dtype_note"]), highlight=False)
    return lm


def peek_layers(model: Optional[str]) -> int:
    """Number of decoder blocks of --model (embedded, .gguf, directory, hub id or known name), read from its
    GGUF metadata or config without loading the weights, so layer ranges fail before the load."""
    from ..models import model_shape

    return model_shape(model).n_layers


def read_vector(path: Optional[Path]):
    """Read and validate a vector file (truncated, NaN, not steerlab's) before the model is loaded."""
    if path is None:
        return None
    from ..vector import SteeringVector

    return SteeringVector.load(path)
