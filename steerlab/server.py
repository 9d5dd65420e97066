"""An HTTP server that generates with steering vectors switched on per request.

    steerlab serve --vector cheerful=cheerful.safetensors --vector pas=runs/pas/vector.safetensors

    POST /generate {"prompts": ["How was your day?"], "vector": "cheerful", "strength": 6}
    GET  /vectors, GET /health

Requests that arrive together are run as one batch: each row carries its own vector and strength
(`Steering` with per-row terms), so a server with many vectors costs about what one batch costs,
not one forward pass per request. Only greedy requests with the same generation settings, position
policy and vector layers share a batch; a sampled request runs alone so its seed is honoured. Outputs
are exactly what `steerlab.generate` returns for the same prompt and steering alone.

FastAPI and uvicorn are optional: `pip install "steerlab[server]"`.
"""

# No `from __future__ import annotations`: FastAPI must see the request models defined in create_app.
import contextlib
import queue
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import SteerlabError
from .steering import POLICIES, Steering
from .vector import SteeringVector

MAX_PROMPTS_PER_REQUEST = 64


def parse_vector_spec(spec: str) -> tuple[str, Path]:
    """'name=path' or 'path' (named after the file's stem) → (name, path)."""
    name, sep, path = spec.partition("=")
    if not sep:
        name, path = Path(spec).stem, spec
    if not name or not path:
        raise SteerlabError(f"cannot read vector '{spec}': use NAME=PATH or PATH")
    return name, Path(path)


def load_vectors(specs: list[str], lm, *, allow_other_model: bool = False) -> dict[str, SteeringVector]:
    """Load and check every vector before the server starts, so a bad file fails at once, not on a request."""
    vectors: dict[str, SteeringVector] = {}
    for spec in specs:
        name, path = parse_vector_spec(spec)
        if name in vectors:
            raise SteerlabError(f"two vectors are named '{name}': name them apart with NAME=PATH")
        vec = SteeringVector.load(path)
        vec.check_compatible(lm, allow_other_family=allow_other_model)
        vectors[name] = vec
    return vectors


@dataclass
class _Job:
    prompts: list[str]
    vector: Optional[SteeringVector]
    strength: float
    layers: Optional[tuple[int, ...]]
    positions: Optional[str]
    max_new_tokens: int
    do_sample: bool
    temperature: float
    top_p: float
    seed: Optional[int]
    future: Future = field(default_factory=Future)

    def key(self) -> tuple:
        """Jobs with equal keys can share one batch (per-row vectors and strengths differ freely)."""
        if self.do_sample:
            return (id(self),)  # its own seed and sampling stream: never merged
        steered = None if self.vector is None else (self.positions, self.layers or tuple(self.vector.layers))
        return (self.max_new_tokens, steered)


class BatchingGenerator:
    """One worker thread owns the model; jobs queued within `window_s` of each other are merged.

    Steering hooks live on the shared model, so generation must never run concurrently: the single
    worker is what makes the server safe as well as fast.
    """

    def __init__(self, lm, *, window_s: float = 0.01, max_batch: int = 32):
        if max_batch < 1:
            raise SteerlabError("max_batch must be at least 1")
        self.lm = lm
        self.window_s = window_s
        self.max_batch = max_batch
        self.batches_run = 0
        self.jobs_done = 0
        self._queue: "queue.Queue[_Job | None]" = queue.Queue()
        self._worker = threading.Thread(target=self._loop, name="steerlab-generate", daemon=True)
        self._worker.start()

    def submit(self, job: _Job) -> Future:
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._worker.join(timeout=30)

    def _loop(self) -> None:
        pending: list[_Job] = []
        while True:
            job = pending.pop(0) if pending else self._queue.get()
            if job is None:
                return
            group, rows = [job], len(job.prompts)
            while rows < self.max_batch:  # gather compatible jobs arriving within the window
                try:
                    nxt = self._queue.get(timeout=self.window_s)
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                if nxt.key() == job.key() and rows + len(nxt.prompts) <= self.max_batch:
                    group.append(nxt)
                    rows += len(nxt.prompts)
                else:
                    pending.append(nxt)
            self._run(group)

    def _run(self, group: list[_Job]) -> None:
        from .generation import generate

        head = group[0]
        prompts = [p for j in group for p in j.prompts]
        steering = None
        if any(j.vector is not None for j in group):
            vectors = [j.vector for j in group for _ in j.prompts]
            strengths = [j.strength for j in group for _ in j.prompts]
            steering = Steering(vectors, strengths, head.layers, head.positions)
        try:
            out = generate(self.lm, prompts, steering, max_new_tokens=head.max_new_tokens, do_sample=head.do_sample,
                           temperature=head.temperature, top_p=head.top_p, seed=head.seed, batch_size=len(prompts))
        except Exception as e:  # handed to the waiting request, never lost in the worker thread
            for j in group:
                j.future.set_exception(e)
            return
        self.batches_run += 1
        start = 0
        for j in group:
            j.future.set_result(out[start:start + len(j.prompts)])
            start += len(j.prompts)
            self.jobs_done += 1


