"""The journal's schema, as an ordered, append-only list of migrations.

Rules: never edit or reorder a migration that has shipped; add a new one with the
next version. `migrate` applies the missing ones in one transaction, under an
advisory lock, so processes that start together never race.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from ._migrations import (
    v1_initial_schema,
    v2_append_function,
    v3_nodes,
    v4_fences,
    v5_versions,
    v6_retention,
    v7_forks,
    v8_lean_writes,
    v9_typed_group,
)
from ._pgconn import Conn

__all__ = ["MIGRATIONS", "Migration", "migrate"]


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "initial schema", v1_initial_schema.SQL),
    Migration(2, "retinue_append: the write path in one statement", v2_append_function.SQL),
    Migration(3, "scale-out: nodes, and the epoch each step and event was written under",
              v3_nodes.SQL),
    Migration(4, "the journal as the fence: runs, step and status guards; one jsonb group",
              v4_fences.SQL),
    Migration(5, "versions: the app version of workflows and steps; parked workflows",
              v5_versions.SQL),
    Migration(6, "retention: pruned workflows, and the indexes the pruner reads",
              v6_retention.SQL),
    Migration(7, "forks: forked_from and forked_at_seq, indexed", v7_forks.SQL),
    Migration(8, "lean writes: partial key and status indexes; a run's claim folded into "
              "its status change", v8_lean_writes.SQL),
    Migration(9, "the group as typed arrays: retinue_append over composite types",
              v9_typed_group.SQL),
)

# Any constant shared by every Retinue process; it names the migration lock.
_LOCK_KEY: Final = 0x5E71_0E00

_LOCK: Final = "SELECT pg_advisory_xact_lock($1)"
_CREATE_VERSION_TABLE: Final = """
CREATE TABLE IF NOT EXISTS retinue_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
_APPLIED_VERSIONS: Final = "SELECT version FROM retinue_migrations"
_RECORD_VERSION: Final = "INSERT INTO retinue_migrations (version, name) VALUES ($1, $2)"


async def migrate(conn: Conn) -> list[int]:
    """Apply the migrations `conn`'s database lacks, in one transaction; return
    their versions. Safe to call from several processes at once. Cancellable: a
    cancelled call applies nothing."""
    async with conn.transaction():
        # The lock comes before CREATE TABLE IF NOT EXISTS: two of those racing
        # can fail on the catalog's unique index.
        await conn.execute(_LOCK, _LOCK_KEY)
        await conn.execute(_CREATE_VERSION_TABLE)
        applied = {row["version"] for row in await conn.fetch(_APPLIED_VERSIONS)}
        missing = [m for m in MIGRATIONS if m.version not in applied]
        for migration in missing:
            await conn.execute(migration.sql)
            await conn.execute(_RECORD_VERSION, migration.version, migration.name)
        return [m.version for m in missing]
