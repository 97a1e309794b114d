"""The dashboard's page and its files (static/), served without the API token: they
hold no data, and the page asks for the token before it calls the API."""

from __future__ import annotations

from aiohttp import web

from edge.assets import PAGE_HEADERS, load_assets, load_index
from edge.errors import NotFound
from edge.routing import Route
from edge.schemas import ErrorReply

__all__ = ["Pages"]


class Pages:
    """GET / and GET /assets/{name}."""

    def __init__(self) -> None:
        self._index = load_index()
        self._assets = load_assets()

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/", self.index, "The dashboard (no data: it asks for the token)",
                  {200: ("an HTML page", None)}, open=True, content_type="text/html"),
            Route("GET", "/assets/{name}", self.asset, "A file of the dashboard",
                  {200: ("the file", None), 304: ("unchanged (If-None-Match)", None),
                   404: ("no such file", ErrorReply)}, open=True, content_type="*/*"),
        ]

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(text=self._index, content_type="text/html", headers=PAGE_HEADERS)

    async def asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        found = self._assets.get(name)
        if found is None:
            raise NotFound.asset(name)
        headers = {"ETag": found.etag, **PAGE_HEADERS}
        if request.headers.get("If-None-Match") == found.etag:
            return web.Response(status=304, headers=headers)
        return web.Response(body=found.body, content_type=found.content_type, charset="utf-8",
                            headers=headers)
