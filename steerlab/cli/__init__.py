"""The `steerlab` command line: a thin layer over the Python API.

One root app; each module adds its commands (`register`): core (train, generate, effect, info,
export-gguf, demo), condition (`condition train|check`, monitor), server (serve), cae (`cae ...`, report), pas (pas, pas-transfer, pas-sft), epo
(attack), models (`models ...`), doctor. Shared options live in `options`, error handling and parsing in
`common`. Nothing in steerlab imports this package.
"""

from __future__ import annotations

import typer

from . import cae, condition, core, doctor, epo, models, pas, server

app = typer.Typer(
    help="Activation steering for language models: train vectors, steer generation, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
for _module in (core, condition, server, cae, pas, epo, models, doctor):
    _module.register(app)


def main() -> None:  # pragma: no cover - entry point
    app()


__all__ = ["app", "main"]
