"""steerlab / naive-baseline worker (system Python): one measured thing per process.

    python _worker.py extract  {engine|train_caa|naive} --texts T.json --n-pairs N --save V.npy [--batch-size B]
    python _worker.py sweep    {prep|engine|naive} --spec S.json --save R.npy
    python _worker.py generate {plain|steered|ab|per_row|one_by_one} --spec S.json --save G.json

Prints one JSON line (the result) as the last line of stdout; the parent adds peak RSS.
Timed regions exclude process start, model load and one warm-up forward.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from _common import MWE_FILE, emit, load_items, model_checkpoint, rss_now_mb


def _warmup(lm_model, input_ids: torch.Tensor) -> None:
    with torch.no_grad():
        lm_model(input_ids=input_ids)


# ---------------------------------------------------------------------------------------------
# (a) extraction


def extract(args) -> dict:
    texts = json.loads(Path(args.texts).read_text())
    pos, neg = texts["positive"], texts["negative"]
    n = len(pos)
    if args.impl == "naive":
        return _extract_naive(args, pos, neg)

    import steerlab
    from steerlab.methods.common import pair_prompts

    lm = steerlab.load_model()
    rss_loaded = rss_now_mb()
    pairs = [it.to_pair() for it in load_items(n, path=Path(texts.get("file", MWE_FILE)))]
    # The peers were given exactly the strings steerlab builds from these pairs.
    p_prompts, n_prompts = pair_prompts(lm, pairs)
    assert [p.text for p in p_prompts] == pos and [p.text for p in n_prompts] == neg, "texts differ from steerlab's"
    layers = list(range(lm.n_layers))
    _warmup(lm.model, lm.tokenizer(pos[0], add_special_tokens=False, return_tensors="pt").input_ids)
    if args.impl == "engine":
        from steerlab.engine import caa_vectors

        kwargs = {"batch_size": args.batch_size} if args.batch_size else {}
        t0, c0 = time.perf_counter(), time.process_time()
        vec = caa_vectors(lm, pairs, layers, **kwargs)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        label = "steerlab.engine.caa_vectors"
    else:
        t0, c0 = time.perf_counter(), time.process_time()
        vec = steerlab.train_caa(lm, pairs, layers, batch_size=args.batch_size or 16)
        dt, cpu = time.perf_counter() - t0, time.process_time() - c0
        label = "steerlab.train_caa"
    dirs = vec.directions if hasattr(vec, "directions") else vec
    arr = np.stack([dirs[l].float().cpu().numpy() for l in layers])
    np.save(args.save, arr.astype(np.float32))
    return {"impl": label, "time_s": dt, "cpu_s": cpu, "rss_after_load_mb": rss_loaded, "n_pairs": n,
            "batch_size": args.batch_size, "torch_threads": torch.get_num_threads(), "vectors": args.save}


def _extract_naive(args, pos: list[str], neg: list[str]) -> dict:
    """One forward per text with output_hidden_states; activation = hidden_states[L + 1][0, -1]; mean difference.

    transformers puts the *final-norm* output in hidden_states[-1], not the last block's output, so
    for the last layer we read the block output with a forward hook instead (steerlab's convention:
    layer L is the output of decoder block L, for every L).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ckpt = str(model_checkpoint())
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(ckpt)
    rss_loaded = rss_now_mb()
    n_layers = model.config.num_hidden_layers
    encode = lambda t: tok(t, add_special_tokens=False, return_tensors="pt").input_ids  # noqa: E731
    _warmup(model, encode(pos[0]))
    last_block: dict = {}

    def grab_last(module, inputs, output):
        last_block["h"] = (output[0] if isinstance(output, tuple) else output).detach()

    handle = model.model.layers[n_layers - 1].register_forward_hook(grab_last)

    def acts(text: str) -> np.ndarray:
        hs = model(input_ids=encode(text), output_hidden_states=True).hidden_states
        rows = [hs[layer + 1][0, -1] for layer in range(n_layers - 1)] + [last_block["h"][0, -1]]
        return torch.stack(rows).double().numpy()

    total = np.zeros((n_layers, model.config.hidden_size), dtype=np.float64)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        for p, q in zip(pos, neg):
            total += acts(p) - acts(q)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    handle.remove()
    np.save(args.save, (total / len(pos)).astype(np.float32))
    return {"impl": "naive loop", "time_s": dt, "cpu_s": cpu, "rss_after_load_mb": rss_loaded, "n_pairs": len(pos),
            "batch_size": 1, "torch_threads": torch.get_num_threads(), "vectors": args.save}


# ---------------------------------------------------------------------------------------------
# (b) sweep


def _sweep_setup(spec: dict):
    import steerlab
    from steerlab.engine import ScoringItem, grid_settings

    lm = steerlab.load_model()
    rss_loaded = rss_now_mb()
    vec = steerlab.SteeringVector.load(spec["vector"])
    questions = load_items(spec["n_items"], offset=spec.get("item_offset", 0))
    items = [ScoringItem(steerlab.format_prompt(lm, q.question, "("), ("A", "B"), target=0 if q.matching == "A" else 1)
             for q in questions]
    settings = grid_settings(vec, spec["layers"], spec["strengths"], spec["positions"], include_unsteered=True)
    return lm, rss_loaded, items, settings


