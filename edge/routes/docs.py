"""GET /openapi.json: the OpenAPI document of every route the app serves."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from edge.openapi import openapi_document
from edge.routing import Route
from edge.schemas import encoder

__all__ = ["Docs"]


class Docs:
    """GET /openapi.json. The document is built once, after every route is known
    (this one included): call `publish` with the app's routes."""

    def __init__(self) -> None:
        self._document = b"{}"

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/openapi.json", self.document, "This document",
                  {200: ("the OpenAPI 3.1 document", None)}),
        ]

    def publish(self, routes: Sequence[Route], *, auth: bool) -> None:
        self._document = encoder.encode(openapi_document(routes, auth=auth))

    async def document(self, request: web.Request) -> web.Response:
        return web.Response(body=self._document, content_type="application/json")
