"""Turn a CAE run directory into one self-contained page: HTML with inlined PNGs, or Markdown with image files.

    steerlab report runs/cae/openness            # -> runs/cae/openness/report.html
    steerlab report runs/cae --format md         # several runs: an overview table, then one section each

A run directory is what `steerlab cae run` (or the single-stage commands) writes: ``layer_sweep.json``,
``strength_sweep.json``, ``sample_count_sweep.json``, ``method_comparison.json``, ``ood.json`` (+
``ood_scores.json``), ``side_effects.json``, ``manifest.json``. Whatever is present is shown; a
colleague's EPO result (``epo.json`` and its PNGs) is included when found. Figures are drawn from the
JSON files (so a report can be rebuilt without the model):

* effect vs layer; effect vs strength with the perplexity cost on a second axis of the same plot;
* the sample-count curve; CAA vs ActAdd; OOD vs in-distribution effect; example generations.

A figure a stage already saved (``layer_sweep.png`` ...) is inlined as it is; the composite figures
are drawn from the JSON files.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path

from .. import results
from ..errors import OutputExistsError, SteerlabError
from .ood import plot_ood
from .side_effects import plot_side_effects
from .summary import MANIFEST, summarize_run
from .sweeps import plot_sweep

RESULT_FILES: tuple[str, ...] = ("layer_sweep.json", "strength_sweep.json", "sample_count_sweep.json",
                                 "method_comparison.json", "ood.json", "side_effects.json", "epo.json", MANIFEST)


@dataclass
class Figure:
    """One figure of the report: a title, a caption and the PNG bytes."""

    name: str
    title: str
    caption: str
    png: bytes


@dataclass
class RunPage:
    """What the report shows for one run directory."""

    path: Path
    summary: dict
    figures: list[Figure] = field(default_factory=list)
    tables: list[tuple[str, list[dict]]] = field(default_factory=list)
    examples: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def is_run_dir(path: Path) -> bool:
    return any((path / f).is_file() for f in RESULT_FILES)


def _load(path: Path, name: str) -> dict | None:
    f = path / name
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise SteerlabError(f"{f}: not valid JSON ({e}); rerun the stage that wrote it") from None


def _png(draw, saved: Path | None = None) -> bytes:
    """The PNG a stage saved (`saved`, when it exists), else `draw(path)` into a temporary file."""
    import tempfile

    if saved is not None and saved.is_file():
        return saved.read_bytes()
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "fig.png"
        draw(p)
        return p.read_bytes()


def _strength_cost_figure(strength: dict, side: dict | None, path: Path) -> Path:
    """Behaviour score vs strength, with perplexity (and KL) on a second axis of the same plot."""
    fig, ax = results.figure()
    plot_sweep(strength, path, ax=ax)
    if side is not None:
        rows = sorted(side["rows"], key=lambda r: r["relative"] if r.get("relative") is not None else r["strength"])
        rel = strength["config"].get("relative")
        xs = [(r["relative"] if r.get("relative") is not None else 0.0) if rel else r["strength"] for r in rows]
        ax2 = ax.twinx()
        ax2.plot(xs, [r["perplexity"] for r in rows], color="tab:red", marker="x", ls=":", label="perplexity")
        ax2.set_yscale("log")
        base = next((r["perplexity"] for r in rows if r["strength"] == 0.0), float("nan"))
        ax2.set_ylabel(f"corpus perplexity (log; unsteered {base:.1f})", color="tab:red")
        ax2.legend(loc="lower right", fontsize=7)
    ax.set_title("effect and cost vs strength")
    return results.save_figure(fig, path)


def build_page(run_dir: str | Path) -> RunPage:
    """Collect figures, tables and examples of one run directory."""
    path = Path(run_dir)
    if not path.is_dir():
        raise SteerlabError(f"{path}: not a directory")
    if not is_run_dir(path):
        raise SteerlabError(f"{path}: no CAE or EPO results found (expected files such as layer_sweep.json, epo.json)")
    page = RunPage(path, summarize_run(path) if (path / MANIFEST).is_file() or (path / "layer_sweep.json").is_file() else {})
    layer = _load(path, "layer_sweep.json")
    strength = _load(path, "strength_sweep.json")
    samples = _load(path, "sample_count_sweep.json")
    methods = _load(path, "method_comparison.json")
    ood = _load(path, "ood.json")
    side = _load(path, "side_effects.json")
    if layer:
        page.figures.append(Figure("layers", "Effect vs layer",
                                   f"Effect (steered − unsteered behaviour score, per item, averaged) on {layer.get('items', 'the scored')} "
                                   f"items at ±r per layer; the best layer ({layer.get('best_layer')}) has the largest "
                                   "effect at +r. Bands: paired bootstrap 95%.",
                                   _png(lambda p: plot_sweep(layer, p), path / "layer_sweep.png")))
    if strength:
        page.figures.append(Figure("strength", "Effect vs strength, with the perplexity cost",
                                   f"Effect on test items at layer {strength['config']['layer']} (band: paired bootstrap 95%); "
                                   "dashed: the effect on items whose matching answer is each answer token (opposite "
                                   "signs = the vector pushes an answer token, not the behaviour); red: corpus perplexity "
                                   "with the vector at every position (right axis, log).",
                                   _png(lambda p: _strength_cost_figure(strength, side, p))))
        page.tables.append(("Strength sweep (test items)", _rows(strength)))
    if side:
        page.figures.append(Figure("cost", "Perplexity and KL vs strength",
                                   f"{side['config']['n_tokens']} tokens of {Path(side['config']['corpus']).name}; KL("
                                   "unsteered || steered) per token with a bootstrap interval over windows.",
                                   _png(lambda p: plot_side_effects(side, p), path / "side_effects.png")))
        page.tables.append(("Side effects", [{k: r[k] for k in ("relative", "strength", "perplexity", "perplexity_ratio",
                                                                 "kl", "kl_low", "kl_high")} for r in side["rows"]]))
    if samples:
        fl = samples.get("flatten") or {}
        page.figures.append(Figure("samples", "Sample-count curve",
                                   f"CAA vectors from the first n training pairs, alpha {samples['config']['strength']:.3g} "
                                   f"at layer {samples['config']['layer']}. Gains flatten at n = {fl.get('n')} "
                                   f"({fl.get('reason', '')}).", _png(lambda p: plot_sweep(samples, p),
                                                                     path / "sample_count_sweep.png")))
        page.tables.append(("Sample-count sweep (test items)", _rows(samples)))
    if methods:
        desc = "; ".join(f"{k}: {v.get('method')}" + (f" ({v['positive']!r} vs {v['negative']!r})" if "positive" in v else
                                                       f" ({v.get('n_train')} pairs)")
                         for k, v in methods["config"].get("vectors", {}).items())
        page.figures.append(Figure("methods", "CAA vs ActAdd",
                                   f"Same test items, same layer, norm-matched strengths. {desc}.",
                                   _png(lambda p: plot_sweep(methods, p), path / "method_comparison.png")))
        page.tables.append(("CAA vs ActAdd (test items)", _rows(methods)))
    if ood:
        ind = next((r for r in (strength or {}).get("rows", []) if r.get("method") is not None and
                    abs(r["strength"] - ood["strength"]) < 1e-6), None)
        page.figures.append(Figure("ood", "OOD vs in-distribution",
                                   f"Judge: {ood['judge']}. Effects are steered − unsteered per prompt (bootstrap 95%).",
                                   _png(lambda p: plot_ood(ood, ind, p))))
        page.tables.append(("OOD effects", [{k: m[k] for k in ("measure", "kind", "n", "unsteered", "steered", "effect",
                                                                "effect_low", "effect_high")} for m in ood["measures"]]))
        scores = _load(path, "ood_scores.json") or []
        page.examples = _examples(scores)
    jc = _load(path, "judge_check.json")
    if jc is not None:
        page.notes.append(f"Judge check ({jc['judge']}): AUC {jc['auc']:.3f} separating {jc['n_matching']} behaviour-"
                          f"matching from {jc['n_not_matching']} non-matching texts taken from the behaviour's own items "
                          f"(mean score {jc['mean_matching']:.3f} vs {jc['mean_not_matching']:.3f}); 0.5 = chance.")
    epo = _load(path, "epo.json")
    if epo is not None:
        _add_epo(page, epo)
    for png in sorted(path.glob("epo*.png")):
        page.figures.append(Figure(png.stem, f"EPO: {png.stem}", "Figure saved by the EPO run.", png.read_bytes()))
    return page


def _rows(sweep: dict) -> list[dict]:
    keep = ("method", "layer", "relative", "strength", "n_train", "score", "score_low", "score_high", "effect",
            "effect_low", "effect_high")
    out = [{"method": "unsteered", **{k: sweep["unsteered"].get(k) for k in keep if k in sweep["unsteered"]}}]
    out += [{k: r.get(k) for k in keep} for r in sweep["rows"] if r.get("method") is not None]
    return out


def _examples(scores: list[dict], n: int = 4) -> list[dict]:
    """Up to n prompts (alternating kinds) with their unsteered and steered responses."""
    by_key: dict[str, dict] = {}
    for r in scores:
        by_key.setdefault(r["key"], {"kind": r["kind"], "prompt": r["prompt"]})[r["condition"]] = r
    keys = sorted(by_key, key=lambda k: (int(k.rsplit("/", 1)[-1]) if k.rsplit("/", 1)[-1].isdigit() else 0, k))
    out = []
    for k in keys:
        e = by_key[k]
        if "unsteered" in e and "steered" in e and sum(x["kind"] == e["kind"] for x in out) < (n + 1) // 2:
            out.append(e)
        if len(out) >= n:
            break
    return out


def _add_epo(page: RunPage, epo: dict) -> None:
    frontier = epo.get("frontier") or []
    rows = [{"text": p.get("text"), "target": p.get("target"), "xent": p.get("xent"), "iteration": p.get("iteration")}
            for p in frontier[:12]]
    if rows:
        page.tables.append(("EPO Pareto frontier (first 12 by cross-entropy)", rows))
    ref = epo.get("reference") or {}
    meta = epo.get("meta") or {}
    page.notes.append("EPO: " + ", ".join(f"{k} = {v}" for k, v in {**{k: meta[k] for k in list(meta)[:6]},
                                                                   **ref}.items() if not isinstance(v, (dict, list)))
                      + (f"; search {epo.get('seconds', 0):.0f} s" if epo.get("seconds") is not None else ""))


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _headline(s: dict) -> list[tuple[str, str]]:
    """(label, value) pairs of a run's headline numbers."""
    out = []
    if "kind" in s:
        out.append(("format", {"ab": "A/B", "yesno": "Yes/No"}.get(s["kind"], s["kind"])))
    if "n" in s:
        out.append(("items (train/val/test)", f"{s['n']['train']}/{s['n']['val']}/{s['n']['test']}"))
    if "unsteered" in s:
        u = s["unsteered"]
        out.append(("unsteered score (test)", f"{u['score']:.3f} [{u['score_low']:.3f}, {u['score_high']:.3f}]"))
    if "best_layer" in s:
        out.append(("best layer (validation)", str(s["best_layer"])))
    if "effect_at_best" in s:
        e = s["effect_at_best"]
        out.append((f"effect at best layer, r={_fmt(e.get('relative'))} (alpha {e['strength']:.3g})",
                    f"{e['effect']:+.3f} [{e['effect_low']:+.3f}, {e['effect_high']:+.3f}]"))
    if "effect_at_minus" in s:
        e = s["effect_at_minus"]
        out.append((f"effect at r={_fmt(e.get('relative'))}", f"{e['effect']:+.3f} [{e['effect_low']:+.3f}, {e['effect_high']:+.3f}]"))
    if "flatten" in s and s["flatten"]:
        out.append(("gains flatten at n", f"{_fmt(s['flatten'].get('n'))} ({s['flatten'].get('reason', '')})"))
    for k, v in (s.get("ood") or {}).items():
        if k.startswith("judge/") or k.startswith("projection/"):
            out.append((f"OOD {k}", f"{v['effect']:+.3f} [{v['effect_low']:+.3f}, {v['effect_high']:+.3f}] (n={v['n']})"))
    if "cost_at_chosen" in s:
        c = s["cost_at_chosen"]
        out.append(("perplexity at the chosen strength", f"{c['perplexity']:.2f} (x{c['perplexity_ratio']:.2f} of "
                                                          f"{s.get('unsteered_perplexity', float('nan')):.2f}), KL {c['kl']:.3f}"))
    if s.get("total_seconds"):
        out.append(("wall time", f"{s['total_seconds']:.0f} s (" + ", ".join(
            f"{k} {v['seconds']:.0f}" for k, v in s.get("stages", {}).items() if v.get("seconds") is not None) + ")"))
    return out


