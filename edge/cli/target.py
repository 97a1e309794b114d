"""Where a command acts: the database (DATABASE_URL, or the embedded server's
--data-dir) or a running server's HTTP API (--url, --token).

On the database, the embedded PostgreSQL of --data-dir is used as it is when a
server (or anyone) already runs it, and left running; otherwise it is started
for the command and stopped after it. A folder without a database is refused:
an operator command never creates an empty one.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Collection, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp
import anyio
import msgspec

from journal import EmbeddedPostgres, Journal, JournalError, PostgresJournal

from .errors import CliError, Refused, Unreachable, UsageError

__all__ = ["Api", "Target", "open_target"]

_T = TypeVar("_T")

# Seconds a request to --url may take before the server counts as unreachable.
_HTTP_TIMEOUT: Final = 30.0


class Api:
    """A running server's HTTP API: JSON in and out, its errors as the CLI's."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self._session = session
        self._url = url.rstrip("/")

    async def get(self, path: str, reply: type[_T], params: Mapping[str, str] | None = None) -> _T:
        return await self._call("GET", path, reply, params=dict(params or {}))

    async def post(self, path: str, reply: type[_T], body: Any = None, *,
                   refusals: Collection[int] = ()) -> _T:
        """POST `body` (default: an empty object) as JSON, declared as JSON: the
        edge takes only JSON bodies. A status in `refusals` is a refusal (exit 1)
        even where it would be bad usage (a 422 for a value the command checked
        against the server's state, not its form)."""
        data = msgspec.json.encode({} if body is None else body)
        return await self._call("POST", path, reply, refusals, data=data,
                                headers={"Content-Type": "application/json"})

    async def _call(self, method: str, path: str, reply: type[_T],
                    refusals: Collection[int] = (), **options: Any) -> _T:
        url = self._url + path
        try:
            async with self._session.request(method, url, **options) as answer:
                body = await answer.read()
                status = answer.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Unreachable(f"cannot reach the server at {self._url}: "
                              f"{exc or type(exc).__name__}; check --url") from exc
        if status >= 300:
            error = _http_error(method, path, status, body)
            raise Refused(str(error)) if status in refusals else error
        try:
            return msgspec.json.decode(body, type=reply)
        except msgspec.DecodeError as exc:
            raise Refused(f"{method} {path} answered {status} with a body this CLI does not "
                          f"understand ({exc}); is --url a Retinue server of this version?"
                          ) from exc


def _http_error(method: str, path: str, status: int, body: bytes) -> CliError:
    try:
        message = str(msgspec.json.decode(body)["error"])
    except (msgspec.DecodeError, KeyError, TypeError):
        message = body.decode(errors="replace")[:200] or "no details"
    text = f"{method} {path}: {status}: {message}"
    if status in (400, 422):
        return UsageError(text)
    if status in (401, 403):
        return Refused(text + " (check --token, or RETINUE_OPERATOR_TOKEN / RETINUE_API_TOKEN)")
    return Refused(text)


class Target:
    """What a command acts on: exactly one of `journal` (the database) and `api`
    (a server)."""

    def __init__(self, *, journal: Journal | None = None, api: Api | None = None) -> None:
        self.journal = journal
        self.api = api

    def database(self) -> Journal:
        """The journal; the command was registered as database-only, so it is set."""
        assert self.journal is not None
        return self.journal


@contextlib.asynccontextmanager
async def open_target(
    *, url: str | None, token: str | None, database_url: str | None, data_dir: str
) -> AsyncIterator[Target]:
    """The server at `url` if given, else the database. Raises Unreachable."""
    if url:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        timeout = aiohttp.ClientTimeout(total=_HTTP_TIMEOUT)
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            yield Target(api=Api(session, url))
        return
    async with _open_database(database_url, data_dir) as journal:
        yield Target(journal=journal)


@contextlib.asynccontextmanager
async def _open_database(database_url: str | None, data_dir: str) -> AsyncIterator[Journal]:
    async with contextlib.AsyncExitStack() as stack:
        try:
            dsn = database_url or await _embedded(stack, data_dir)
            journal = await PostgresJournal.connect(dsn, min_size=1, max_size=2)
        except JournalError as exc:
            where = "DATABASE_URL" if database_url else f"--data-dir {data_dir}"
            raise Unreachable(f"cannot reach the database ({where}): {exc}") from exc
        stack.push_async_callback(journal.aclose)
        yield journal


async def _embedded(stack: contextlib.AsyncExitStack, data_dir: str) -> str:
    """The DSN of the embedded PostgreSQL in `data_dir`, started (and stopped on
    exit) unless it runs already."""
    if not (Path(data_dir) / "PG_VERSION").exists():
        raise Unreachable(f"no Retinue database in {data_dir!r}: pass the --data-dir the "
                          "server uses, or set DATABASE_URL")
    server = EmbeddedPostgres(data_dir)
    if await anyio.to_thread.run_sync(server.is_running):
        return server.dsn  # a server's: leave it running
    dsn = await anyio.to_thread.run_sync(server.start)
    stack.push_async_callback(_stop, server)
    return dsn


async def _stop(server: EmbeddedPostgres) -> None:
    with anyio.CancelScope(shield=True):
        await anyio.to_thread.run_sync(server.stop)
