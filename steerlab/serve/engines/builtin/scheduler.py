"""The built-in engine: continuous batching with per-row steering, on one generation thread that owns
the model (plain PyTorch and transformers; the default engine, no extra install).

Each loop iteration (1) admits waiting requests, prefilling them together as one left-padded batch
with their own steering, and splices their KV cache into the running batch; (2) runs one decoding
step for every running row, each with its own vector(s), strength(s), layers, position policy,
sampling settings and `max_tokens`; (3) drops the rows that finished (EOS, `max_tokens`, a stop
string, or a client that went away). So requests join and leave between steps, and a long request
never holds back short ones.

Steering goes through `steerlab.steering.apply_steering` with the rows' own token boundaries (an
`EncodedBatch` stacked from each request's one-row encoding), and every forward call gets the 2-D
attention mask and per-row position ids, so positions are those `steerlab.generate` uses for the
prompt alone. Greedy rows therefore produce what they produce alone (tests/test_serve_scheduler.py).

Read-out rows (`EngineRequest.readout`) get their projections from hooks added only to the forward calls
they are in (`readout.ReadoutTaps`); each of their text deltas carries the values of the tokens it
covers, the first one the prompt's too.

Steering hooks live on the shared model, which is why only this thread ever runs it.
"""

from __future__ import annotations

import inspect
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable, Optional

import torch

from ....activations import last_logits_only
from ....encoding import EncodedBatch
from ....steering import apply_steering
from ...text import TextTracker
from ..base import (ConditionsDecided, EngineEvent, EngineRequest, Failed, Finished, FirstToken, ModelInfo,
                    QueueFull, ShuttingDown, SteeringTerm, TextDelta)
from . import kvcache
from .readout import ReadoutTaps, RowReadout
from .rows import batch_terms, encoded_row, prefill_terms, stack_rows
from .sampling import Sampler, default_top_k, pick_tokens

if TYPE_CHECKING:  # the type only: importing models would load transformers
    from ....models import LoadedModel

log = logging.getLogger("steerlab.serve")


@dataclass
class Job:
    """One request as the engine runs it (also its `RequestHandle`): events go to `emit`, from the
    generation thread."""

    request: EngineRequest
    enc: EncodedBatch  # the prompt alone: one row, no padding
    sampler: Sampler
    emit: Callable[[EngineEvent], None]
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    # the terms this row runs with: conditional ones are decided at prefill, and dropped if they did not fire
    terms: list[SteeringTerm] = field(default_factory=list)
    readout: Optional[RowReadout] = None  # the request's read-out state, when it asked for one

    def __post_init__(self):
        self.terms = list(self.request.steering)

    @property
    def prompt_tokens(self) -> int:
        return self.request.prompt_tokens

    @property
    def max_new_tokens(self) -> int:
        return self.request.sampling.max_new_tokens

    def cancel(self) -> None:
        self.cancelled.set()


class _Row:
    """A running request. A read-out row streams each token's text with its projection, which is known one
    step later (when the token is fed), so it holds its text until then, and runs one step past its last
    token (`ending`) to read that token too."""

    def __init__(self, job: Job, tokenizer, eos: set[int]):
        self.job = job
        self.tracker = TextTracker(tokenizer, list(job.request.sampling.stop))
        self.eos = eos
        self.generated = 0
        self.last = -1
        self.done = False
        self.first_token_at: float | None = None
        self.readout = job.readout
        self.held = ""  # a read-out row's text not yet streamed (its last token's projection is still to come)
        self.ending: str | None = None  # a read-out row's finish reason, once its last token's projection is read

    @property
    def next_position(self) -> int:
        """Row-relative index of the token fed in the next decoding step (the last one sampled)."""
        return self.job.prompt_tokens + self.generated - 1

    def accept(self, token: int) -> None:
        self.generated += 1
        self.last = token
        if self.first_token_at is None:
            self.first_token_at = time.monotonic()
            self.job.emit(FirstToken(self.first_token_at))
        if token in self.eos:
            self._end("stop")
            return
        piece = self.tracker.add(token)
        if piece:
            if self.readout is None:
                self.job.emit(TextDelta(piece))
            else:
                self.held += piece
        if self.tracker.stopped:
            self._end("stop")
        elif self.generated >= self.job.max_new_tokens:
            self._end("length")

    def _end(self, reason: str) -> None:
        if self.readout is None:
            self.finish(reason)
        else:
            self.ending = reason

    def read(self) -> None:
        """A read-out row, after the step that fed its last token: stream that token's text with its values,
        then end the row if it was ending or a stop rule holds. As in `steerlab.readout`, an end of sequence
        or stop string decided on this token wins over the stop rule, while `length` gives way to it."""
        tripped = self.ending in (None, "length") and self.readout.stop_tripped()
        piece, self.held = self.held, ""
        self.job.emit(TextDelta(piece, self.readout.unsent()))
        if tripped:
            self.finish("content_filter")
        elif self.ending is not None:
            self.finish(self.ending)

    def finish(self, reason: str) -> None:
        if self.done:
            return
        self.done = True
        rest = self.held + self.tracker.finish()
        self.held = ""
        values = self.readout.unsent() if self.readout is not None else None
        if rest or values is not None:
            self.job.emit(TextDelta(rest, values))
        self.job.emit(Finished(self.tracker.text, reason, self.job.prompt_tokens, self.generated,
                               self.readout.whole() if self.readout is not None else None))


