"""Helpers for the server tests: a real aiohttp server over a Runtime on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from actors import Communicator, Onboarding, customer_actor_key
from edge import create_app
from journal import PostgresJournal
from runtime import Runtime

__all__ = ["JSON", "Served", "serving", "invitation_token", "workflow_count"]

# What every POST must say, body or not (the edge refuses others with 415).
JSON = {"Content-Type": "application/json"}

@dataclass
class Served:
    client: TestClient[web.Request, web.Application]
    runtime: Runtime
    journal: PostgresJournal
    app: web.Application


@asynccontextmanager
async def serving(
    pg_dsn: str,
    *,
    api_token: str | None = None,
    operator_token: str | None = None,
    extra_hosts: tuple[str, ...] = (),
    verification_ttl: timedelta = timedelta(days=7),
    communicator: Communicator | None = None,
    resolve_timeout: float = 5.0,
    open_runtime: bool = True,
    **runtime_options: Any,
) -> AsyncIterator[Served]:
    """The server's app over a fresh Runtime on `pg_dsn`, behind a real socket."""
    journal = await PostgresJournal.connect(pg_dsn)
    try:
        runtime_options.setdefault("grace", 1.0)
        runtime = Runtime(journal, registry=CollectorRegistry(), **runtime_options)
        onboarding = Onboarding(communicator=communicator, verification_ttl=verification_ttl)
        onboarding.register(runtime)
        app = create_app(runtime, onboarding, api_token=api_token,
                         operator_token=operator_token, extra_hosts=extra_hosts,
                         resolve_timeout=resolve_timeout)
        server = TestServer(app)
        client: TestClient[web.Request, web.Application] = TestClient(server)
        async with server, client:
            if open_runtime:
                async with runtime:
                    yield Served(client, runtime, journal, app)
            else:
                yield Served(client, runtime, journal, app)
    finally:
        await journal.aclose()


async def invitation_token(journal: PostgresJournal, customer_id: str) -> str:
    """The token an invitation carried: what the customer would find in their mail."""
    for event in await journal.read_events(customer_actor_key(customer_id)):
        if event.type == "CustomerInvited":
            return str(event.payload["token"])
    raise AssertionError(f"customer {customer_id} was never invited")


async def workflow_count(journal: PostgresJournal) -> int:
    return sum((await journal.count_workflows_by_status()).values())
