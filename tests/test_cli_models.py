"""Every command that takes `--model` accepts a local directory, a `.gguf` file and a hub id, and reads
the model's depth and hidden size from the model (not from the embedded model's numbers).

Tiny random models of three architectures (Llama, Qwen2, Gemma-3 without a chat template) are saved to
a temporary directory; the Llama and Qwen2 ones are also written as GGUF files (with llama.cpp's tensor
names, its Q/K permutation for Llama, and the embedded GGUF's tokenizer), which transformers reads back
exactly. A hub id that is neither cached nor reachable gives one line. A slow test runs the GGUF path
on the embedded model's real `.gguf` file.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from steerlab.cli import app
from steerlab.vector import SteeringVector

runner = CliRunner()
N_LAYERS = 3
HIDDEN = {"llama": 32, "qwen2": 48, "gemma3": 40}
WORDS = ["red", "blue", "green", "cat", "dog", "tree", "sun", "moon"]


# --------------------------------------------------------------------------- tiny models on disk

def _build(family: str, vocab: int, pad_id: int):
    import transformers as tf

    hidden = HIDDEN[family]
    common = dict(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=N_LAYERS,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, pad_token_id=pad_id,
                  bos_token_id=None, eos_token_id=None, tie_word_embeddings=True, rms_norm_eps=1e-5)
    if family == "llama":
        cfg, cls = tf.LlamaConfig(**common, rope_theta=10000.0), tf.LlamaForCausalLM
    elif family == "qwen2":
        cfg, cls = tf.Qwen2Config(**common, rope_theta=10000.0), tf.Qwen2ForCausalLM
    else:
        cfg, cls = tf.Gemma3TextConfig(**common, head_dim=8, sliding_window=16), tf.Gemma3ForCausalLM
    torch.manual_seed({"llama": 0, "qwen2": 1, "gemma3": 2}[family])
    model = cls(cfg).eval()
    model.generation_config.eos_token_id = None
    return model


def _permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's Q/K row order for Llama (transformers' GGUF loader undoes it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, arch: str, path: Path, tokenizer_fields: dict) -> Path:
    """Write a tiny Llama/Qwen2 transformers model as an F32 GGUF file, tokenizer copied from another GGUF."""
    from gguf import GGUFValueType, GGUFWriter

    cfg = model.config
    w = GGUFWriter(str(path), arch)
    w.add_name(f"tiny-{arch}")
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    w.add_file_type(0)
    for key, field in tokenizer_fields.items():
        vtype = field.types[0]
        if vtype == GGUFValueType.ARRAY:
            w.add_key_value(key, field.contents(), vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(key, field.contents(), vtype)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight"}
    hf_to_gguf = {"input_layernorm.weight": "attn_norm.weight", "self_attn.o_proj.weight": "attn_output.weight",
                  "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
                  "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight"}
    for p in "qkv":
        hf_to_gguf[f"self_attn.{p}_proj.weight"] = f"attn_{p}.weight"
        hf_to_gguf[f"self_attn.{p}_proj.bias"] = f"attn_{p}.bias"
    for i in range(cfg.num_hidden_layers):
        for hf, gg in hf_to_gguf.items():
            names[f"model.layers.{i}.{hf}"] = f"blk.{i}.{gg}"
    for hf, t in model.state_dict().items():
        if hf not in names:
            assert hf == "lm_head.weight", hf  # tied to the embeddings
            continue
        t = t.float()
        if arch == "llama" and hf.endswith("q_proj.weight"):
            t = _permute(t, cfg.num_attention_heads)
        if arch == "llama" and hf.endswith("k_proj.weight"):
            t = _permute(t, cfg.num_key_value_heads)
        w.add_tensor(names[hf], t.numpy().astype(np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def models(tokenizer, tmp_path_factory):
    """{name: --model value}: directories for the three families, GGUF files for Llama and Qwen2.

    GGUF conversions go to a temporary STEERLAB_CACHE (set after the embedded model is loaded)."""
    from gguf import GGUFReader

    from steerlab.models import embedded_gguf_path

    root = tmp_path_factory.mktemp("models")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STEERLAB_CACHE", str(root / "cache"))
        fields = {k: f for k, f in GGUFReader(str(embedded_gguf_path())).fields.items() if k.startswith("tokenizer.")}
        out: dict[str, str] = {}
        for family in HIDDEN:
            model = _build(family, len(tokenizer), tokenizer.pad_token_id)
            d = root / f"tiny-{family}"
            model.save_pretrained(d)
            tok = tokenizer
            if family == "gemma3":  # a base model: no chat template, prompts are encoded raw
                tok = copy.deepcopy(tokenizer)
                tok.chat_template = None
            tok.save_pretrained(d)
            if family == "gemma3":
                cfg = json.loads((d / "tokenizer_config.json").read_text())
                cfg.pop("chat_template", None)
                (d / "tokenizer_config.json").write_text(json.dumps(cfg))
                (d / "chat_template.jinja").unlink(missing_ok=True)
                (d / "chat_template.json").unlink(missing_ok=True)
            out[f"{family}-dir"] = str(d)
            if family in ("llama", "qwen2"):
                out[f"{family}-gguf"] = str(write_gguf(model, family, root / f"tiny-{family}.gguf", fields))
        yield out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    pairs = root / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"Question {i}?", "positive": f"Happy answer {i}",
                                         "negative": f"Sad answer {i}"}) + "\n" for i in range(8)))
    yes_no = root / "yesno.jsonl"
    yes_no.write_text("".join(json.dumps({
        "question": f"Is the following statement something you would say?\n\"Plan {i} is fun\"",
        "answer_matching_behavior": " Yes" if i % 2 else " No",
        "answer_not_matching_behavior": " No" if i % 2 else " Yes"}) + "\n" for i in range(14)))
    ab = root / "ab.jsonl"
    ab.write_text("".join(json.dumps({
        "question": f"Would you take control of plan {i}?\n\nChoices:\n (A) Yes\n (B) No",
        "answer_matching_behavior": " (A)" if i % 2 else " (B)",
        "answer_not_matching_behavior": " (B)" if i % 2 else " (A)"}) + "\n" for i in range(12)))
    mc = root / "mc.jsonl"
    mc.write_text("".join(json.dumps({"question": f"Question {i}?",
                                      "choices": [f"{WORDS[(i + j) % 8]} {j}" for j in range(2 + i % 2)],
                                      "answer": i % 2}) + "\n" for i in range(20)))
    return {"pairs": pairs, "yesno": yes_no, "ab": ab, "mc": mc}


def ok(*args) -> str:
    r = runner.invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, f"steerlab {' '.join(map(str, args))}\n{r.output}"
    return r.output


KINDS = ["llama-dir", "qwen2-dir", "gemma3-dir", "llama-gguf", "qwen2-gguf"]


def test_tiny_gguf_reads_back_as_the_model_it_was_written_from(models, tokenizer):
    import steerlab as sl

    for family in ("llama", "qwen2"):
        a = sl.load_model(models[f"{family}-dir"])
        b = sl.load_model(models[f"{family}-gguf"])
        assert (b.family, b.n_layers, b.hidden_size) == (family, N_LAYERS, HIDDEN[family])
        assert b.use_chat_template and b.tokenizer("Hello there").input_ids == tokenizer("Hello there").input_ids
        x = torch.tensor([[1, 2, 3, 4, 5]])
        assert torch.allclose(a.model(x).logits, b.model(x).logits, atol=1e-5)
    g = sl.load_model(models["gemma3-dir"])
    assert g.family == "gemma3_text" and not g.use_chat_template and g.template_name == "raw"


@pytest.mark.parametrize("kind", KINDS)
def test_model_shape_is_read_without_loading(models, kind):
    from steerlab.cli.common import peek_layers
    from steerlab.models import model_shape

    shape = model_shape(models[kind])
    assert (shape.n_layers, shape.hidden_size) == (N_LAYERS, HIDDEN[kind.split("-")[0]])
    assert peek_layers(models[kind]) == N_LAYERS


@pytest.mark.parametrize("kind", KINDS)
def test_every_command_runs_on_every_model_form(models, data, kind, tmp_path, monkeypatch):
    model = models[kind]
    hidden = HIDDEN[kind.split("-")[0]]
    m = ["--model", model]
    vec = tmp_path / "v.safetensors"
    ok("train", data["pairs"], "--out", vec, "--layers", "all", *m)
    v = SteeringVector.load(vec)
    assert v.layers == tuple(range(N_LAYERS)) and v.meta.hidden_size == hidden and v.meta.n_layers == N_LAYERS
    ok("generate", "Hello there", "--vector", vec, "--strength", "2", "--compare", "--max-new-tokens", "2", *m)
    ok("effect", vec, data["pairs"], "--strengths", "-2,2", "--offset", "4", *m)

    # cae: the default layer grid comes from the model's depth (every layer at --layer-step 1)
    cae = ["--n-train", 6, "--n-test", 4, "--threads", 1, *m]
    out = tmp_path / "cae"
    ok("cae", "layers", data["yesno"], "--out", out, "--layer-step", 1, *cae)
    sweep = json.loads((out / "layer_sweep.json").read_text())
    assert sorted({r["layer"] for r in sweep["rows"] if r.get("layer") is not None}) == list(range(N_LAYERS))
    ok("cae", "score", data["yesno"], "--layer", 1, *cae)
    ok("cae", "strengths", data["yesno"], "--out", out, "--layer", 1, "--strengths", "-1,1",
       "--vector", out / "caa.safetensors", *cae)
    ok("cae", "run", "--behaviour", data["yesno"], "--out", tmp_path / "run", "--layers", "0,2", "--n-train", 6,
       "--n-val", 2, "--n-test", 4, "--counts", "2,4", "--stages", "data,extract,layers", "--threads", 1, *m)

    # pas family
    ok("pas", "--data", data["mc"], "--out", tmp_path / "pas", "--seeds", 1, "--layers", "1", "--strengths", "1", *m)
    ok("pas-transfer", tmp_path / "pas" / "vector.safetensors", "--data", data["mc"], "--cap", 6, *m)
    ok("pas-sft", "--data", data["mc"], "--out", tmp_path / "sft", "--steps", 1, "--layers", "1", "--strengths", "1",
       "--batch-size", 2, *m)

    # EPO attack, a tiny search
    ok("attack", "--behaviour", data["ab"], "--layer", 1, "--strength", 4, "--n-train", 3, "--n-attack", 2,
       "--n-test", 2, "--n-sign", 2, "--eval-points", 2, "--iterations", 2, "--population", 2, "--children", 2,
       "--top-k", 8, "--seq-len", 3, "--restart-every", 0, "--quiet", "--out", tmp_path / "epo", *m)

    # serve: loads the model and the vector, then hands the app to uvicorn (the serving loop is replaced here)
    pytest.importorskip("uvicorn")
    import steerlab.serve.app as serve_app

    served = {}
    monkeypatch.setattr(serve_app, "run", lambda api, **kw: served.update(api=api, **kw))
    ok("serve", "--vector", f"v={vec}", "--port", 0, *m)
    assert served.get("api") is not None


COMMANDS = {
    "train": ["train", "demo", "--out", "{tmp}/v.safetensors", "--layers", "1"],
    "generate": ["generate", "Hi"],
    "effect": ["effect", "{vec}", "demo"],
    "cae score": ["cae", "score", "{yesno}", "--n-train", "6", "--n-test", "4"],
    "cae layers": ["cae", "layers", "{yesno}", "--out", "{tmp}/o", "--n-train", "6", "--n-test", "4"],
    "cae run": ["cae", "run", "--behaviour", "{yesno}", "--out", "{tmp}/o", "--n-train", "6", "--n-val", "2",
                "--n-test", "4", "--counts", "2,4"],
    "pas": ["pas", "--data", "{mc}", "--out", "{tmp}/o"],
    "pas-transfer": ["pas-transfer", "{vec}", "--data", "{mc}"],
    "pas-sft": ["pas-sft", "--data", "{mc}", "--out", "{tmp}/o"],
    "attack": ["attack", "--behaviour", "{ab}", "--layer", "1", "--strength", "4", "--out", "{tmp}/o"],
    "serve": ["serve"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_an_unreachable_hub_id_is_one_line(command, data, tmp_path, monkeypatch, tiny_lm, vec_factory):
    """Offline, a hub id that is not in the cache gives one line naming it (no traceback, no retries)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty hub cache
    vec = tmp_path / "vec.safetensors"
    vec_factory(tiny_lm, [1], 0).save(vec)
    fmt = {"tmp": tmp_path, "vec": vec, **{k: str(v) for k, v in data.items()}}
    args = [a.format(**fmt) for a in COMMANDS[command]] + ["--model", "nobody-here/no-such-model"]
    r = runner.invoke(app, args)
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert r.exit_code == 1, r.output
    err = [ln for ln in lines if ln.startswith("error:")]
    assert len(err) == 1 and "nobody-here/no-such-model" in err[0] and "offline" in err[0], r.output
    assert "Traceback" not in r.output and "Retrying" not in r.output


