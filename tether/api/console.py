"""The web console (DESIGN §12): static files shipped in the package, served at /console.

The console is a client of the public API like any other (same keys, same routes); this
module only serves its files, with headers that make it hard to turn model output into code:
a strict Content-Security-Policy (scripts from this origin only, no inline scripts or styles,
Trusted Types required so no string can reach `innerHTML` and friends), no framing, no MIME
sniffing, no referrer. Only the console's responses carry this CSP: the API's answers are
JSON, and /docs (Swagger UI) needs inline scripts.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tether.api import errors

FILES = Path(__file__).resolve().parent.parent / "console"

CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-cache",  # revalidate (ETag): an upgraded server serves its own files
}
_CODES = {404: "not_found", 405: "method_not_allowed"}


class _WithHeaders:
    """Adds the console's security headers to every answer of the wrapped app (404s too)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(HEADERS)
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except HTTPException as exc:  # StaticFiles' 404 and 405: answered here, with headers
            answer = errors.error_response(
                exc.status_code,
                _CODES.get(exc.status_code, "http_error"),
                str(exc.detail),
                headers={**(exc.headers or {}), **HEADERS},
            )
            await answer(scope, receive, send)


def install(app: FastAPI) -> None:
    """Serve the console at /console/ (index.html and its modules)."""

    @app.get("/console", include_in_schema=False)
    async def console_root() -> RedirectResponse:
        # the console's files are addressed relative to /console/
        return RedirectResponse("/console/", status_code=308, headers=HEADERS)

    app.mount("/console", _WithHeaders(StaticFiles(directory=FILES, html=True)), name="console")