def create_app(lm, vectors: dict[str, SteeringVector] | None = None, *, max_new_tokens_limit: int = 512,
               window_s: float = 0.01, max_batch: int = 32):
    """A FastAPI app serving `lm` with the named `vectors` (see the module docstring for the endpoints)."""
    try:
        from fastapi import FastAPI, HTTPException
        from pydantic import BaseModel, Field
    except ImportError:
        raise SteerlabError('the server needs FastAPI: pip install "steerlab[server]"') from None

    vectors = dict(vectors or {})
    for name, vec in vectors.items():
        vec.check_compatible(lm, allow_other_family=True)  # hidden size and depth at least; family checked on load
    worker = BatchingGenerator(lm, window_s=window_s, max_batch=max_batch)

    class GenerateRequest(BaseModel):
        prompts: list[str] = Field(..., min_length=1, max_length=MAX_PROMPTS_PER_REQUEST,
                                   description="User messages (the chat template is applied as in steerlab.generate).")
        vector: Optional[str] = Field(None, description="Name of a served vector; omit for the unsteered model.")
        strength: Optional[float] = Field(None, description="alpha; default: the vector's recorded strength, else 4.")
        layers: Optional[list[int]] = Field(None, description="Apply only these layers of the vector.")
        positions: Optional[str] = Field(None, description=f"One of {', '.join(POLICIES)}; default: the vector's.")
        max_new_tokens: int = Field(64, ge=1, le=max_new_tokens_limit)
        do_sample: bool = False
        temperature: float = Field(1.0, gt=0)
        top_p: float = Field(1.0, gt=0, le=1)
        seed: Optional[int] = None

    class GenerateResponse(BaseModel):
        completions: list[str]
        vector: Optional[str]
        strength: Optional[float]
        layers: Optional[list[int]]
        positions: Optional[str]

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        worker.close()

    app = FastAPI(title="steerlab", description="Generation with activation steering vectors switched on per request.",
                  lifespan=lifespan)
    app.state.worker = worker

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok", "model": lm.model_id, "n_layers": lm.n_layers, "hidden_size": lm.hidden_size,
                "batches_run": worker.batches_run, "requests_done": worker.jobs_done}

    @app.get("/vectors")
    def list_vectors() -> dict:
        return {name: {"method": v.meta.method, "layers": list(v.layers), "model": v.meta.model_id,
                       "strength": v.meta.strength, "positions": v.meta.positions}
                for name, v in vectors.items()}

    @app.post("/generate", response_model=GenerateResponse)
    def generate_endpoint(req: GenerateRequest) -> GenerateResponse:
        vec, steering = None, None
        if req.vector is not None:
            if req.vector not in vectors:
                raise HTTPException(404, f"no vector named '{req.vector}' (served: {', '.join(vectors) or 'none'})")
            vec = vectors[req.vector]
            steering = Steering.from_vector(vec, req.strength, req.layers, req.positions)
            if steering.positions not in POLICIES:
                raise HTTPException(400, f"unknown positions '{steering.positions}': choose one of {', '.join(POLICIES)}")
            missing = [l for l in (steering.layers or ()) if l not in vec.directions]
            if missing:
                raise HTTPException(400, f"vector '{req.vector}' has no layers {missing} (it has {list(vec.layers)})")
        elif req.strength is not None or req.layers is not None or req.positions is not None:
            raise HTTPException(400, "strength, layers and positions need a vector")
        job = _Job(req.prompts, vec, steering.strength if steering else 0.0,
                   tuple(steering.layers) if steering and steering.layers is not None else None,
                   steering.positions if steering else None, req.max_new_tokens, req.do_sample, req.temperature,
                   req.top_p, req.seed)
        try:
            out = worker.submit(job).result()
        except SteerlabError as e:  # e.g. a prompt too long for the context
            raise HTTPException(400, str(e)) from None
        return GenerateResponse(completions=out, vector=req.vector, strength=steering.strength if steering else None,
                                layers=list(steering.layers) if steering and steering.layers is not None else None,
                                positions=steering.positions if steering else None)

    return app
