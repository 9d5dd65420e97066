"""What every route shares, in one typed object on `app.state.server`: the engine, the vector registry,
the metrics, the request limits and the tokenizing thread. `create_app` builds it once; routes reach
it through the `server_state` dependency, so no route closes over `create_app`'s locals."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from fastapi import Request

from .engines.base import Engine
from .metrics import Metrics
from .registry import Registry


@dataclass(frozen=True)
class Limits:
    """What one generation request may ask for."""

    max_new_tokens: int  # a request's max_tokens above this is a 400
    default_max_tokens: int  # a request without max_tokens gets min(this, max_new_tokens)

    def new_tokens(self, asked: int | None) -> int:
        """The tokens a request generates at most: what it asked for, else the default (within the limit)."""
        return asked or min(self.default_max_tokens, self.max_new_tokens)


@dataclass
class ServerState:
    """The server behind the routes (see the module docs). `tokenize_pool` is one thread: tokenizing runs
    off the event loop, and one thread keeps the tokenizer's use serial."""

    engine: Engine
    registry: Registry
    metrics: Metrics
    limits: Limits
    tokenize_pool: ThreadPoolExecutor
    started: int = field(default_factory=lambda: int(time.time()))  # /v1/models' `created`

    @property
    def lm(self):
        """The served model (its tokenizer and shape; the engine alone runs it)."""
        return self.engine.model

    @property
    def model_id(self) -> str:
        return self.engine.model.model_id


def server_state(request: Request) -> ServerState:
    """The `ServerState` of the app serving `request` (a FastAPI dependency)."""
    return request.app.state.server
