"""recovery: N workflows left in flight by a SIGKILL, then the time from restart to all finished.

A child process (bench/_recovery_app.py) accepts N workflows of 3 steps, a durable
sleep, 1 step. In it, step 3 is an external call that does not return, so once all
N are accepted every one is in flight inside step 3 (its write-ahead record
journaled, no result): then the child is SIGKILLed. A new child on the same
database replays every unfinished workflow (Runtime.__aenter__ -> cluster.join ->
Recovery.partitions_acquired); this process polls the workflows table until all
N are completed. Nothing accepted may be lost, and a completed workflow must hold
all its steps and its result.
Run: python -m bench recovery [--workflows 10000] [--sleep 0.5]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO

import anyio
import anyio.abc
import asyncpg
import msgspec
from anyio.streams.buffered import BufferedByteReceiveStream

from . import _recovery_app as app
from .common import bench_database, emit, machine

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = Path(os.environ.get("RETINUE_BENCH_LOG_DIR", ROOT / ".retinue" / "bench-logs"))

_STATUSES = "SELECT status, count(*) AS n FROM workflows GROUP BY status"
_STEPS_AT_KILL = """
SELECT count(*) FILTER (WHERE kind = 'wait' AND status = 'started') AS sleeping,
       count(*) FILTER (WHERE kind = 'step' AND status = 'started') AS steps_started_unfinished,
       count(*) FILTER (WHERE status = 'completed') AS step_rows_completed,
       extract(epoch FROM max(fire_at) FILTER (WHERE kind = 'wait' AND status = 'started')
               - now()) AS last_timer_due_in_s
FROM steps
"""
# A completed workflow must hold every step (3 + the sleep + 1), each completed once,
# and its own result.
_BAD_HISTORIES = f"""
SELECT count(*) FROM workflows w
WHERE w.status = 'completed' AND (
    w.result IS DISTINCT FROM (w.input -> 'i')
    OR (SELECT count(*) FROM steps s WHERE s.workflow_id = w.id AND s.status = 'completed')
       <> {app.STEPS + 1})
"""
_RERUN = "SELECT count(*) FROM steps WHERE kind = 'step' AND attempt > 1"


def _open_log(name: str) -> BinaryIO:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    return open(LOG_DIR / name, "wb")  # noqa: SIM115 - the child process keeps its own copy


async def _spawn(
    args: list[str], log_name: str, profile: str | None = None
) -> anyio.abc.Process:
    python = [sys.executable] + (["-m", "cProfile", "-o", profile] if profile else [])
    log = _open_log(log_name)
    try:
        return await anyio.open_process(
            [*python, "-m", "bench._recovery_app", *args], cwd=ROOT,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log,
            # The restarted process is the same node as the one killed, as a
            # restarted server is: it takes its partitions back at once.
            env={**os.environ, "RETINUE_NODE_ID": "bench-recovery"},
        )
    finally:
        log.close()


async def _next_message(lines: BufferedByteReceiveStream, log_name: str) -> dict[str, Any]:
    """The child's next JSON line; RuntimeError if it exited first."""
    try:
        line = await lines.receive_until(b"\n", 65536)
    except (anyio.EndOfStream, anyio.IncompleteRead):
        raise RuntimeError(f"the child process exited; see {LOG_DIR / log_name}") from None
    message: dict[str, Any] = msgspec.json.decode(line)
    return message


async def _statuses(conn: asyncpg.Connection) -> dict[str, int]:
    return {row["status"]: row["n"] for row in await conn.fetch(_STATUSES)}


