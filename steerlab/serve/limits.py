"""ASGI middleware that guards every route before FastAPI sees it: body size (413) and the API key (401)."""

from __future__ import annotations

import hmac
import json

OPEN_PATHS = ("/health", "/", "/playground")  # and everything under /playground/ (static files)


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


def _error(message: str, type_: str, code: str) -> dict:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


class BodyLimit:
    """413 for a body over `limit` bytes (`upload_limit` on vector uploads), by Content-Length or as it streams."""

    def __init__(self, app, limit: int, upload_limit: int, upload_path: str = "/v1/vectors"):
        self.app, self.limit, self.upload_limit, self.upload_path = app, limit, upload_limit, upload_path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope.get("path") == self.upload_path and scope.get("method") == "POST" else self.limit
        message = f"request body is larger than {limit} bytes"
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    too_big = int(v) > limit
                except ValueError:
                    too_big = False
                if too_big:
                    return await _send_json(send, 413, _error(message, "invalid_request_error", "body_too_large"))
        seen = 0
        started = False
        refused = False

        async def limited_receive():
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit and not started:
                    # answer now; the app sees the client leave and whatever it sends is dropped
                    refused = True
                    await _send_json(send, 413, _error(message, "invalid_request_error", "body_too_large"))
                    return {"type": "http.disconnect"}
            return msg

        async def tracking_send(msg):
            nonlocal started
            if refused:
                return
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        await self.app(scope, limited_receive, tracking_send)


class BearerAuth:
    """With a key set, 401 on every route but /health and the static playground."""

    def __init__(self, app, key: str | None):
        self.app = app
        self.key = key.encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.key is None:
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        if path in OPEN_PATHS or path.startswith("/playground/"):
            return await self.app(scope, receive, send)
        given = b""
        for k, v in scope.get("headers", []):
            if k == b"authorization":
                given = v
        scheme, _, token = given.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
            return await _send_json(send, 401, _error("missing or wrong API key: send 'Authorization: Bearer KEY'",
                                                      "authentication_error", "invalid_api_key"),
                                    [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)
