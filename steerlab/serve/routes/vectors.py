"""The vector registry over HTTP: list, describe, download, register (upload) and delete served vectors."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ...errors import VectorError
from ...vector import SteeringVector
from ..api_errors import ApiError
from ..responses import VectorDeleted, VectorInfo, VectorList
from ..state import ServerState, server_state

# JSONResponse named, not defaulted: the models' dicts go out through json.dumps, as they always have
router = APIRouter(default_response_class=JSONResponse)


def _served(server: ServerState, name: str) -> SteeringVector:
    """The vector served as `name`, or a 404 naming those that are."""
    vec = server.registry.get(name)
    if vec is None:
        served = ", ".join(sorted(server.registry.snapshot())) or "none"
        raise ApiError(404, f"no vector named '{name}' (served: {served})", param="name", code="vector_not_found")
    return vec


@router.get("/v1/vectors", response_model=VectorList)
async def list_vectors(server: ServerState = Depends(server_state)) -> VectorList:
    return VectorList(data=[VectorInfo.of(n, v) for n, v in sorted(server.registry.snapshot().items())])


@router.get("/v1/vectors/{name}", response_model=VectorInfo)
async def fetch_vector(name: str, server: ServerState = Depends(server_state)) -> VectorInfo:
    return VectorInfo.of(name, _served(server, name))


@router.get("/v1/vectors/{name}/file")
async def download_vector(name: str, server: ServerState = Depends(server_state)) -> Response:
    from safetensors.torch import save

    vec = _served(server, name)
    data = save({f"layer.{l}": t.contiguous() for l, t in vec.directions.items()},
                metadata={"steerlab": vec.meta.to_json()})
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{name}.safetensors"'})


@router.post("/v1/vectors", status_code=201, response_model=VectorInfo)
async def register_vector(request: Request, name: str = "", overwrite: bool = False,
                          server: ServerState = Depends(server_state)) -> VectorInfo:
    """The body is the vector file's bytes (safetensors or GGUF), read raw: no multipart, no JSON."""
    data = await request.body()
    try:
        vec = await asyncio.to_thread(server.registry.register, name, data, overwrite=overwrite)
    except ValueError as e:
        raise ApiError(400, str(e), param="name")
    except KeyError:
        raise ApiError(409, f"a vector named '{name}' exists; pass overwrite=true to replace it", param="name",
                       code="vector_exists")
    except VectorError as e:
        raise ApiError(400, str(e), param="body", code="invalid_vector")
    return VectorInfo.of(name, vec)


@router.delete("/v1/vectors/{name}", response_model=VectorDeleted)
async def delete_vector(name: str, server: ServerState = Depends(server_state)) -> VectorDeleted:
    if not server.registry.delete(name):
        _served(server, name)  # raises the 404
    return VectorDeleted(id=name)
