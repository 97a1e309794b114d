"""Who may call what: the two tokens, the role each route needs, the auth middleware,
and the rule that a server other machines can reach has a token.

- The API token (`RETINUE_API_TOKEN`) is what a product holds: it invites, verifies
  and reads customers (every route under `/customers`).
- The operator token (`RETINUE_OPERATOR_TOKEN`) is the dashboard's and the operator
  tools': everything else that is not open (workflows and their actions, dead letters,
  the dashboard's `/api/...` and `/actors/...`). It serves the product's routes too.
- With one of them set, that one serves both roles. `/openapi.json` takes either.
- Open routes (health, readiness, metrics, the dashboard's page and files) take none.

Roles go by path, not by a flag on each route, so a route added later under
`/workflows` is an operator's without anyone remembering to say so.
"""

from __future__ import annotations

import enum
import hmac
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .errors import Forbidden, Unauthorized
from .middleware import route_label
from .routing import Route

__all__ = [
    "TOKENS_KEY",
    "ExposureError",
    "Role",
    "Tokens",
    "auth_middleware",
    "check_exposure",
    "is_loopback",
    "route_roles",
]


class Role(enum.Enum):
    OPEN = "open"  # no token
    API = "api"  # the product's token (or the operator's)
    OPERATOR = "operator"  # the operator's token
    EITHER = "either"  # any valid token


# What a product calls; every other route that is not open is an operator's.
_API_PREFIXES: Final = ("/customers",)
_EITHER_PATHS: Final = frozenset({"/openapi.json"})


def _role(route: Route) -> Role:
    if route.open:
        return Role.OPEN
    if route.path in _EITHER_PATHS:
        return Role.EITHER
    if any(route.path == p or route.path.startswith(p + "/") for p in _API_PREFIXES):
        return Role.API
    return Role.OPERATOR


def route_roles(routes: Sequence[Route]) -> dict[tuple[str, str], Role]:
    """(method, path template) -> the role that route needs."""
    return {(r.method, r.path): _role(r) for r in routes}


@dataclass(frozen=True)
class Tokens:
    """The bearer tokens the server takes; both None: no auth (loopback only)."""

    api: str | None = None
    operator: str | None = None

    @property
    def any(self) -> bool:
        return bool(self.api or self.operator)

    def roles_of(self, given: bytes) -> frozenset[Role]:
        """The roles a presented token holds (none if it is no token of ours).
        Both tokens are compared every time, so a guess costs the same either way."""
        api = _matches(given, self.api)
        operator = _matches(given, self.operator)
        if operator or (api and not self.operator):
            return frozenset({Role.API, Role.OPERATOR})
        return frozenset({Role.API}) if api else frozenset()


def _matches(given: bytes, token: str | None) -> bool:
    return hmac.compare_digest(given, token.encode()) if token else False


TOKENS_KEY: Final = web.AppKey("tokens", Tokens)


def auth_middleware(tokens: Tokens, roles: Mapping[tuple[str, str], Role]) -> Middleware:
    """401 without a valid bearer token, 403 with a valid one of the wrong role.
    Unmatched paths take any valid token (then answer 404 or 405)."""
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = route_label(request)
        role = roles.get((request.method, route), Role.EITHER)
        if not tokens.any or role is Role.OPEN:
            return await handler(request)
        held = tokens.roles_of(_bearer(request))
        if not held:
            raise Unauthorized()
        if role is not Role.EITHER and role not in held:
            raise Forbidden.needs_role("operator", "RETINUE_OPERATOR_TOKEN", request.method,
                                       route)
        return await handler(request)

    return authenticate


def _bearer(request: web.Request) -> bytes:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return b""
    # "replace": a header aiohttp decoded with surrogates is still only a wrong token.
    return given.strip().encode("utf-8", "replace")


# -- listening beyond this machine ------------------------------------------------------


class ExposureError(ValueError):
    """Refused: serving on an address other machines can reach, with no token."""

    def __init__(self, host: str) -> None:
        super().__init__(
            f"refusing to listen on {host!r} without a token: anyone who can reach it "
            "could invite customers and act as an operator. Set RETINUE_API_TOKEN and/or "
            "RETINUE_OPERATOR_TOKEN (--api-token, --operator-token), or listen on 127.0.0.1")
        self.host = host


def is_loopback(host: str) -> bool:
    """Whether `host` is this machine only (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, tokens: Tokens) -> None:
    """Raise ExposureError if `host` is not loopback and no token is set."""
    if not is_loopback(host) and not tokens.any:
        raise ExposureError(host)
