"""Group commit's turns (journal/_shared.py): a second group goes out beside one in
flight only once as many batches queue as the last group sent carried; fewer wait
for the group in flight, which takes them all when it is done."""

from __future__ import annotations

from collections.abc import Sequence

import anyio
import anyio.lowlevel

from journal import Batch
from journal._groupcommit import GroupCommitter


async def test_a_second_group_waits_until_it_is_as_large_as_the_last_one_sent() -> None:
    sent: list[list[int]] = []
    gates: list[anyio.Event] = []
    answered: list[int] = []

    async def write(batches: Sequence[Batch]) -> None:
        sent.append([b.partition for b in batches])
        gate = anyio.Event()
        gates.append(gate)
        await gate.wait()

    committer = GroupCommitter(write, max_writers=2)

    async def append(partition: int) -> None:
        await committer.append(Batch(partition=partition, epoch=None))
        answered.append(partition)

    async def queue(tg: anyio.abc.TaskGroup, *partitions: int) -> None:
        for partition in partitions:
            tg.start_soon(append, partition)
            await anyio.lowlevel.checkpoint()  # queued in order
        await anyio.wait_all_tasks_blocked()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            await queue(tg, 1)
            await queue(tg, 2)  # as many as the group in flight (1): goes beside it
            await queue(tg, 3, 4, 5)  # two in flight: they wait
            assert sent == [[1], [2]]
            gates[0].set()  # a writer is free, and three queue: they go
            await anyio.wait_all_tasks_blocked()
            assert sent == [[1], [2], [3, 4, 5]]
            gates[1].set()
            await queue(tg, 6, 7)  # fewer than the 3 in flight: they wait for them...
            assert sent == [[1], [2], [3, 4, 5]]
            await queue(tg, 8)  # ...until as many queue
            assert sent == [[1], [2], [3, 4, 5], [6, 7, 8]]
            await queue(tg, 9)  # two in flight again
            gates[2].set()
            gates[3].set()
            await anyio.wait_all_tasks_blocked()
            assert sent[-1] == [9]  # a lone batch with nothing in flight goes at once
            gates[4].set()
    assert sorted(answered) == list(range(1, 10))
