"""Migration 9: the step guard rides on the step upsert (issue 14).

Shipped once merged: never edit; add a new migration instead.

`retinue_append` checked every step record against the stored one (a join by
primary key per record) before upserting them all. pg_stat_statements over the
invite (`track = all`, 3,200 invites at c=64) gave that guard 148 ms for 44,800
records: a sixth of the upsert's own time, for a check that almost never refuses.
The upsert now carries the guard's conditions in its DO UPDATE WHERE clause:

  - a new record is inserted, a legal move updates the stored record, exactly as
    before (the previous WHERE, "not the very same record", excluded only what the
    guard had let through unchanged: an identical re-append);
  - ON CONFLICT DO UPDATE locks every conflicting row, updated or not, so what the
    upsert left is what the guard reads next;
  - only when the upsert wrote fewer rows than the group holds (an identical
    re-append after an outage, or a refusal) does the old guard query run, on the
    rows as they now stand: rows written just now pass (stored = sent), identical
    ones pass, a refused one raises the same RF003 with the same message, and the
    statement's rollback undoes the rows written before it.

Everything else in the function (every other guard, SQLSTATE, message, and the
id-order row locks) is migration 8's, unchanged: this migration takes migration 8's
function text and swaps the steps section, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Final

from . import v8_lean_writes

_DECLARE_BEFORE: Final = """    moving jsonb;
BEGIN"""
_DECLARE_AFTER: Final = """    moving jsonb;
    written bigint;
BEGIN"""

_GUARD: Final = """        SELECT x.workflow_id, x.seq, s.status, s.attempt, x.status AS new_status,
               x.attempt AS new_attempt INTO bad
        FROM jsonb_to_recordset(g->'steps') AS x(workflow_id text, seq bigint, status text,
                                                 attempt integer, run_id text)
        JOIN steps s ON s.workflow_id = x.workflow_id AND s.seq = x.seq
        WHERE NOT (
            (s.run_id IS NOT DISTINCT FROM x.run_id AND s.status = x.status
             AND s.attempt = x.attempt)
            OR (s.status IN ('started', 'retrying', 'backoff') AND x.attempt > s.attempt)
            OR (s.status = 'started' AND x.attempt = s.attempt
                AND x.status IN ('completed', 'failed', 'backoff')
                AND (s.run_id IS NOT DISTINCT FROM x.run_id OR s.kind = 'wait')))
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'step % of workflow % is % (attempt %): refusing % (attempt %)',
                bad.seq, bad.workflow_id, bad.status, bad.attempt, bad.new_status,
                bad.new_attempt
                USING ERRCODE = 'RF003', DETAIL = bad.workflow_id;
        END IF;
"""

_UPSERT_HEAD: Final = """\
        INSERT INTO steps AS s (workflow_id, seq, partition, name, kind, status, attempt,
                                input, output, error, started_at, finished_at, fire_at,
                                history, epoch, run_id, app_version)
        SELECT x.workflow_id, x.seq, x.partition, x.name, x.kind, x.status, x.attempt,
               x.input, x.output, x.error, x.started_at, x.finished_at, x.fire_at,
               x.history, x.epoch, x.run_id, coalesce(x.app_version, '')
        FROM jsonb_to_recordset(g->'steps') AS x(
            workflow_id text, seq bigint, partition integer, name text, kind text,
            status text, attempt integer, input jsonb, output jsonb, error text,
            started_at timestamptz, finished_at timestamptz, fire_at timestamptz,
            history jsonb, epoch bigint, run_id text, app_version text)
        ON CONFLICT (workflow_id, seq) DO UPDATE SET
            partition = excluded.partition, name = excluded.name, kind = excluded.kind,
            status = excluded.status, attempt = excluded.attempt, input = excluded.input,
            output = excluded.output, error = excluded.error,
            started_at = excluded.started_at, finished_at = excluded.finished_at,
            fire_at = excluded.fire_at, history = excluded.history, epoch = excluded.epoch,
            run_id = excluded.run_id, app_version = excluded.app_version
"""
_OLD_WHERE: Final = """        WHERE NOT (s.run_id IS NOT DISTINCT FROM excluded.run_id
                   AND s.status = excluded.status AND s.attempt = excluded.attempt);
"""
# The guard's legal moves (its first case, the identical record, is the no-op).
_NEW_WHERE: Final = """        WHERE (s.status IN ('started', 'retrying', 'backoff')
               AND excluded.attempt > s.attempt)
           OR (s.status = 'started' AND excluded.attempt = s.attempt
               AND excluded.status IN ('completed', 'failed', 'backoff')
               AND (s.run_id IS NOT DISTINCT FROM excluded.run_id OR s.kind = 'wait'));
        GET DIAGNOSTICS written = ROW_COUNT;
        IF written < jsonb_array_length(g->'steps') THEN
            -- Not all written: identical re-appends (they pass), or a refusal.
"""
_NEW_END: Final = """        END IF;
"""


def _indented(block: str) -> str:
    return "".join(f"    {line}" if line.strip() else line for line in block.splitlines(True))


def _function() -> str:
    """Migration 8's retinue_append with the steps section swapped (see above)."""
    v8 = v8_lean_writes.SQL
    function = v8[v8.index("CREATE OR REPLACE FUNCTION retinue_append"):]
    old_steps = _GUARD + _UPSERT_HEAD + _OLD_WHERE
    new_steps = _UPSERT_HEAD + _NEW_WHERE + _indented(_GUARD) + _NEW_END
    for old in (old_steps, _DECLARE_BEFORE):
        if function.count(old) != 1:
            raise AssertionError("migration 8's function text is not what migration 9 swaps")
    return function.replace(_DECLARE_BEFORE, _DECLARE_AFTER).replace(old_steps, new_steps)


SQL: Final = _function()
