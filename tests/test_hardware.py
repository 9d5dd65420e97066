"""Hardware awareness: the auto device/dtype from faked CPU flags and device lists, one clear line for a missing
device (before any load), `steerlab doctor`, and converted checkpoints that a plain loader reads."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import steerlab as sl
import steerlab.hardware as hw
from steerlab.cli import app
from steerlab.errors import SteerlabError

runner = CliRunner()


def machine(flags=("avx2",), accelerators=(), cuda="12.4"):
    return hw.Machine(cpu_model="test CPU", cpu_flags=tuple(flags), cores=2, torch_threads=1, torch_version="2.13.0",
                      torch_cuda=cuda if accelerators else None, accelerators=tuple(accelerators))


H100 = hw.Accelerator("cuda:0", "H100", 80.0, bf16=True)
T4 = hw.Accelerator("cuda:1", "T4", 16.0, bf16=False)


@pytest.mark.parametrize("flags, expected", [
    (("avx2",), torch.float32),                                   # AVX2-only: bfloat16 would be ~3x slower
    (("avx2", "avx512f"), torch.float32),                         # AVX-512 without its bf16 instructions
    (("avx2", "avx512f", "avx512_bf16"), torch.bfloat16),
    (("avx2", "amx_bf16", "amx_tile"), torch.bfloat16),
])
def test_auto_dtype_on_cpu_follows_the_bf16_flags(flags, expected):
    choice = hw.choose_dtype("auto", "cpu", machine(flags))
    assert choice.dtype == expected
    assert choice.reason.startswith("the CPU has no") == (expected == torch.float32)


def test_auto_device_and_dtype_with_accelerators():
    m = machine(accelerators=(H100, T4))
    assert hw.choose_device("auto", m) == "cuda:0"
    assert hw.choose_device("cuda", m) == "cuda:0" and hw.choose_device("cuda:1", m) == "cuda:1"
    assert hw.choose_dtype("auto", "cuda:0", m).dtype == torch.bfloat16
    assert hw.choose_dtype("auto", "cuda:1", m).dtype == torch.float32
    assert hw.choose_dtype("float16", "cpu", m).dtype == torch.float16
    mps = machine(accelerators=(hw.Accelerator("mps", "Apple GPU"),))
    assert hw.choose_device("auto", mps) == "mps" and hw.choose_dtype(None, "mps", mps).dtype == torch.float16
    assert hw.choose_device(None, machine()) == "cpu"


def test_missing_device_names_what_there_is():
    with pytest.raises(hw.DeviceError, match=r"'cuda' is not available .*available: cpu; torch is a CPU build"):
        hw.choose_device("cuda", machine())
    with pytest.raises(hw.DeviceError, match=r"available: cpu, cuda:0"):
        hw.choose_device("cuda:3", machine(accelerators=(H100,)))
    with pytest.raises(hw.DeviceError, match="unknown device 'tpu'"):
        hw.choose_device("tpu", machine())
    with pytest.raises(SteerlabError, match="unknown dtype 'fp8'"):
        hw.choose_dtype("fp8", "cpu", machine())


def test_this_machine_and_its_block():
    m = hw.detect()
    assert "cpu" in m.devices and m.cores >= 1
    block = hw.machine_block(dtype="float32", device="cpu")
    assert {"cpu_model", "cpu_flags", "cores", "torch_threads", "torch_version", "load_average", "dtype",
            "device"} <= set(block)
    json.dumps(block)


def test_the_block_records_what_auto_chose():
    """`auto` is the command line's default: a result file says the precision it was made in, not the request."""
    assert hw.machine_block(dtype="auto", device="cpu", machine=machine(("avx2", "avx512_bf16")))["dtype"] == "bfloat16"
    assert hw.machine_block(dtype="auto", device="cpu", machine=machine(("avx2",)))["dtype"] == "float32"
    assert hw.machine_block(dtype="float32", machine=machine(("avx512_bf16",)))["dtype"] == "float32"


