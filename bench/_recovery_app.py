"""The child process of the recovery bench: a runtime with one registered workflow.

    python -m bench._recovery_app load DSN --workflows N [--sleep S] [--concurrency C]
    python -m bench._recovery_app recover DSN

`load` accepts N workflows (3 steps, a durable sleep, 1 step) and prints
{"accepted": N, ...} once every one is accepted. In this process step "c" stands
for a slow external call that has not returned when the process dies: it never
returns, so every workflow ends up inside it, with its write-ahead record
journaled and no result; the loader then prints {"stalled": N, ...} and waits to
be killed. `recover` opens a runtime on the same database (which replays every
unfinished workflow), prints {"ready": seconds}, and runs until SIGTERM/SIGINT.
Each prints one JSON object per line on stdout.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from typing import Any

import anyio
import msgspec

from journal import PostgresJournal
from runtime import Runtime, WorkflowContext

from .common import run_options, tune_gc

WORKFLOW = "recovery_shape"
BEFORE = ("a", "b", "c")
AFTER = ("d",)
STEPS = len(BEFORE) + len(AFTER)


class Input(msgspec.Struct, frozen=True):
    i: int
    sleep: float


class _Stall:
    """Step "c" waits on `gate` in the loader; with no gate (recover) it goes through."""

    gate: anyio.Event | None = None
    inside = 0
    expected = 0
    all_inside: anyio.Event | None = None


async def _act(name: str, i: int) -> str:
    if name == "c" and _Stall.gate is not None:
        _Stall.inside += 1
        if _Stall.inside >= _Stall.expected and _Stall.all_inside is not None:
            _Stall.all_inside.set()
        await _Stall.gate.wait()
    return f"{name}{i}"


async def recovery_shape(ctx: WorkflowContext, job: Input) -> int:
    for name in BEFORE:
        await ctx.step(name, _act, name, job.i)
    await ctx.sleep(job.sleep)
    for name in AFTER:
        await ctx.step(name, _act, name, job.i)
    return job.i


def actor_key(i: int) -> str:
    return f"recovery:{i}"


def _say(**fields: Any) -> None:
    sys.stdout.write(msgspec.json.encode(fields).decode() + "\n")
    sys.stdout.flush()


def _runtime(journal: PostgresJournal, workflows: int) -> Runtime:
    runtime = Runtime(journal, max_in_flight=max(workflows * 2, 10_000), idle_timeout=600,
                      grace=0.5)
    runtime.register(recovery_shape, name=WORKFLOW)
    return runtime


async def load(dsn: str, workflows: int, sleep: float, concurrency: int) -> None:
    began = time.perf_counter()
    _Stall.gate = anyio.Event()  # never set: the process dies first
    _Stall.expected, _Stall.all_inside = workflows, anyio.Event()
    journal = await PostgresJournal.connect(dsn)
    async with _runtime(journal, workflows) as runtime:
        opened = time.perf_counter() - began
        pending = iter(range(workflows))

        async def client() -> None:
            for i in pending:
                await runtime.start_workflow(WORKFLOW, Input(i=i, sleep=sleep),
                                             actor_key=actor_key(i))

        accepting = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(client)
        _say(accepted=workflows, seconds_to_open=round(opened, 3),
             seconds_to_accept=round(time.perf_counter() - accepting, 3))
        await _Stall.all_inside.wait()
        _say(stalled=_Stall.inside, seconds=round(time.perf_counter() - accepting, 3))
        await anyio.sleep_forever()  # until SIGKILL


async def recover(dsn: str) -> None:
    began = time.perf_counter()
    journal = await PostgresJournal.connect(dsn)
    connected = time.perf_counter()
    try:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with _runtime(journal, 0):
                # Where the restart's time went before it was ready: the journal's
                # pool (and its migrations check), then opening the runtime (taking
                # the partitions back, reading and queueing what was in flight).
                now = time.perf_counter()
                _say(ready=round(now - began, 3), connect=round(connected - began, 3),
                     open=round(now - connected, 3))
                async for _ in signals:
                    break
    finally:
        await journal.aclose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._recovery_app")
    parser.add_argument("mode", choices=["load", "recover"])
    parser.add_argument("dsn")
    parser.add_argument("--workflows", type=int, default=10_000)
    parser.add_argument("--sleep", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    tune_gc()  # as the server does
    if args.mode == "load":
        anyio.run(load, args.dsn, args.workflows, args.sleep, args.concurrency, **run_options())
    else:
        anyio.run(recover, args.dsn, **run_options())


if __name__ == "__main__":
    main()
