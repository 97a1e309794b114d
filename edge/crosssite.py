"""Keeping other sites' pages from driving the API through a visitor's browser.

A server on loopback without a token trusts whoever can reach it, and a browser on
the same machine can: a page elsewhere could POST to it, or rebind its own DNS name
to 127.0.0.1 and read the answers. Three rules close that:

- the `Host` header must name this server (DNS rebinding sends the attacker's name);
- a state-changing request with an `Origin` header must come from this server's
  own origin (the dashboard's page does; another site's page does not);
- every POST says `Content-Type: application/json`, which a page on another site
  cannot send without a CORS preflight that this server never grants.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from yarl import URL

from .errors import Forbidden, MisdirectedRequest, UnsupportedMediaType

__all__ = [
    "allowed_hosts",
    "host_name",
    "is_json",
    "require_json",
    "same_origin",
    "same_site_middleware",
]

_LOOPBACK_NAMES: Final = ("localhost", "127.0.0.1", "::1")
_EVERY_INTERFACE: Final = frozenset({"", "0.0.0.0", "::"})
_STATE_CHANGING: Final = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


def allowed_hosts(host: str, extra: Iterable[str] = ()) -> frozenset[str] | None:
    """The names a `Host` header may give for a server bound to `host`: loopback's,
    `host`'s own, and `extra` (RETINUE_ALLOWED_HOSTS). None means any name: `*` in
    `extra`, or a server bound to every interface with no names configured (it has a
    token, and a page cannot make a browser send a token it does not know)."""
    names = {n.strip().lower().strip("[]") for n in extra if n.strip()}
    if "*" in names or (host in _EVERY_INTERFACE and not names):
        return None
    if host not in _EVERY_INTERFACE:
        names.add(host.lower().strip("[]"))
    return frozenset(names.union(_LOOPBACK_NAMES))


def host_name(header: str) -> str | None:
    """The name in a `Host` header (`name`, `name:port`, `[v6]`, `[v6]:port`),
    lower case, without brackets; None if it is not one."""
    split = _split_host(header)
    return None if split is None else split[0]


def _split_host(header: str) -> tuple[str, int | None] | None:
    header = header.strip().lower()
    if header.startswith("["):
        name, bracket, rest = header[1:].partition("]")
        if not bracket:
            return None
        if not rest:
            return name, None
        return (name, int(rest[1:])) if _is_port(rest) else None
    name, colon, port = header.rpartition(":")
    if not colon:
        return header, None
    if ":" in name or not _is_port(colon + port):
        return None
    return name, int(port)


def _is_port(text: str) -> bool:
    digits = text[1:]
    return text.startswith(":") and 0 < len(digits) <= 5 and digits.isascii() \
        and digits.isdigit()


def same_origin(origin: str, host: str | None) -> bool:
    """Whether `Origin` is the origin of the server the `Host` header names."""
    split = None if host is None else _split_host(host)
    if split is None:
        return False
    try:
        url = URL(origin)
        port = url.port
    except (ValueError, TypeError):  # not a URL; "null" (an opaque origin) is one
        return False
    name, host_port = split
    if host_port is None:
        host_port = _DEFAULT_PORTS.get(url.scheme)
    return url.host is not None and url.host.strip("[]").lower() == name and port == host_port


def same_site_middleware(allowed: frozenset[str] | None) -> Middleware:
    """421 for a `Host` that is not this server's; 403 for a state-changing request
    from another origin. Requests without the headers pass: a browser always sends
    `Host`, and `Origin` on every cross-site request that changes state."""
    shown = "any name" if allowed is None else ", ".join(
        f"[{name}]" if ":" in name else name for name in sorted(allowed))

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host")
        if host is not None and allowed is not None and host_name(host) not in allowed:
            raise MisdirectedRequest(host, shown)
        origin = request.headers.get("Origin")
        if (request.method in _STATE_CHANGING and origin is not None
                and not same_origin(origin, host)):
            raise Forbidden.foreign_origin(origin, host or "")
        return await handler(request)

    return guard


def is_json(content_type: str) -> bool:
    """`application/json` or a `+json` type (parameters such as charset aside)."""
    return content_type == "application/json" or content_type.endswith("+json")


def require_json(request: web.Request) -> None:
    """415 for a POST to a route that exists unless it says its body is JSON."""
    if request.method != "POST" or request.match_info.http_exception is not None:
        return
    if "Content-Type" not in request.headers:
        raise UnsupportedMediaType(None)
    if not is_json(request.content_type):
        raise UnsupportedMediaType(request.content_type)