def sweep(args) -> dict:
    spec = json.loads(Path(args.spec).read_text())
    if args.impl == "prep":
        return _sweep_prep(args, spec)
    lm, rss_loaded, items, settings = _sweep_setup(spec)
    _warmup(lm.model, lm.tokenizer("Hello there", return_tensors="pt").input_ids)
    if args.impl == "engine":
        from steerlab.engine import score

        t0 = time.perf_counter()
        table = score(lm, items, settings, batch_size=spec["batch_size"])
        dt = time.perf_counter() - t0
        np.save(args.save, table.logprobs.double().numpy())
        return {"impl": "steerlab.engine.score", "time_s": dt, "n_settings": len(settings), "n_items": len(items),
                "rss_after_load_mb": rss_loaded, "engine_info": {k: str(v) for k, v in table.info.items()},
                "torch_threads": torch.get_num_threads(), "result": args.save}
    return _sweep_naive(args, spec, lm, rss_loaded, items, settings)


def _sweep_prep(args, spec: dict) -> dict:
    """The vector the sweep steers with: CAA (engine.caa_vectors) on pairs disjoint from the scored questions."""
    import steerlab
    from steerlab.engine import caa_vectors

    lm = steerlab.load_model()
    train = load_items(spec["n_train"], offset=spec["train_offset"])
    t0 = time.perf_counter()
    vec = caa_vectors(lm, [q.to_pair() for q in train], list(range(lm.n_layers)), batch_size=spec["batch_size"])
    dt = time.perf_counter() - t0
    vec.save(args.save, force=True)
    return {"impl": "prep", "time_s": dt, "n_layers": lm.n_layers, "norms": vec.norms(), "vector": args.save}


def _sweep_naive(args, spec, lm, rss_loaded, items, settings) -> dict:
    """Per setting: a full forward of every prompt with `steerlab.steer` hooks; p(A), p(B) from the last logits.

    Independent of the engine's scoring code: prompts are encoded with `steerlab.encode` (left padding,
    position ids counted from each row's first real token, as steerlab's capture does), the model runs
    the whole prompt (ending in the assistant's "(") under the setting's hooks, and the candidates'
    log-probabilities are read from the last position's log-softmax. Only the last position's logits
    are computed (`logits_to_keep=1`), so the baseline does not pay for unused logits. Candidate
    tokens are not fed: their own log-probability does not depend on them (causal attention).
    """
    import steerlab
    from steerlab.activations import position_ids_for
    from steerlab.engine import tokenize_items

    subset = spec["naive_subset"]
    tokenized = tokenize_items(lm, items)  # only to know each candidate's token id
    for t in tokenized:
        assert all(len(c) == 1 for c in t.candidate_ids), "the naive loop handles one-token candidates (A/B)"
    cand = torch.tensor([[c[0] for c in t.candidate_ids] for t in tokenized])  # [items, 2]
    prompts = [it.prompt for it in items]
    bs = spec["batch_size"]
    out = np.full((len(subset), len(items), 2), np.nan)
    per_setting = []
    t_all = time.perf_counter()
    for k, s in enumerate(subset):
        setting = settings[s]
        t0 = time.perf_counter()
        for b0 in range(0, len(items), bs):
            batch = steerlab.encode(lm, prompts[b0:b0 + bs])
            ids, mask = batch.input_ids, batch.attention_mask
            with torch.no_grad(), steerlab.steer(lm, list(setting.steering), batch=batch):
                logits = lm.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask),
                                  use_cache=False, logits_to_keep=1).logits[:, -1]
            lp = torch.log_softmax(logits.double(), -1)
            out[k, b0:b0 + bs] = lp.gather(1, cand[b0:b0 + bs]).numpy()
        per_setting.append(time.perf_counter() - t0)
    dt = time.perf_counter() - t_all
    np.save(args.save, out)
    return {"impl": "naive loop (steerlab.steer hooks)", "time_s": dt, "n_settings_run": len(subset),
            "n_settings": len(settings), "subset": subset, "per_setting_s": per_setting, "n_items": len(items),
            "rss_after_load_mb": rss_loaded, "torch_threads": torch.get_num_threads(), "result": args.save}


# ---------------------------------------------------------------------------------------------
# (c) generation