def test_cli_missing_device_fails_before_loading(monkeypatch):
    monkeypatch.setattr(hw, "detect", lambda: machine())
    res = runner.invoke(app, ["generate", "hi", "--device", "cuda:0", "--model", "/nonexistent/model"])
    assert res.exit_code == 1
    assert "not available on this machine (available: cpu" in res.output
    assert "nonexistent" not in res.output  # refused before the model was looked for
    res = runner.invoke(app, ["cae", "layers", "openness", "--out", "x", "--dtype", "fp8"])
    assert res.exit_code == 1 and "unknown dtype 'fp8'" in res.output


def test_every_model_command_takes_device_and_dtype():
    import typer.main

    root = typer.main.get_command(app)

    def walk(cmd, path=""):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{path} {name}".strip())
        else:
            yield path, {o for p in cmd.params for o in p.opts}

    for path, opts in walk(root):
        if "--model" in opts or path == "serve":
            assert {"--device", "--dtype"} <= opts, path


def test_doctor_json():
    res = runner.invoke(app, ["doctor", "--json"])
    assert res.exit_code == 0, res.output
    d = json.loads(res.stdout)
    assert {"steerlab", "machine", "auto", "extras", "cache", "data", "packages"} <= set(d)
    assert d["auto"]["dtype"] in ("float32", "bfloat16", "float16") and d["auto"]["why"]
    assert set(d["machine"]["cpu_flags"]) <= set(hw.CPU_FLAGS)
    assert "server" in d["extras"] and "vllm engine" in d["extras"]
    res = runner.invoke(app, ["doctor"])
    assert res.exit_code == 0 and "CPU flags" in res.output and "auto" in res.output


def test_auto_dtype_when_loading(monkeypatch, save_tiny):
    from steerlab.models import load_model

    d = save_tiny()
    monkeypatch.setattr(hw, "detect", lambda: machine(("avx2",)))
    loaded = load_model(d, dtype="auto")
    assert loaded.dtype == torch.float32 and "float32" in loaded.extra["dtype_note"]
    monkeypatch.setattr(hw, "detect", lambda: machine(("avx2", "avx512f", "avx512_bf16")))
    assert load_model(d, dtype="auto").dtype == torch.bfloat16
    with pytest.raises(hw.DeviceError):
        load_model(d, device="cuda")


