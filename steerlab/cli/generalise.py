"""`steerlab cae generalise BEHAVIOUR`: the fair comparison of training methods (`steerlab.cae.generalise`).

Resumable: every stage of every (method, seed) cell is skipped when its file exists in --out, so a run
cut short continues where it stopped (a directory made with other settings is refused).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from ..errors import SteerlabError
from .common import check_layer_range, check_layer_spec, load_model, parse_floats, parse_ints, parse_layers, \
    parse_list, peek_layers, run_command, say, set_runtime, text_generator
from .options import BEHAVIOUR, GEN_ENGINE, OUT_DIR, Judge, Runtime, grouped


@grouped
def generalise(
    behaviour: str = BEHAVIOUR,
    out: Path = OUT_DIR,
    methods: str = typer.Option("caa,multiformat,bipo,persona", help="Methods to compare (caa, multiformat, bipo, "
                                "persona, and persona-bipo: BiPO trained on persona's judged answers)."),
    layers: str = typer.Option("", help="Candidate layers, e.g. 8,10,12: each method's layer is chosen among them on "
                               "the validation items."),
    bands: str = typer.Option("", help="Candidate bands of consecutive layers steered together (multi-layer "
                              "vectors), e.g. 10-14,20-24: each layer of a band gets r/k of its own residual norm; "
                              "chosen on validation beside the single --layers."),
    relative: str = typer.Option("0.5", help="Relative strength r: steered at +r and -r. Several (0.25,0.5): each cell "
                                 "chooses one with its layer on validation, the strongest whose perplexity ratio on a "
                                 "validation slice of the corpus stays within 1.5."),
    select_on: str = typer.Option("mwe", help="How each cell chooses its layer and strength on validation data: mwe "
                                  "(the validation items' A/B answers) or open-ended (judged open answers to their "
                                  "questions, at the strongest r per layer within perplexity x1.5)."),
    open_questions: int = typer.Option(10, help="--select-on open-ended: validation questions answered per candidate."),
    positions: str = typer.Option("answer", help="Where every steered pass adds the vector: answer (from the end of "
                                  "the user's message on; the prompt is read unsteered) or all (the prompt's tokens "
                                  "too)."),
    schedule: str = typer.Option("constant", help="How the strength changes along the steered positions: constant, "
                                 "first:N (only the first N of them, then unsteered) or decay:H (halved every H); "
                                 "in every steered pass and the corpus perplexity."),
    n_train: int = typer.Option(40, help="Training items (the same for every method)."),
    n_val: int = typer.Option(20, help="Validation items (choose the layer)."),
    n_test: int = typer.Option(40, help="Test items (the in-distribution effect)."),
    seeds: str = typer.Option("0,1,2", help="Method seeds (BiPO's order, persona's sampling, both for persona-bipo; "
                              "CAA and multiformat run once)."),
    split_seed: int = typer.Option(0, help="The train/val/test split, shared by every method."),
    ood_lengths: str = typer.Option("short", help="OOD prompt lengths (short, medium, long): 10 prompts per kind and "
                                    "length."),
    ood_limit: Optional[int] = typer.Option(None, help="OOD prompts per kind and length (default: all)."),
    ood_file: Optional[Path] = typer.Option(None, help="OOD prompts of your own (JSON/JSONL of {prompt, criteria?}) for a "
                                            "behaviour the CAE data has none for."),
    max_new_tokens: int = typer.Option(48, help="OOD generation length."),
    bipo_steps: int = typer.Option(50, help="BiPO's step budget per candidate layer."),
    bipo_batch: int = typer.Option(8, help="BiPO: contrast pairs per step (4 forward rows each)."),
    description: Optional[str] = typer.Option(None, help="persona, persona-bipo: the trait in one line (default: the "
                                              "shipped one)."),
    persona_judge: bool = typer.Option(True, "--persona-judge/--no-persona-judge",
                                       help="Filter persona's answers with the judge."),
    persona_keep: str = typer.Option("median", help="persona's keep rule: median (cut at the median judged score, "
                                     "whatever the judge's scale) or absolute (the paper's 0.5)."),
    persona_reading: str = typer.Option("mean", help="How persona reads each kept answer: mean (over its response "
                                        "tokens, the paper's) or last (its last token)."),
    judge: Judge = Judge(),
    engine: str = GEN_ENGINE,
    run: Runtime = Runtime(),
) -> None:
    """Compare training methods in and out of distribution under one protocol (issue 26), resumably."""

    def body():
        generator = text_generator(engine)  # an unknown engine or a missing vLLM: one line, before any load
        try:
            compare(generator)
        finally:
            if hasattr(generator, "close"):
                generator.close()

    def compare(generator):
        from ..cae.generalise import GeneraliseConfig, run_generalise
        from ..cae.numerics import check_numerics, expected_numerics
        from ..cae.sites import parse_bands
        from ..schedules import Schedule
        from ..data.tasks import resolve_behaviour

        set_runtime(run.threads, run.device, run.dtype, run.device_map)
        if layers.strip():
            check_layer_spec(layers)
        judge.check()
        path = resolve_behaviour(behaviour)
        cfg = GeneraliseConfig(str(path), parse_list(methods), (0,), parse_bands(bands),
                               tuple(parse_floats(relative, "--relative")),
                               n_train, n_val, n_test,
                               tuple(parse_ints(seeds, "seeds")), split_seed,
                               ood_lengths=tuple(parse_list(ood_lengths)), ood_limit=ood_limit,
                               ood_file=str(ood_file) if ood_file is not None else None,
                               max_new_tokens=max_new_tokens, bipo_steps=bipo_steps, description=description,
                               persona_judge=persona_judge, persona_keep=persona_keep,
                               persona_reading=persona_reading, bipo_batch=bipo_batch,
                               select_on=select_on, open_questions=open_questions, positions=positions,
                               schedule=Schedule.parse(schedule).spec)
        if not layers.strip() and not cfg.bands:
            raise SteerlabError("give candidate --layers, --bands or both")
        if ood_file is not None:
            from ..cae.ood import load_ood_file

            load_ood_file(ood_file)  # a malformed file fails before the model load
        if {"persona", "persona-bipo"} & set(cfg.methods):
            from ..methods.persona import load_trait

            load_trait(Path(path).stem, description)
        check_numerics(Path(out), expected_numerics())  # a bfloat16 directory on a float32 machine: no model read
        n_layers = peek_layers(run.model)
        chosen = parse_layers(layers, n_layers) if layers.strip() else []
        check_layer_range([*chosen, *(l for b in cfg.bands for l in b)], n_layers)
        cfg = replace(cfg, layers=tuple(l % n_layers for l in chosen))
        lm = load_model(run.model)
        summary = run_generalise(lm, cfg, out, judge.make(lm), log=say, generator=generator)
        def effect(v) -> str:
            return v if isinstance(v, str) or v is None else f"{v[0]:+.3f} [{v[1]:+.3f}, {v[2]:+.3f}]"

        for r in summary["rows"]:
            ood = ", ".join(f"{k[4:]} {effect(v)}" for k, v in r.items() if k.startswith("ood_"))
            ppl = ", ".join(f"r={k}: {v:.2f}" for k, v in r["ppl_ratio"].items())
            say(f"{r['method']} seed {r['seed']}: layer {r['layer']}, in distribution {r['in_distribution_plus']:+.3f} "
                f"(+r) / {r['in_distribution_minus']:+.3f} (-r); OOD (judged, judge AUC {r['judge_auc']:.2f}): {ood}; "
                f"perplexity ratio {ppl}")
        say(f"wrote {Path(out) / 'summary.json'}")

    run_command(body)
