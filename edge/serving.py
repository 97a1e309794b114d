"""Putting an app on a socket: `open_server` for a block's duration, `serve` until
cancelled, and `Listening`, the bound server's URL and a way to stop accepting."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import anyio.abc
from aiohttp import web

from .access import TOKENS_KEY, Tokens, check_exposure

__all__ = ["Listening", "open_server", "serve"]


class Listening:
    """A bound server: its URL, and a way to stop taking new connections."""

    def __init__(self, runner: web.AppRunner) -> None:
        self._runner = runner

    @property
    def url(self) -> str:
        host, port = self._runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}"

    @property
    def port(self) -> int:
        return int(self._runner.addresses[0][1])

    async def stop_listening(self) -> None:
        """Close the listening sockets; requests already in flight carry on."""
        for site in list(self._runner.sites):
            await site.stop()


@asynccontextmanager
async def open_server(
    app: web.Application, *, host: str = "127.0.0.1", port: int = 0,
    shutdown_timeout: float = 10.0,
) -> AsyncIterator[Listening]:
    """Serve `app` on host:port (0: a free port) for the block's duration. On exit,
    stop listening and give requests in flight `shutdown_timeout` s. Raises
    `ExposureError`, before binding, if `host` is not loopback and `app` takes no
    token (an app not made by `create_app` counts as taking none)."""
    check_exposure(host, app.get(TOKENS_KEY, Tokens()))
    runner = web.AppRunner(app, handle_signals=False, access_log=None,
                           shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        yield Listening(runner)
    finally:
        with anyio.CancelScope(shield=True), anyio.move_on_after(shutdown_timeout + 1):
            await runner.cleanup()


async def serve(
    app: web.Application, *, host: str = "127.0.0.1", port: int = 0,
    task_status: anyio.abc.TaskStatus[str] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `app` until cancelled; `await tg.start(serve, app)` gives its URL."""
    async with open_server(app, host=host, port=port) as server:
        task_status.started(server.url)
        await anyio.sleep_forever()
