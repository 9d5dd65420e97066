"""The headline numbers of a CAE run directory, read from whatever stage files exist (no model needed).

`summarize_run` is what ``summary.json`` holds and what the report's overview shows.
"""

from __future__ import annotations

from pathlib import Path

from .. import results

MANIFEST = "manifest.json"


def strength_row(out: Path, relative: float | None, alpha: float) -> dict | None:
    """The test-set strength-sweep row at the chosen strength (None if that stage has not run)."""
    path = out / "strength_sweep.json"
    if not path.is_file():
        return None
    for r in results.read_json(path)["rows"]:
        if r.get("method") is None:
            continue
        if (relative is not None and r.get("relative") is not None and abs(r["relative"] - relative) < 1e-9) or \
                (relative is None and abs(r["strength"] - alpha) < 1e-9):
            return r
    return None


def summarize_run(out_dir: str | Path) -> dict:
    """The headline numbers of a run directory, from whatever stage files exist."""
    out = Path(out_dir)
    man = results.read_json(out / MANIFEST) if (out / MANIFEST).is_file() else {}
    cfg = man.get("config", {})
    s: dict = {"behaviour": Path(cfg.get("behaviour", out.name)).stem, "model_id": man.get("model_id"),
               "stages": {k: {"status": v.get("status"), "seconds": v.get("seconds")} for k, v in man.get("stages", {}).items()},
               "total_seconds": round(sum(v.get("seconds", 0) for v in man.get("stages", {}).values()), 1)}
    split = out / "split.json"
    if split.is_file():
        sp = results.read_json(split)
        s["kind"] = sp.get("kind")
        s["n"] = {"train": len(sp["train"]), "val": len(sp.get("val", [])), "test": len(sp["test"])}
    r = cfg.get("sweep_strength")
    if (out / "layer_sweep.json").is_file():
        ls = results.read_json(out / "layer_sweep.json")
        s["best_layer"] = ls.get("best_layer")
        s["unsteered_val"] = ls["unsteered"]["score"]
        rows = [x for x in ls["rows"] if x.get("method") is not None]
        s["layer_effects"] = {f"{x['layer']}@{x['relative'] if x['relative'] is not None else x['strength']:+g}":
                              round(x["effect"], 4) for x in rows}
    if (out / "strength_sweep.json").is_file():
        ss = results.read_json(out / "strength_sweep.json")
        s["unsteered"] = {k: ss["unsteered"][k] for k in ("score", "score_low", "score_high")}
        rows = [x for x in ss["rows"] if x.get("method") is not None]
        s["strength_effects"] = [{k: x.get(k) for k in ("relative", "strength", "score", "effect", "effect_low",
                                                        "effect_high")} for x in rows]
        pos = strength_row(out, r if cfg.get("relative", True) else None, r if r is not None else 0.0)
        neg = strength_row(out, -r if (r is not None and cfg.get("relative", True)) else None, -(r or 0.0))
        if pos is not None:
            s["effect_at_best"] = {k: pos[k] for k in ("layer", "relative", "strength", "score", "effect", "effect_low",
                                                       "effect_high")}
            s["effect_at_best"]["by_answer"] = {k[len("effect_if_"):]: v for k, v in pos.items() if k.startswith("effect_if_")}
        if neg is not None:
            s["effect_at_minus"] = {k: neg[k] for k in ("relative", "strength", "effect", "effect_low", "effect_high")}
    if (out / "sample_count_sweep.json").is_file():
        sc = results.read_json(out / "sample_count_sweep.json")
        s["flatten"] = sc.get("flatten")
        s["sample_counts"] = {str(x["n_train"]): {k: x[k] for k in ("effect", "effect_low", "effect_high")}
                              for x in sc["rows"] if x.get("method") is not None}
    if (out / "method_comparison.json").is_file():
        mc = results.read_json(out / "method_comparison.json")
        s["methods"] = {f"{x['method']}@{x['relative']:+g}": {k: x[k] for k in ("effect", "effect_low", "effect_high")}
                        for x in mc["rows"] if x.get("method") is not None}
    if (out / "ood.json").is_file():
        od = results.read_json(out / "ood.json")
        s["ood"] = {f"{m['measure']}/{m['kind']}": {k: m[k] for k in ("n", "unsteered", "steered", "effect", "effect_low",
                                                                    "effect_high")} for m in od["measures"]}
    if (out / "judge_check.json").is_file():
        jc = results.read_json(out / "judge_check.json")
        s["judge_check"] = {k: jc.get(k) for k in ("judge", "auc", "mean_matching", "mean_not_matching", "n_matching",
                                                   "n_not_matching")}
    if (out / "side_effects.json").is_file():
        se = results.read_json(out / "side_effects.json")
        s["side_effects"] = [{k: x[k] for k in ("relative", "strength", "perplexity", "perplexity_ratio", "kl")}
                             for x in se["rows"]]
        for x in se["rows"]:
            if r is not None and x.get("relative") is not None and abs(x["relative"] - r) < 1e-9:
                s["cost_at_chosen"] = {k: x[k] for k in ("relative", "strength", "perplexity", "perplexity_ratio", "kl")}
        s["unsteered_perplexity"] = se["rows"][0]["perplexity"]
    return s
