"""Errors as the client sees them: always OpenAI-shaped JSON (`responses.ErrorBody`), never a stack trace.

Routes raise `ApiError`; `install_error_handlers` answers it, FastAPI's validation errors (as one 400
naming the field), Starlette's HTTP errors (404 route, 405 method) and, last, any bug (500, logged).
"""

from __future__ import annotations

import logging
from typing import Optional

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .responses import error_body

log = logging.getLogger("steerlab.serve")


class ApiError(Exception):
    """An answer other than success: HTTP `status`, OpenAI's error fields, and any headers (Retry-After)."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 type_: Optional[str] = None, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers
        self.type = type_ or ("invalid_request_error" if status < 500 else "server_error")


def error_response(status: int, message: str, type_: str = "invalid_request_error", param=None, code=None,
                   headers=None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status, headers=headers)


def _validation_message(e: RequestValidationError) -> tuple[str, Optional[str]]:
    """One message for up to five problems, and the first field named (OpenAI's `param`)."""
    parts, param = [], None
    for err in e.errors()[:5]:
        if err.get("type") == "json_invalid":
            parts.append(f"the body is not valid JSON ({err.get('ctx', {}).get('error', 'decode error')})")
            continue
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        param = param or (".".join(loc) or None)
        parts.append(f"{'.'.join(loc) or 'body'}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request", param


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request, e: ApiError):
        return error_response(e.status, e.message, e.type, e.param, e.code, e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, e: RequestValidationError):
        message, param = _validation_message(e)
        return error_response(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, e: StarletteHTTPException):
        return error_response(e.status_code, str(e.detail),
                              "invalid_request_error" if e.status_code < 500 else "server_error")

    @app.exception_handler(Exception)
    async def _internal(_request, e: Exception):  # pragma: no cover - a bug, not an input
        log.exception("unhandled error")
        return error_response(500, f"internal error: {type(e).__name__}", "server_error")
