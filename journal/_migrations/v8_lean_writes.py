"""Migration 8: cheaper writes (issue 14): fewer workflow index entries, fewer
row versions per group commit.

Shipped once merged: never edit; add a new migration instead.
"""

from __future__ import annotations

from typing import Final

# PostgreSQL's CPU per invite went mostly to workflow row versions: an update that
# changes an indexed column (every status change: status and updated_at are
# indexed) writes a new version with an entry in EVERY index of the row, and
# workflows had six full indexes. Two of them only serve a subset of the rows:
#
#   - workflows_idempotency_key: most workflows carry no key, and a NULL takes an
#     entry in a unique index like any value. Partial now (same name, so a
#     collision still reports `workflows_idempotency_key`); every query on it
#     states `idempotency_key = $1`, which implies the predicate, and
#     ON CONFLICT DO NOTHING (no target) takes partial unique indexes as arbiters.
#   - workflows_status_position: listing by an unfinished status reads
#     workflows_unfinished (every unfinished row, newest first, filtered), so this
#     one holds the finished rows only, where a rare status (cancelled) needs it.
#     An unfinished version (pending, claimed, running, waiting) no longer enters it.
#
# retinue_append (same signature, CREATE OR REPLACE; every guard, SQLSTATE, message
# and the id-order row locks of migrations 4 and 5 kept):
#
#   - A run's claim (run_id := its own) and a status change of the same workflow
#     in one group were two UPDATEs, two row versions (the first commit of every
#     run: claim and `running`). The claim is now checked where it was, before
#     anything is written, as the UPDATE would have left it; a workflow that also
#     changes status in the group takes its new run_id in the status UPDATE, the
#     others in the claim UPDATE, as before. Nothing between the two reads
#     workflows.run_id. A group claiming one workflow twice (two batches of it),
#     or one that does not exist, takes the claims first and checks what they
#     left, exactly as before. The row lock that precedes them now also tells
#     whether any claim is to check or write at all: in most groups every run
#     already holds its workflow, and both statements are skipped.
#   - The workflows, documents and workflow_events inserts are skipped when their
#     arrays are empty, as the other sections already were.
SQL: Final = """
ALTER TABLE workflows DROP CONSTRAINT workflows_idempotency_key;
CREATE UNIQUE INDEX workflows_idempotency_key ON workflows (idempotency_key)
    WHERE idempotency_key IS NOT NULL;
DROP INDEX workflows_status_position;
CREATE INDEX workflows_status_position ON workflows (status, position)
    WHERE status IN ('completed', 'failed', 'cancelled');

CREATE OR REPLACE FUNCTION retinue_append(g jsonb) RETURNS void LANGUAGE plpgsql
SET enable_hashjoin = off SET enable_mergejoin = off SET enable_seqscan = off
AS $fn$
DECLARE
    bad record;
    claimed_twice boolean;
    unheld boolean;
    claim_alone boolean;
    claims jsonb;
    moving jsonb;
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

    IF jsonb_array_length(g->'workflows') > 0 THEN
        INSERT INTO workflows (id, name, actor_key, partition, input, idempotency_key,
                               request_hash, parent_id, trace_id, app_version)
        SELECT x.id, x.name, x.actor_key, x.partition, x.input, x.idempotency_key,
               x.request_hash, x.parent_id, coalesce(x.trace_id, ''),
               coalesce(x.app_version, '')
        FROM jsonb_to_recordset(g->'workflows') AS x(
            id text, name text, actor_key text, partition integer, input jsonb,
            idempotency_key text, request_hash text, parent_id text, trace_id text,
            app_version text)
        ON CONFLICT (id) DO NOTHING;
    END IF;

    IF jsonb_array_length(g->'runs') > 0 THEN
        -- Locked in id order (as every group locks them): two groups never deadlock.
        -- Fewer workflows than claims: one claimed twice, or missing (refused below).
        -- unheld: a claim to check; claim_alone: one with no status change here.
        -- claims (workflow -> run) and moving (workflows changing status) are
        -- jsonb objects: a lookup is a binary search, not a scan of the group.
        -- (The two subqueries of `moving` are evaluated once each per call.)
        SELECT count(DISTINCT locked.id) <> jsonb_array_length(g->'runs'),
               coalesce(bool_or(locked.holder IS DISTINCT FROM locked.claim), false),
               coalesce(bool_or(locked.holder IS DISTINCT FROM locked.claim
                                AND NOT coalesce(
                                    (SELECT jsonb_object_agg(c->>'workflow_id', true)
                                     FROM jsonb_array_elements(g->'statuses') AS c)
                                    ? locked.id, false)), false),
               jsonb_object_agg(locked.id, locked.claim),
               (SELECT jsonb_object_agg(c->>'workflow_id', true)
                FROM jsonb_array_elements(g->'statuses') AS c)
            INTO claimed_twice, unheld, claim_alone, claims, moving
        FROM (SELECT w.id, w.run_id AS holder, r.run_id AS claim
              FROM workflows w
              JOIN jsonb_to_recordset(g->'runs') AS r(workflow_id text, run_id text)
                  ON w.id = r.workflow_id
              ORDER BY w.id FOR NO KEY UPDATE OF w) AS locked;
        IF claimed_twice THEN
            UPDATE workflows w SET run_id = r.run_id
            FROM jsonb_to_recordset(g->'runs')
                AS r(workflow_id text, run_id text, previous text)
            WHERE w.id = r.workflow_id AND w.run_id IS DISTINCT FROM r.run_id
              AND w.run_id IS NOT DISTINCT FROM r.previous
              AND w.status NOT IN ('completed', 'failed', 'cancelled');
        END IF;
        IF claimed_twice OR unheld THEN
            -- Refused: a workflow that the claim would not leave held by the run
            -- (claimed twice: what the claims left).
            SELECT r.workflow_id, w.run_id AS holder, w.status INTO bad
            FROM jsonb_to_recordset(g->'runs')
                AS r(workflow_id text, run_id text, previous text)
            LEFT JOIN workflows w ON w.id = r.workflow_id
            WHERE w.run_id IS DISTINCT FROM r.run_id
              AND (claimed_twice
                   OR NOT (w.id IS NOT NULL AND w.run_id IS NOT DISTINCT FROM r.previous
                           AND w.status NOT IN ('completed', 'failed', 'cancelled')))
            LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'workflow % is held by another run (%; status %)',
                    bad.workflow_id, coalesce(bad.holder, 'none'),
                    coalesce(bad.status, 'missing')
                    USING ERRCODE = 'RF003', DETAIL = bad.workflow_id;
            END IF;
        END IF;
        IF claim_alone AND NOT claimed_twice THEN
            -- The claims of workflows with no status change here; the others are
            -- written by the status UPDATE below (one row version, not two).
            UPDATE workflows w SET run_id = r.run_id
            FROM jsonb_to_recordset(g->'runs')
                AS r(workflow_id text, run_id text, previous text)
            WHERE w.id = r.workflow_id AND w.run_id IS DISTINCT FROM r.run_id
              AND w.run_id IS NOT DISTINCT FROM r.previous
              AND w.status NOT IN ('completed', 'failed', 'cancelled')
              AND NOT coalesce(moving ? r.workflow_id, false);
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
        -- claims: this group's claim of the workflow, checked above (so the claim,
        -- if it changes anything, leaves run_id = its run); none: run_id stays.
        UPDATE workflows w
        SET status = c.status, result = c.result, error = c.error, updated_at = now(),
            parked = CASE WHEN c.status = 'parked' THEN c.parked END,
            run_id = coalesce(claims->>c.workflow_id, w.run_id)
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

    IF jsonb_array_length(g->'documents') > 0 THEN
        INSERT INTO documents (kind, id, data, unique_key, owner, updated_at)
        SELECT x.kind, x.id, x.data, x.unique_key, x.owner, now()
        FROM jsonb_to_recordset(g->'documents')
            AS x(kind text, id text, data jsonb, unique_key text, owner text)
        ON CONFLICT (kind, id) DO UPDATE SET
            data = excluded.data, unique_key = excluded.unique_key, owner = excluded.owner,
            updated_at = excluded.updated_at;
    END IF;

    IF jsonb_array_length(g->'workflow_events') > 0 THEN
        INSERT INTO workflow_events (workflow_id, key, value)
        SELECT x.workflow_id, x.key, x.value
        FROM jsonb_to_recordset(g->'workflow_events')
            AS x(workflow_id text, key text, value jsonb)
        ON CONFLICT (workflow_id, key) DO NOTHING;
    END IF;

    IF jsonb_array_length(g->'consumed_signals') > 0 THEN
        UPDATE signals SET consumed = true
        WHERE id IN (SELECT value::bigint
                     FROM jsonb_array_elements_text(g->'consumed_signals'));
    END IF;
END
$fn$;
"""
