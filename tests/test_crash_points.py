"""Crash the onboarding workflow after every journal write; nothing is lost or done twice.

The fault hook (runtime.CrashingJournal) kills the runtime right after its k-th
journal write commits, like kill -9 would. For every k from 1 to the writes of
a full run (invite, invitation, verification, welcome), the test reopens the
runtime on the same database, drives the customer to the end, and checks the
invariants of DESIGN.md.
"""

from __future__ import annotations

from typing import Any

import anyio
import msgspec

from actors import (
    COMMUNICATE_WORKFLOW,
    CUSTOMER,
    MESSAGE,
    VERIFY_SIGNAL,
    InviteCustomer,
    Onboarding,
    OutgoingMessage,
    VerifyCustomer,
    customer_actor_key,
    customer_id_for,
    rebuild_projections,
)
from actors.workflows import INVITE_WORKFLOW
from journal import FINISHED_STATUSES, Journal
from runtime import CrashingJournal, Runtime

from .support import crashed


class Receiver:
    """The outside world: every message that got through, with its key."""

    def __init__(self) -> None:
        self.messages: list[OutgoingMessage] = []

    async def deliver(self, message: OutgoingMessage) -> str:
        self.messages.append(message)
        return "delivered"

    def token_for(self, email: str) -> str | None:
        for message in self.messages:
            if message.type == "invitation" and message.email == email:
                return message.token
        return None


async def drive(runtime: Runtime, journal: Journal, receiver: Receiver, email: str,
                workflow_id: str) -> None:
    """Invite (idempotently), verify once the invitation arrives, wait for the end."""
    onboarding_key = customer_actor_key(customer_id_for(email))
    await runtime.start_workflow(INVITE_WORKFLOW, InviteCustomer(email=email),
                                 actor_key=onboarding_key, workflow_id=workflow_id)
    with anyio.fail_after(20):
        while (token := receiver.token_for(email)) is None:
            await anyio.sleep(0.005)
        row = await journal.get_workflow(workflow_id)
        assert row is not None
        if row.status not in FINISHED_STATUSES:
            command = VerifyCustomer(customer_id=customer_id_for(email), token=token,
                                     request_id="r1")
            await runtime.signal(workflow_id, VERIFY_SIGNAL, command)
        await wait_all_finished(journal, workflow_id)


async def wait_all_finished(journal: Journal, workflow_id: str) -> None:
    while True:
        rows = [await journal.get_workflow(workflow_id), *await journal.children(workflow_id)]
        if len(rows) == 3 and all(r is not None and r.status in FINISHED_STATUSES for r in rows):
            return
        await anyio.sleep(0.005)


def open_runtime(journal: Any, receiver: Receiver) -> Runtime:
    runtime = Runtime(journal)
    Onboarding(communicator=receiver).register(runtime)
    return runtime


async def step_shape(journal: Journal, workflow_id: str) -> list[Any]:
    """(workflow name, [(seq, kind, name, status)]) of the workflow and its children."""
    shape = []
    for row in [await journal.get_workflow(workflow_id), *await journal.children(workflow_id)]:
        assert row is not None
        steps = await journal.load_steps(row.id)
        names = [(s.seq, s.kind, s.name.split(":")[0], s.status) for s in steps]
        shape.append((row.name, row.status, names))
    return shape


async def documents(journal: Journal) -> dict[Any, Any]:
    return {(kind, d.id): d.data for kind in (CUSTOMER, MESSAGE)
            for d in await journal.list_documents(kind)}


async def test_onboarding_survives_a_crash_after_every_journal_write(journal: Journal) -> None:
    receiver = Receiver()
    counting = CrashingJournal(journal)
    async with open_runtime(counting, receiver) as runtime:
        await drive(runtime, journal, receiver, "clean@example.com", "wf-clean")
    writes = counting.writes
    clean_result = (await journal.get_workflow("wf-clean")).result  # type: ignore[union-attr]
    clean_shape = await step_shape(journal, "wf-clean")

    exercised = 0
    for k in range(1, writes + 1):
        receiver = Receiver()
        email, workflow_id = f"crash{k}@example.com", f"wf-crash-{k}"
        async with crashed():
            async with open_runtime(CrashingJournal(journal, crash_after=k), receiver) as runtime:
                await drive(runtime, journal, receiver, email, workflow_id)
        exercised += 1
        async with open_runtime(journal, receiver) as runtime:
            await drive(runtime, journal, receiver, email, workflow_id)
        await check_invariants(journal, receiver, workflow_id, email, clean_result, clean_shape)
    assert exercised == writes >= 12
    print(f"crash points exercised: {exercised}")

    before = await documents(journal)
    await rebuild_projections(journal)
    assert await documents(journal) == before, "projections differ from a rebuild of the log"


async def check_invariants(journal: Journal, receiver: Receiver, workflow_id: str, email: str,
                           clean_result: Any, clean_shape: Any) -> None:
    row = await journal.get_workflow(workflow_id)
    assert row is not None and row.status == "completed"
    expected = dict(clean_result, email=email, id=customer_id_for(email), workflow_id=workflow_id)
    assert row.result == expected
    # Every step has exactly one completed record, in the same order as a clean run.
    assert await step_shape(journal, workflow_id) == clean_shape
    customer = await journal.get_document(CUSTOMER, customer_id_for(email))
    assert customer is not None and customer.data["status"] == "verified"
    # Each message got through at least once; duplicates carry the same key.
    sent: dict[str, set[str]] = {}
    for message in receiver.messages:
        sent.setdefault(message.type, set()).add(message.idempotency_key)
    assert set(sent) == {"invitation", "welcome"}
    assert all(len(keys) == 1 for keys in sent.values()), sent
    children = await journal.children(workflow_id)
    assert [c.name for c in children] == [COMMUNICATE_WORKFLOW] * 2
    messages = await journal.list_documents(MESSAGE, customer_id_for(email))
    keys = {msgspec.convert(m.data, dict)["idempotency_key"] for m in messages}
    assert keys == set().union(*sent.values())
