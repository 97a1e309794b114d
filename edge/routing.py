"""How a resource declares its routes, and what their handlers share.

A resource module (edge/routes/) is a class over `Services` whose `routes()` lists
`Route`s: the app registers each one, the middlewares read its `command` and `open`
flags, and the OpenAPI document is generated from the same list, so a route cannot
be served without being described.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, NamedTuple, Protocol

from aiohttp.typedefs import Handler

from actors import Onboarding
from journal import Journal
from runtime import Runtime

from .errors import Unavailable
from .metrics import HttpMetrics
from .schemas import ErrorReply, PendingReply

__all__ = [
    "ANY_ID",
    "BAD",
    "BUSY",
    "INT_ID",
    "PENDING",
    "UUID_ID",
    "WORKFLOW_MISSING",
    "Resource",
    "Route",
    "Services",
]


class Route(NamedTuple):
    method: str
    path: str
    handler: Handler
    summary: str
    replies: Mapping[int, tuple[str, Any]]  # status -> (description, reply type or None)
    body: Any = None
    query: Any = None
    command: str | None = None  # a command's type, for the accepted/rejected metrics
    open: bool = False  # served without the API token
    content_type: str = "application/json"
    id_schema: Mapping[str, Any] | None = None
    idempotent: bool = False  # honours the Idempotency-Key header


class Resource(Protocol):
    def routes(self) -> list[Route]:
        """The routes this resource serves, in the order they are registered."""
        ...


# The schema of a path's {id}.
UUID_ID: Final = {"type": "string", "format": "uuid"}
ANY_ID: Final = {"type": "string"}
INT_ID: Final = {"type": "integer", "minimum": 0}

# Replies that several resources describe alike.
BAD: Final = ("the body or a value is invalid", ErrorReply)
BUSY: Final = ("overloaded or not ready; retry after Retry-After seconds", ErrorReply)
PENDING: Final = ("accepted, not resolved within the resolve timeout", PendingReply)
WORKFLOW_MISSING: Final = ("unknown workflow", ErrorReply)


class Services:
    """What the resources' handlers work with: one runtime (and its journal), the
    onboarding app, the edge's metrics, and how long a command waits for its answer."""

    def __init__(
        self, runtime: Runtime, onboarding: Onboarding, metrics: HttpMetrics,
        resolve_timeout: float,
    ) -> None:
        self.runtime = runtime
        self.journal: Journal = runtime.journal
        self.onboarding = onboarding
        self.metrics = metrics
        self.resolve_timeout = resolve_timeout

    def require_ready(self) -> None:
        """Raise 503 unless the runtime can accept a command now."""
        if not self.runtime.ready:
            raise Unavailable.not_ready()
