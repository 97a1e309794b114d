"""`create_app`: the aiohttp application over a Runtime and the onboarding app,
assembled from the resources' routes, the middlewares and the OpenAPI document."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from aiohttp import web

from actors import Onboarding
from runtime import Runtime

from .access import TOKENS_KEY, Tokens, auth_middleware, check_exposure, route_roles
from .crosssite import allowed_hosts, same_site_middleware
from .metrics import http_metrics
from .middleware import error_middleware, input_middleware, metrics_middleware
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
    operator_token: str | None = None,
    host: str = "127.0.0.1",
    extra_hosts: Iterable[str] = (),
    resolve_timeout: float = 5.0,
    max_body: int = MAX_BODY,
) -> web.Application:
    """The aiohttp application over `runtime` (open it before serving commands;
    /readyz says 503 until it is). Its HTTP metrics join the runtime's registry.

    `host` is where it will listen: the `Host` headers it answers are loopback's
    names, `host` and `extra_hosts`. Raises `ExposureError` if `host` is not
    loopback and neither token is set."""
    tokens = Tokens(api=api_token or None, operator=operator_token or None)
    check_exposure(host, tokens)
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
    app = web.Application(
        client_max_size=max_body,
        middlewares=[
            metrics_middleware(metrics, sampler),
            error_middleware(metrics, commands),
            same_site_middleware(allowed_hosts(host, extra_hosts)),
            auth_middleware(tokens, route_roles(routes)),
            input_middleware(),
        ],
    )
    app[MAX_BODY_KEY] = max_body
    app[TOKENS_KEY] = tokens
    for route in routes:
        app.router.add_route(route.method, route.path, route.handler)
    docs.publish(routes, auth=tokens.any)
    return app
