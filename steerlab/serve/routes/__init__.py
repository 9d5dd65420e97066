"""The server's routes, one router per job: `generation` (chat and text completions), `vectors` (the
registry), `meta` (the model, health, metrics). Each reads the shared `state.ServerState` through the
`server_state` dependency; `app.create_app` includes them."""

from .generation import router as generation
from .meta import router as meta
from .vectors import router as vectors

__all__ = ["generation", "meta", "vectors"]
