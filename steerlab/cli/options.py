"""Options that several commands share, declared once.

Typer reads a command's options from its signature. Single options used by many commands are
constants here (`MODEL`, `FORCE`, ...). Options that travel together (the data split, the runtime,
the judge) are typed groups: a frozen dataclass whose fields carry their typer option. A command
decorated with `@grouped` that takes a parameter annotated with a group gets the group's options on
the command line and receives one instance of the group:

    @app.command()
    @grouped
    def layers(behaviour: str = BEHAVIOUR, split: Split = ..., run: Runtime = ...): ...
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from typing import Any, Callable, Optional

import typer

MODEL_HELP = ("Hugging Face id, local directory, .gguf file or known model name (`steerlab models list`) "
              "(default: the embedded SmolLM2-135M-Instruct).")
MODEL = typer.Option(None, "--model", "-m", help=MODEL_HELP)
FORCE = typer.Option(False, "--force", help="Overwrite existing output files.")
THREADS = typer.Option(None, help="torch CPU threads (default: torch's choice).")
GEN_ENGINE = typer.Option("builtin", "--engine", help="What generates the texts: builtin (transformers, in this "
                          "process) or vllm (vLLM's engine, the steerlab[vllm] extra; the same greedy texts).")
DEVICE = typer.Option("auto", help="cpu, cuda, cuda:N, mps or auto (the first accelerator, else the CPU).")
DTYPE = typer.Option(None, help="float32, bfloat16, float16 or auto (bfloat16 where the GPU or CPU computes it "
                                "natively: avx512_bf16/AMX; else float32). Default: $STEERLAB_DTYPE, else auto. "
                                "`steerlab doctor` shows what auto picks here.")
DEVICE_MAP = typer.Option(None, "--device-map", help="auto: spread a model over the accelerators, the CPU and "
                                                     "disk (accelerate); overrides --device.")
BEHAVIOUR = typer.Argument(..., help="A CAE behaviour (e.g. openness, power-seeking-inclination) or an MWE .jsonl file.")
OUT_DIR = typer.Option(..., "--out", "-o", help="Directory for the result files.")
VECTOR = typer.Option(None, "--vector", "-v", help="Use this vector file instead of training CAA on the train split.")
RELATIVE = typer.Option(True, "--relative/--raw", help="Strengths relative to the layer's residual norm "
                                                      "(alpha*||v|| = r*mean||h_L||) or raw alphas.")
POSITIONS = typer.Option("answer", help="Steering positions: answer (from the token predicting the answer), all, "
                                        "after_user, last_prompt.")
READING = typer.Option(None, help="Where training pairs are read: answer (the answer token), turn (mean over the "
                                  "answer turn), end (the end-of-turn token), ab (Yes/No items recast as A/B, read at "
                                  "the letter). Default: answer for A/B sets, the Yes/No default otherwise "
                                  "(docs/findings.md).")
LAYER = typer.Option(..., help="Layer to steer.")
N_TRAIN = typer.Option(200, help="Training items (the CAA vector's pairs).")
SEED = typer.Option(0, help="Split seed (train and test are disjoint).")
MULTI_TOKEN = typer.Option(False, "--allow-multi-token", help="Score Yes/No answers the tokenizer splits as whole "
                                                              "sequences.")
STRENGTHS = "-1,-0.5,-0.25,-0.1,0.1,0.25,0.5,1"  # the default strength sweep (relative)


def _option(info: Any) -> Any:
    """A dataclass field whose default is `info`'s and which remembers its typer option."""
    return dataclasses.field(default=info.default, metadata={"typer": info})


@dataclasses.dataclass(frozen=True)
class Split:
    """The train/test split of a behaviour's items."""

    n_train: int = _option(N_TRAIN)
    n_test: int = _option(typer.Option(100, help="Test items (scored)."))
    seed: int = _option(SEED)


@dataclasses.dataclass(frozen=True)
class Runtime:
    """Which model, on which device and in which dtype, how many threads, and whether existing result files may be
    overwritten."""

    model: Optional[str] = _option(MODEL)
    threads: Optional[int] = _option(THREADS)
    device: str = _option(DEVICE)
    dtype: Optional[str] = _option(DTYPE)
    device_map: Optional[str] = _option(DEVICE_MAP)
    force: bool = _option(typer.Option(False, "--force", help="Overwrite existing result files."))


@dataclasses.dataclass(frozen=True)
class Judge:
    """The judge of open-ended responses: the loaded model, or any OpenAI-compatible endpoint."""

    judge: str = _option(typer.Option("local", help="local (the loaded model, offline) or openai (an "
                                                    "OpenAI-compatible endpoint)."))
    judge_url: Optional[str] = _option(typer.Option(None, help="Endpoint base URL, e.g. https://api.openai.com/v1."))
    judge_model: Optional[str] = _option(typer.Option(None, help="openai: the model name at the endpoint. local: "
                                                     "another local model to judge with (a known name, directory, "
                                                     ".gguf or hub id; default: the model under study)."))
    judge_key_env: str = _option(typer.Option("OPENAI_API_KEY", help="Environment variable holding the API key "
                                                                     "('' for none)."))

    def check(self) -> None:
        """Fail on judge options that cannot work, before any model is loaded."""
        if self.judge != "local":
            self.make(None)  # an endpoint judge checks its URL, model and key when made; it loads nothing
        elif self.judge_model:
            from ..models import model_shape

            model_shape(self.judge_model)  # an unknown judge model fails here, not after the study's model loads

    def make(self, lm):
        """The judge object (steerlab.cae.judge) these options describe."""
        from ..cae.judge import make_judge

        return make_judge(self.judge, lm, base_url=self.judge_url, model=self.judge_model,
                          key_env=self.judge_key_env or None, progress=True)


GROUPS = (Split, Runtime, Judge)


def grouped(fn: Callable) -> Callable:
    """Expand the parameters of `fn` annotated with an option group (Split, Runtime, Judge) into the
    group's options, for typer, and hand `fn` one instance of each group."""
    hints = typing.get_type_hints(fn)
    groups: dict[str, type] = {}
    params: list[inspect.Parameter] = []
    for name, p in inspect.signature(fn).parameters.items():
        cls = hints.get(name)
        if cls in GROUPS:
            groups[name] = cls
            field_types = typing.get_type_hints(cls)
            params += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.metadata["typer"],
                                         annotation=field_types[f.name]) for f in dataclasses.fields(cls)]
        else:
            # Keyword-only throughout: typer passes every value by name, and groups may sit anywhere.
            params.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(name, p.annotation)))
    names = [p.name for p in params]
    if len(set(names)) != len(names):
        raise TypeError(f"{fn.__name__}: an option group repeats a parameter of the command")

    @functools.wraps(fn)
    def command(**kwargs):
        for name, cls in groups.items():
            kwargs[name] = cls(**{f.name: kwargs.pop(f.name) for f in dataclasses.fields(cls)})
        return fn(**kwargs)

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    return command


__all__ = ["grouped", "Split", "Runtime", "Judge", "MODEL", "FORCE", "THREADS", "DEVICE", "DTYPE", "DEVICE_MAP",
           "BEHAVIOUR", "OUT_DIR", "VECTOR",
           "RELATIVE", "POSITIONS", "READING", "LAYER", "N_TRAIN", "SEED", "MULTI_TOKEN", "STRENGTHS"]
