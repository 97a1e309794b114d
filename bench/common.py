"""Shared bench plumbing: a fresh database on the bench server, percentiles, output."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import msgspec

from journal import EmbeddedPostgres

from .databases import fresh_database

__all__ = ["bench_database", "bench_server_dsn", "percentile", "emit", "machine", "save",
           "event_loop", "run_options", "tune_gc"]

BENCH_DATA_DIR = os.environ.get("RETINUE_BENCH_DATA_DIR", ".retinue/bench-pg")
# Where `emit` also files each result (`make bench` sets it to bench/results); unset,
# a result is only printed.
RESULTS_DIR_ENV = "RETINUE_BENCH_RESULTS"


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


def event_loop() -> str:
    """The loop the runtime picks ("asyncio" on a revision from before the choice, so
    that these benchmarks also run against older revisions: `python -m bench.ab`)."""
    try:
        from runtime.eventloop import event_loop as chosen
    except ImportError:
        return "asyncio"
    return chosen()


def run_options() -> dict[str, Any]:
    """`anyio.run` keyword arguments for the loop the runtime picks."""
    try:
        from runtime.eventloop import run_options as chosen
    except ImportError:
        return {}
    return chosen()


def tune_gc() -> None:
    """The collector settings the server applies (runtime/gctuning.py), for the
    benchmarks that embed the runtime in their own process, as an application would
    (none on a revision from before them: `python -m bench.ab`). Looked for beside
    the `runtime` package in use: the editable install would otherwise find this
    tree's module for an older revision's package."""
    import runtime

    if not (Path(runtime.__file__).parent / "gctuning.py").exists():
        return
    from runtime.gctuning import tune_gc as tune

    tune()


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0..100) of `samples`, nearest-rank; 0 for none."""
    if not samples:
        return 0.0
    ordered = sorted(samples)
    rank = max(0, min(len(ordered) - 1, round(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def machine() -> dict[str, Any]:
    """The facts a figure depends on: cores, CPU model, memory, how loaded the machine
    was when the benchmark began (the 1-minute load average: above the core count,
    something else shared the cores), Python and the event loop."""
    return {
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "revision": revision(),
        "dirty": revision().endswith("+dirty"),
        "event_loop": event_loop(),
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        pages, size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None
    return round(pages * size / 2**30, 1)


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
    """Print one JSON line: the benchmark's whole output; with RETINUE_BENCH_RESULTS
    set, also file it there (`save`)."""
    folder = os.environ.get(RESULTS_DIR_ENV)
    if folder and "bench" in result:
        result = save(result, Path(folder))
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    sys.stdout.flush()


def save(result: dict[str, Any], folder: Path) -> dict[str, Any]:
    """Write `result` to folder/<bench>-<UTC time>-<revision>.json, stamped with when
    it was measured and the command that reproduces it; returns the stamped result.
    `python -m bench.report` reads the newest file of each benchmark."""
    now = datetime.now(UTC)
    rev = result.get("machine", {}).get("revision") or revision()
    stamped = {
        **result,
        "measured_at": now.isoformat(timespec="seconds"),
        "command": "python -m bench " + " ".join([result["bench"], *_arguments()]),
    }
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{result['bench']}-{now:%Y%m%dT%H%M%SZ}-{rev.replace('+', '-')}.json"
    (folder / name).write_bytes(msgspec.json.format(msgspec.json.encode(stamped)) + b"\n")
    return stamped


def _arguments() -> list[str]:
    """This process's benchmark arguments (after `-m bench <name>`)."""
    args = sys.argv[1:]
    return args[1:] if args and not args[0].startswith("-") else args
