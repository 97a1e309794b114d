"""Deploy while customers wait (issue 12), end to end: real `python server.py`
processes, one after another, on one PostgreSQL database.

1. version A (tests/deploy_versions.py, before the reminder): 300 customers are
   invited and wait for verification;
2. version B (the real actors.Onboarding: the reminder behind
   `ctx.patched("verification-reminder")`): the 300 verify along the old path (no
   marker in their histories); new invitations take the new path (marker);
3. version C (a step inserted before the wait, no patch): the new invitations'
   verifications replay them, and they are parked, not failed; /metrics and the
   API say so, with the mismatch;
4. version B again: every parked workflow resumes and verifies; nothing ran
   twice and nothing was lost.

Run with -s to see the figures.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from actors.onboarding import REMINDER_PATCH
from bench.polling import eventually
from bench.processes import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
OLD_CUSTOMERS = 300
NEW_CUSTOMERS = 60
VERSION_A = "tests.deploy_versions:VersionA"
VERSION_C = "tests.deploy_versions:VersionC"
# A verification the workflow cannot answer yet (parked) is a 202 after this long.
SERVER_ENV = {"RETINUE_RESOLVE_TIMEOUT": "2"}
CONCURRENCY = 50


class Api:
    """A client of one running server."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session, self.url = session, url

    async def post(self, path: str, body: Any) -> tuple[int, Any]:
        async with self.session.post(self.url + path, json=body) as reply:
            return reply.status, await reply.json()

    async def get(self, path: str) -> Any:
        async with self.session.get(self.url + path) as reply:
            assert reply.status == 200, (path, reply.status, await reply.text())
            return await reply.json()

    async def metric(self, name: str, **labels: str) -> float | None:
        async with self.session.get(self.url + "/metrics") as reply:
            text = await reply.text()
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v
                                               for k, v in labels.items()):
                    return float(sample.value)
        return None


@asynccontextmanager
async def deployed(dsn: str, log: Path, workflows: str | None) -> AsyncIterator[Api]:
    """One version of the code served, until the block ends (SIGTERM, exit 0)."""
    env = {**SERVER_ENV, **({"RETINUE_WORKFLOWS": workflows} if workflows else {})}
    server = ServerProcess(database_url=dsn, log=log, env=env)
    try:
        await server.start()
        await server.wait_ready()
        async with aiohttp.ClientSession() as session:
            yield Api(session, server.url)
        assert await server.terminate() == 0, f"see {log}"
    finally:
        await server.aclose()


async def each(items: list[Any], act: Any) -> None:
    """`await act(item)` for every item, CONCURRENCY at a time."""
    limiter = anyio.CapacityLimiter(CONCURRENCY)

    async def one(item: Any) -> None:
        async with limiter:
            await act(item)

    async with anyio.create_task_group() as tg:
        for item in items:
            tg.start_soon(one, item)


async def invite(api: Api, emails: list[str]) -> dict[str, str]:
    """Invite every email; {customer id: invite workflow id}."""
    invited: dict[str, str] = {}

    async def one(email: str) -> None:
        status, body = await api.post("/customers/invite", {"email": email})
        assert status == 200 and body["invited"], (email, status, body)
        invited[body["id"]] = body["workflow_id"]

    await each(emails, one)
    return invited


async def verify(api: Api, customers: list[str], tokens: dict[str, str], expect: int) -> None:
    async def one(customer_id: str) -> None:
        status, body = await api.post(f"/customers/{customer_id}/verify",
                                      {"token": tokens[customer_id]})
        assert status == expect, (customer_id, status, body)

    await each(customers, one)


