"""http: the onboarding invite over real HTTP, against `python server.py` in its own process.

The server runs on a fresh bench database (DATABASE_URL); this process is the load
generator (one aiohttp ClientSession, a connector with limit=concurrency). Each
concurrency level sends its own distinct emails, so every request is a new
customer: accept (journal) -> invite step (LOW) -> child communicate workflow ->
200 once the invite is written. At the end the server gets SIGTERM and its exit
code is reported.
Run: python -m bench http [--invites 2000] [--concurrency 1 16 64] [--wrk SECONDS]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import asyncpg
import msgspec
import psutil

from .common import bench_database, emit, machine, percentile, run_options
from .processes import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = Path(os.environ.get("RETINUE_BENCH_LOG_DIR", ROOT / ".retinue" / "bench-logs"))


def log_path(name: str) -> Path:
    """LOG_DIR/name, emptied: a server's output for this run only."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    path = LOG_DIR / name
    path.unlink(missing_ok=True)
    return path


async def stop_server(server: ServerProcess, grace: float = 30) -> tuple[int | None, float]:
    """SIGTERM, then wait; (exit code, seconds). SIGKILL (exit code None) past `grace` s."""
    if not server.started:
        return None, 0.0
    began = time.perf_counter()
    code = await server.terminate(within=grace)
    return code, round(time.perf_counter() - began, 3)


