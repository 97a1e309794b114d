"""Shared bench plumbing: a fresh database on the embedded server, percentiles, output."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import msgspec

from journal import EmbeddedPostgres

__all__ = ["fresh_database", "percentile", "emit", "machine"]

BENCH_DATA_DIR = os.environ.get("RETINUE_BENCH_DATA_DIR", ".retinue/bench-pg")


@asynccontextmanager
async def fresh_database(label: str) -> AsyncIterator[str]:
    """A new, empty database for one benchmark; yields its DSN, drops it after.

    DATABASE_URL, when set, names the server to use; otherwise the embedded one."""
    server = None
    admin_dsn = os.environ.get("DATABASE_URL")
    if admin_dsn is None:
        server = EmbeddedPostgres(BENCH_DATA_DIR)
        admin_dsn = await anyio.to_thread.run_sync(server.start)
    name = f"bench_{label}_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        yield _with_database(admin_dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def _with_database(dsn: str, name: str) -> str:
    head, sep, query = dsn.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{name}{sep}{query}"


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100) of `samples`, nearest-rank; 0 for none."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "revision": revision(),
    }


def revision() -> str:
    """The commit measured, "+dirty" when the code under test has uncommitted changes
    (RETINUE_BENCH_REVISION overrides it, e.g. for a `git archive` export)."""
    if os.environ.get("RETINUE_BENCH_REVISION"):
        return os.environ["RETINUE_BENCH_REVISION"]
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root,
                              capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "runtime", "journal",
                                "actors", "server.py"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def emit(result: dict[str, Any]) -> None:
    """Print one JSON line: the benchmark's whole output."""
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    sys.stdout.flush()
