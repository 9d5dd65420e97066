"""The browser playground: static HTML/CSS/JS in `static/`, no build step, no network at install time.

`mount_playground(app)` serves it at `/playground/` and redirects `/` there. These routes carry no data,
so the server leaves them open when it has an API key; the page asks for the key once and sends it as a
bearer header on every API call.
"""

from pathlib import Path

STATIC_DIR = Path(__file__).parent / "static"


def mount_playground(app) -> None:
    from fastapi.responses import RedirectResponse
    from fastapi.staticfiles import StaticFiles

    @app.get("/", include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse("playground/")

    @app.get("/playground", include_in_schema=False)
    def _playground() -> RedirectResponse:
        return RedirectResponse("playground/")

    app.mount("/playground", StaticFiles(directory=STATIC_DIR, html=True), name="playground")
