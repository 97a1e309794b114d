"""`create_app`: the aiohttp application over a Runtime and the onboarding app,
assembled from the resources' routes, the middlewares and the OpenAPI document."""

from __future__ import annotations

from typing import Final

from aiohttp import web

from actors import Onboarding
from runtime import Runtime

from .metrics import http_metrics
from .middleware import auth_middleware, error_middleware, metrics_middleware
from .routes import Customers, Dashboard, DeadLetters, Docs, Health, Pages, Workflows
from .routing import Resource, Services
from .sampler import Sampler
from .validation import MAX_BODY_KEY

__all__ = ["MAX_BODY", "create_app"]

MAX_BODY: Final = 64 * 1024


def create_app(
    runtime: Runtime,
    onboarding: Onboarding,
    *,
    api_token: str | None = None,
    resolve_timeout: float = 5.0,
    max_body: int = MAX_BODY,
) -> web.Application:
    """The aiohttp application over `runtime` (open it before serving commands;
    /readyz says 503 until it is). Its HTTP metrics join the runtime's registry."""
    metrics = http_metrics(runtime.metrics.registry)
    services = Services(runtime, onboarding, metrics, resolve_timeout)
    sampler = Sampler(runtime)
    docs = Docs()
    resources: list[Resource] = [
        Customers(services), Workflows(services), DeadLetters(services),
        Dashboard(services, sampler), Health(services), docs, Pages(),
    ]
    routes = [route for resource in resources for route in resource.routes()]
    commands = {(r.method, r.path): r.command for r in routes if r.command is not None}
    open_routes = frozenset((r.method, r.path) for r in routes if r.open)
    app = web.Application(
        client_max_size=max_body,
        middlewares=[
            metrics_middleware(metrics, sampler),
            error_middleware(metrics, commands),
            auth_middleware(api_token, open_routes),
        ],
    )
    app[MAX_BODY_KEY] = max_body
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
    docs.publish(routes, auth=api_token is not None)
    return app
