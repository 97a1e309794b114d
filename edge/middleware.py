"""The edge's middlewares, outermost first: metrics (every answer counted and timed,
the dashboard's sampler ticked), errors (every failure becomes the catalogue's JSON
answer; refused commands are counted), then, set up by `create_app`, the same-site
guard (edge/crosssite.py), auth (edge/access.py), and input (every POST says JSON,
every text from the path, query and headers is one the journal can hold)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from journal import InvalidTransitionError, JournalUnavailableError, WorkflowNotFoundError
from runtime import OverloadedError

from .crosssite import require_json
from .errors import (
    ApiError,
    BodyTooLarge,
    Conflict,
    InternalError,
    MethodNotAllowed,
    NotFound,
    Unavailable,
)
from .metrics import HttpMetrics
from .sampler import Sampler
from .validation import check_request_text

__all__ = ["error_middleware", "input_middleware", "metrics_middleware", "route_label"]

_log = logging.getLogger("retinue.server")


def route_label(request: web.Request) -> str:
    """The route's template (`/customers/{id}`), or "unmatched": a bounded label."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def metrics_middleware(metrics: HttpMetrics, sampler: Sampler) -> Middleware:
    @web.middleware
    async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
        began = time.perf_counter()
        response = await handler(request)
        route = route_label(request)
        metrics.requests.labels(request.method, route, str(response.status)).inc()
        metrics.latency.labels(request.method, route).observe(time.perf_counter() - began)
        sampler.tick()
        return response

    return observe


def error_middleware(
    metrics: HttpMetrics, commands: Mapping[tuple[str, str], str]
) -> Middleware:
    """Every failure becomes a JSON `{"error": ...}`; rejected commands are counted."""

    @web.middleware
    async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            error = exc
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            error = _from_http_exception(request, exc)
        except Exception as exc:  # noqa: BLE001 - the edge's supervisor: log, answer 500
            error = _from_exception(request, exc)
        command = commands.get((request.method, route_label(request)))
        if command is not None and error.reason is not None:
            metrics.rejected.labels(command, error.reason).inc()
        return error.response()

    return answer_errors


def _from_http_exception(request: web.Request, exc: web.HTTPException) -> ApiError:
    if exc.status == 404:
        return NotFound.route(request.method, request.path)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return MethodNotAllowed(request.method, request.path,
                                ", ".join(sorted(exc.allowed_methods)))
    if exc.status == 413:
        return BodyTooLarge()
    return ApiError(exc.status, exc.reason or f"HTTP {exc.status}")


def _from_exception(request: web.Request, exc: Exception) -> ApiError:
    """The runtime's and the journal's errors, translated at the boundary."""
    if isinstance(exc, OverloadedError):
        return Unavailable.overloaded(exc)
    if isinstance(exc, JournalUnavailableError):
        return Unavailable.journal(exc)
    if isinstance(exc, WorkflowNotFoundError):
        return NotFound(str(exc))
    if isinstance(exc, InvalidTransitionError):
        return Conflict.invalid_transition(exc)
    _log.exception("unexpected error answering %s %s", request.method, request.path)
    return InternalError.unexpected(request.method, request.path, exc)


def input_middleware() -> Middleware:
    """415 for a POST that does not say JSON; 400 for a path value, query or journaled
    header the journal could not hold. Before any handler, so every route is covered."""
    @web.middleware
    async def check_input(request: web.Request, handler: Handler) -> web.StreamResponse:
        require_json(request)
        check_request_text(request)
        return await handler(request)

    return check_input
