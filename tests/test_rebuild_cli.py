"""`python server.py rebuild-projections` rebuilds the read side from the event log."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import anyio

from actors import CUSTOMER, MESSAGE, InviteCustomer, Onboarding
from journal import PostgresJournal
from runtime import Runtime

REPO = Path(__file__).resolve().parent.parent


async def _documents(journal: PostgresJournal) -> dict[Any, Any]:
    return {(kind, d.id): d.data for kind in (CUSTOMER, MESSAGE)
            for d in await journal.list_documents(kind)}


async def test_the_command_rebuilds_the_same_rows_after_they_are_lost(pg_dsn: str) -> None:
    journal = await PostgresJournal.connect(pg_dsn)
    try:
        async with Runtime(journal) as runtime:
            onboarding = Onboarding()
            onboarding.register(runtime)
            for email in ("ada@example.com", "bob@example.com"):
                workflow_id, _ = await onboarding.invite(runtime, InviteCustomer(email=email))
                assert (await runtime.wait_for_event(workflow_id, "invite", 5))[0]
            for child in [c for w in (await journal.list_workflows()).workflows
                          for c in [w] if w.parent_id]:
                await runtime.wait_for_finish(child.id, 5)
        before = await _documents(journal)
        assert len(before) == 4  # two customers, two invitations
        await journal.replace_documents(CUSTOMER, [])
        await journal.replace_documents(MESSAGE, [])
        assert await _documents(journal) == {}

        env = dict(os.environ, DATABASE_URL=pg_dsn)
        done = await anyio.run_process(
            [sys.executable, "server.py", "rebuild-projections"], cwd=REPO, env=env, check=False
        )
        assert done.returncode == 0, done.stderr.decode()
        assert "2 customer, 2 message" in done.stdout.decode()
        assert await _documents(journal) == before
    finally:
        await journal.aclose()
