"""``GET /``: the browser demo for browsers, the JSON index for every other client.

The page is static HTML, CSS and JavaScript from ``app/static``; everything it shows comes
from ``GET /models`` and ``POST /predict``, so it needs nothing from the server beyond the
files themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

from app.deps import RegistryDep

router = APIRouter(include_in_schema=False)

STATIC = Path(__file__).resolve().parent.parent / "static"
# Starlette's file server: ETag and Last-Modified, and 304 to a revalidation.
_files = StaticFiles(directory=STATIC)
# Served under /static/; a fixed list, so no request path ever reaches the file system.
ASSETS = {
    "demo.css": "text/css; charset=utf-8",
    "demo.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
# Scripts, styles and requests: this origin only, nothing inline. Images also from data:
# URLs, the form in which /predict returns the model's input image.
CSP = (
    "default-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate on each load (the ETag makes that cheap), so an upgrade is seen at once.
    "Cache-Control": "no-cache",
}


def prefers_html(accept: str) -> bool:
    """Whether an ``Accept`` header names ``text/html`` at least as highly as JSON.

    Browsers list ``text/html`` first when they navigate; curl, httpx and most API clients
    send ``*/*`` or ``application/json``, and they keep the JSON index.
    """
    html = json = 0.0
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        media = media.lower()
        if media == "text/html":
            html = max(html, quality)
        elif media == "application/json":
            json = max(json, quality)
    return html > 0 and html >= json


@router.get("/", response_model=None)
async def index(
    request: Request, response: Response, registry: RegistryDep
) -> Response | dict[str, Any]:
    """The demo page for a browser (unless MNIST_SERVE_DEMO=false), else the JSON index."""
    settings = registry.settings
    if settings.demo:
        # The answer depends on Accept: caches must keep the page and the JSON apart.
        response.headers["Vary"] = "Accept"
        if prefers_html(request.headers.get("accept", "")):
            headers = {**SECURITY_HEADERS, "Vary": "Accept"}
            return FileResponse(STATIC / "demo.html", media_type="text/html", headers=headers)
    return {
        "service": "mnist-serve",
        "docs": "/docs",
        "predict": "POST /predict",
        "models": sorted(registry.models),
        "default_model": settings.default_model,
    }


@router.get("/static/{name}")
async def asset(name: str, request: Request, registry: RegistryDep) -> Response:
    """The page's CSS, script and icon; 404 for anything else or with the demo off."""
    media_type = ASSETS.get(name)
    if media_type is None or not registry.settings.demo:
        raise HTTPException(404, "Not Found")
    response = await _files.get_response(name, request.scope)
    response.headers.update(SECURITY_HEADERS)
    response.headers["Content-Type"] = media_type  # not the system's mime.types guess
    return response
