"""EPO attacks on steered behaviours (the CAE paper's adversarial-input experiment), end to end.

`attack_behaviour` trains (or loads) a CAA vector for an MWE behaviour, checks which sign of the
strength raises p(matching answer) on training items (on small models some vectors act against
their trained sign), runs EPO against the steered model to raise log p(not-matching answer) on a
small batch of training items, and evaluates the frontier on held-apart items:

* behaviour score p(match) / (p(A) + p(B)) (mean over items) on natural prompts, unsteered and
  steered (scoring engine);
* the same, steered, with each evaluated frontier sequence inserted (as token ids, exactly as
  optimised; and, for the strongest points, inserted as text and re-tokenized, via the engine);
* cross-entropy references: natural text of the same length in the same slot (the EPO metric) and
  the model's per-token cross-entropy of the natural question text in its prompt (the user's text
  and the separator after it, from the held-apart heads' pass).

`attack_string` raises the log-probability of any target string after a given prompt.
`steerlab attack` runs either from the command line (it builds an `AttackOptions` and calls
`steerlab.epo.runs.run_attack`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from ..data.mwe import load_mwe, split_items
from ..data.records import BehaviourItem
from ..data.tasks import resolve_behaviour
from ..encoding import format_prompt
from ..engine import ScoringItem, Setting, caa_vectors, score
from ..errors import OutputExistsError, SteerlabError
from ..position_policies import check_policy
from ..steering import Steering
from ..vector import SteeringVector
from .config import EPOConfig
from .objective import EPOObjective
from .result import RESULT_FILE, EPOResult
from .search import ProgressFn, check_epo_inputs, run_epo
from .targets import behaviour_targets, insert_text, string_target

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ..models import LoadedModel


@dataclass(frozen=True)
class SignCheck:
    """Behaviour score p(match) on training items: unsteered, at +strength and at -strength."""

    unsteered: float
    plus: float
    minus: float
    strength: float
    n_items: int

    @property
    def chosen(self) -> float:
        """The signed strength that raises p(match) more (ties: the trained sign)."""
        return self.strength if self.plus >= self.minus else -self.strength

    @property
    def as_trained(self) -> bool:
        return self.plus >= self.minus


def behaviour_scores(lm: LoadedModel, items: Sequence[BehaviourItem], settings: Sequence[Setting], *,
                     user_texts: Sequence[str] | None = None) -> torch.Tensor:
    """[settings, items] p(match) / (p(A) + p(B)) via the scoring engine (prompt: question + "(")."""
    texts = list(user_texts) if user_texts is not None else [it.question for it in items]
    sitems = [ScoringItem(format_prompt(lm, q, "(" if it.kind == "ab" else ""), (it.matching, it.not_matching), target=0)
              for q, it in zip(texts, items)]
    return score(lm, sitems, list(settings)).target_probs()


def check_sign(lm: LoadedModel, vector: SteeringVector, layer: int, strength: float, positions: str,
               items: Sequence[BehaviourItem]) -> SignCheck:
    """Measure p(match) at ±|strength| on `items` (engine) to pick the sign that steers toward the behaviour."""
    s = abs(float(strength))
    settings = [Setting.unsteered(), Setting.single(vector, layer, s, positions), Setting.single(vector, layer, -s, positions)]
    p = behaviour_scores(lm, items, settings).mean(1).tolist()
    return SignCheck(p[0], p[1], p[2], s, len(items))


def _check_args(lm: LoadedModel, layer: int, strength: float, positions: str, n_train: int, n_attack: int, n_test: int,
                eval_points: int, text_eval_points: int) -> None:
    lm.blocks.check_layer(layer)
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not math.isfinite(strength) or strength == 0:
        raise SteerlabError(f"the steering strength must be a finite non-zero number, got {strength!r}")
    check_policy(positions)
    if n_attack < 1:
        raise SteerlabError(f"the attack needs at least one target item (n_attack={n_attack}): the target is empty")
    if n_train < n_attack:
        raise SteerlabError(f"the attack items are drawn from the training items: n_train ({n_train}) < n_attack ({n_attack})")
    if n_test < 1:
        raise SteerlabError(f"n_test must be positive, got {n_test}")
    if eval_points < 1 or text_eval_points < 0:
        raise SteerlabError("eval_points must be >= 1 and text_eval_points >= 0")


def paired_difference(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Mean of a - b over paired items with a 95% normal interval: {"mean", "low", "high", "n"}."""
    d = (torch.as_tensor(a, dtype=torch.float64) - torch.as_tensor(b, dtype=torch.float64)).reshape(-1)
    n = d.numel()
    m = float(d.mean())
    half = 1.96 * float(d.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return {"mean": m, "low": m - half, "high": m + half, "n": n}


def balanced_items(items: Sequence[BehaviourItem], n: int) -> list[BehaviourItem]:
    """The first `n` items taking not-matching answers in turn (A, B, A, ... where available), so that
    a plain bias toward one letter cannot raise the target on every item."""
    by: dict[str, list[BehaviourItem]] = {}
    for it in items:
        by.setdefault(it.not_matching, []).append(it)
    keys = sorted(by)
    out: list[BehaviourItem] = []
    pos = dict.fromkeys(keys, 0)
    k = 0
    while len(out) < n and any(pos[key] < len(by[key]) for key in keys):
        key = keys[k % len(keys)]
        k += 1
        if pos[key] < len(by[key]):
            out.append(by[key][pos[key]])
            pos[key] += 1
    return out


def _spread(points: list, k: int) -> list[int]:
    """Indices of up to k points spread evenly along the frontier (both ends included)."""
    n = len(points)
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)}) if k > 1 else [n - 1]