@pytest.mark.slow
def test_converted_checkpoint_reads_with_plain_transformers(real_lm):
    """The converted embedded model is a complete checkpoint: a fresh process loading it with plain
    transformers (no steerlab) gets steerlab's logits."""
    from steerlab.models import convert_gguf, embedded_gguf_path

    directory = convert_gguf(embedded_gguf_path())
    ids = real_lm.tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        ours = real_lm.model(input_ids=ids).logits[0, -1]
    code = ("import sys, json, torch; from transformers import AutoModelForCausalLM; "
            "from safetensors import safe_open; "
            f"d = {str(directory)!r}; keys = set(safe_open(d + '/model.safetensors', 'pt').keys()); "
            "m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32); "
            f"x = m(input_ids=torch.tensor([{ids[0].tolist()}])).logits[0, -1]; "
            "print(json.dumps({'keys': sorted(k for k in keys if 'embed' in k or 'lm_head' in k), "
            "'logits': x[:50].tolist(), 'argmax': int(x.argmax())}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert "model.embed_tokens.weight" in got["keys"] and "lm_head.weight" in got["keys"]
    assert got["argmax"] == int(ours.argmax())
    assert torch.allclose(torch.tensor(got["logits"]), ours[:50], atol=1e-4)


def test_result_files_carry_the_machine_block(tmp_path, monkeypatch):
    from steerlab.results import read_json, write_result

    monkeypatch.setenv("STEERLAB_DTYPE", "auto")
    write_result(tmp_path / "r.json", {"kind": "test", "value": 1.5})
    got = read_json(tmp_path / "r.json")
    chose = hw.choose_dtype("auto", "cpu", hw.detect()).name  # what a load under auto computes in here
    assert got["value"] == 1.5 and got["machine"]["dtype"] == chose
    assert {"cpu_model", "cpu_flags", "cores", "torch_threads", "load_average"} <= set(got["machine"])


@pytest.mark.slow
def test_model_split_with_disk_offload_steers_and_captures_like_the_whole_model(real_lm, tmp_path):
    """accelerate places the first half of the blocks on the CPU and offloads the rest to disk (its hooks load
    them around each block's forward); steered logits, captured activations, generations, the scoring engine's
    log-probs and the server's answers equal the unsplit model's."""
    from steerlab.engine import ScoringItem, Setting, score
    from steerlab.models import convert_gguf, embedded_gguf_path, load_model
    from conftest import random_vector

    n = real_lm.n_layers
    device_map = {"model.embed_tokens": "cpu", "model.norm": "cpu", "model.rotary_emb": "cpu", "lm_head": "cpu"}
    device_map.update({f"model.layers.{i}": "cpu" if i < n // 2 else "disk" for i in range(n)})
    split = load_model(convert_gguf(embedded_gguf_path()), device_map=device_map, offload_dir=tmp_path / "offload",
                       model_id=real_lm.model_id)
    assert any(hasattr(b, "_hf_hook") for b in split.blocks)  # accelerate's hooks really run around blocks
    vec = random_vector(real_lm, [3, n - 4], 11, scale=2.0)
    prompts = ["How was your weekend?", "Tell me a short story about the sea."]
    outs = []
    for lm in (real_lm, split):
        batch = sl.encode(lm, prompts)
        inputs = batch.to(lm.device)
        with torch.no_grad(), sl.steer(lm, [sl.Steering(vec, 3.0)], batch=batch):
            logits = lm.model(input_ids=inputs.input_ids, attention_mask=inputs.attention_mask).logits
        acts = sl.capture(lm, prompts, [2, n - 2], "last")
        text = sl.generate(lm, prompts, sl.Steering(vec, 3.0), max_new_tokens=6)
        items = [ScoringItem(sl.format_prompt(lm, p, "I think"), (" yes", " no"), target=0) for p in prompts]
        table = score(lm, items, [Setting.unsteered(), Setting.single(vec, 3, 3.0, "after_user"),
                                  Setting.single(vec, n - 4, -3.0, "after_user")])
        outs.append((logits, acts, text, table.to_frame()["logprob"].to_numpy()))
    (la, aa, ta, sa), (lb, ab, tb, sb) = outs
    # the server (continuous batching with a KV cache) on the split model: a steered and an unsteered request
    from test_serve_api import KEY, Served, make_app

    served = Served(make_app("builtin", split, {"v": vec}, api_key=KEY, max_batch=4))
    try:
        client = served.client()
        for steering, expected in (({"vector": "v", "strength": 3.0}, ta), (None, sl.generate(real_lm, prompts, None,
                                                                                              max_new_tokens=6))):
            r = client.chat.completions.create(model=split.model_id, messages=[{"role": "user", "content": prompts[0]}],
                                               max_tokens=6, temperature=0,
                                               extra_body={"steering": steering} if steering else None)
            assert r.choices[0].message.content == expected[0]
        served.idle()
    finally:
        served.stop()
    assert torch.allclose(torch.tensor(sa), torch.tensor(sb), atol=1e-4)  # the scoring engine
    assert torch.allclose(la, lb, atol=1e-4, rtol=1e-4)
    for layer in aa:
        assert torch.allclose(aa[layer], ab[layer], atol=1e-4, rtol=1e-4)
    assert ta == tb



def test_cli_runtime_options_last_for_the_command_only(monkeypatch):
    import os

    monkeypatch.delenv("STEERLAB_DTYPE", raising=False)
    res = runner.invoke(app, ["generate", "hi", "--device-map", "balanced", "--dtype", "bfloat16"])
    assert res.exit_code == 1 and "--device-map takes auto" in res.output
    assert "STEERLAB_DTYPE" not in os.environ and "STEERLAB_DEVICE_MAP" not in os.environ


def test_a_steering_delta_is_copied_to_each_device_once():
    from steerlab.steering import _Term

    term = _Term(torch.ones(1, 1, 4), "all", False)
    assert term.on(torch.device("cpu")) is term.delta
    first = term.on(torch.device("meta"))
    assert first.device.type == "meta" and term.on(torch.device("meta")) is first
