"""GET /v1/models, /health and /metrics: what is served and how the server is doing."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, PlainTextResponse

from ..responses import Health, ModelCard, ModelList
from ..state import ServerState, server_state

# JSONResponse named, not defaulted: FastAPI then writes the models' dicts with json.dumps, the bytes these
# routes have always sent (with its default it would write pydantic's own JSON, floats spelled otherwise)
router = APIRouter(default_response_class=JSONResponse)


@router.get("/v1/models", response_model=ModelList)
async def models(server: ServerState = Depends(server_state)) -> ModelList:
    lm = server.lm
    return ModelList(data=[ModelCard(id=server.model_id, created=server.started, n_layers=lm.n_layers,
                                     hidden_size=lm.hidden_size, max_context=lm.max_context,
                                     max_tokens_limit=server.limits.max_new_tokens)])


@router.get("/health", response_model=Health)
async def health(server: ServerState = Depends(server_state)) -> Health:
    engine, lm = server.engine, server.lm
    return Health(status="shutting_down" if engine.closing else "ok", model=server.model_id, n_layers=lm.n_layers,
                  hidden_size=lm.hidden_size, active=engine.active, queued=engine.queued,
                  vectors=len(server.registry))


@router.get("/metrics")
async def metrics(server: ServerState = Depends(server_state)) -> PlainTextResponse:
    return PlainTextResponse(server.metrics.render(), media_type="text/plain; version=0.0.4")
