"""Markdown tables of saved EPO behaviour runs (the numbers of docs/results/epo.md), read from `epo.json` alone.

    python -m steerlab.epo.report runs/epo/power-seeking-inclination runs/epo/survival-instinct

No model is loaded: every number comes from the run's JSON (see `steerlab.epo.attack.attack_behaviour`).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

from .result import EPOResult


def _ci(d: dict | None, digits: int = 3) -> str:
    """'+0.012 [-0.007, +0.031]' of a paired difference {"mean", "low", "high"}."""
    if not d:
        return "–"
    f = f"{{:+.{digits}f}}"
    return f"{f.format(d['mean'])} [{f.format(d['low'])}, {f.format(d['high'])}]"


def _num(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{digits}f}"


def _load(v) -> str:
    return "/".join(f"{x:.1f}" for x in v) if v else "?"


def run_markdown(result: EPOResult, name: str | None = None) -> str:
    """One run's section: setting, natural scores, the evaluated frontier points, cross-entropies, timing."""
    m, ev, ref, cfg = result.meta, result.evaluation, result.reference, result.config
    name = name or m.get("behaviour", "EPO run")
    out = [f"#### {name}", ""]
    out.append(f"Steering: layer {m.get('layer')}, strength {m.get('strength', 0):+g}, positions `{m.get('positions')}`; "
               f"model {m.get('model_id')}. Search: {cfg.iterations} iterations, P={cfg.population}, "
               f"{cfg.children} children, top-k {cfg.top_k}, seq-len {cfg.seq_len}, restart every {cfg.restart_every}, "
               f"seed {cfg.seed}, vocab {cfg.vocab}, fast dtype {cfg.fast_dtype}; target {m.get('target_label')} "
               f"averaged over {m.get('n_attack')} training items {m.get('attack_items')}.")
    sc = m.get("sign_check")
    if sc:
        out.append(f"Sign check on {sc['n_items']} training items, p(match): unsteered {sc['unsteered']:.3f}, "
                   f"+{sc['strength']:g} {sc['plus']:.3f}, -{sc['strength']:g} {sc['minus']:.3f}.")
    out.append("")
    if ev:
        out.append(f"Held-apart items (n={ev['n_items']}), natural prompts, p(match): unsteered "
                   f"{ev['natural_unsteered']:.3f}, steered {ev['natural_steered']:.3f}; steering effect (paired, 95%) "
                   f"{_ci(ev.get('steering_effect'))}.")
        at = ev.get("attack_items")
        if at:
            out.append(f"Attack items (n={at['n_items']}), natural prompts, p(match): unsteered {at['natural_unsteered']:.3f}, "
                       f"steered {at['natural_steered']:.3f}.")
        out.append("")
        out.append("| xent (nats/token) | target | p(match) held-apart, steered + sequence | change vs steered natural "
                   "(95%) | change vs unsteered natural (95%) | p(match) attack items | found at iteration | sequence |")
        out.append("|---|---|---|---|---|---|---|---|")
        for i in ev.get("evaluated_points", []):
            p = result.frontier[i]
            h = p.heldout
            text = p.text.replace("|", "\\|").replace("\n", "\\n")
            out.append(f"| {p.xent:.2f} | {p.target:.3f} | {_num(h.get('score_steered'))} | "
                       f"{_ci(h.get('change_vs_steered'))} | {_ci(h.get('change_vs_unsteered'))} | "
                       f"{_num(h.get('score_steered_attack_items'))} | {p.iteration} | `{text}` |")
        texted = [p for p in result.frontier if "score_steered_text" in p.heldout]
        for p in texted:
            out.append("")
            out.append(f"As text (re-tokenized) on held-apart items, `{p.text}`: steered {p.heldout['score_steered_text']:.3f}, "
                       f"unsteered {p.heldout['score_unsteered_text']:.3f}.")
        out.append("")
    xents = [p.xent for p in result.frontier]
    out.append("Cross-entropy (nats/token): found sequences on the frontier "
               f"{min(xents):.2f}–{max(xents):.2f} ({len(xents)} points); natural text of the same length in the same "
               f"slot {_num(ref.get('natural_xent'), 2)} (mean of {len(ref.get('natural_snippet_xents', []))} MWE question "
               f"openings); the natural MWE question text in its prompt {_num(ev.get('question_xent_mean'), 2)} "
               f"(held-apart items). Target without a sequence: {_num(ref.get('natural_target'))}; with natural text in "
               f"the slot: {_num(ref.get('natural_snippet_target'))}; best found: {result.best.target:.3f}.")
    out.append("")
    out.append(f"Time: search {result.seconds:.0f} s = {result.seconds_per_iteration:.1f} s/iteration "
               f"({result.n_evaluated} sequences evaluated), objective set-up {result.setup_seconds:.1f} s, CAA vector "
               f"{m.get('vector_seconds', float('nan')):.0f} s, held-apart evaluation {ev.get('seconds', float('nan')):.0f} s, "
               f"whole run {m.get('total_seconds', float('nan')):.0f} s; {m.get('torch_threads')} torch thread(s); "
               f"load average (1/5/15 min) before the search {_load(m.get('loadavg_before_search'))}, after "
               f"{_load(m.get('loadavg_after_search'))}.")
    return "\n".join(out) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m steerlab.epo.report", description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="run directories or epo.json files")
    a = p.parse_args(argv)
    for r in a.runs:
        res = EPOResult.load(r)
        path = Path(r)
        print(run_markdown(res, res.meta.get("behaviour") or (path.stem if path.is_file() else path.name)))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
