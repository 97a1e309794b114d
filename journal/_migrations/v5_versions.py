"""Migration 5: versions and parking (issue 12, "deploy while customers wait").

Shipped once merged: never edit; add a new migration instead.
"""

from __future__ import annotations

from typing import Final

# Every workflow keeps the application version it started under, every step
# record the version whose code wrote it, so a mismatch on replay can say which
# deploy wrote what. A workflow whose replayed code disagrees with its journal
# is parked (status 'parked', allowed since migration 4): `parked` keeps the
# mismatch (seq, expected, found, found_version, running_version) until the
# workflow moves on; any other status change clears it.
#
# retinue_append is replaced (same signature, CREATE OR REPLACE) only to write
# the new columns: workflows.app_version, steps.app_version and
# workflows.parked. Every guard of migration 4 and its planner settings stay.
SQL: Final = """
ALTER TABLE workflows ADD COLUMN app_version text NOT NULL DEFAULT '';
ALTER TABLE workflows ADD COLUMN parked jsonb;
ALTER TABLE steps ADD COLUMN app_version text NOT NULL DEFAULT '';
-- /metrics counts parked workflows by name on every scrape: a small partial index.
CREATE INDEX workflows_parked ON workflows (name) WHERE status = 'parked';

CREATE OR REPLACE FUNCTION retinue_append(g jsonb) RETURNS void LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off
AS $fn$
DECLARE
    bad record;
BEGIN
    IF jsonb_array_length(g->'leases') > 0 THEN
        -- FOR SHARE: appends do not wait for each other, a take-over waits for them.
        PERFORM 1 FROM partitions
            WHERE partition IN (SELECT (l->>'partition')::integer
                                FROM jsonb_array_elements(g->'leases') AS l)
            ORDER BY partition FOR SHARE;
        SELECT b.partition, b.epoch INTO bad
        FROM jsonb_to_recordset(g->'leases') AS b(partition integer, epoch bigint)
        LEFT JOIN partitions p ON p.partition = b.partition
        WHERE p.epoch IS DISTINCT FROM b.epoch
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'partition % is not owned at epoch %', bad.partition, bad.epoch
                USING ERRCODE = 'RF001', DETAIL = bad.partition || ':' || bad.epoch;
        END IF;
    END IF;

    INSERT INTO workflows (id, name, actor_key, partition, input, idempotency_key,
                           request_hash, parent_id, trace_id, app_version)
    SELECT x.id, x.name, x.actor_key, x.partition, x.input, x.idempotency_key,
           x.request_hash, x.parent_id, coalesce(x.trace_id, ''), coalesce(x.app_version, '')
    FROM jsonb_to_recordset(g->'workflows') AS x(
        id text, name text, actor_key text, partition integer, input jsonb,
        idempotency_key text, request_hash text, parent_id text, trace_id text,
        app_version text)
    ON CONFLICT (id) DO NOTHING;

    IF jsonb_array_length(g->'runs') > 0 THEN
        -- Locked in id order (as every group locks them): two groups never deadlock.
        PERFORM 1 FROM workflows
            WHERE id IN (SELECT r->>'workflow_id' FROM jsonb_array_elements(g->'runs') AS r)
            ORDER BY id FOR NO KEY UPDATE;
        UPDATE workflows w SET run_id = r.run_id
        FROM jsonb_to_recordset(g->'runs') AS r(workflow_id text, run_id text, previous text)
        WHERE w.id = r.workflow_id AND w.run_id IS DISTINCT FROM r.run_id
          AND w.run_id IS NOT DISTINCT FROM r.previous
          AND w.status NOT IN ('completed', 'failed', 'cancelled');
        SELECT r.workflow_id, w.run_id AS holder, w.status INTO bad
        FROM jsonb_to_recordset(g->'runs') AS r(workflow_id text, run_id text)
        LEFT JOIN workflows w ON w.id = r.workflow_id
        WHERE w.run_id IS DISTINCT FROM r.run_id
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'workflow % is held by another run (%; status %)',
                bad.workflow_id, coalesce(bad.holder, 'none'), coalesce(bad.status, 'missing')
                USING ERRCODE = 'RF003', DETAIL = bad.workflow_id;
        END IF;
    END IF;

    IF jsonb_array_length(g->'steps') > 0 THEN
        SELECT x.workflow_id, x.seq, s.status, s.attempt, x.status AS new_status,
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
        WHERE NOT (s.run_id IS NOT DISTINCT FROM excluded.run_id
                   AND s.status = excluded.status AND s.attempt = excluded.attempt);
    END IF;

    IF jsonb_array_length(g->'statuses') > 0 THEN
        SELECT c.workflow_id, w.id AS found, w.status, c.status AS new_status INTO bad
        FROM jsonb_to_recordset(g->'statuses') AS c(workflow_id text, status text)
        LEFT JOIN workflows w ON w.id = c.workflow_id
        WHERE w.id IS NULL
           OR c.status NOT IN ('running', 'waiting', 'parked', 'completed', 'failed',
                               'cancelled')
           OR (w.status IN ('completed', 'failed', 'cancelled') AND w.status <> c.status)
        LIMIT 1;
        IF FOUND AND bad.found IS NULL THEN
            RAISE EXCEPTION 'no workflow with id %', bad.workflow_id
                USING ERRCODE = 'RF002', DETAIL = bad.workflow_id;
        ELSIF FOUND THEN
            RAISE EXCEPTION 'workflow % is %: it cannot move to %', bad.workflow_id,
                bad.status, bad.new_status
                USING ERRCODE = 'RF003', DETAIL = bad.workflow_id;
        END IF;
        UPDATE workflows w
        SET status = c.status, result = c.result, error = c.error, updated_at = now(),
            parked = CASE WHEN c.status = 'parked' THEN c.parked END
        FROM jsonb_to_recordset(g->'statuses')
            AS c(workflow_id text, status text, result jsonb, error text, parked jsonb)
        WHERE w.id = c.workflow_id AND w.status NOT IN ('completed', 'failed', 'cancelled');
    END IF;

    IF jsonb_array_length(g->'events') > 0 THEN
        INSERT INTO events (actor_key, seq, type, payload, workflow_id, partition, epoch)
        SELECT x.actor_key, x.seq, x.type, x.payload, x.workflow_id, x.partition, x.epoch
        FROM jsonb_to_recordset(g->'events') AS x(
            actor_key text, seq bigint, type text, payload jsonb, workflow_id text,
            partition integer, epoch bigint)
        WHERE NOT EXISTS (
            SELECT 1 FROM events e
            WHERE e.actor_key = x.actor_key AND e.seq = x.seq AND e.type = x.type
              AND e.workflow_id IS NOT DISTINCT FROM x.workflow_id
              AND e.payload IS NOT DISTINCT FROM x.payload);
    END IF;

    INSERT INTO documents (kind, id, data, unique_key, owner, updated_at)
    SELECT x.kind, x.id, x.data, x.unique_key, x.owner, now()
    FROM jsonb_to_recordset(g->'documents')
        AS x(kind text, id text, data jsonb, unique_key text, owner text)
    ON CONFLICT (kind, id) DO UPDATE SET
        data = excluded.data, unique_key = excluded.unique_key, owner = excluded.owner,
        updated_at = excluded.updated_at;

    INSERT INTO workflow_events (workflow_id, key, value)
    SELECT x.workflow_id, x.key, x.value
    FROM jsonb_to_recordset(g->'workflow_events') AS x(workflow_id text, key text, value jsonb)
    ON CONFLICT (workflow_id, key) DO NOTHING;

    IF jsonb_array_length(g->'consumed_signals') > 0 THEN
        UPDATE signals SET consumed = true
        WHERE id IN (SELECT value::bigint
                     FROM jsonb_array_elements_text(g->'consumed_signals'));
    END IF;
END
$fn$;
"""