async def run(
    workflows: int, sleep: float, concurrency: int, within: float, profile: str | None = None
) -> dict[str, Any]:
    async with bench_database("recovery") as dsn:
        # 1. Load; SIGKILL once every workflow is inside step 3.
        loader = await _spawn(["load", dsn, "--workflows", str(workflows), "--sleep", str(sleep),
                               "--concurrency", str(concurrency)], "recovery-load.log")
        assert loader.stdout is not None
        try:
            with anyio.fail_after(within):
                lines = BufferedByteReceiveStream(loader.stdout)
                loaded = await _next_message(lines, "recovery-load.log")
                stalled = await _next_message(lines, "recovery-load.log")
        finally:
            loader.send_signal(signal.SIGKILL)
            await loader.wait()
        conn = await asyncpg.connect(dsn)
        try:
            at_kill = await _statuses(conn)
            steps_at_kill = dict(await conn.fetchrow(_STEPS_AT_KILL) or {})
            accepted_rows = sum(at_kill.values())

            # 2. Restart on the same database; poll until every workflow is completed.
            began = time.perf_counter()
            recoverer = await _spawn(["recover", dsn], "recovery-recover.log", profile)
            assert recoverer.stdout is not None
            lines = BufferedByteReceiveStream(recoverer.stdout)
            ready: float | None = None
            inside: dict[str, Any] = {}
            finished: float | None = None
            after: dict[str, int] = {}
            try:
                with anyio.move_on_after(within):
                    async with anyio.create_task_group() as tg:

                        async def wait_ready() -> None:
                            nonlocal ready, inside
                            with contextlib.suppress(RuntimeError):  # reported below
                                inside = await _next_message(lines, "recovery-recover.log")
                                ready = time.perf_counter() - began

                        tg.start_soon(wait_ready)
                        while True:
                            after = await _statuses(conn)
                            if after.get("completed", 0) >= workflows:
                                finished = time.perf_counter() - began
                                break
                            if recoverer.returncode is not None:
                                break
                            await anyio.sleep(0.05)
            finally:
                exit_code = await _stop(recoverer)
            bad = await conn.fetchval(_BAD_HISTORIES)
            rerun = await conn.fetchval(_RERUN)
        finally:
            await conn.close()
    in_flight = accepted_rows - at_kill.get("completed", 0)
    return {
        "bench": "recovery",
        "workflows": workflows,
        "shape": f"{len(app.BEFORE)} steps, durable sleep {sleep}s, {len(app.AFTER)} step",
        "seconds_to_accept_all": loaded["seconds_to_accept"],
        "seconds_until_all_inside_step_3": stalled["seconds"],
        "in_flight_at_kill": in_flight,
        "statuses_at_kill": dict(sorted(at_kill.items())),
        "sleeping_at_kill": steps_at_kill.get("sleeping"),
        "steps_started_unfinished_at_kill": steps_at_kill.get("steps_started_unfinished"),
        "last_timer_due_in_s_at_kill": round(float(steps_at_kill["last_timer_due_in_s"] or 0), 3),
        "seconds_to_ready": None if ready is None else round(ready, 3),
        # Of which, inside the new process: its journal pool, then opening the
        # runtime (the rest is Python starting and importing).
        "seconds_to_ready_connect": inside.get("connect"),
        "seconds_to_ready_open_runtime": inside.get("open"),
        "seconds_to_all_finished": None if finished is None else round(finished, 3),
        "workflows_per_s_recovered": None if finished is None else round(in_flight / finished, 1),
        "statuses_after": dict(sorted(after.items())),
        "lost": workflows - after.get("completed", 0),
        "lost_at_kill": workflows - accepted_rows,
        "bad_histories": bad,
        "steps_rerun_after_kill": rerun,
        "recover_exit_code": exit_code,
        "recover_log": str(LOG_DIR / "recovery-recover.log"),
        "machine": machine(),
    }


async def _stop(process: anyio.abc.Process, grace: float = 15) -> int | None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        with anyio.move_on_after(grace):
            await process.wait()
        if process.returncode is None:
            process.kill()
            await process.wait()
            return None
    return process.returncode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench recovery")
    parser.add_argument("--workflows", type=int, default=10_000)
    parser.add_argument("--sleep", type=float, default=0.5,
                        help="the durable sleep between step 3 and step 4 (seconds)")
    parser.add_argument("--concurrency", type=int, default=64,
                        help="concurrent start_workflow calls in the loader")
    parser.add_argument("--within", type=float, default=120,
                        help="give up on loading, or on recovering, after this many seconds")
    parser.add_argument("--profile", metavar="PATH",
                        help="run the recovering process under cProfile, stats to PATH")
    args = parser.parse_args(argv)
    profile = str(Path(args.profile).resolve()) if args.profile else None
    emit(anyio.run(run, args.workflows, args.sleep, args.concurrency, args.within, profile))


if __name__ == "__main__":
    main()