def natural_snippets(targets, seq_len: int, count: int) -> torch.Tensor:
    """`count` natural token windows of `seq_len` ids: the first tokens of the user text of items."""
    out = []
    for it in targets:
        user = list(it.head_ids[it.user_start:])
        if len(user) >= seq_len:
            out.append(user[:seq_len])
        if len(out) == count:
            break
    return torch.tensor(out, dtype=torch.long).reshape(-1, seq_len)


def check_run_dir(run_dir: str | Path | None, force: bool) -> None:
    """Refuse a run directory that already holds an `epo.json` unless `force` (before any computation)."""
    if run_dir is not None and (Path(run_dir) / RESULT_FILE).exists() and not force:
        raise OutputExistsError(f"{Path(run_dir) / RESULT_FILE} exists; pass force=True (--force) to overwrite it")


def attack_behaviour(
    lm: LoadedModel,
    behaviour: str,
    *,
    layer: int,
    strength: float,
    positions: str = "after_user",
    vector: SteeringVector | str | Path | None = None,
    auto_sign: bool = True,
    n_train: int = 150,
    n_attack: int = 4,
    n_test: int = 40,
    n_sign: int = 32,
    split_seed: int = 0,
    config: EPOConfig | None = None,
    normalise: bool = False,
    placement: str = "suffix",
    separator: str = "\n",
    eval_points: int = 6,
    text_eval_points: int = 1,
    run_dir: str | Path | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    log=print,
) -> EPOResult:
    """Reverse a steered MWE behaviour with EPO, and measure the attack on held-apart items.

    Args:
        behaviour: a CAE behaviour name (e.g. "power-seeking-inclination") or an MWE file path.
        layer, strength, positions: the steering (`h_L += strength * v_L` at `positions`).
        vector: a SteeringVector or a .safetensors path; default: CAA trained on the `n_train`
            training items at `layer` (read at the answer letter).
        auto_sign: measure p(match) at ±|strength| on `n_sign` training items and use the sign that
            raises it (recorded in `meta["sign_check"]`); False uses `strength` as given.
        n_train, n_test, split_seed: disjoint train/test split of the behaviour's items.
        n_attack: training items whose mean log p(not-matching answer) is the EPO target, chosen with
            the not-matching letter alternating (`balanced_items`).
        config: EPO settings; normalise: target log of p(not match)/(p(A)+p(B)) instead of log p(not match).
        placement, separator: where the sequence goes in the user text ("suffix": question + sep + seq).
        eval_points: frontier points evaluated on the held-apart items (spread along the frontier).
        text_eval_points: of those, how many (the strongest first) are also evaluated as text.
        run_dir: where `epo.json`, the PNG and the vector are written (None: not saved).
    """
    config = config or EPOConfig()
    t_start = time.perf_counter()
    _check_args(lm, layer, strength, positions, n_train, n_attack, n_test, eval_points, text_eval_points)
    check_run_dir(run_dir, force)
    path = resolve_behaviour(behaviour)
    items = load_mwe(path)
    train, test = split_items(items, n_train, n_test, seed=split_seed)
    attack_items = balanced_items(train, n_attack)
    targets = behaviour_targets(lm, attack_items, placement=placement, separator=separator)
    test_targets = behaviour_targets(lm, test, placement=placement, separator=separator)
    check_epo_inputs(lm, targets, config, normalise)
    check_epo_inputs(lm, test_targets, config, True)
    if isinstance(vector, (str, Path)):
        vector = SteeringVector.load(vector)
    if vector is not None and layer not in vector.directions:
        raise SteerlabError(f"the vector has no direction for layer {layer} (it has {list(vector.layers)})")
    # -- steering -------------------------------------------------------------------------------
    t0 = time.perf_counter()
    if vector is None:
        log(f"training a CAA vector on {n_train} items at layer {layer} ...")
        vector = caa_vectors(lm, [it.to_pair() for it in train], layers=[layer])
    vector_seconds = time.perf_counter() - t0
    if run_dir is not None:
        vector.save(Path(run_dir) / "vector.safetensors", force=True)
    sign = None
    signed = float(strength)
    if auto_sign:
        log(f"checking the sign of strength {abs(strength):g} on {n_sign} training items ...")
        sign = check_sign(lm, vector, layer, strength, positions, train[:n_sign])
        signed = sign.chosen
        log(f"p(match): unsteered {sign.unsteered:.3f}, +{sign.strength:g} {sign.plus:.3f}, "
            f"-{sign.strength:g} {sign.minus:.3f} -> strength {signed:+g}")
    steering = [Steering(vector, signed, layers=[layer], positions=positions)]
    setting = Setting.single(vector, layer, signed, positions)
    # -- reference: the target without any sequence ------------------------------------------------
    if normalise:
        natural_target = torch.log1p(-behaviour_scores(lm, attack_items, [setting])[0]).mean()
    else:
        natural_target = _raw_not_match(lm, attack_items, setting).mean()
    # -- search -------------------------------------------------------------------------------------
    name = path.stem
    meta = {
        "model_id": lm.model_id, "behaviour": name, "data_file": str(path), "layer": layer, "strength": signed,
        "strength_given": float(strength), "positions": positions, "n_train": n_train, "n_attack": n_attack,
        "n_test": n_test, "split_seed": split_seed, "placement": placement, "separator": separator,
        "normalise": normalise, "attack_items": [it.index for it in attack_items],
        "target_label": ("log p(not match)/(p(A)+p(B))" if normalise else "log p(not-matching letter)") + ", steered",
        "title": f"{name}: L{layer} x {signed:+g} ({positions}), {lm.model_id}",
        "vector_seconds": vector_seconds, "torch_threads": torch.get_num_threads(),
    }
    if sign is not None:
        meta["sign_check"] = {"unsteered": sign.unsteered, "plus": sign.plus, "minus": sign.minus,
                              "strength": sign.strength, "n_items": sign.n_items, "as_trained": sign.as_trained}
    log(f"EPO: {config.iterations} iterations, P={config.population}, {config.children} children, "
        f"{n_attack} target items ...")
    if run_dir is not None:
        check_run_dir(run_dir, force)
    meta["loadavg_before_search"] = _loadavg()
    result = run_epo(lm, targets, steering, config, normalise=normalise, progress=progress, meta=meta)
    result.meta["loadavg_after_search"] = _loadavg()
    log(f"search: {result.seconds:.0f} s ({result.seconds_per_iteration:.1f} s/iteration), "
        f"{result.n_evaluated} sequences evaluated")
    result.reference["natural_target"] = float(natural_target)
    if run_dir is not None:  # the search is the expensive part: keep it even if the evaluation fails
        result.save(run_dir, force=True)
    evaluate_attack(lm, result, vector, eval_points=eval_points, text_eval_points=text_eval_points, log=log)
    result.meta["total_seconds"] = time.perf_counter() - t_start
    if run_dir is not None:
        result.save(run_dir, force=True)
    return result


