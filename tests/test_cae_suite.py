"""The CAE suite end to end on a tiny model: every stage's files, resuming, failures keeping partial results."""

from __future__ import annotations

import json

import pytest

from steerlab import results
from steerlab.cae import STAGES, CAEConfig, run_cae, summarize_run
from steerlab.errors import DatasetError, OutputExistsError, SteerlabError

ROWS = [{"question": f"Is the following statement something you would say?\n\"New idea {i} is worth trying\"",
         "answer_matching_behavior": " Yes" if i % 2 else " No", "answer_not_matching_behavior": " No" if i % 2 else " Yes"}
        for i in range(20)]
OOD = {"choice-qa": [{"id": 1, "prompt": "Tea or coffee?"}, {"id": 2, "prompt": "City or beach?"}],
       "open-ended": [{"id": 1, "prompt": "How should I spend a free day?", "criteria": "Assess novelty seeking."}]}
CORPUS = "The quick brown fox jumps over the lazy dog . It was a bright cold day in April . " * 10


def make_data_root(root):
    (root / "mwe" / "persona").mkdir(parents=True)
    path = root / "mwe" / "persona" / "toy-openness.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ROWS))
    for kind, prompts in OOD.items():
        d = root / "ood" / kind / "practical"
        d.mkdir(parents=True)
        (d / "toy-openness-short.json").write_text(json.dumps(prompts))
    (root / "corpus").mkdir()
    (root / "corpus" / "wiki.txt").write_text(CORPUS)
    return path


def tiny_config(root, path, **kw) -> CAEConfig:
    base = dict(behaviour=str(path), n_train=8, n_val=4, n_test=4, layers=(1, 3), sweep_strength=0.5,
                strengths=(-1.0, 0.5), counts=(4, 8), ood_limit=2, max_new_tokens=4, corpus=str(root / "corpus" / "wiki.txt"),
                ppl_tokens=64, ppl_window=32, n_boot=50, batch_size=8, data_root=str(root))
    base.update(kw)
    return CAEConfig(**base)


@pytest.fixture(scope="module")
def lm(make_tiny):
    return make_tiny(max_positions=256)


@pytest.fixture(scope="module")
def finished(lm, tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    path = make_data_root(root)
    out = tmp_path_factory.mktemp("run") / "toy"
    cfg = tiny_config(root, path)
    summary = run_cae(lm, cfg, out, log=lambda s: None)
    return root, path, out, cfg, summary


def test_every_stage_writes_its_files(finished):
    root, path, out, cfg, summary = finished
    man = results.read_json(out / "manifest.json")
    assert [k for k in man["stages"]] == list(STAGES)
    assert all(v["status"] == "done" and v["seconds"] >= 0 for v in man["stages"].values())
    for name in ("split.json", "caa.safetensors", "train_activations.safetensors", "norms.json", "layer_sweep.csv",
                 "layer_sweep.png", "strength_sweep.json", "sample_count_sweep.json", "method_comparison.json",
                 "ood_generations.jsonl", "ood_scores.json", "ood.json", "ood.png", "side_effects.json", "summary.json",
                 "report.html"):
        assert (out / name).is_file(), name
    split = results.read_json(out / "split.json")
    assert len(split["train"]) == 8 and len(split["val"]) == 4 and len(split["test"]) == 4
    assert not set(split["train"]) & set(split["val"]) and not set(split["val"]) & set(split["test"])
    layer = results.read_json(out / "layer_sweep.json")
    assert layer["items"] == "validation" and layer["best_layer"] in (1, 3)
    best = max((r for r in layer["rows"] if r.get("relative") == 0.5), key=lambda r: r["effect"])
    assert best["layer"] == layer["best_layer"]
    strength = results.read_json(out / "strength_sweep.json")
    assert strength["config"]["layer"] == layer["best_layer"] and strength["items"] == "test"
    assert strength["rows"][0]["n_items"] == 4
    assert "flatten" in results.read_json(out / "sample_count_sweep.json")
    methods = results.read_json(out / "method_comparison.json")
    assert methods["config"]["methods"] == ["caa", "actadd", "actadd-pp"]
    assert len(results.read_jsonl(out / "ood_generations.jsonl")) == 2 * 3
    side = results.read_json(out / "side_effects.json")
    assert [r["relative"] for r in side["rows"]] == [0.0, -1.0, 0.5] and side["positions"] == "all"
    assert summary["best_layer"] == layer["best_layer"] and summary["effect_at_best"]["relative"] == 0.5
    assert summary["cost_at_chosen"]["relative"] == 0.5 and summary["kind"] == "yesno"
    assert set(summary["stages"]) == set(STAGES[:-1]) | {"report"} or set(summary["stages"]) >= set(STAGES[:-1])


def test_rerun_resumes_and_refuses_another_config(lm, finished):
    root, path, out, cfg, _ = finished
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    logs = []
    run_cae(lm, cfg, out, log=logs.append)
    assert all("skipping" in line for line in logs) and len(logs) == len(STAGES)
    after = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.name != "manifest.json"}
    assert all(after[k] == before[k] for k in after)
    with pytest.raises(OutputExistsError, match="different configuration"):
        run_cae(lm, tiny_config(root, path, seed=1), out, log=lambda s: None)