def _generate_fixed(lm, prompts, steering, new_tokens: int, batch_size: int):
    """`steerlab.generate`'s path (encode, `steer` with per-row terms, `model.generate`), greedy, with
    exactly `new_tokens` new tokens per row (min_new_tokens = max_new_tokens, so EOS cannot end a
    row early and every mode does the same work). Returns the new token ids per prompt."""
    from steerlab.encoding import encode
    from steerlab.steering import steer

    terms = [] if steering is None else ([steering] if not isinstance(steering, list) else steering)
    tok = lm.tokenizer
    out = []
    for s in range(0, len(prompts), batch_size):
        chunk = list(prompts[s:s + batch_size])
        batch = encode(lm, chunk, extra_tokens=new_tokens)
        rows = [t.rows(s, s + len(chunk)) for t in terms]
        with torch.no_grad(), steer(lm, rows, batch=batch):
            ids = lm.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                    max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                                    pad_token_id=tok.pad_token_id)
        new = ids[:, batch.input_ids.shape[1]:]
        assert new.shape[1] == new_tokens, new.shape
        out.extend(new.tolist())
    return out


def generate_task(args) -> dict:
    import steerlab
    from steerlab.steering import Steering

    spec = json.loads(Path(args.spec).read_text())
    lm = steerlab.load_model()
    rss_loaded = rss_now_mb()
    vec = steerlab.SteeringVector.load(spec["vector"])
    layer, strength, positions = spec["layer"], spec["strength"], spec["positions"]
    questions = load_items(spec["n_prompts"], offset=spec.get("prompt_offset", 0))
    prompts = [steerlab.format_prompt(lm, q.question.split("\n\nChoices:")[0]) for q in questions]
    T, reps = spec["new_tokens"], spec["repeats"]
    _generate_fixed(lm, prompts[:2], None, 2, 2)  # warm-up (not timed)
    res: dict = {"impl": args.impl, "rss_after_load_mb": rss_loaded, "torch_threads": torch.get_num_threads(),
                 "new_tokens": T, "repeats": reps}

    cpu_log: list[float] = []  # CPU time of each timed call, in call order (robust to other jobs' load)

    def timed(fn):
        t0, c0 = time.perf_counter(), time.process_time()
        r = fn()
        cpu_log.append(time.process_time() - c0)
        return time.perf_counter() - t0, r

    if args.impl in ("plain", "steered", "ab"):
        bs = spec["batch_size"]
        group = prompts[:bs]
        one = Steering(vec, strength, layers=[layer], positions=positions)
        modes = {"plain": ["plain"], "steered": ["steered"], "ab": ["plain", "steered"]}[args.impl]
        times = {m: [] for m in modes}
        outputs = {}
        for _ in range(reps):  # interleaved: plain, steered, plain, steered, ... (drift hits both alike)
            for m in modes:
                dt, ids = timed(lambda: _generate_fixed(lm, group, one if m == "steered" else None, T, bs))
                times[m].append(dt)
                outputs[m] = ids
        res.update(batch_size=bs, n_prompts=len(group), times=times,
                   tokens_per_s={m: len(group) * T / float(np.median(v)) for m, v in times.items()})
        res["cpu_times"] = {m: cpu_log[k::len(modes)] for k, m in enumerate(modes)}
        if len(modes) == 2:  # steered / unsteered time of each round (neighbours in time: drift mostly cancels)
            res["paired_ratios"] = [s / p for p, s in zip(times["plain"], times["steered"])]
            res["paired_cpu_ratios"] = [s / p for p, s in zip(res["cpu_times"]["plain"], res["cpu_times"]["steered"])]
        if "plain" in outputs and "steered" in outputs:
            res["steered_changed_rows"] = sum(a != b for a, b in zip(outputs["plain"], outputs["steered"]))
    else:  # per_row / one_by_one
        n = spec["n_per_row"]
        group = prompts[:n]
        gen = torch.Generator().manual_seed(0)
        base = vec[layer]
        vectors = []
        for i in range(n):  # n distinct single-layer vectors with the CAA vector's norm
            d = torch.randn(base.shape, generator=gen)
            vectors.append(steerlab.SteeringVector({layer: d / d.norm() * base.norm()}, vec.meta))
        strengths = [float(strength)] * n
        times = []
        ids = None
        for _ in range(reps):
            if args.impl == "per_row":
                term = Steering(vectors, strengths, layers=[layer], positions=positions)
                dt, ids = timed(lambda: _generate_fixed(lm, group, term, T, n))
            else:
                def one_by_one():
                    acc = []
                    for i in range(n):
                        acc += _generate_fixed(lm, [group[i]], Steering(vectors[i], strengths[i], layers=[layer],
                                                                        positions=positions), T, 1)
                    return acc
                dt, ids = timed(one_by_one)
            times.append(dt)
        Path(args.save).write_text(json.dumps(ids))
        res.update(n_prompts=n, times=times, cpu_times=cpu_log, tokens_per_s=n * T / float(np.median(times)),
                   outputs=args.save)
    return res


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("task", choices=["extract", "sweep", "generate"])
    ap.add_argument("impl")
    ap.add_argument("--texts")
    ap.add_argument("--spec")
    ap.add_argument("--save", required=True)
    ap.add_argument("--batch-size", type=int, default=0)
    args = ap.parse_args()
    if args.task == "extract":
        result = extract(args)
    elif args.task == "sweep":
        result = sweep(args)
    else:
        result = generate_task(args)
    emit(result)


if __name__ == "__main__":
    main()