class Journal:
    """What the database holds, read with SQL (never through the server)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    async def tokens(self) -> dict[str, str]:
        rows = await self.fetch("SELECT payload::text AS p FROM events "
                                "WHERE type = 'CustomerInvited'")
        return {p["customer_id"]: p["token"] for p in (json.loads(r["p"]) for r in rows)}

    async def statuses(self, ids: list[str]) -> Counter[str]:
        rows = await self.fetch("SELECT status FROM workflows WHERE id = ANY($1)", ids)
        return Counter(r["status"] for r in rows)

    async def settled(self) -> bool:
        """Nothing pending or running: every workflow waits, is parked, or ended."""
        rows = await self.fetch("SELECT count(*) AS n FROM workflows "
                                "WHERE status IN ('pending', 'running')")
        return int(rows[0]["n"]) == 0

    async def markers(self, ids: list[str]) -> Counter[str]:
        """How many markers of the reminder's patch each workflow's history holds
        (every version here shares the invite steps, and their own patch)."""
        rows = await self.fetch("SELECT workflow_id, count(*) FILTER (WHERE kind = 'patch' "
                                "AND name = $2) AS n FROM steps WHERE workflow_id = ANY($1) "
                                "GROUP BY workflow_id", ids, REMINDER_PATCH)
        return Counter({r["workflow_id"]: int(r["n"]) for r in rows})

    async def versions(self, ids: list[str]) -> set[str]:
        rows = await self.fetch("SELECT DISTINCT app_version FROM workflows WHERE id = ANY($1)",
                                ids)
        return {r["app_version"] for r in rows}


async def replay_check(dsn: str, workflows: str | None, *args: str) -> tuple[int, str]:
    """`python server.py replay-check` (the operator's command, a real process) run
    with the code `workflows` names (None: today's actors.Onboarding)."""
    env = {k: v for k, v in os.environ.items() if k != "RETINUE_WORKFLOWS"}
    env["DATABASE_URL"] = dsn
    if workflows:
        env["RETINUE_WORKFLOWS"] = workflows
    done = await anyio.run_process([sys.executable, "server.py", "replay-check", *args],
                                   env=env, cwd=ROOT, check=False)
    return done.returncode, done.stdout.decode() + done.stderr.decode()


async def until(what: str, check: Any, within: float = 30) -> None:
    await eventually(check, within=within, interval=0.1, what=what)


async def all_in(journal: Journal, ids: list[str], status: str) -> None:
    async def done() -> bool:
        return (await journal.statuses(ids))[status] == len(ids)

    await until(f"{len(ids)} workflows to be {status}", done)


async def test_a_deploy_while_customers_wait(pg_dsn: str, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    journal = Journal(pg_dsn)
    old_emails = [f"old-{i}@example.com" for i in range(OLD_CUSTOMERS)]
    new_emails = [f"new-{i}@example.com" for i in range(NEW_CUSTOMERS)]

    # (1) Version A: the first customers are invited and wait.
    async with deployed(pg_dsn, log, VERSION_A) as api:
        old = await invite(api, old_emails)
        old_ids = list(old.values())
        await all_in(journal, old_ids, "waiting")
        await until("the invitations to be sent", journal.settled)
        detail = await api.get(f"/workflows/{old_ids[0]}")
        version_a = detail["app_version"]
        assert version_a and {s["app_version"] for s in detail["steps"]} == {version_a}
    assert await journal.versions(old_ids) == {version_a}

    # Before deploying B: `retinue replay-check` with B's code passes every waiting one.
    code, report = await replay_check(pg_dsn, None)
    assert code == 0, report
    assert f"{OLD_CUSTOMERS} replays" in report, report

    # (2) Version B: the old ones verify along the old path; new ones are reminded.
    async with deployed(pg_dsn, log, None) as api:
        tokens = await journal.tokens()
        await verify(api, list(old), tokens, expect=200)
        await all_in(journal, old_ids, "completed")
        new = await invite(api, new_emails)
        new_ids = list(new.values())
        await all_in(journal, new_ids, "waiting")
        await until("the new invitations to be sent", journal.settled)
        listed = await api.get(f"/workflows?status=waiting&limit={NEW_CUSTOMERS + 1}")
        version_b = listed["workflows"][0]["app_version"]
    assert version_b and version_b != version_a
    assert await journal.versions(new_ids) == {version_b}
    assert set((await journal.markers(old_ids)).values()) == {0}, "an old history got a marker"
    assert set((await journal.markers(new_ids)).values()) == {1}, "a new history lacks it"

    # Before deploying C: the check fails and names every workflow that would park.
    code, report = await replay_check(pg_dsn, VERSION_C)
    assert code == 1, report
    mismatches = [line for line in report.splitlines() if line.startswith("MISMATCH")]
    assert sorted(line.split()[1] for line in mismatches) == sorted(new_ids), report
    assert all("seq=6" in line and "verify.audit" in line for line in mismatches), report
    assert (await replay_check(pg_dsn, None))[0] == 0  # B itself still replays them

    # (3) Version C, deployed anyway: the new ones park when they replay.
    async with deployed(pg_dsn, log, VERSION_C) as api:
        tokens = await journal.tokens()
        # Accepted and stored (202: the workflow cannot answer yet), never a 409.
        await verify(api, list(new), tokens, expect=202)
        await all_in(journal, new_ids, "parked")
        counts = (await api.get("/api/workflow-counts"))["counts"]
        assert (counts["parked"], counts["failed"]) == (NEW_CUSTOMERS, 0), counts
        assert await api.metric("retinue_workflows_parked",
                                workflow="invite_customer") == NEW_CUSTOMERS
        parked = await api.get(f"/workflows?status=parked&limit={NEW_CUSTOMERS + 1}")
        assert sorted(w["id"] for w in parked["workflows"]) == sorted(new_ids)
        detail = await api.get(f"/workflows/{new_ids[0]}")
        version_c = detail["parked"]["running_version"]
        assert detail["status"] == "parked"
        assert detail["parked"] == {
            "seq": 6, "expected": "step verify.audit", "found": "patch verification-reminder",
            "found_version": version_b, "running_version": version_c,
        }
    assert version_c not in (version_a, version_b)

    # (4) Version B again: every parked workflow resumes and takes its verification.
    async with deployed(pg_dsn, log, None) as api:
        await all_in(journal, new_ids, "completed")
        await until("the welcome messages to be sent", journal.settled)
        assert await api.metric("retinue_workflows_parked", workflow="invite_customer") == 0
        counts = (await api.get("/api/workflow-counts"))["counts"]
        assert (counts["parked"], counts["failed"], counts["cancelled"]) == (0, 0, 0), counts
        assert counts["pending"] + counts["running"] + counts["waiting"] == 0, counts

    # And after it all, every history (the finished ones too) replays under B.
    code, report = await replay_check(pg_dsn, None, "--finished", "1000")
    assert code == 0, report

    # Nothing ran twice, nothing was lost.
    customers = set(old) | set(new)
    assert len(customers) == OLD_CUSTOMERS + NEW_CUSTOMERS
    events = await journal.fetch("SELECT type, payload->>'customer_id' AS customer "
                                 "FROM events WHERE type LIKE 'Customer%'")
    per_customer = Counter((e["customer"], e["type"]) for e in events)
    for customer_id in customers:
        assert per_customer[(customer_id, "CustomerInvited")] == 1, customer_id
        assert per_customer[(customer_id, "CustomerVerified")] == 1, customer_id
    assert sum(per_customer.values()) == 2 * len(customers), Counter(e["type"] for e in events)
    messages = await journal.fetch("SELECT owner, data->>'type' AS type FROM documents "
                                   "WHERE kind = 'message'")
    sent = Counter((m["owner"], m["type"]) for m in messages)
    assert set(sent.values()) == {1}
    assert set(sent) == {(c, kind) for c in customers for kind in ("invitation", "welcome")}
    dead = await journal.fetch("SELECT count(*) AS n FROM dead_letters")
    assert dead[0]["n"] == 0
    print(f"\ndeploy: A={version_a} B={version_b} C={version_c}; {OLD_CUSTOMERS} old "
          f"customers verified along the old path, {NEW_CUSTOMERS} new ones parked "
          "under C and resumed under B")
