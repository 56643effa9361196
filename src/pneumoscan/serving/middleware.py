"""ASGI middleware of the server: an early 413 on a declared over-size body, and security headers."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The page and the API load nothing from elsewhere; images are shown from data: and blob: URLs.
PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; object-src 'none'; base-uri 'none'; "
            "frame-ancestors 'none'; form-action 'self'")
# FastAPI's docs page starts Swagger UI with an inline script.
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; frame-ancestors 'none'")

class DeclaredSizeLimit:
    """Refuses a request whose declared Content-Length is over the limit before reading any of it.

    Bodies without a length (chunked) are counted as they arrive by FastAPI's own limit on each route;
    this answers the common case early and as JSON (the route limiter's own reply is plain text).
    """

    def __init__(self, app: ASGIApp, max_bytes: int, detail: str) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.detail = detail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            for key, value in scope["headers"]:
                if key == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                    response = JSONResponse({"detail": self.detail}, status_code=413, headers={"Connection": "close"})
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """Adds a strict Content-Security-Policy (no resource from elsewhere) and related headers."""

    def __init__(self, app: ASGIApp, docs_paths: tuple[str, ...] = ()) -> None:
        self.app = app
        self.docs_paths = docs_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = DOCS_CSP if scope["path"] in self.docs_paths else PAGE_CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers.setdefault("Content-Security-Policy", csp)
                headers.setdefault("X-Content-Type-Options", "nosniff")
                headers.setdefault("Referrer-Policy", "no-referrer")
                if not scope["path"].startswith(("/static", "/docs", "/static-offline-docs")):
                    headers.setdefault("Cache-Control", "no-store")  # results about patients' images
            await send(message)

        await self.app(scope, receive, send_with_headers)