def test_a_failing_stage_keeps_earlier_results(lm, finished, tmp_path):
    import shutil

    root, path, out, cfg, _ = finished
    run = tmp_path / "run"
    shutil.copytree(out, run)
    man = results.read_json(run / "manifest.json")
    for stage in ("side_effects", "report"):  # as if the run had stopped after the OOD stage
        del man["stages"][stage]
    results.write_json(run / "manifest.json", man)
    for f in run.glob("side_effects*"):
        f.unlink()
    corpus = root / "corpus" / "wiki.txt"
    corpus.write_text("   \n")  # an empty corpus: the side-effects stage fails
    try:
        with pytest.raises(DatasetError, match="corpus file is empty"):
            run_cae(lm, cfg, run, log=lambda s: None)
    finally:
        corpus.write_text(CORPUS)
    man = results.read_json(run / "manifest.json")
    assert man["stages"]["side_effects"]["status"] == "failed"
    assert "corpus file is empty" in man["stages"]["side_effects"]["error"]
    assert all(man["stages"][s]["status"] == "done" for s in ("data", "extract", "layers", "sweeps", "ood"))
    assert (run / "strength_sweep.json").is_file() and (run / "ood.json").is_file()
    assert "side_effects" not in summarize_run(run) and "best_layer" in summarize_run(run)
    logs = []  # the corpus is fixed: a rerun runs only what is missing
    run_cae(lm, cfg, run, stages=["data", "extract", "layers", "sweeps", "ood", "side_effects"], log=logs.append)
    assert sum("skipping" in line for line in logs) == 5 and (run / "side_effects.json").is_file()
    assert results.read_json(run / "manifest.json")["stages"]["side_effects"]["status"] == "done"


def test_bad_configuration(lm, tmp_path):
    with pytest.raises(SteerlabError, match="largest sample count"):
        CAEConfig("openness", n_train=10, counts=(5, 20))
    with pytest.raises(SteerlabError, match="positive"):
        CAEConfig("openness", sweep_strength=-1.0)
    root = tmp_path / "data"
    path = make_data_root(root)
    with pytest.raises(SteerlabError, match="out of range"):
        run_cae(lm, tiny_config(root, path, layers=(1, 9)), tmp_path / "x", log=lambda s: None)
    with pytest.raises(SteerlabError, match="unknown stages"):
        run_cae(lm, tiny_config(root, path), tmp_path / "y", stages=["layers", "dance"], log=lambda s: None)
    with pytest.raises(DatasetError, match="fewer than"):
        run_cae(lm, tiny_config(root, path, n_train=18), tmp_path / "z", log=lambda s: None)