def _html_table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(empty)</p>"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(rows: list[dict]) -> str:
    if not rows:
        return "(empty)\n"
    cols = list(dict.fromkeys(k for r in rows for k in r))
    esc = lambda x: _fmt(x).replace("|", "\\|").replace("\n", " ")  # noqa: E731
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(esc(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


_CSS = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;font-size:12px;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:3px 6px;text-align:right}
th{background:#f3f3f3}img{max-width:100%;border:1px solid #eee}.fig{margin:1em 0 2em}.cap{color:#555;font-size:13px}
.ex{display:grid;grid-template-columns:1fr 1fr;gap:8px;font-size:13px;margin-bottom:1em}.ex div{background:#f8f8f8;padding:6px;white-space:pre-wrap}
h2{border-bottom:2px solid #ddd;padding-bottom:4px}"""


def render_html(pages: list[RunPage], title: str) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    if len(pages) > 1:
        parts.append("<h2>Overview</h2>" + _html_table(overview_rows(pages)))
    for page in pages:
        name = page.summary.get("behaviour") or page.path.name
        parts.append(f"<h2 id='{html.escape(page.path.name)}'>{html.escape(name)}</h2>")
        head = _headline(page.summary)
        if head:
            parts.append("<table>" + "".join(f"<tr><th>{html.escape(a)}</th><td style='text-align:left'>{html.escape(b)}</td></tr>"
                                             for a, b in head) + "</table>")
        for note in page.notes:
            parts.append(f"<p>{html.escape(note)}</p>")
        for f in page.figures:
            data = base64.b64encode(f.png).decode()
            parts.append(f"<div class='fig'><h3>{html.escape(f.title)}</h3><img alt='{html.escape(f.title)}' "
                         f"src='data:image/png;base64,{data}'><div class='cap'>{html.escape(f.caption)}</div></div>")
        if page.examples:
            parts.append("<h3>Example generations (greedy)</h3>")
            for e in page.examples:
                u, s = e["unsteered"], e["steered"]
                parts.append(f"<p><b>{html.escape(e['kind'])}:</b> {html.escape(e['prompt'])}</p><div class='ex'>"
                             f"<div><b>unsteered</b> (judge {_fmt(u.get('judge'))}, projection {_fmt(u.get('projection'))})\n"
                             f"{html.escape(u['response'])}</div><div><b>steered</b> (alpha {_fmt(s.get('strength'))}; judge "
                             f"{_fmt(s.get('judge'))}, projection {_fmt(s.get('projection'))})\n{html.escape(s['response'])}</div></div>")
        for t, rows in page.tables:
            parts.append(f"<h3>{html.escape(t)}</h3>" + _html_table(rows))
    parts.append("</body></html>")
    return "\n".join(parts)


def render_markdown(pages: list[RunPage], title: str, image_dir: Path, link_base: Path) -> str:
    image_dir.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}\n"]
    if len(pages) > 1:
        parts.append("## Overview\n\n" + _md_table(overview_rows(pages)))
    for page in pages:
        name = page.summary.get("behaviour") or page.path.name
        parts.append(f"## {name}\n")
        head = _headline(page.summary)
        if head:
            parts.append(_md_table([{"": a, "value": b} for a, b in head]))
        parts += [f"{n}\n" for n in page.notes]
        for f in page.figures:
            img = image_dir / f"{page.path.name}-{f.name}.png"
            img.write_bytes(f.png)
            rel = img.relative_to(link_base) if img.is_relative_to(link_base) else img
            parts.append(f"### {f.title}\n\n![{f.title}]({rel.as_posix()})\n\n{f.caption}\n")
        if page.examples:
            parts.append("### Example generations (greedy)\n")
            for e in page.examples:
                u, s = e["unsteered"], e["steered"]
                parts.append(f"**{e['kind']}:** {e['prompt']}\n\n- unsteered (judge {_fmt(u.get('judge'))}): "
                             f"{u['response'].strip()!r}\n- steered (alpha {_fmt(s.get('strength'))}, judge "
                             f"{_fmt(s.get('judge'))}): {s['response'].strip()!r}\n")
        for t, rows in page.tables:
            parts.append(f"### {t}\n\n" + _md_table(rows))
    return "\n".join(parts)


def overview_rows(pages: list[RunPage]) -> list[dict]:
    """One row per run: the headline numbers side by side."""
    rows = []
    for p in pages:
        s = p.summary
        e = s.get("effect_at_best") or {}
        m = s.get("effect_at_minus") or {}
        ood = (s.get("ood") or {}).get("judge/all") or {}
        cost = s.get("cost_at_chosen") or {}
        rows.append({"behaviour": s.get("behaviour") or p.path.name, "format": s.get("kind"),
                     "unsteered": (s.get("unsteered") or {}).get("score"), "best layer": s.get("best_layer"),
                     "effect +r": e.get("effect"), "95% low": e.get("effect_low"), "95% high": e.get("effect_high"),
                     "effect -r": m.get("effect"), "flatten n": (s.get("flatten") or {}).get("n"),
                     "OOD judge effect": ood.get("effect"), "ppl ratio": cost.get("perplexity_ratio"),
                     "seconds": s.get("total_seconds")})
    return rows


def write_report(run_dir: str | Path, out: str | Path | None = None, *, fmt: str | None = None,
                 force: bool = False) -> Path:
    """Write the report of a run directory (or of a directory of run directories); returns its path.

    fmt: "html" (default; images inlined as base64) or "md" (images written to `<out stem>_files/`).
    """
    root = Path(run_dir)
    if not root.is_dir():
        raise SteerlabError(f"{root}: not a directory")
    if fmt is None:
        fmt = "md" if out is not None and str(out).endswith(".md") else "html"
    if fmt not in ("html", "md"):
        raise SteerlabError(f"unknown report format {fmt!r}: choose html or md")
    out = Path(out) if out is not None else root / f"report.{fmt}"
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; pass --force to overwrite it")
    if is_run_dir(root):
        dirs = [root]
    else:
        dirs = sorted(d for d in root.iterdir() if d.is_dir() and is_run_dir(d))
        if not dirs:
            raise SteerlabError(f"{root}: no CAE run found (neither the directory nor its subdirectories hold results)")
    pages = [build_page(d) for d in dirs]
    title = f"steerlab CAE report: {root.name}"
    if fmt == "html":
        text = render_html(pages, title)
    else:
        text = render_markdown(pages, title, out.parent / f"{out.stem}_files", out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out
