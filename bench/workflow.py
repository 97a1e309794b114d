"""workflow: N workflows of 4 journaled steps at concurrency C, in-process, on PostgreSQL.

The onboarding shape: invite -> communicate -> verify -> communicate, each a step
with effects (write-ahead + completion), side effects recorded locally.
Run: python -m bench workflow [--workflows 5000] [--concurrency 64 1]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import anyio
import asyncpg

from journal import PostgresJournal
from runtime import Runtime, WorkflowContext

from . import floor
from .common import bench_database, emit, machine, percentile, run_options, tune_gc

STEPS = ("invite", "communicate_invitation", "verify", "communicate_welcome")


class LocalEffects:
    """Side effects recorded in memory, keyed by idempotency key."""

    def __init__(self) -> None:
        self.done: set[str] = set()

    async def act(self, name: str, customer: str) -> str:
        self.done.add(f"{customer}:{name}")
        return name


def make_workflow(effects: LocalEffects) -> Any:
    async def onboarding_shape(ctx: WorkflowContext, customer: str) -> int:
        for name in STEPS:
            await ctx.step(name, effects.act, name, customer)
        return len(STEPS)

    return onboarding_shape


async def _measure(
    runtime: Runtime, workflows: int, concurrency: int, label: str
) -> dict[str, Any]:
    latencies: list[float] = []
    next_index = 0

    async def client() -> None:
        nonlocal next_index
        while next_index < workflows:
            i = next_index
            next_index += 1
            began = time.perf_counter()
            row, _ = await runtime.start_workflow(
                "onboarding_shape", f"{label}-{i}", actor_key=f"customer:{label}-{i}"
            )
            done = await runtime.wait_for_finish(row.id, 60)
            assert done is not None and done.status == "completed", done
            latencies.append(time.perf_counter() - began)

    began = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for _ in range(concurrency):
            tg.start_soon(client)
    elapsed = time.perf_counter() - began
    return {
        "concurrency": concurrency,
        "workflows": workflows,
        "seconds": round(elapsed, 3),
        "workflows_per_s": round(workflows / elapsed, 1),
        "steps_per_s": round(workflows * len(STEPS) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p99_ms": round(percentile(latencies, 99) * 1000, 2),
    }


def _commits(journal: PostgresJournal, workflows: int) -> dict[str, float]:
    """Journal appends (batches) per workflow, and how many shared a commit."""
    stats = journal.group_statistics
    return {
        "journal_appends_per_workflow": round(stats.batches / max(workflows, 1), 2),
        "mean_batches_per_commit": round(stats.batches / max(stats.groups, 1), 2),
        "largest_group": stats.largest,
    }


async def _floor_batched(dsn: str, seconds: float) -> float:
    """The floor bench's batched inserts on this server: rows/s, for the ratio."""
    pool = await asyncpg.create_pool(dsn, min_size=4, max_size=4)
    try:
        await pool.execute(floor.CREATE)
        return await floor.drive(pool, seconds, 4, 64) / seconds
    finally:
        await pool.close()


async def run(workflows: int, concurrencies: list[int], floor_seconds: float) -> dict[str, Any]:
    results = []
    async with bench_database("workflow") as dsn:
        journal = await PostgresJournal.connect(dsn, min_size=4, max_size=8)
        try:
            async with Runtime(journal, max_in_flight=100_000, idle_timeout=5) as runtime:
                runtime.register(make_workflow(LocalEffects()), name="onboarding_shape")
                await _measure(runtime, min(200, workflows), 16, "warmup")
                for concurrency in concurrencies:
                    count = workflows if concurrency > 1 else min(workflows, 500)
                    results.append(await _measure(runtime, count, concurrency, f"c{concurrency}"))
            total = sum(r["workflows"] for r in results) + min(200, workflows)
            commits = _commits(journal, total)
        finally:
            await journal.aclose()
        floor_rows = await _floor_batched(dsn, floor_seconds)
    for result in results:
        result["steps_per_s_over_floor_batched_rows_per_s"] = round(
            result["steps_per_s"] / floor_rows, 4
        )
    return {
        "bench": "workflow",
        "steps_per_workflow": len(STEPS),
        **commits,
        "floor_batched_rows_per_s": round(floor_rows),
        "runs": results,
        "machine": machine(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench workflow")
    parser.add_argument("--workflows", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64, 1])
    parser.add_argument("--floor-seconds", type=float, default=2.0,
                        help="how long to measure the batched-insert floor for the ratio")
    args = parser.parse_args(argv)
    tune_gc()
    emit(anyio.run(run, args.workflows, args.concurrency, args.floor_seconds, **run_options()))


if __name__ == "__main__":
    main()