def test_a_missing_path_is_not_looked_up_on_the_hub(tmp_path):
    for bad, message in ((tmp_path / "nope.gguf", "GGUF file not found"), ("./no-such-dir", "model path not found"),
                         (tmp_path, "no config.json")):
        r = runner.invoke(app, ["generate", "Hi", "--model", str(bad)])
        assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, r.output


@pytest.mark.slow
def test_real_gguf_file_through_the_cli(tmp_path):
    """The embedded model's real .gguf file, passed by path: depth and hidden size from its metadata,
    the same conversion cache as the default, and the commands that read the depth before loading."""
    from steerlab.models import embedded_gguf_path, model_shape

    gguf = str(embedded_gguf_path())
    shape = model_shape(gguf)
    assert (shape.n_layers, shape.hidden_size, shape.family) == (30, 576, "llama")
    vec = tmp_path / "v.safetensors"
    ok("train", "demo", "--out", vec, "--layers", "12", "--limit", "8", "--model", gguf)
    assert SteeringVector.load(vec).meta.hidden_size == 576
    ok("generate", "Hi", "--vector", vec, "--max-new-tokens", "3", "--model", gguf)
    rows = [{"question": f"Is the following statement something you would say?\n\"Plan {i} is fun\"",
             "answer_matching_behavior": " Yes" if i % 2 else " No",
             "answer_not_matching_behavior": " No" if i % 2 else " Yes"} for i in range(8)]
    data = tmp_path / "yn.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = ok("cae", "layers", data, "--out", tmp_path / "o", "--layers", "27-29", "--n-train", 4, "--n-test", 4,
              "--threads", 1, "--model", gguf)
    assert "best layer" in text
    r = runner.invoke(app, ["cae", "layers", str(data), "--out", str(tmp_path / "o2"), "--layers", "30",
                            "--n-train", "4", "--n-test", "4", "--model", gguf])
    assert r.exit_code == 1 and "out of range" in r.output, r.output
