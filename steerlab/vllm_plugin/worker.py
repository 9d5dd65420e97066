"""Inside each vLLM worker: hooks on the decoder blocks and the per-step plan from the runner's batch.

Installed by `register()` (the `vllm.general_plugins` entry point), which vLLM runs in every process it
starts, the engine-core and worker processes included; so this works with V1's separate engine-core
process and with one worker per tensor-parallel rank (each rank holds the full residual stream after its
all-reduce and adds the same delta). Two methods of vLLM's GPU model runner (the CPU runner inherits
them) are wrapped: `load_model` (hook the blocks once, before vLLM compiles the model, and allocate the
persistent buffers) and `_model_forward` (fill the buffers from this step's batch, run, clear).
"""

from __future__ import annotations

import functools
import logging

import torch

from .plan import Row, StepPlanner
from .spec import SpecError, of_extra_args

log = logging.getLogger("steerlab.vllm")
_SPEC_ATTR = "_steerlab_spec"


def find_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of a vLLM model (`model.model.layers` for llama/qwen/gemma-style models)."""
    for path in ("model.layers", "language_model.model.layers", "model.language_model.layers", "layers"):
        m = model
        for part in path.split("."):
            m = getattr(m, part, None)
            if m is None:
                break
        if isinstance(m, torch.nn.ModuleList):
            return m
    raise RuntimeError(f"steerlab: cannot find the decoder blocks of {type(model).__name__}")


def _block_hook(planner: StepPlanner, layer: int):
    # vLLM blocks return (hidden, residual) with the residual add deferred to the next block's fused
    # add+norm: transformers' "output of block L" is hidden + residual, so adding to the residual adds to
    # that sum. Compiled, this traces into the graph once, with the buffers as inputs; eager, a layer
    # nobody steers this step costs one set lookup.
    def hook(module, args, output):
        if not torch.compiler.is_compiling() and layer not in planner.active:
            return None
        if isinstance(output, tuple) and len(output) == 2 and output[1] is not None:
            return output[0], planner.add(layer, output[1])
        if isinstance(output, torch.Tensor):
            return planner.add(layer, output)
        return None

    return hook


def _spec_of(state):
    """A request's parsed spec, cached on its runner state (parsed once per request, not per step)."""
    spec = getattr(state, _SPEC_ATTR, False)
    if spec is False:
        params = getattr(state, "sampling_params", None)
        try:
            spec = of_extra_args(getattr(params, "extra_args", None))
        except SpecError as e:
            log.error("steerlab: request %s not steered: %s", state.req_id, e)
            spec = None
        setattr(state, _SPEC_ATTR, spec)
    return spec


def step_rows(runner) -> list[Row]:
    """This step's requests, in the runner's flattened token order (input_batch order, query_start_loc)."""
    batch = runner.input_batch
    n = batch.num_reqs
    qsl = runner.query_start_loc.np
    rows = []
    for i, req_id in enumerate(batch.req_ids[:n]):
        state = runner.requests[req_id]
        start, stop = int(qsl[i]), int(qsl[i + 1])
        prompt = len(state.prompt_token_ids) if state.prompt_token_ids is not None else 0
        rows.append(Row(_spec_of(state), prompt, start, stop - start, int(batch.num_computed_tokens_cpu[i])))
    return rows


def install(runner_cls) -> None:
    """Wrap `load_model` and `_model_forward` where `runner_cls` itself defines them (the CPU runner has its
    own `load_model` and inherits `_model_forward`); idempotent: vLLM may load plugins twice."""
    if "_steerlab_installed" in runner_cls.__dict__:
        return
    load_model, model_forward = runner_cls.load_model, runner_cls._model_forward

    @functools.wraps(load_model)
    def load_model_steered(self, *args, **kwargs):
        out = load_model(self, *args, **kwargs)
        model = self.get_model()
        blocks = find_blocks(model)
        cfg = self.model_config.hf_config
        text_cfg = getattr(cfg, "text_config", cfg)
        hidden = int(text_cfg.hidden_size)
        sched = self.scheduler_config
        max_tokens = max(int(sched.max_num_batched_tokens), int(getattr(self, "max_num_tokens", 0) or 0))
        # per request at most 3 distinct sets of terms apply at once (the policies nest)
        planner = StepPlanner(len(blocks), hidden, max_tokens, 3 * int(sched.max_num_seqs), self.device,
                              self.model_config.dtype)
        for layer, block in enumerate(blocks):
            block.register_forward_hook(_block_hook(planner, layer))
        self._steerlab = planner
        log.info("steerlab: steering hooks on %d blocks (buffers for %d tokens)", len(blocks), max_tokens)
        return out

    @functools.wraps(model_forward)
    def model_forward_steered(self, *args, **kwargs):
        planner = getattr(self, "_steerlab", None)
        if planner is None:
            return model_forward(self, *args, **kwargs)
        planner.prepare(step_rows(self))
        try:
            return model_forward(self, *args, **kwargs)
        finally:
            planner.finish()

    if "load_model" in runner_cls.__dict__:
        runner_cls.load_model = load_model_steered
    if "_model_forward" in runner_cls.__dict__:
        runner_cls._model_forward = model_forward_steered
    runner_cls._steerlab_installed = True


__all__ = ["install", "find_blocks", "step_rows"]
