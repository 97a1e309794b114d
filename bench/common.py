"""Shared bench plumbing: a fresh database on the bench server, percentiles, output."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import msgspec

from journal import EmbeddedPostgres

from .databases import fresh_database

__all__ = ["bench_database", "bench_server_dsn", "percentile", "emit", "machine"]

BENCH_DATA_DIR = os.environ.get("RETINUE_BENCH_DATA_DIR", ".retinue/bench-pg")


async def bench_server_dsn() -> str:
    """The server the benchmarks create their databases on: DATABASE_URL's when it
    is set, else the embedded one in RETINUE_BENCH_DATA_DIR (started if need be)."""
    admin_dsn = os.environ.get("DATABASE_URL")
    if admin_dsn is not None:
        return admin_dsn
    return await anyio.to_thread.run_sync(EmbeddedPostgres(BENCH_DATA_DIR).start)


@asynccontextmanager
async def bench_database(label: str) -> AsyncIterator[str]:
    """A new, empty database for one benchmark (`bench_<label>_...`); yields its
    DSN, drops it after."""
    async with fresh_database(await bench_server_dsn(), f"bench_{label}") as dsn:
        yield dsn


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
                                "actors", "edge", "server.py"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def emit(result: dict[str, Any]) -> None:
    """Print one JSON line: the benchmark's whole output."""
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    sys.stdout.flush()
