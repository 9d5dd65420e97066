"""One EPO attack run from its options: check everything before the model loads, run, save, summarise.

`steerlab attack` builds an `AttackOptions` (an `EPOConfig` for the search plus what to attack) and
calls `run_attack`; `summary` gives the lines it prints.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..data.tasks import resolve_behaviour
from ..errors import SteerlabError
from ..position_policies import check_policy
from ..steering import Steering
from ..vector import SteeringVector
from .attack import attack_behaviour, attack_string, check_run_dir, reevaluate
from .config import EPOConfig
from .result import RESULT_FILE, EPOResult


def parse_ids(spec: str | None) -> tuple[int, ...] | None:
    """'12,345,6789' (or a file of ids separated by commas/whitespace, given as @PATH) -> token ids; None stays None."""
    if spec is None:
        return None
    text = spec
    if spec.startswith("@"):
        path = Path(spec[1:])
        if not path.is_file():
            raise SteerlabError(f"allowed-ids file not found: {path}")
        text = path.read_text()
    parts = [t for t in text.replace(",", " ").split() if t]
    try:
        return tuple(int(t) for t in parts)
    except ValueError:
        raise SteerlabError(f"cannot read token ids {spec[:60]!r}: use e.g. 12,345,6789 or @ids.txt") from None


def unescape(text: str) -> str:
    """Decode the escapes \\n, \\t and \\\\ a shell passes literally (e.g. --separator '\\n')."""
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "nt\\":
            out.append({"n": "\n", "t": "\t", "\\": "\\"}[text[i + 1]])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


@dataclass
class AttackOptions:
    """Everything an attack run needs; built by `steerlab attack`.

    Mode: `behaviour` (reverse a steered MWE behaviour; needs `layer`, `strength`), `target` with
    `prompt` (raise log p(target | prompt); steered when `vector`, `layer` and `strength` are given), or
    `reevaluate` (re-run the held-apart evaluation of a saved behaviour run).
    """

    out: str | Path | None = None
    model: str | None = None
    behaviour: str | None = None
    prompt: str | None = None
    target: str | None = None
    assistant_prefix: str = ""
    layer: int | None = None
    strength: float | None = None
    positions: str = "after_user"
    vector: str | Path | None = None
    auto_sign: bool = True
    n_train: int = 150
    n_attack: int = 4
    n_test: int = 40
    n_sign: int = 32
    split_seed: int = 0
    normalise: bool = False
    placement: str = "suffix"
    separator: str = "\n"
    config: EPOConfig = field(default_factory=EPOConfig)
    eval_points: int = 6
    text_eval_points: int = 1
    threads: int | None = None
    reevaluate: str | Path | None = None
    force: bool = False
    progress_every: int = 10


def check_options(o: AttackOptions) -> None:
    """Every check that needs no model: raises SteerlabError (OutputExistsError) before anything is loaded."""
    o.config.validate()
    if o.threads is not None and o.threads < 1:
        raise SteerlabError(f"threads must be a positive integer, got {o.threads}")
    if o.progress_every < 0:
        raise SteerlabError("progress_every must be >= 0")
    if o.reevaluate is not None:
        if o.behaviour is not None or o.target is not None:
            raise SteerlabError("--reevaluate takes a saved run directory only (no --behaviour/--target)")
        if not (Path(o.reevaluate) / RESULT_FILE).is_file():
            raise SteerlabError(f"{Path(o.reevaluate) / RESULT_FILE}: no EPO result to re-evaluate")
        return
    if o.behaviour is not None and o.target is not None:
        raise SteerlabError("give either --behaviour (reverse a steered behaviour) or --target with --prompt, not both")
    if o.behaviour is None and o.target is None:
        raise SteerlabError("give either --behaviour (reverse a steered behaviour) or --target with --prompt")
    if o.out is None:
        raise SteerlabError("--out RUN_DIR is required")
    check_policy(o.positions)
    if o.placement not in ("suffix", "prefix"):
        raise SteerlabError(f"unknown placement {o.placement!r}: choose suffix or prefix")
    if o.vector is not None and not Path(o.vector).is_file():
        raise SteerlabError(f"vector file not found: {o.vector}")
    if o.behaviour is not None:
        if o.layer is None or o.strength is None:
            raise SteerlabError("--behaviour needs --layer and --strength")
        if o.prompt is not None:
            raise SteerlabError("--prompt belongs to the target-string mode (--target), not to --behaviour")
        resolve_behaviour(o.behaviour)  # a clear error for an unknown name or a missing file
    else:
        if o.target == "":
            raise SteerlabError("the target string is empty")
        if not o.prompt:
            raise SteerlabError("--target needs a non-empty --prompt (the user message the sequence is attached to)")
        if o.vector is not None and (o.layer is None or o.strength is None):
            raise SteerlabError("--vector needs --layer and --strength")
        if o.vector is None and (o.layer is not None or o.strength is not None):
            raise SteerlabError("steering a target-string attack needs --vector (with --layer and --strength)")
    check_run_dir(o.out, o.force)


def run_attack(o: AttackOptions, *, load=None, log=print) -> EPOResult:
    """Check `o` (before loading anything), load the model, run the attack and save the run directory.

    `load(model)` loads the model (default `steerlab.models.load_model`); `log` gets progress lines.
    """
    check_options(o)
    if o.threads:
        torch.set_num_threads(int(o.threads))
    if load is None:
        from ..models import load_model as load

    bar = None

    def progress(step) -> None:
        nonlocal bar
        if o.progress_every and bar is None:  # a bar per iteration (on stderr); the lines below stay the record
            from tqdm.auto import tqdm

            bar = tqdm(total=o.config.iterations, desc="EPO iterations", unit="it", leave=False)
        if bar is not None:
            bar.set_postfix(best=f"{step.best_target:.3f}", refresh=False)
            bar.update(step.iteration - bar.n)
            if step.iteration >= o.config.iterations:
                bar.close()
        if o.progress_every and (step.iteration % o.progress_every == 0 or step.restarted):
            log(f"  iteration {step.iteration:4d}  best target {step.best_target:8.3f}  "
                f"evaluated {step.n_evaluated:6d}  {step.seconds:7.1f} s" + ("  (restart)" if step.restarted else ""))

    lm = load(o.model)
    if o.reevaluate is not None:
        return reevaluate(lm, o.reevaluate, eval_points=o.eval_points, text_eval_points=o.text_eval_points, log=log)
    if o.behaviour is not None:
        return attack_behaviour(lm, o.behaviour, layer=int(o.layer), strength=float(o.strength), positions=o.positions,
                                vector=o.vector, auto_sign=o.auto_sign, n_train=o.n_train, n_attack=o.n_attack,
                                n_test=o.n_test, n_sign=o.n_sign, split_seed=o.split_seed, config=o.config,
                                normalise=o.normalise, placement=o.placement, separator=o.separator,
                                eval_points=o.eval_points, text_eval_points=o.text_eval_points, run_dir=o.out,
                                force=o.force, progress=progress, log=log)
    steering: list[Steering] = []
    if o.vector is not None:
        vec = SteeringVector.load(o.vector)
        lm.blocks.check_layer(int(o.layer))
        if int(o.layer) not in vec.directions:
            raise SteerlabError(f"the vector has no direction for layer {o.layer} (it has {list(vec.layers)})")
        steering = [Steering(vec, float(o.strength), layers=[int(o.layer)], positions=o.positions)]
    return attack_string(lm, o.prompt, o.target, steering=steering, config=o.config, placement=o.placement,
                         separator=o.separator, assistant_prefix=o.assistant_prefix, run_dir=o.out, force=o.force,
                         progress=progress)


def summary(result: EPOResult) -> str:
    """A few lines for the terminal."""
    lines = [f"frontier ({len(result.frontier)} points), search {result.seconds:.0f} s "
             f"({result.seconds_per_iteration:.1f} s/iteration):"]
    for p in result.frontier:
        extra = ""
        if "score_steered" in p.heldout:
            extra = f"  p(match) held-apart {p.heldout['score_steered']:.3f}"
        if "score_steered_attack_items" in p.heldout:
            extra += f", attack items {p.heldout['score_steered_attack_items']:.3f}"
        lines.append(f"  target {p.target:8.3f}  xent {p.xent:6.2f}{extra}  {p.text!r}")
    ev = result.evaluation
    if ev:
        lines.append(f"natural prompts, p(match): held-apart unsteered {ev['natural_unsteered']:.3f}, steered "
                     f"{ev['natural_steered']:.3f}")
        if "attack_items" in ev:
            at = ev["attack_items"]
            lines.append(f"natural prompts, p(match): attack items unsteered {at['natural_unsteered']:.3f}, steered "
                         f"{at['natural_steered']:.3f}")
    return "\n".join(lines)