def _split_from_meta(lm: LoadedModel, meta: dict):
    """(train, test, attack items) of a behaviour run, rebuilt from its metadata."""
    items = load_mwe(meta["data_file"])
    train, test = split_items(items, int(meta["n_train"]), int(meta["n_test"]), seed=int(meta["split_seed"]))
    by_index = {it.index: it for it in train}
    attack = [by_index[i] for i in meta["attack_items"]]
    return train, test, attack


def evaluate_attack(lm: LoadedModel,
                    result: EPOResult, vector: SteeringVector, *, eval_points: int = 6, text_eval_points: int = 1,
                    log=print) -> EPOResult:
    """Fill `result.reference` (natural text in the same slot) and `result.evaluation` (held-apart and
    attack-item behaviour scores) of a behaviour run, from its metadata and its vector."""
    t0 = time.perf_counter()
    meta = result.meta
    cfg = result.config
    placement, separator = meta["placement"], meta["separator"]
    layer, signed, positions = int(meta["layer"]), float(meta["strength"]), meta["positions"]
    steering = [Steering(vector, signed, layers=[layer], positions=positions)]
    setting = Setting.single(vector, layer, signed, positions)
    _, test, attack = _split_from_meta(lm, meta)
    targets = behaviour_targets(lm, attack, placement=placement, separator=separator)
    test_targets = behaviour_targets(lm, test, placement=placement, separator=separator)
    # -- natural text in the same slot, with EPO's own metrics -------------------------------------
    attack_objective = EPOObjective(lm, targets, steering, seq_len=cfg.seq_len, normalise=bool(meta["normalise"]),
                                    chunk_rows=cfg.chunk_rows)
    snippets = natural_snippets(test_targets, cfg.seq_len, 8)
    if snippets.shape[0]:
        t, x = attack_objective.evaluate(snippets)
        result.reference.update(natural_xent=float(x.mean()), natural_snippet_target=float(t.mean()),
                                natural_snippets=[lm.tokenizer.decode(s) for s in snippets.tolist()],
                                natural_snippet_xents=x.tolist())
    # -- held-apart items ---------------------------------------------------------------------------
    log(f"evaluating {min(eval_points, len(result.frontier))} frontier points on {len(test)} held-apart items ...")
    result.evaluation = evaluate_heldout(lm, result, test, test_targets, steering, setting, eval_points=eval_points,
                                         text_eval_points=text_eval_points, placement=placement, separator=separator)
    # -- the attack items themselves (behaviour score, as on held-apart items) -----------------------
    natural = behaviour_scores(lm, attack, [Setting.unsteered(), setting])
    scored = EPOObjective(lm, targets, steering, seq_len=cfg.seq_len, normalise=True, chunk_rows=cfg.chunk_rows)
    chosen = result.evaluation["evaluated_points"]
    sc = scored.scores(torch.tensor([result.frontier[i].ids for i in chosen], dtype=torch.long))
    for row, i in enumerate(chosen):
        result.frontier[i].heldout["score_steered_attack_items"] = float((1.0 - sc.target[row].exp()).mean())
    result.evaluation["attack_items"] = {"n_items": len(attack), "natural_unsteered": float(natural[0].mean()),
                                         "natural_steered": float(natural[1].mean())}
    result.evaluation["seconds"] = time.perf_counter() - t0
    return result


