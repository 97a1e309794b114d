"""`ServerProcess`: `python server.py` as a child process, for the tests and the
benchmarks alike.

It starts with `--port 0` and learns its URL (and node id) from the JSON line the
server prints once it listens, `{"event": "listening", "url": ..., "node": ...}`;
a restart asks for the same port again, so the URL stays the same.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import anyio
import anyio.abc
import msgspec

from .polling import eventually

__all__ = ["ServerProcess"]

ROOT = Path(__file__).resolve().parent.parent


class ServerProcess:
    """`python server.py` on `database_url`, its stdout and stderr appended to
    `log` (across restarts). `env` is added to this process's environment
    (RETINUE_API_TOKEN and RETINUE_OPERATOR_TOKEN are "" unless `env` sets them);
    `name` sets RETINUE_NODE_ID.
    With `profile`, it runs under cProfile and writes its stats there on exit.
    `url`, `port` and `node` are known once `start` returns."""

    def __init__(
        self, *, database_url: str, log: Path, env: Mapping[str, str] | None = None,
        name: str | None = None, port: int = 0, profile: str | None = None,
    ) -> None:
        self.log = log
        self.name = name
        self.port = port
        self.url = ""
        self.node = ""
        self.starts = 0
        self._profile = profile
        self._env = {**os.environ, "DATABASE_URL": database_url, "RETINUE_API_TOKEN": "",
                     "RETINUE_OPERATOR_TOKEN": "",
                     **({"RETINUE_NODE_ID": name} if name else {}), **(env or {})}
        self._process: anyio.abc.Process | None = None

    # -- starting -----------------------------------------------------------------

    async def start(self, within: float = 30) -> None:
        """Start it and wait until it listens (it may answer 503 until ready);
        raises if it exits first, TimeoutError after `within` s."""
        assert self._process is None, "already running"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self._process = await anyio.open_process(
                [*self._command(), "--port", str(self.port)], stdin=subprocess.DEVNULL,
                stdout=out, stderr=out, env=self._env, cwd=ROOT,
            )
        self.starts += 1
        ready = await eventually(
            functools.partial(self._ready_line, self._process, offset), within=within,
            what=f"server.py to listen (log: {self.log})",
        )
        self.url, self.node = str(ready["url"]), str(ready.get("node", ""))
        self.port = urlsplit(self.url).port or self.port

    def _command(self) -> list[str]:
        if self._profile is None:
            return [sys.executable, str(ROOT / "server.py")]
        # Imported as `server`, so msgspec can resolve its annotations. Timed in CPU
        # seconds, not wall time: on shared cores a function's wall time includes the
        # time other processes held the core.
        return [sys.executable, "-c", "import cProfile, sys, time, server; "
                "p = cProfile.Profile(time.process_time); "
                f"p.runcall(server.main, sys.argv[1:]); p.dump_stats({self._profile!r})"]

    def _ready_line(self, process: anyio.abc.Process, offset: int) -> dict[str, Any] | None:
        """The server's `listening` line in the log after `offset`, if written yet."""
        if process.returncode is not None:
            raise RuntimeError(f"server.py exited with {process.returncode} while starting; "
                               f"see {self.log}")
        with self.log.open("rb") as log:
            log.seek(offset)
            text = log.read()
        for line in text.splitlines():
            if line.startswith(b'{"event"'):
                try:
                    found = msgspec.json.decode(line)
                except msgspec.DecodeError:
                    continue  # a line still being written
                if isinstance(found, dict) and found.get("event") == "listening":
                    return found
        return None

    async def wait_ready(self, within: float = 30) -> float:
        """Seconds until GET /readyz answers 200; raises if it exits meanwhile."""
        began = anyio.current_time()
        async with aiohttp.ClientSession() as session:

            async def ready() -> bool:
                if self.returncode is not None:
                    raise RuntimeError(f"server.py exited with {self.returncode}; "
                                       f"see {self.log}")
                try:
                    async with session.get(f"{self.url}/readyz") as reply:
                        return reply.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, within=within, what=f"{self.url}/readyz to answer 200")
        return anyio.current_time() - began

    # -- while it runs --------------------------------------------------------------

    @property
    def started(self) -> bool:
        """True from `start` until `kill` or `terminate` (even if it has exited)."""
        return self._process is not None

    @property
    def pid(self) -> int:
        return self._running().pid

    @property
    def returncode(self) -> int | None:
        """None while it runs (or when not started), else its exit code."""
        return None if self._process is None else self._process.returncode

    def send_signal(self, signum: signal.Signals) -> None:
        """E.g. SIGSTOP and SIGCONT, to freeze it and let it carry on."""
        self._running().send_signal(signum)

    async def wait(self) -> int:
        """Its exit code, once it has exited (by itself or a signal sent)."""
        return await self._running().wait()

    # -- stopping -------------------------------------------------------------------

    async def kill(self) -> None:
        """SIGKILL, like a power cut: no cleanup runs. It may be started again."""
        process = self._take()
        if process.returncode is None:
            process.kill()
        await process.wait()
        await process.aclose()

    async def terminate(self, within: float = 30) -> int | None:
        """SIGTERM; its exit code once it has stopped, or None if it had not within
        `within` s (it gets SIGKILL then). It may be started again."""
        process = self._take()
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            with anyio.move_on_after(within):
                return await process.wait()
            return None
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            await process.aclose()

    async def aclose(self) -> None:
        """SIGKILL if it still runs (a frozen one too)."""
        if self._process is not None:
            await self.kill()

    def _running(self) -> anyio.abc.Process:
        assert self._process is not None, "not running"
        return self._process

    def _take(self) -> anyio.abc.Process:
        process, self._process = self._running(), None
        return process
