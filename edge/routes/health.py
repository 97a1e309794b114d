"""For the machines that watch the server: liveness, readiness, and the Prometheus
scrape. Served without the API token; none of them holds customer data."""

from __future__ import annotations

from typing import Final

import anyio
from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from edge.errors import Unavailable
from edge.routing import Route, Services
from edge.schemas import ErrorReply, StatusReply, json_response
from journal import JournalError

__all__ = ["Health"]

_READY_PING_TIMEOUT: Final = 1.0  # seconds /readyz (and /metrics' count) waits for the database


class Health:
    """GET /metrics, GET /healthz and GET /readyz."""

    def __init__(self, services: Services) -> None:
        self._s = services
        self._exposition = make_aiohttp_handler(services.runtime.metrics.registry)

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/metrics", self.metrics,
                  "Prometheus metrics", {200: ("the exposition", None)}, open=True,
                  content_type="text/plain"),
            Route("GET", "/healthz", self.healthz, "Liveness",
                  {200: ("alive", StatusReply)}, open=True),
            Route("GET", "/readyz", self.readyz,
                  "Readiness: recovered and the journal reachable",
                  {200: ("ready", StatusReply), 503: ("not ready", ErrorReply)}, open=True),
        ]

    async def metrics(self, request: web.Request) -> web.StreamResponse:
        # retinue_workflows_parked is journal truth: counted now, for this scrape.
        # A database that does not answer in time leaves the last count standing.
        with anyio.move_on_after(_READY_PING_TIMEOUT):
            try:
                await self._s.runtime.count_parked()
            except JournalError:
                pass
        return await self._exposition(request)

    async def healthz(self, request: web.Request) -> web.Response:
        return json_response(200, StatusReply(status="ok"))

    async def readyz(self, request: web.Request) -> web.Response:
        # The runtime only learns of an outage when it writes; an idle server
        # asks the database itself (one SELECT 1 per probe, bounded).
        if self._s.runtime.ready and await self._journal_answers():
            return json_response(200, StatusReply(status="ready"))
        raise Unavailable.not_ready_probe()

    async def _journal_answers(self) -> bool:
        with anyio.move_on_after(_READY_PING_TIMEOUT):
            try:
                await self._s.runtime.journal.ping()
            except JournalError:
                return False
            return True
        return False