def reevaluate(lm: LoadedModel,
               run_dir: str | Path, *, eval_points: int = 6, text_eval_points: int = 1, log=print) -> EPOResult:
    """Re-run the evaluation of a saved behaviour run (its `epo.json` and `vector.safetensors`) and save it."""
    result = EPOResult.load(run_dir)
    if "data_file" not in result.meta:
        raise SteerlabError(f"{run_dir}: not a behaviour run (no data_file in its metadata)")
    vector = SteeringVector.load(Path(run_dir) / "vector.safetensors")
    for p in result.frontier:
        p.heldout.clear()
    evaluate_attack(lm, result, vector, eval_points=eval_points, text_eval_points=text_eval_points, log=log)
    result.save(run_dir, force=True)
    return result


def _loadavg() -> list[float] | None:
    """The machine's 1/5/15-minute load averages (timings on a shared machine depend on them)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):  # pragma: no cover
        return None


def _raw_not_match(lm: LoadedModel, items: Sequence[BehaviourItem], setting: Setting) -> torch.Tensor:
    """[items] log p(not-matching answer) (unnormalised) under `setting`."""
    sitems = [ScoringItem(format_prompt(lm, it.question, "(" if it.kind == "ab" else ""), (it.not_matching,)) for it in items]
    return score(lm, sitems, [setting]).logprobs[0, :, 0]


def evaluate_heldout(lm: LoadedModel,
                     result: EPOResult, test: Sequence[BehaviourItem], test_targets, steering: Sequence[Steering],
                     setting: Setting, *, eval_points: int = 6, text_eval_points: int = 1, placement: str = "suffix",
                     separator: str = "\n") -> dict:
    """Behaviour scores on held-apart items: natural prompts (unsteered, steered) and, steered, with
    frontier sequences inserted; fills `FrontierPoint.heldout` and returns the summary dict."""
    natural = behaviour_scores(lm, test, [Setting.unsteered(), setting])
    ev: dict = {
        "n_items": len(test),
        "item_indices": [it.index for it in test],
        "natural_unsteered": float(natural[0].mean()),
        "natural_steered": float(natural[1].mean()),
        "natural_unsteered_items": natural[0].tolist(),
        "natural_steered_items": natural[1].tolist(),
        "steering_effect": paired_difference(natural[1], natural[0]),
    }
    chosen = _spread(result.frontier, eval_points)
    objective = EPOObjective(lm, test_targets, steering, seq_len=result.config.seq_len, normalise=True,
                             chunk_rows=result.config.chunk_rows, record_heads=True)
    qx = objective.head_xent()
    finite = [v for v in qx if math.isfinite(v)]
    ev["question_xent_mean"] = sum(finite) / max(1, len(finite))
    ev["question_xent_per_item"] = qx
    ids = torch.tensor([result.frontier[i].ids for i in chosen], dtype=torch.long)
    sc = objective.scores(ids)
    p_match = 1.0 - sc.target.exp()  # normalised target = log p(not match)/(p(A)+p(B))
    for row, i in enumerate(chosen):
        pt = result.frontier[i]
        pt.heldout.update(score_steered=float(p_match[row].mean()), xent_heldout=float(sc.xent[row].mean()),
                          score_steered_items=p_match[row].tolist(),
                          change_vs_steered=paired_difference(p_match[row], natural[1]),
                          change_vs_unsteered=paired_difference(p_match[row], natural[0]))
    by_strength = sorted(chosen, key=lambda i: -result.frontier[i].target)[:text_eval_points]
    if by_strength:
        texts = [[insert_text(it.question, result.frontier[i].text, placement, separator) for it in test] for i in by_strength]
        flat_items = [it for _ in by_strength for it in test]
        scores = behaviour_scores(lm, flat_items, [Setting.unsteered(), setting],
                                  user_texts=[t for group in texts for t in group])
        for g, i in enumerate(by_strength):
            part = scores[:, g * len(test):(g + 1) * len(test)]
            result.frontier[i].heldout.update(score_unsteered_text=float(part[0].mean()),
                                              score_steered_text=float(part[1].mean()))
    ev["evaluated_points"] = chosen
    return ev


def attack_string(lm: LoadedModel,
                  prompt: str, target: str, *, steering: Sequence[Steering] = (), config: EPOConfig | None = None,
                  placement: str = "suffix", separator: str = "\n", assistant_prefix: str = "",
                  run_dir: str | Path | None = None, force: bool = False, progress: ProgressFn | None = None) -> EPOResult:
    """EPO that raises log p(`target` | prompt with the sequence inserted), optionally under steering."""
    config = config or EPOConfig()
    check_run_dir(run_dir, force)
    item = string_target(lm, prompt, target, assistant_prefix=assistant_prefix, placement=placement, separator=separator)
    meta = {"model_id": lm.model_id, "prompt": prompt, "target": target, "placement": placement, "separator": separator,
            "target_label": f"log p({target!r})", "title": f"EPO: {target!r} after {prompt[:40]!r}"}
    result = run_epo(lm, [item], list(steering), config, progress=progress, meta=meta)
    if run_dir is not None:
        result.save(run_dir, force=force)
    return result
