"""The dashboard's static files (static/: plain HTML, CSS and JS, no build step),
read once when the app is built, with the headers every page answer carries."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Final, NamedTuple

__all__ = ["PAGE_HEADERS", "Asset", "load_assets", "load_index"]

_STATIC: Final = Path(__file__).resolve().parent.parent / "static"
_ASSET_TYPES: Final = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml",
                       ".html": "text/html"}
# The dashboard loads only its own files and talks only to this server.
PAGE_HEADERS: Final = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                               "script-src 'self'; connect-src 'self'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class Asset(NamedTuple):
    body: bytes
    content_type: str
    etag: str


def load_index() -> str:
    """static/index.html, or a one-line page pointing at the API when it is missing."""
    try:
        return (_STATIC / "index.html").read_text(encoding="utf-8")
    except OSError:
        return "<!doctype html><title>Retinue</title><p>See <a href=/openapi.json>the API</a>."


def load_assets() -> dict[str, Asset]:
    """The dashboard's files (static/, flat), read once: name -> body, type, ETag."""
    assets: dict[str, Asset] = {}
    paths = sorted(_STATIC.iterdir()) if _STATIC.is_dir() else []
    for path in paths:
        content_type = _ASSET_TYPES.get(path.suffix)
        if content_type is not None and path.is_file():
            body = path.read_bytes()
            assets[path.name] = Asset(body, content_type,
                                      f'"{hashlib.sha256(body).hexdigest()[:20]}"')
    return assets
