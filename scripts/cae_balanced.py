"""Does the CAA vector push an answer token instead of the behaviour? Plain vs answer-balanced CAA.

For each finished CAE run directory (runs/cae/<behaviour>/, from `steerlab cae run`) this reuses the
run's split, its saved training activations, its chosen layer and residual norms, builds the
answer-balanced CAA vector (`steerlab.cae.sweeps.answer_balanced_vector`: the matching-answer
groups' mean differences weighted equally) and scores both vectors on the run's test items at
r = ±0.5 and ±1 in one engine call. Writes `balanced.json` into the run directory.

    python scripts/cae_balanced.py runs/cae/openness [runs/cae/...]     # ~2-4 min each on 2 busy cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import steerlab as sl  # noqa: E402
from steerlab import results  # noqa: E402
from steerlab.cae.behaviour_data import load_behaviour  # noqa: E402
from steerlab.cae.runs import CAEConfig, load_activations  # noqa: E402
from steerlab.cae.sweeps import answer_balanced_vector, method_plan, run_plans  # noqa: E402


def run(lm, run_dir: Path, strengths=(-1.0, -0.5, 0.5, 1.0)) -> dict:
    man = results.read_json(run_dir / "manifest.json")
    cfg = CAEConfig.from_dict(man["config"])
    data = load_behaviour(cfg.behaviour, cfg.n_train, cfg.n_val + cfg.n_test, seed=cfg.seed, data_root=cfg.data_root)
    test = data.test[cfg.n_val:]
    layer = int(results.read_json(run_dir / "layer_sweep.json")["best_layer"])
    norms = {int(k): v["residual"] for k, v in results.read_json(run_dir / "norms.json").items()}
    acts = load_activations(run_dir / "train_activations.safetensors", [it.to_pair() for it in data.train])
    plain = acts.caa_vector(lm, layers=[layer])
    balanced = answer_balanced_vector(lm, acts, data.train, [layer])
    cos = float(torch.nn.functional.cosine_similarity(plain[layer], balanced[layer], dim=0))
    t0 = time.perf_counter()
    plan = method_plan({"caa": plain, "caa-balanced": balanced}, data.kind, layer, strengths, norms=norms,
                       positions=cfg.positions)
    sweep = run_plans(lm, test, [plan], n_boot=cfg.n_boot, seed=cfg.seed, batch_size=cfg.batch_size)[0]
    out = {"behaviour": data.name, "layer": layer, "cosine_plain_balanced": cos,
           "train_groups": balanced.meta.extra["groups"], "seconds": time.perf_counter() - t0,
           "rows": sweep.summary_rows()}
    results.write_json(run_dir / "balanced.json", out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = sl.load_model()
    for d in args.runs:
        try:
            res = run(lm, d)
        except Exception as e:  # a run that is missing or incomplete: say so, go on with the others
            print(f"{d}: skipped ({type(e).__name__}: {e})")
            continue
        rows = [r for r in res["rows"] if r.get("method")]
        print(f"{res['behaviour']} L{res['layer']} cos(plain, balanced) {res['cosine_plain_balanced']:.3f} "
              f"groups {res['train_groups']} ({res['seconds']:.0f} s)")
        for r in rows:
            by = " ".join(f"{k[len('effect_if_'):]} {v:+.3f}" for k, v in r.items() if k.startswith("effect_if_"))
            print(f"  {r['method']:13s} r={r['relative']:+.2f} effect {r['effect']:+.3f} "
                  f"[{r['effect_low']:+.3f}, {r['effect_high']:+.3f}]  by answer: {by}")


if __name__ == "__main__":
    main()
