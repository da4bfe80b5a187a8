"""The web dashboard: one static page (`/`) and its assets (`/static/...`), shipped inside the package.

The page is plain HTML, CSS and JavaScript modules with no build step and no third-party code; it talks
to the controller only through the public REST API under `/v1` and its Server-Sent Events, so it works
offline and behind the same API token as any other client. Include it with
`app.include_router(dashboard.router)`.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).parent / "static"

_MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# Assets change only with the package; `no-cache` makes browsers revalidate (cheap: ETag) so an
# upgraded controller never serves a stale script next to a new page.
_HEADERS = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}

router = APIRouter(include_in_schema=False)


def _asset(name: str) -> Path:
    """The shipped asset called `name`; only files directly in static/ are served (no path traversal)."""
    if "/" in name or "\\" in name or name.startswith("."):
        raise HTTPException(status_code=404, detail="not found")
    path = STATIC_DIR / name
    if path.suffix not in _MEDIA_TYPES or not path.is_file():
        raise HTTPException(status_code=404, detail="not found")
    return path


@router.get("/")
async def index() -> FileResponse:
    """The dashboard page."""
    return FileResponse(STATIC_DIR / "index.html", media_type=_MEDIA_TYPES[".html"], headers=_HEADERS)


@router.get("/static/{name}")
async def static_asset(name: str) -> FileResponse:
    """One of the page's scripts, style sheets or icons."""
    path = _asset(name)
    return FileResponse(path, media_type=_MEDIA_TYPES[path.suffix], headers=_HEADERS)
