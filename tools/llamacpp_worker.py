"""Runs inside the llama-cpp-python venv (see llamacpp_parity.py): next-token log-probabilities of the
embedded model's GGUF, unsteered and with a control vector placed at given blocks.

stdin: JSON {"gguf", "prompts": [[token ids]], "keep": [[token ids]], "n_embd", "placements":
[{"name", "layer", "vector"}], "threads"}; `layer` is the block whose output gets the vector (llama.cpp's `direction.N` → block N;
`llama_apply_adapter_cvec` takes an n_embd × n_layer buffer that starts at block 1).
stdout: one JSON line {"n_layer", "unsteered": [[logprobs]], "<name>": [[logprobs]], ...}: each the
log-probabilities of prompt i's `keep[i]` tokens at its last position (full-vocabulary softmax).
"""

import ctypes
import json
import sys

import llama_cpp
import numpy as np


def main() -> None:
    job = json.load(sys.stdin)
    llm = llama_cpp.Llama(model_path=job["gguf"], n_ctx=1024, n_batch=512, n_threads=job.get("threads", 1),
                          logits_all=False, verbose=False)
    ctx = llm._ctx.ctx
    n_embd = llm.n_embd()
    n_layer = llama_cpp.llama_model_n_layer(llm._model.model)
    assert n_embd == job["n_embd"], (n_embd, job["n_embd"])

    def logprobs(ids, keep):
        llm.reset()
        llm.eval(ids)
        x = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        x = x - x.max()
        return (x - np.log(np.exp(x).sum()))[keep].tolist()

    def set_cvec(layer, vec):
        if layer is None:
            rc = llama_cpp.llama_apply_adapter_cvec(ctx, None, 0, n_embd, -1, -1)  # clear
        else:
            buf = np.zeros(n_embd * n_layer, dtype=np.float32)
            buf[(layer - 1) * n_embd: layer * n_embd] = np.asarray(vec, dtype=np.float32)
            arr = (ctypes.c_float * buf.size).from_buffer(buf)
            rc = llama_cpp.llama_apply_adapter_cvec(ctx, arr, buf.size, n_embd, 1, n_layer - 1)
        assert rc == 0, rc

    out = {"n_layer": n_layer, "llama_cpp_python": llama_cpp.__version__}
    set_cvec(None, None)
    pairs = list(zip(job["prompts"], job["keep"]))
    out["unsteered"] = [logprobs(p, k) for p, k in pairs]
    for pl in job["placements"]:
        set_cvec(pl["layer"], pl["vector"])
        out[pl["name"]] = [logprobs(p, k) for p, k in pairs]
    set_cvec(None, None)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
