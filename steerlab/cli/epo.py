"""`steerlab attack`: EPO adversarial inputs against a steered model.

A thin wrapper: it builds an `AttackOptions` (holding an `EPOConfig`) and calls
`steerlab.epo.runs.run_attack`, which checks every option before the model is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..epo.config import EPOConfig
from .common import load_model, run_command, say, set_runtime
from .options import DEVICE, DEVICE_MAP, DTYPE, MODEL

_DEFAULTS = EPOConfig()  # the search options' defaults are EPOConfig's own


def attack(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory: epo.json, epo_frontier.png (and vector.safetensors); required unless --reevaluate."),
    behaviour: Optional[str] = typer.Option(None, "--behaviour", "--data", "-b",
                                            help="Reverse a steered behaviour: a CAE/MWE behaviour name (e.g. power-seeking-inclination) or an MWE .jsonl file."),
    target: Optional[str] = typer.Option(None, "--target", help="Instead: raise the log-probability of this string after --prompt."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="The user message of the --target mode."),
    assistant_prefix: str = typer.Option("", help="--target mode: text the assistant turn starts with, before the target."),
    layer: Optional[int] = typer.Option(None, help="Steered layer (0-based block output)."),
    strength: Optional[float] = typer.Option(None, help="Steering strength (behaviour mode: its sign is checked unless --no-auto-sign)."),
    positions: str = typer.Option("after_user", help="Steered positions: all, after_user or last_prompt."),
    vector: Optional[Path] = typer.Option(None, "--vector", help="A .safetensors vector (default in behaviour mode: train CAA on the training items)."),
    auto_sign: bool = typer.Option(True, "--auto-sign/--no-auto-sign", help="Use the sign of --strength that raises p(match) on training items."),
    n_train: int = typer.Option(150, help="Training items (CAA vector, sign check, attack items)."),
    n_attack: int = typer.Option(4, help="Training items whose mean log p(not-matching answer) is the EPO target."),
    n_test: int = typer.Option(40, help="Held-apart items for the evaluation."),
    n_sign: int = typer.Option(32, help="Training items for the sign check."),
    split_seed: int = typer.Option(0, help="Seed of the train/test split."),
    normalise: bool = typer.Option(False, "--normalise", help="Target log p(not match)/(p(A)+p(B)) instead of log p(not match)."),
    placement: str = typer.Option("suffix", help="Where the sequence goes in the user text: suffix or prefix."),
    separator: str = typer.Option("\\n", help="Between the user text and the sequence (escapes such as \\n are decoded)."),
    iterations: int = typer.Option(_DEFAULTS.iterations, help="EPO iteration budget."),
    population: int = typer.Option(_DEFAULTS.population, help="Population slots (one fluency weight each)."),
    seq_len: int = typer.Option(_DEFAULTS.seq_len, "--seq-len", help="Tokens in the inserted sequence."),
    top_k: int = typer.Option(_DEFAULTS.top_k, help="Swap tokens are drawn from this many of most negative gradient."),
    children: int = typer.Option(_DEFAULTS.children, help="Children per slot and iteration."),
    restart_every: int = typer.Option(_DEFAULTS.restart_every, help="Restart from the best every N iterations (0: never)."),
    lambda_min: float = typer.Option(0.1, help="Smallest fluency weight."),
    lambda_max: float = typer.Option(10.0, help="Largest fluency weight."),
    seed: int = typer.Option(0, help="Seed of every random choice of the search."),
    vocab: str = typer.Option("ascii", help="Token filter: ascii (printable ASCII tokens) or all."),
    allow_special: bool = typer.Option(False, "--allow-special", help="Allow special tokens in the sequence."),
    allowed_ids: Optional[str] = typer.Option(None, help="Only these token ids (comma list or @FILE), intersected with --vocab."),
    fast_dtype: Optional[str] = typer.Option(None, help="bfloat16 or float16: autocast the search (the frontier is re-scored exactly)."),
    chunk_rows: int = typer.Option(32, help="Rows (sequence x item) per forward pass."),
    eval_points: int = typer.Option(6, help="Frontier points evaluated on the held-apart items."),
    text_eval_points: int = typer.Option(1, help="Of those, how many (strongest first) are also evaluated as re-tokenized text."),
    reevaluate: Optional[Path] = typer.Option(None, "--reevaluate", help="Only re-run the held-apart evaluation of this saved behaviour run (rewrites its epo.json and plot)."),
    threads: Optional[int] = typer.Option(None, help="torch intra-op threads."),
    device: str = DEVICE,
    dtype: Optional[str] = DTYPE,
    device_map: Optional[str] = DEVICE_MAP,
    quiet: bool = typer.Option(False, "--quiet", help="No progress lines."),
    model: Optional[str] = MODEL,
    force: bool = typer.Option(False, "--force", help="Overwrite an existing epo.json in OUT."),
) -> None:
    """EPO: find token sequences that reverse a steered behaviour (or raise any target string) under steering;
    writes the Pareto frontier (attack strength vs cross-entropy), held-apart scores and a plot."""

    def body():
        set_runtime(None, device, dtype, device_map)  # the attack sets its own threads
        from ..epo.runs import AttackOptions, parse_ids, run_attack, summary, unescape

        config = EPOConfig(seq_len=seq_len, population=population, lambda_min=lambda_min, lambda_max=lambda_max,
                           children=children, top_k=top_k, iterations=iterations, restart_every=restart_every,
                           seed=seed, vocab=vocab, exclude_special=not allow_special,
                           allowed_ids=parse_ids(allowed_ids), chunk_rows=chunk_rows, fast_dtype=fast_dtype)
        opts = AttackOptions(
            out=None if reevaluate is not None else out, model=model, behaviour=behaviour, prompt=prompt,
            target=target, assistant_prefix=assistant_prefix, layer=layer, strength=strength, positions=positions,
            vector=vector, auto_sign=auto_sign, n_train=n_train, n_attack=n_attack, n_test=n_test, n_sign=n_sign,
            split_seed=split_seed, normalise=normalise, placement=placement, separator=unescape(separator),
            config=config, eval_points=eval_points, text_eval_points=text_eval_points, threads=threads,
            reevaluate=reevaluate, force=force, progress_every=0 if quiet else 10)
        log = (lambda *_: None) if quiet else say
        result = run_attack(opts, load=load_model, log=log)
        say(summary(result))
        where = Path(reevaluate) if reevaluate is not None else out
        say(f"wrote {where / 'epo.json'} and {where / 'epo_frontier.png'}")

    run_command(body)


def register(app: typer.Typer) -> None:
    """Add `steerlab attack` to the root app."""
    app.command()(attack)