def _eos_ids(lm: LoadedModel) -> set[int]:
    eos = getattr(lm.model.generation_config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


class BuiltinEngine:
    """The built-in `Engine`: a bounded waiting queue in front of a continuously batched decoder.

    Args:
        lm: the loaded model (this engine's thread is the only one that runs it).
        max_batch: most rows decoded together.
        max_queue: most requests waiting beyond the free batch slots; beyond it `submit` raises QueueFull
            (a burst that fits the free slots is never refused, whatever this limit).
        window_s: when idle, how long the first request waits for others to prefill with it.
        max_prefill_tokens: most padded prompt tokens prefilled in one forward call.
    """

    name = "builtin"
    features: frozenset[str] = frozenset({"conditions", "readout", "mixed_schedules"})

    def __init__(self, lm: LoadedModel, *, max_batch: int = 32, max_queue: int = 256, window_s: float = 0.01,
                 max_prefill_tokens: int = 16384):
        if max_batch < 1 or max_queue < 0:
            raise ValueError("max_batch must be >= 1 and max_queue >= 0")
        self.lm = lm
        self.model = ModelInfo.of(lm)
        self.max_batch = max_batch
        self.max_queue = max_queue
        self.window_s = window_s
        self.max_prefill_tokens = max_prefill_tokens
        self.eos = _eos_ids(lm)
        self.top_k = default_top_k(lm.model)
        self.pad_id = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
        params = inspect.signature(lm.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._observe_batch: Optional[Callable[[int], None]] = None
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._rows: list[_Row] = []
        self._cache = None
        self._mask: torch.Tensor | None = None
        self._splice_ok: bool | None = None
        self._steer = None  # steering hooks for the current rows' decoding steps
        self._closing = False
        self._abort = False
        self._admitting = 0  # jobs taken from the queue, not yet rows
        self.forward_calls = 0
        self.steps = 0
        self._thread = threading.Thread(target=self._loop, name="steerlab-generate", daemon=True)
        self._thread.start()

    # -- the request side -------------------------------------------------------------------------
    def submit(self, request: EngineRequest, emit: Callable[[EngineEvent], None]) -> Job:
        """Queue `request` (its events go to `emit`, from the generation thread); the Job is its handle."""
        s = request.sampling
        sampler = Sampler(s.temperature, s.top_p, s.seed, self.top_k if s.top_k is None else s.top_k, self.lm.device)
        job = Job(request, encoded_row(request), sampler, emit,
                  readout=RowReadout(request.readout, self.lm.device) if request.readout else None)
        with self._cond:
            if self._closing:
                raise ShuttingDown("the server is shutting down")
            # the limit counts requests that must wait for a slot: those beyond the free ones
            if len(self._waiting) >= self.max_queue + self._free_slots():
                raise QueueFull(f"{len(self._waiting)} requests are already waiting")
            self._waiting.append(job)
            self._cond.notify()
        return job

    def _free_slots(self) -> int:
        """Batch slots a waiting request can take at the next admission (none while an unspliceable cache
        runs: new rows then wait for the batch to empty)."""
        if self._rows and self._splice_ok is False:
            return 0
        return max(0, self.max_batch - len(self._rows) - self._admitting)

    @property
    def queued(self) -> int:
        return len(self._waiting)

    @property
    def active(self) -> int:
        return len(self._rows)

    @property
    def capacity(self) -> int:
        return self.max_batch

    @property
    def closing(self) -> bool:
        return self._closing

    def on_batch(self, observe: Callable[[int], None]) -> None:
        self._observe_batch = observe

    def begin_shutdown(self) -> None:
        """Refuse new requests (ShuttingDown); running and queued ones go on."""
        with self._cond:
            self._closing = True
            self._cond.notify()

    def close(self, grace_s: float = 10.0) -> None:
        """Stop taking requests, let running and queued ones finish for up to `grace_s`, cancel the rest."""
        self.begin_shutdown()
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and (self._rows or self._waiting or self._admitting) and self._thread.is_alive():
            time.sleep(0.02)
        with self._cond:
            self._abort = True
            self._cond.notify()
        self._thread.join(timeout=30)

    # -- the generation thread --------------------------------------------------------------------
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self._cond:
                idle = not self._rows
                while not self._rows and not self._waiting and not self._closing:
                    self._cond.wait()
                if self._abort or (self._closing and not self._rows and not self._waiting):
                    break
            if idle and self.window_s > 0 and not self._closing:
                time.sleep(self.window_s)  # a burst arriving together prefills together
            try:
                self._admit()
                if self._rows:
                    self._decode()
            except Exception as e:  # never lose the thread: fail what was running, keep serving
                log.exception("generation step failed")
                self._fail_all(f"generation failed: {type(e).__name__}: {e}")
        self._fail_all("the server shut down before this request finished", include_waiting=True, status=503)

    def _fail_all(self, message: str, include_waiting: bool = False, status: int = 500) -> None:
        self._drop_steer()
        for r in self._rows:
            if not r.done:
                r.done = True
                r.job.emit(Failed(status, message))
        self._rows, self._cache, self._mask = [], None, None
        if include_waiting:
            with self._cond:
                waiting, self._waiting = list(self._waiting), deque()
            for j in waiting:
                j.emit(Failed(status, message))

    def _drop_steer(self) -> None:
        if self._steer is not None:
            self._steer.remove()
            self._steer = None

    def _take(self) -> list[Job]:
        if self._rows and self._splice_ok is False:
            return []  # a cache that cannot be spliced: new rows wait for an empty batch
        take: list[Job] = []
        with self._cond:
            room = self.max_batch - len(self._rows)
            width = 0
            while self._waiting and len(take) < room:
                job = self._waiting[0]
                if job.cancelled.is_set():
                    self._waiting.popleft()
                    job.emit(Finished("", "cancelled", job.prompt_tokens, 0))
                    continue
                w = max(width, job.prompt_tokens)
                if take and (len(take) + 1) * w > self.max_prefill_tokens:
                    break
                take.append(self._waiting.popleft())
                self._admitting += 1
                width = w
        return take

    def _forward(self, input_ids, mask, position_ids, cache, read=()) -> torch.Tensor:
        """One forward call; `read`: (batch row, first position, RowReadout) of the rows reading out."""
        dev = self.lm.device
        kw = {self._cache_kw: cache, "use_cache": True, **last_logits_only(self.lm.model, int(input_ids.shape[1]))}
        taps = ReadoutTaps(self.lm, read) if read else None
        try:
            out = self.lm.model(input_ids=input_ids.to(dev), attention_mask=mask.to(dev),
                                position_ids=position_ids.to(dev), **kw)
        finally:
            if taps is not None:
                taps.remove()
        self.forward_calls += 1
        if self._observe_batch is not None:
            self._observe_batch(int(input_ids.shape[0]))
        return out.logits[:, -1, :]

    def _admit(self) -> None:
        try:
            self._prefill(self._take())
        finally:
            self._admitting = 0

    def _prefill(self, take: list[Job]) -> None:
        if not take:
            return
        self._drop_steer()
        batch = stack_rows([j.enc for j in take], self.pad_id)
        conditional = any(t.condition is not None for j in take for t in j.terms)
        slots = prefill_terms([j.terms for j in take]) if conditional else []
        terms = [st for st, _ in slots] if conditional else batch_terms([j.terms for j in take])
        cache = kvcache.new_cache(self.lm.model)
        mask = batch.attention_mask
        pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 1)
        rows = [_Row(j, self.lm.tokenizer, set() if j.request.sampling.ignore_eos else self.eos) for j in take]
        width = int(batch.input_ids.shape[1])
        read = [(i, width - j.prompt_tokens, j.readout) for i, j in enumerate(take) if j.readout is not None]
        handle = apply_steering(self.lm, terms, batch=batch) if terms else None
        try:
            logits = self._forward(batch.input_ids, mask, pos, cache, read)
        except Exception as e:
            for r in rows:
                r.done = True
                r.job.emit(Failed(500, f"generation failed: {type(e).__name__}: {e}"))
            raise
        finally:
            if handle is not None:
                handle.remove()
        if conditional:
            self._settle_conditions(take, slots, handle.decisions)
        if self._splice_ok is None:
            self._splice_ok = kvcache.can_splice(cache)
        if self._cache is None:
            self._cache, self._mask = cache, mask.to(self.lm.device)
        else:
            self._cache, self._mask = kvcache.merge(self._cache, self._mask, cache, mask.to(self.lm.device))
        self._rows.extend(rows)
        for r, tok in zip(rows, pick_tokens(logits, [j.sampler for j in take])):
            r.accept(tok)
        self._drop_finished()

    def _settle_conditions(self, take: list[Job], slots, decisions) -> None:
        """CAST: what the prefill decided for each conditional term, from the request's own prompt, once (by
        `apply_steering`, inside the prefill: on the way up when every steered layer lies above the condition's
        layers, else by a look-ahead from the first steered layer; rows where it did not fire got exact zeros). A
        term that did not fire is dropped and one that fired loses its condition, so decoding runs each row
        exactly as if it had been sent that way."""
        outcome: dict[int, tuple[bool, dict[str, float]]] = {}  # id(term) → fired, its leaves' scores
        for (_, picked), decision in zip(slots, decisions):
            if decision is None:
                continue
            for i, term in enumerate(picked):
                if term is not None:
                    scores = {n: round(float(v[i]), 6) for n, v in decision.scores.items()}
                    outcome[id(term)] = (bool(decision.fired[i]), scores)
        for job in take:
            if not any(t.condition is not None for t in job.terms):
                continue
            kept, fired, scores = [], [], {}
            for term in job.terms:
                if term.condition is None:
                    kept.append(term)
                    fired.append(None)
                    continue
                ok, leaf_scores = outcome[id(term)]
                fired.append(ok)
                scores.update(leaf_scores)
                if ok:
                    kept.append(replace(term, condition=None))
            job.terms = kept
            job.emit(ConditionsDecided(tuple(fired), scores))

    def _decode(self) -> None:
        for r in self._rows:
            if r.job.cancelled.is_set() or self._abort:
                r.finish("cancelled")
        self._drop_finished()
        if not self._rows:
            return
        if self._steer is None:
            terms = batch_terms([r.job.terms for r in self._rows])
            if terms:
                batch = stack_rows([r.job.enc for r in self._rows], self.pad_id)
                self._steer = apply_steering(self.lm, terms, batch=batch)
        dev = self.lm.device
        ids = torch.tensor([[r.last] for r in self._rows], dtype=torch.long)
        mask = torch.cat([self._mask, torch.ones(len(self._rows), 1, dtype=self._mask.dtype, device=dev)], 1)
        pos = torch.tensor([[r.next_position] for r in self._rows], dtype=torch.long)
        read = [(i, 0, r.readout) for i, r in enumerate(self._rows) if r.readout is not None]
        logits = self._forward(ids, mask, pos, self._cache, read)
        self._mask = mask
        self.steps += 1
        for r, tok in zip(self._rows, pick_tokens(logits, [r.job.sampler for r in self._rows])):
            if r.readout is not None:
                r.read()  # the token fed in this step has its projection now
            if not r.done:
                r.accept(tok)
        self._drop_finished()

    def _drop_finished(self) -> None:
        keep = [i for i, r in enumerate(self._rows) if not r.done]
        if len(keep) == len(self._rows):
            return
        self._drop_steer()
        if keep:
            self._cache, self._mask = kvcache.select(self._cache, self._mask, keep, trim=bool(self._splice_ok))
        else:
            self._cache, self._mask = None, None
        self._rows = [self._rows[i] for i in keep]
