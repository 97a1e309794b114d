"""python -m bench.profile [--invites 3000] [--stats PATH]: where an invite's server CPU
goes, by layer, and how many journal calls and SQL statements it makes.

Runs the `http` benchmark's server under cProfile (one concurrency level, the
aiohttp client in this process), then reads the stats: each function's own time
(tottime) is billed to the layer its file belongs to (aiohttp, asyncio, anyio,
asyncpg, msgspec, prometheus, the journal, the runtime, the domain, the edge), and
the call counts of the journal's public methods and of asyncpg's statement entry
point are divided by the requests the server answered. cProfile slows Python code
down (about 2x), so the shares matter, not the absolute milliseconds; the counts
are exact. `--stats PATH` reads saved stats instead of running.
"""

from __future__ import annotations

import argparse
import pstats
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import anyio

from .common import emit, machine
from .http import run as run_http

# (layer, a substring of the file path), first match wins.
LAYERS: list[tuple[str, str]] = [
    ("aiohttp (HTTP parsing, routing, responses)", "/aiohttp/"),
    ("asyncpg (protocol, pool)", "/asyncpg/"),
    ("msgspec (codec)", "msgspec"),
    ("prometheus_client (metrics)", "/prometheus_client/"),
    ("anyio (cancel scopes, task groups)", "/anyio/"),
    ("asyncio event loop", "/asyncio/"),
    ("uvloop event loop", "uvloop"),
    ("journal/ (SQL, group commit)", "/journal/"),
    ("runtime/ (actors, workflows, commits)", "/runtime/"),
    ("actors/ (domain)", "/actors/"),
    ("edge/ (handlers, middleware, schemas)", "/edge/"),
    ("sockets and selectors (syscalls)", "socket"),
    ("sockets and selectors (syscalls)", "epoll"),
]
OTHER = "other (stdlib: contextvars, logging, datetime, ...)"
# cProfile counts every resumption of a coroutine as a call, so statements are counted
# at synchronous functions that run exactly once per statement: the lambdas of
# _pgconn's fetch/fetchrow/fetchval/execute (one pooled read each) and _pgwrite's
# _group (one retinue_append group commit each).
READ_LAMBDAS = "_pgconn.py"
GROUP_COMMIT = ("_pgwrite.py", "_group")


def _layer(filename: str, function: str) -> str:
    where = f"{filename}:{function}"
    for layer, needle in LAYERS:
        if needle in where:
            return layer
    return OTHER


def breakdown(stats: pstats.Stats, requests: int) -> dict[str, Any]:
    """Own time by layer (ms per request and share), journal calls and statements
    per request."""
    raw: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    own: Counter[str] = Counter()
    reads_by_caller: Counter[str] = Counter()
    reads = commits = 0
    total = 0.0
    for (filename, _line, function), (_cc, calls, tottime, _cum, callers) in raw.items():
        own[_layer(filename, function)] += tottime
        total += tottime
        if filename.endswith(READ_LAMBDAS) and function == "<lambda>":
            reads += calls
        if filename.endswith(GROUP_COMMIT[0]) and function == GROUP_COMMIT[1]:
            commits += calls
        if filename.endswith(READ_LAMBDAS) and function in ("fetch", "fetchrow", "fetchval"):
            # Resumptions, not calls: only the proportions between callers mean much.
            for (_f, _l, caller), counts in callers.items():
                reads_by_caller[caller] += counts[1]
    per = max(requests, 1)
    return {
        "requests": requests,
        "profiled_cpu_ms_per_request": round(total * 1000 / per, 3),
        "own_time_by_layer": {
            layer: {"ms_per_request": round(t * 1000 / per, 3), "share": round(t / total, 3)}
            for layer, t in own.most_common()
        },
        "reads_per_request": round(reads / per, 2),
        "group_commits_per_request": round(commits / per, 3),
        "reading_methods_by_share": {
            name: round(n / max(sum(reads_by_caller.values()), 1), 3)
            for name, n in reads_by_caller.most_common() if n / per >= 0.05
        },
    }


async def _profiled(invites: int, concurrency: int, path: str) -> dict[str, Any]:
    result = await run_http(invites, [concurrency], 5.0, profile=path)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("--invites", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--stats", metavar="PATH", help="read these cProfile stats instead")
    parser.add_argument("--requests", type=int,
                        help="with --stats: the requests the server answered")
    parser.add_argument("--top", type=int, default=0,
                        help="also print the N functions with the most own time (stderr)")
    args = parser.parse_args(argv)
    if args.stats:
        path, requests = args.stats, args.requests or args.invites
        http: dict[str, Any] = {}
    else:
        path = str(Path(tempfile.mkdtemp(prefix="retinue-profile-")) / "server.prof")
        http = anyio.run(_profiled, args.invites, args.concurrency, path)
        # The warm-up's invites count too: the profile covers the server's whole life.
        requests = args.invites + min(200, args.invites)
    stats = pstats.Stats(path)
    if args.top:
        stats.stream = sys.stderr  # type: ignore[attr-defined]
        stats.sort_stats("tottime").print_stats(args.top)
    emit({
        "bench": "profile",
        "stats": path,
        **breakdown(stats, requests),
        "http_runs": http.get("runs", []),
        "machine": machine(),
    })


if __name__ == "__main__":
    main()
