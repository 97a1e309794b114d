"""Migration 9: the group as typed arrays (issue 14).

Shipped once merged: never edit; add a new migration instead.
"""

from __future__ import annotations

from typing import Final

# retinue_append(jsonb) spent about a third of its time taking in its argument: jsonb
# parsed from text, then every section's jsonb_to_recordset turning each field back
# into text and through its type's input function (docs/performance.md, round 5).
# This overload takes the group as one array per part, of composite types sent in
# PostgreSQL's binary format (asyncpg encodes tuples): no JSON to parse but the
# payloads themselves (jsonb columns), integers and timestamps as they are stored.
#
# The body is migration 8's, section for section, with `unnest(part)` for
# `jsonb_to_recordset(g->'part')` and `cardinality(part)` for
# `jsonb_array_length(g->'part')`: every guard, SQLSTATE, message, the id-order row
# locks and the folded claim are the same. Python builds each record in the order
# of its type's attributes (journal/_pgwrite.py; a test compares the two).
#
# retinue_append(jsonb) stays: a node of the previous release, still running during
# a rolling deploy, calls it, and it keeps the same guards. A later migration may drop
# it once no supported release calls it.
SQL: Final = """
CREATE TYPE retinue_lease AS (partition integer, epoch bigint);
CREATE TYPE retinue_run AS (workflow_id text, run_id text, previous text);
CREATE TYPE retinue_new_workflow AS (
    id text, name text, actor_key text, partition integer, input jsonb,
    idempotency_key text, request_hash text, parent_id text, trace_id text,
    app_version text);
CREATE TYPE retinue_step AS (
    workflow_id text, seq bigint, name text, kind text, status text, attempt integer,
    input jsonb, output jsonb, error text, started_at timestamptz,
    finished_at timestamptz, fire_at timestamptz, history jsonb, app_version text,
    -- its batch's
    partition integer, epoch bigint, run_id text);
CREATE TYPE retinue_status AS (
    workflow_id text, status text, result jsonb, error text, parked jsonb);
CREATE TYPE retinue_event AS (
    actor_key text, seq bigint, type text, payload jsonb, workflow_id text,
    partition integer, epoch bigint);
CREATE TYPE retinue_document AS (
    kind text, id text, data jsonb, unique_key text, owner text);
CREATE TYPE retinue_workflow_event AS (workflow_id text, key text, value jsonb);

CREATE FUNCTION retinue_append(
    leases retinue_lease[], runs retinue_run[], workflows retinue_new_workflow[],
    steps retinue_step[], statuses retinue_status[], events retinue_event[],
    documents retinue_document[], workflow_events retinue_workflow_event[],
    consumed_signals bigint[]
) RETURNS void LANGUAGE plpgsql
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
    IF cardinality(leases) > 0 THEN
        -- FOR SHARE: appends do not wait for each other, a take-over waits for them.
        PERFORM 1 FROM partitions
            WHERE partition IN (SELECT l.partition FROM unnest(leases) AS l)
            ORDER BY partition FOR SHARE;
        SELECT b.partition, b.epoch INTO bad
        FROM unnest(leases) AS b
        LEFT JOIN partitions p ON p.partition = b.partition
        WHERE p.epoch IS DISTINCT FROM b.epoch
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'partition % is not owned at epoch %', bad.partition, bad.epoch
                USING ERRCODE = 'RF001', DETAIL = bad.partition || ':' || bad.epoch;
        END IF;
    END IF;

    IF cardinality(workflows) > 0 THEN
        INSERT INTO workflows (id, name, actor_key, partition, input, idempotency_key,
                               request_hash, parent_id, trace_id, app_version)
        SELECT x.id, x.name, x.actor_key, x.partition, x.input, x.idempotency_key,
               x.request_hash, x.parent_id, coalesce(x.trace_id, ''),
               coalesce(x.app_version, '')
        FROM unnest(workflows) AS x
        ON CONFLICT (id) DO NOTHING;
    END IF;

    IF cardinality(runs) > 0 THEN
        -- As in migration 8: rows locked in id order (two groups never deadlock);
        -- fewer workflows than claims means one claimed twice, or missing; unheld:
        -- a claim to check; claim_alone: one with no status change in the group;
        -- claims (workflow -> run) and moving (workflows changing status) are jsonb
        -- objects, so a lookup is a binary search, not a scan of the group.
        SELECT count(DISTINCT locked.id) <> cardinality(runs),
               coalesce(bool_or(locked.holder IS DISTINCT FROM locked.claim), false),
               coalesce(bool_or(locked.holder IS DISTINCT FROM locked.claim
                                AND NOT coalesce(
                                    (SELECT jsonb_object_agg(c.workflow_id, true)
                                     FROM unnest(statuses) AS c)
                                    ? locked.id, false)), false),
               jsonb_object_agg(locked.id, locked.claim),
               (SELECT jsonb_object_agg(c.workflow_id, true) FROM unnest(statuses) AS c)
            INTO claimed_twice, unheld, claim_alone, claims, moving
        FROM (SELECT w.id, w.run_id AS holder, r.run_id AS claim
              FROM workflows w
              JOIN unnest(runs) AS r ON w.id = r.workflow_id
              ORDER BY w.id FOR NO KEY UPDATE OF w) AS locked;
        IF claimed_twice THEN
            UPDATE workflows w SET run_id = r.run_id
            FROM unnest(runs) AS r
            WHERE w.id = r.workflow_id AND w.run_id IS DISTINCT FROM r.run_id
              AND w.run_id IS NOT DISTINCT FROM r.previous
              AND w.status NOT IN ('completed', 'failed', 'cancelled');
        END IF;
        IF claimed_twice OR unheld THEN
            -- Refused: a workflow that the claim would not leave held by the run
            -- (claimed twice: what the claims left).
            SELECT r.workflow_id, w.run_id AS holder, w.status INTO bad
            FROM unnest(runs) AS r
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
            FROM unnest(runs) AS r
            WHERE w.id = r.workflow_id AND w.run_id IS DISTINCT FROM r.run_id
              AND w.run_id IS NOT DISTINCT FROM r.previous
              AND w.status NOT IN ('completed', 'failed', 'cancelled')
              AND NOT coalesce(moving ? r.workflow_id, false);
        END IF;
    END IF;

    IF cardinality(steps) > 0 THEN
        SELECT x.workflow_id, x.seq, s.status, s.attempt, x.status AS new_status,
               x.attempt AS new_attempt INTO bad
        FROM unnest(steps) AS x
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
        FROM unnest(steps) AS x
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

    IF cardinality(statuses) > 0 THEN
        SELECT c.workflow_id, w.id AS found, w.status, c.status AS new_status INTO bad
        FROM unnest(statuses) AS c
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
        -- claims: this group's claim of the workflow, checked above; none: run_id stays.
        UPDATE workflows w
        SET status = c.status, result = c.result, error = c.error, updated_at = now(),
            parked = CASE WHEN c.status = 'parked' THEN c.parked END,
            run_id = coalesce(claims->>c.workflow_id, w.run_id)
        FROM unnest(statuses) AS c
        WHERE w.id = c.workflow_id AND w.status NOT IN ('completed', 'failed', 'cancelled');
    END IF;

    IF cardinality(events) > 0 THEN
        INSERT INTO events (actor_key, seq, type, payload, workflow_id, partition, epoch)
        SELECT x.actor_key, x.seq, x.type, x.payload, x.workflow_id, x.partition, x.epoch
        FROM unnest(events) AS x
        WHERE NOT EXISTS (
            SELECT 1 FROM events e
            WHERE e.actor_key = x.actor_key AND e.seq = x.seq AND e.type = x.type
              AND e.workflow_id IS NOT DISTINCT FROM x.workflow_id
              AND e.payload IS NOT DISTINCT FROM x.payload);
    END IF;

    IF cardinality(documents) > 0 THEN
        INSERT INTO documents (kind, id, data, unique_key, owner, updated_at)
        SELECT x.kind, x.id, x.data, x.unique_key, x.owner, now()
        FROM unnest(documents) AS x
        ON CONFLICT (kind, id) DO UPDATE SET
            data = excluded.data, unique_key = excluded.unique_key, owner = excluded.owner,
            updated_at = excluded.updated_at;
    END IF;

    IF cardinality(workflow_events) > 0 THEN
        INSERT INTO workflow_events (workflow_id, key, value)
        SELECT x.workflow_id, x.key, x.value
        FROM unnest(workflow_events) AS x
        ON CONFLICT (workflow_id, key) DO NOTHING;
    END IF;

    IF cardinality(consumed_signals) > 0 THEN
        UPDATE signals SET consumed = true WHERE id = ANY (consumed_signals);
    END IF;
END
$fn$;
"""