async def send_invites(
    session: aiohttp.ClientSession, base: str | list[str], emails: list[str], concurrency: int
) -> tuple[float, list[float], Counter[str]]:
    """Invite `emails` from `concurrency` clients, round-robin over the servers in
    `base`; (seconds, latencies of the answered, count by status or error)."""
    bases = [base] if isinstance(base, str) else base
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    pending = iter(enumerate(emails))

    async def client() -> None:
        for i, email in pending:
            url = f"{bases[i % len(bases)]}/customers/invite"
            began = time.perf_counter()
            try:
                async with session.post(url, json={"email": email}) as reply:
                    await reply.read()
                    statuses[str(reply.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses[f"error:{type(exc).__name__}"] += 1
                continue
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(client)
    return time.perf_counter() - began, latencies, statuses


async def _drain(session: aiohttp.ClientSession, base: str, within: float = 30) -> float:
    """Seconds until no workflow is pending or running (the communicate children that
    outlive each 200), so one level's leftovers do not bill the next."""
    began = time.perf_counter()
    with anyio.move_on_after(within):
        while True:
            busy = 0
            for status in ("pending", "running"):
                async with session.get(f"{base}/workflows?status={status}&limit=1") as r:
                    busy += len((await r.json())["workflows"])
            if not busy:
                break
            await anyio.sleep(0.05)
    return time.perf_counter() - began


async def _statuses(session: aiohttp.ClientSession, base: str) -> Counter[str]:
    """The server's own count of invite answers by status (from /metrics)."""
    async with session.get(f"{base}/metrics") as r:
        text = await r.text()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("retinue_http_requests_total{") and 'route="/customers/invite"' in line:
            labels, _, value = line.rpartition(" ")
            status = labels.split('status="', 1)[1].split('"', 1)[0]
            counts[status] += int(float(value))
    return counts


_WRK_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  return wrk.format("POST", "/customers/invite", {["Content-Type"] = "application/json"},
                    '{"email": "wrk-%(label)s-' .. n .. '@example.com"}')
end
done = function(summary, latency, requests)
  io.write(string.format(
    'WRK {"requests": %%d, "duration_us": %%d, "p50_us": %%d, "p99_us": %%d, "max_us": %%d, '
    .. '"socket_errors": %%d, "non_2xx_or_3xx": %%d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, summary.errors.connect + summary.errors.read + summary.errors.write
    + summary.errors.timeout, summary.errors.status))
end
"""


async def _wrk(
    base: str, server: psutil.Process, seconds: int, concurrency: int, label: str,
    committed: Transactions, postmaster: psutil.Process,
) -> dict[str, Any]:
    """The same invites from wrk (one thread, `concurrency` connections, distinct
    emails from a Lua counter); statuses from the server's own metrics."""
    script = LOG_DIR / f"wrk-{label}.lua"
    script.write_text(_WRK_SCRIPT % {"label": label})
    async with aiohttp.ClientSession() as session:
        before = await _statuses(session, base)
        server_cpu, wrk_cpu = _cpu_seconds(server), _children_cpu_seconds()
        postgres_cpu = _postgres_cpu_seconds(postmaster)
        done = await anyio.run_process(
            ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--timeout", "30s",
             "-s", str(script), f"{base}/customers/invite"], check=True)
        server_cpu = _cpu_seconds(server) - server_cpu
        wrk_cpu = _children_cpu_seconds() - wrk_cpu
        postgres_cpu = _postgres_cpu_seconds(postmaster) - postgres_cpu
        statuses = await _statuses(session, base) - before
        drained = await _drain(session, base)
    statements = await committed.since_last()
    line = next(x for x in done.stdout.decode().splitlines() if x.startswith("WRK "))
    got = msgspec.json.decode(line[4:])
    requests = max(got["requests"], 1)
    return {
        "client": "wrk",
        "concurrency": concurrency,
        "invites": got["requests"],
        "seconds": round(got["duration_us"] / 1e6, 3),
        "requests_per_s": round(got["requests"] / (got["duration_us"] / 1e6), 1),
        "p50_ms": round(got["p50_us"] / 1000, 2),
        "p99_ms": round(got["p99_us"] / 1000, 2),
        "max_ms": round(got["max_us"] / 1000, 2),
        # The server's count: it includes requests wrk abandoned at its deadline.
        "server_statuses": dict(sorted(statuses.items())),
        "socket_errors": got["socket_errors"],
        "server_cpu_ms_per_request": round(server_cpu * 1000 / requests, 3),
        "client_cpu_ms_per_request": round(wrk_cpu * 1000 / requests, 3),
        "postgres_cpu_ms_per_request": round(postgres_cpu * 1000 / requests, 3),
        "sql_transactions_per_request": round(statements / requests, 2),
        "seconds_to_drain_children": round(drained, 3),
    }


def _children_cpu_seconds() -> float:
    """CPU of this process's finished children (wrk, once it has exited)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _postgres_cpu_seconds(postmaster: psutil.Process) -> float:
    """CPU of the bench's PostgreSQL server (its postmaster and every process under
    it: backends, WAL writer, checkpointer), with what exited backends left to the
    postmaster: the database's share of an invite, on the same two cores. Only this
    server's: other PostgreSQL servers on the machine (test suites starting and
    stopping theirs) would bill their work, or their exits, to these invites."""
    total = 0.0
    for process in [postmaster, *postmaster.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:  # a backend that exited just now
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


async def _postmaster(dsn: str) -> psutil.Process:
    """The bench server's postmaster: the parent of a backend of it."""
    conn = await asyncpg.connect(dsn)
    try:  # while the backend lives
        parent = psutil.Process(int(await conn.fetchval("SELECT pg_backend_pid()"))).parent()
    finally:
        await conn.close()
    assert parent is not None, "a backend always has its postmaster"
    return parent


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Transactions:
    """Transactions committed in the bench database (pg_stat_database.xact_commit):
    each journal read and each group commit is one, so the count over a run divided
    by its invites is the SQL statements per invite. A backend reports its counts
    when idle, but at most once a second, else up to 10 s later (PostgreSQL's
    PGSTAT_IDLE_INTERVAL): `since_last` waits that out before it reads."""

    SETTLE = 11.0

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._last: int | None = None

    async def since_last(self) -> int:
        """Committed since the previous call (0 on the first, which waits not)."""
        if self._last is not None:
            await anyio.sleep(self.SETTLE)
        conn = await asyncpg.connect(self._dsn)
        try:
            value = int(await conn.fetchval(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"))
        finally:
            await conn.close()
        delta, self._last = value - (self._last if self._last is not None else value), value
        return delta


async def _measure(
    base: str, server: psutil.Process, invites: int, concurrency: int, label: str,
    committed: Transactions, postmaster: psutil.Process,
) -> dict[str, Any]:
    emails = [f"bench-{label}-{i}@example.com" for i in range(invites)]
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=60)
    # The server's CPU while idle (heartbeats, lease renewals, sampling), per second:
    # on shared cores a run takes longer, and this background would bill its invites.
    idle_began, idle_cpu = time.perf_counter(), _cpu_seconds(server)
    await anyio.sleep(1.2)
    idle_rate = (_cpu_seconds(server) - idle_cpu) / (time.perf_counter() - idle_began)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        server_cpu, client_cpu = _cpu_seconds(server), _own_cpu_seconds()
        postgres_cpu = _postgres_cpu_seconds(postmaster)
        elapsed, latencies, statuses = await send_invites(session, base, emails, concurrency)
        server_cpu, client_cpu = _cpu_seconds(server) - server_cpu, _own_cpu_seconds() - client_cpu
        postgres_cpu = _postgres_cpu_seconds(postmaster) - postgres_cpu
        drained = await _drain(session, base)
    # The server's own background (heartbeats, lease renewals: a few a second) and
    # the drain's listing calls count too; small next to thousands of invites.
    statements = await committed.since_last() / invites
    return {
        "client": "aiohttp",
        "concurrency": concurrency,
        "invites": invites,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(invites / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
        "max_ms": round(max(latencies, default=0.0) * 1000, 2),
        "statuses": dict(sorted(statuses.items())),
        "server_cpu_ms_per_request": round(server_cpu * 1000 / invites, 3),
        "server_cpu_ms_per_request_less_idle": round(
            (server_cpu - idle_rate * elapsed) * 1000 / invites, 3),
        "server_idle_cpu_ms_per_s": round(idle_rate * 1000, 2),
        "client_cpu_ms_per_request": round(client_cpu * 1000 / invites, 3),
        "postgres_cpu_ms_per_request": round(postgres_cpu * 1000 / invites, 3),
        "sql_transactions_per_request": round(statements, 2),
        "seconds_to_drain_children": round(drained, 3),
    }


async def run(
    invites: int, concurrencies: list[int], resolve_timeout: float, profile: str | None = None,
    wrk_seconds: int = 0,
) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:6]
    results = []
    async with bench_database("http") as dsn:
        server = ServerProcess(
            database_url=dsn, log=log_path("http-server.log"),
            env={"RETINUE_RESOLVE_TIMEOUT": str(resolve_timeout)}, profile=profile,
        )
        exit_code: int | None = None
        stop_seconds = 0.0
        try:
            began = time.perf_counter()
            await server.start(within=60)
            await server.wait_ready(within=60)
            ready = time.perf_counter() - began
            base = server.url
            process = psutil.Process(server.pid)
            committed = Transactions(dsn)
            postmaster = await _postmaster(dsn)
            await committed.since_last()
            await _measure(base, process, min(200, invites), 16, f"{run_id}-warmup", committed,
                           postmaster)
            # Each level its own emails (a level repeated must not re-invite customers).
            for level, concurrency in enumerate(concurrencies):
                count = invites if concurrency > 1 else min(invites, 500)
                results.append(await _measure(base, process, count, concurrency,
                                              f"{run_id}-{level}c{concurrency}", committed,
                                              postmaster))
            if wrk_seconds and not shutil.which("wrk"):
                sys.stderr.write("bench http: wrk is not installed (apt-get install wrk, or "
                                 "`make wrk`): only the Python client ran\n")
            if wrk_seconds and shutil.which("wrk"):
                for level, concurrency in enumerate(concurrencies):
                    results.append(await _wrk(base, process, wrk_seconds, concurrency,
                                              f"{run_id}-{level}wrk{concurrency}", committed,
                                              postmaster))
            rss = process.memory_info().rss
        finally:
            exit_code, stop_seconds = await stop_server(server)
    return {
        "bench": "http",
        "route": "POST /customers/invite",
        "resolve_timeout_s": resolve_timeout,
        "seconds_to_ready": round(ready, 3),
        "runs": results,
        "server_rss_mib_after": round(rss / 2**20, 1),
        "server_exit_code": exit_code,
        "server_stop_seconds": stop_seconds,
        "clients": "aiohttp in the bench process; wrk (one thread) with --wrk; same machine",
        "wrk": shutil.which("wrk") is not None,
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench http")
    parser.add_argument("--invites", type=int, default=2000,
                        help="invites per concurrency level (at most 500 at concurrency 1)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--resolve-timeout", type=float, default=5.0,
                        help="RETINUE_RESOLVE_TIMEOUT for the server (202 past it)")
    parser.add_argument("--server-profile", metavar="PATH",
                        help="run the server under cProfile, stats to PATH (slows it down)")
    parser.add_argument("--wrk", type=int, default=0, metavar="SECONDS",
                        help="also run wrk (if installed) this long at each concurrency")
    args = parser.parse_args(argv)
    profile = str(Path(args.server_profile).resolve()) if args.server_profile else None
    emit(anyio.run(run, args.invites, args.concurrency, args.resolve_timeout, profile,
                   args.wrk, **run_options()))


if __name__ == "__main__":
    main()
