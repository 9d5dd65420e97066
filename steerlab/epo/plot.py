"""The EPO frontier as a PNG (matplotlib, Agg backend): attack strength against cross-entropy."""

from __future__ import annotations

import textwrap
from pathlib import Path


def plot_result(result, path: Path) -> Path:
    """`result` is an `EPOResult` (read only; this module needs nothing else of EPO).

    Left: the Pareto frontier (target vs xent) with the population's path and reference lines.
    Right (when the result was evaluated on held-apart items): behaviour score with each frontier
    sequence against the natural prompts, steered and unsteered."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    evaluated = [p for p in result.frontier if "score_steered" in p.heldout]
    ncols = 2 if evaluated else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.4 * ncols, 4.8), squeeze=False)
    ax = axes[0][0]
    xs = [s for step in result.history for s in step.xent]
    ys = [t for step in result.history for t in step.target]
    ax.scatter(xs, ys, s=6, c="0.8", label="population (all iterations)")
    fx = [p.xent for p in result.frontier]
    fy = [p.target for p in result.frontier]
    ax.plot(fx, fy, "o-", c="C3", ms=4, label="Pareto frontier")
    ref = result.reference
    if "natural_target" in ref:
        ax.axhline(ref["natural_target"], c="C0", ls="--", lw=1, label="no sequence (steered)")
    if "natural_xent" in ref:
        ax.axvline(ref["natural_xent"], c="C2", ls=":", lw=1, label="natural text, same slot")
    for p in result.frontier[:: max(1, len(result.frontier) // 4)]:
        # Sequences are arbitrary tokens: a "$" must not start matplotlib's math mode (a parse error).
        ax.annotate(textwrap.shorten(p.text, 28), (p.xent, p.target), fontsize=6, alpha=0.8, parse_math=False)
    ax.set_xlabel("cross-entropy of the sequence (nats/token)")
    ax.set_ylabel(result.meta.get("target_label", "target"))
    ax.set_title(result.meta.get("title", "EPO frontier"), fontsize=9, parse_math=False)
    ax.legend(fontsize=7, loc="lower right")
    if evaluated:
        ax2 = axes[0][1]
        ex = [p.xent for p in evaluated]
        ax2.plot(ex, [p.heldout["score_steered"] for p in evaluated], "o-", c="C3", label="steered + sequence (tokens)")
        if all("score_steered_text" in p.heldout for p in evaluated):
            ax2.plot(ex, [p.heldout["score_steered_text"] for p in evaluated], "s--", c="C1", ms=4,
                     label="steered + sequence (as text)")
        if all("score_steered_attack_items" in p.heldout for p in evaluated):
            ax2.plot(ex, [p.heldout["score_steered_attack_items"] for p in evaluated], "^-", c="C4", ms=4,
                     label="attack items, steered + sequence")
        ev = result.evaluation
        if "attack_items" in ev:
            ax2.axhline(ev["attack_items"]["natural_steered"], c="C4", ls=":", lw=1, label="attack items, steered, natural")
        if "natural_steered" in ev:
            ax2.axhline(ev["natural_steered"], c="C3", ls=":", lw=1, label="steered, natural prompt")
        if "natural_unsteered" in ev:
            ax2.axhline(ev["natural_unsteered"], c="k", ls=":", lw=1, label="unsteered, natural prompt")
        ax2.set_xlabel("cross-entropy of the sequence (nats/token)")
        ax2.set_ylabel("behaviour score p(match) on held-apart items")
        ax2.set_ylim(0, 1)
        ax2.legend(fontsize=7)
        ax2.set_title(f"held-apart items (n={ev.get('n_items', '?')})", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
