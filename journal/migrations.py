"""The journal's schema, as an ordered, append-only list of migrations.

Rules: never edit or reorder a migration that has shipped; add a new one with the
next version. `migrate` applies the missing ones in one transaction, under an
advisory lock, so processes that start together never race.
"""

from __future__ import annotations

from typing import Final, NamedTuple

from ._pgconn import Conn

__all__ = ["MIGRATIONS", "Migration", "migrate"]


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


# The partition table is filled with 0..255: PARTITION_COUNT never changes for a
# database (tests hold the two together).
_V1_INITIAL_SCHEMA: Final = """
CREATE TABLE partitions (
    partition        integer PRIMARY KEY,
    owner            text NOT NULL DEFAULT '',
    epoch            bigint NOT NULL DEFAULT 0,
    lease_expires_at timestamptz
);
INSERT INTO partitions (partition, epoch) SELECT p, 0 FROM generate_series(0, 255) AS p;

CREATE TABLE workflows (
    id               text PRIMARY KEY,
    position         bigserial NOT NULL CONSTRAINT workflows_position UNIQUE,
    name             text NOT NULL,
    actor_key        text NOT NULL,
    partition        integer NOT NULL,
    status           text NOT NULL DEFAULT 'pending',
    input            jsonb,
    result           jsonb,
    error            text,
    idempotency_key  text CONSTRAINT workflows_idempotency_key UNIQUE,
    request_hash     text,
    parent_id        text,
    trace_id         text NOT NULL DEFAULT '',
    cancel_requested boolean NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX workflows_status_position ON workflows (status, position);
CREATE INDEX workflows_actor_position ON workflows (actor_key, position);
CREATE INDEX workflows_parent ON workflows (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX workflows_unfinished ON workflows (position)
    WHERE status NOT IN ('completed', 'failed', 'cancelled');

CREATE TABLE steps (
    workflow_id text NOT NULL,
    seq         bigint NOT NULL,
    partition   integer NOT NULL,
    name        text NOT NULL,
    kind        text NOT NULL DEFAULT 'step',
    status      text NOT NULL,
    attempt     integer NOT NULL DEFAULT 1,
    input       jsonb,
    output      jsonb,
    error       text,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz,
    fire_at     timestamptz,
    history     jsonb,
    CONSTRAINT steps_pkey PRIMARY KEY (workflow_id, seq)
);
CREATE INDEX steps_waiting ON steps (fire_at) WHERE kind = 'wait' AND status = 'started';

CREATE TABLE events (
    actor_key   text NOT NULL,
    seq         bigint NOT NULL,
    type        text NOT NULL,
    payload     jsonb,
    workflow_id text,
    partition   integer NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_pkey PRIMARY KEY (actor_key, seq)
);

CREATE TABLE documents (
    kind       text NOT NULL,
    id         text NOT NULL,
    data       jsonb,
    unique_key text,
    owner      text,
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT documents_pkey PRIMARY KEY (kind, id)
);
CREATE UNIQUE INDEX documents_unique_key ON documents (kind, unique_key)
    WHERE unique_key IS NOT NULL;
CREATE INDEX documents_owner ON documents (kind, owner);

CREATE TABLE workflow_events (
    workflow_id text NOT NULL,
    key         text NOT NULL,
    value       jsonb,
    CONSTRAINT workflow_events_pkey PRIMARY KEY (workflow_id, key)
);

CREATE TABLE signals (
    id          bigserial PRIMARY KEY,
    workflow_id text NOT NULL,
    name        text NOT NULL,
    payload     jsonb,
    consumed    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX signals_unconsumed ON signals (workflow_id, name, id) WHERE NOT consumed;

CREATE TABLE dead_letters (
    id             bigserial PRIMARY KEY,
    actor_key      text NOT NULL,
    message        jsonb,
    error          text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    redelivered_at timestamptz
);
"""

# The whole write path as one function: a group commit is then one statement, one
# round trip and one implicit transaction. Stale leases and unknown workflows
# raise with Retinue's own SQLSTATEs (RF001, RF002), translated in _pgconn.
_V2_APPEND_FUNCTION: Final = """
CREATE FUNCTION retinue_append(
    lease_partitions integer[], lease_epochs bigint[],
    wf_id text[], wf_name text[], wf_actor text[], wf_partition integer[], wf_input text[],
    wf_idem text[], wf_hash text[], wf_parent text[], wf_trace text[],
    st_wf text[], st_seq bigint[], st_partition integer[], st_name text[], st_kind text[],
    st_status text[], st_attempt integer[], st_input text[], st_output text[],
    st_error text[], st_started timestamptz[], st_finished timestamptz[], st_fire timestamptz[],
    st_history text[],
    ch_id text[], ch_status text[], ch_result text[], ch_error text[],
    ev_actor text[], ev_seq bigint[], ev_type text[], ev_payload text[], ev_wf text[],
    ev_partition integer[],
    doc_kind text[], doc_id text[], doc_data text[], doc_unique text[], doc_owner text[],
    we_wf text[], we_key text[], we_value text[],
    consumed_ids bigint[]
) RETURNS void LANGUAGE plpgsql AS $fn$
-- JSON values arrive as text: a JSON array inside a jsonb[] parameter would be
-- taken for another dimension of the array.
DECLARE
    stale record;
    missing text;
BEGIN
    IF cardinality(lease_partitions) > 0 THEN
        -- FOR SHARE: appends do not wait for each other, a take-over waits for them.
        PERFORM 1 FROM partitions WHERE partition = ANY(lease_partitions)
            ORDER BY partition FOR SHARE;
        SELECT b.partition, b.epoch INTO stale
        FROM unnest(lease_partitions, lease_epochs) AS b(partition, epoch)
        LEFT JOIN partitions p ON p.partition = b.partition
        WHERE p.epoch IS DISTINCT FROM b.epoch
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'partition % is not owned at epoch %', stale.partition, stale.epoch
                USING ERRCODE = 'RF001', DETAIL = stale.partition || ':' || stale.epoch;
        END IF;
    END IF;
    IF cardinality(wf_id) > 0 THEN
        INSERT INTO workflows (id, name, actor_key, partition, input, idempotency_key,
                               request_hash, parent_id, trace_id)
        SELECT i, n, a, p, j::jsonb, k, h, pa, t
        FROM unnest(wf_id, wf_name, wf_actor, wf_partition, wf_input, wf_idem,
                    wf_hash, wf_parent, wf_trace) AS x(i, n, a, p, j, k, h, pa, t)
        ON CONFLICT (id) DO NOTHING;
    END IF;
    IF cardinality(st_wf) > 0 THEN
        INSERT INTO steps (workflow_id, seq, partition, name, kind, status, attempt, input,
                           output, error, started_at, finished_at, fire_at, history)
        SELECT w, q, p, n, k, s, a, i::jsonb, o::jsonb, e, sa, fa, fi, h::jsonb
        FROM unnest(st_wf, st_seq, st_partition, st_name, st_kind, st_status,
                    st_attempt, st_input, st_output, st_error, st_started,
                    st_finished, st_fire, st_history)
            AS x(w, q, p, n, k, s, a, i, o, e, sa, fa, fi, h)
        ON CONFLICT (workflow_id, seq) DO UPDATE SET
            partition = excluded.partition, name = excluded.name, kind = excluded.kind,
            status = excluded.status, attempt = excluded.attempt, input = excluded.input,
            output = excluded.output, error = excluded.error,
            started_at = excluded.started_at, finished_at = excluded.finished_at,
            fire_at = excluded.fire_at, history = excluded.history;
    END IF;
    IF cardinality(ch_id) > 0 THEN
        SELECT c.id INTO missing FROM unnest(ch_id) AS c(id)
        WHERE NOT EXISTS (SELECT 1 FROM workflows w WHERE w.id = c.id) LIMIT 1;
        IF missing IS NOT NULL THEN
            RAISE EXCEPTION 'no workflow with id %', missing
                USING ERRCODE = 'RF002', DETAIL = missing;
        END IF;
        UPDATE workflows w
        SET status = c.s, result = c.r::jsonb, error = c.e, updated_at = now()
        FROM unnest(ch_id, ch_status, ch_result, ch_error) AS c(i, s, r, e)
        WHERE w.id = c.i;
    END IF;
    IF cardinality(ev_actor) > 0 THEN
        INSERT INTO events (actor_key, seq, type, payload, workflow_id, partition)
        SELECT a, q, t, j::jsonb, w, p
        FROM unnest(ev_actor, ev_seq, ev_type, ev_payload, ev_wf, ev_partition)
            AS x(a, q, t, j, w, p);
    END IF;
    IF cardinality(doc_kind) > 0 THEN
        INSERT INTO documents (kind, id, data, unique_key, owner, updated_at)
        SELECT k, i, d::jsonb, u, o, now()
        FROM unnest(doc_kind, doc_id, doc_data, doc_unique, doc_owner) AS x(k, i, d, u, o)
        ON CONFLICT (kind, id) DO UPDATE SET
            data = excluded.data, unique_key = excluded.unique_key, owner = excluded.owner,
            updated_at = excluded.updated_at;
    END IF;
    IF cardinality(we_wf) > 0 THEN
        INSERT INTO workflow_events (workflow_id, key, value)
        SELECT w, k, v::jsonb FROM unnest(we_wf, we_key, we_value) AS x(w, k, v)
        ON CONFLICT (workflow_id, key) DO UPDATE SET value = excluded.value;
    END IF;
    IF cardinality(consumed_ids) > 0 THEN
        UPDATE signals SET consumed = true WHERE id = ANY(consumed_ids);
    END IF;
END
$fn$;
"""

# Scale-out. Nodes register with a heartbeat; a node's session (the connection
# that LISTENs for wake-ups) holds the advisory lock (24177, session_key), so
# other nodes see at once that a killed process has gone. retinue_append now
# records the epoch each step and event was written under (its partition's lease
# at that moment): who wrote what, for audits and the scale-out tests. Same
# signature and checks as migration 2; only the `epoch` columns are new.
_V3_NODES: Final = """
CREATE TABLE nodes (
    node_id      text PRIMARY KEY,
    session_key  integer NOT NULL DEFAULT 0,
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL DEFAULT now()
);
CREATE SEQUENCE retinue_node_sessions AS integer MINVALUE 1 CYCLE;

ALTER TABLE steps ADD COLUMN epoch bigint;
ALTER TABLE events ADD COLUMN epoch bigint;

CREATE OR REPLACE FUNCTION retinue_append(
    lease_partitions integer[], lease_epochs bigint[],
    wf_id text[], wf_name text[], wf_actor text[], wf_partition integer[], wf_input text[],
    wf_idem text[], wf_hash text[], wf_parent text[], wf_trace text[],
    st_wf text[], st_seq bigint[], st_partition integer[], st_name text[], st_kind text[],
    st_status text[], st_attempt integer[], st_input text[], st_output text[],
    st_error text[], st_started timestamptz[], st_finished timestamptz[], st_fire timestamptz[],
    st_history text[],
    ch_id text[], ch_status text[], ch_result text[], ch_error text[],
    ev_actor text[], ev_seq bigint[], ev_type text[], ev_payload text[], ev_wf text[],
    ev_partition integer[],
    doc_kind text[], doc_id text[], doc_data text[], doc_unique text[], doc_owner text[],
    we_wf text[], we_key text[], we_value text[],
    consumed_ids bigint[]
) RETURNS void LANGUAGE plpgsql AS $fn$
-- JSON values arrive as text: a JSON array inside a jsonb[] parameter would be
-- taken for another dimension of the array.
DECLARE
    stale record;
    missing text;
BEGIN
    IF cardinality(lease_partitions) > 0 THEN
        -- FOR SHARE: appends do not wait for each other, a take-over waits for them.
        PERFORM 1 FROM partitions WHERE partition = ANY(lease_partitions)
            ORDER BY partition FOR SHARE;
        SELECT b.partition, b.epoch INTO stale
        FROM unnest(lease_partitions, lease_epochs) AS b(partition, epoch)
        LEFT JOIN partitions p ON p.partition = b.partition
        WHERE p.epoch IS DISTINCT FROM b.epoch
        LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'partition % is not owned at epoch %', stale.partition, stale.epoch
                USING ERRCODE = 'RF001', DETAIL = stale.partition || ':' || stale.epoch;
        END IF;
    END IF;
    IF cardinality(wf_id) > 0 THEN
        INSERT INTO workflows (id, name, actor_key, partition, input, idempotency_key,
                               request_hash, parent_id, trace_id)
        SELECT i, n, a, p, j::jsonb, k, h, pa, t
        FROM unnest(wf_id, wf_name, wf_actor, wf_partition, wf_input, wf_idem,
                    wf_hash, wf_parent, wf_trace) AS x(i, n, a, p, j, k, h, pa, t)
        ON CONFLICT (id) DO NOTHING;
    END IF;
    IF cardinality(st_wf) > 0 THEN
        INSERT INTO steps (workflow_id, seq, partition, name, kind, status, attempt, input,
                           output, error, started_at, finished_at, fire_at, history, epoch)
        SELECT w, q, p, n, k, s, a, i::jsonb, o::jsonb, e, sa, fa, fi, h::jsonb, l.le
        FROM unnest(st_wf, st_seq, st_partition, st_name, st_kind, st_status,
                    st_attempt, st_input, st_output, st_error, st_started,
                    st_finished, st_fire, st_history)
            AS x(w, q, p, n, k, s, a, i, o, e, sa, fa, fi, h)
        LEFT JOIN (SELECT DISTINCT ON (u.lp) u.lp, u.le
                   FROM unnest(lease_partitions, lease_epochs) AS u(lp, le)) AS l
            ON l.lp = x.p
        ON CONFLICT (workflow_id, seq) DO UPDATE SET
            partition = excluded.partition, name = excluded.name, kind = excluded.kind,
            status = excluded.status, attempt = excluded.attempt, input = excluded.input,
            output = excluded.output, error = excluded.error,
            started_at = excluded.started_at, finished_at = excluded.finished_at,
            fire_at = excluded.fire_at, history = excluded.history, epoch = excluded.epoch;
    END IF;
    IF cardinality(ch_id) > 0 THEN
        SELECT c.id INTO missing FROM unnest(ch_id) AS c(id)
        WHERE NOT EXISTS (SELECT 1 FROM workflows w WHERE w.id = c.id) LIMIT 1;
        IF missing IS NOT NULL THEN
            RAISE EXCEPTION 'no workflow with id %', missing
                USING ERRCODE = 'RF002', DETAIL = missing;
        END IF;
        UPDATE workflows w
        SET status = c.s, result = c.r::jsonb, error = c.e, updated_at = now()
        FROM unnest(ch_id, ch_status, ch_result, ch_error) AS c(i, s, r, e)
        WHERE w.id = c.i;
    END IF;
    IF cardinality(ev_actor) > 0 THEN
        INSERT INTO events (actor_key, seq, type, payload, workflow_id, partition, epoch)
        SELECT a, q, t, j::jsonb, w, p, l.le
        FROM unnest(ev_actor, ev_seq, ev_type, ev_payload, ev_wf, ev_partition)
            AS x(a, q, t, j, w, p)
        LEFT JOIN (SELECT DISTINCT ON (u.lp) u.lp, u.le
                   FROM unnest(lease_partitions, lease_epochs) AS u(lp, le)) AS l
            ON l.lp = x.p;
    END IF;
    IF cardinality(doc_kind) > 0 THEN
        INSERT INTO documents (kind, id, data, unique_key, owner, updated_at)
        SELECT k, i, d::jsonb, u, o, now()
        FROM unnest(doc_kind, doc_id, doc_data, doc_unique, doc_owner) AS x(k, i, d, u, o)
        ON CONFLICT (kind, id) DO UPDATE SET
            data = excluded.data, unique_key = excluded.unique_key, owner = excluded.owner,
            updated_at = excluded.updated_at;
    END IF;
    IF cardinality(we_wf) > 0 THEN
        INSERT INTO workflow_events (workflow_id, key, value)
        SELECT w, k, v::jsonb FROM unnest(we_wf, we_key, we_value) AS x(w, k, v)
        ON CONFLICT (workflow_id, key) DO UPDATE SET value = excluded.value;
    END IF;
    IF cardinality(consumed_ids) > 0 THEN
        UPDATE signals SET consumed = true WHERE id = ANY(consumed_ids);
    END IF;
END
$fn$;
"""

# The journal as the fence (and one typed argument instead of 44 arrays).
#
# retinue_append takes the whole group as ONE jsonb document (journal/_pgwrite.py
# builds it from msgspec Structs), so Python and SQL meet by field name, not by
# position. Beyond the lease check of migration 2, every append now passes:
#   - the run fence: a batch written by a run carries {workflow_id, run_id,
#     previous}. The run claims the workflow (run_id := its own) if the workflow
#     is still held by `previous`, the run it loaded it from; any other holder
#     means another run has moved the workflow on since, and the batch is
#     refused whole (RF003). Tokens are never reused, so a claim cannot go back.
#   - step guards: a step record is inserted, or moves its row forward (a
#     started, retrying or backing-off row to a higher attempt; a started row to
#     its own end or backoff, by the run that started it, or any run for a
#     wait), or is the
#     very same write again (same run, status and attempt: a retry after a lost
#     answer, a no-op). Completed and failed rows never change here (RF003).
#   - status guards: a finished workflow never changes (the same status again
#     from its own run is a no-op), and nothing moves a workflow back to pending
#     (only an operator's retry does, outside this function).
#   - idempotent re-append: an event already stored with the same workflow,
#     type and payload is skipped, a published workflow event keeps its first
#     value; so a batch whose commit answer was lost can simply be sent again.
_V4_FENCES: Final = """
ALTER TABLE workflows ADD COLUMN run_id text;
ALTER TABLE steps ADD COLUMN run_id text;
-- Durable timers: waits, and steps backing off before their next attempt.
DROP INDEX steps_waiting;
CREATE INDEX steps_timers ON steps (fire_at)
    WHERE (kind = 'wait' AND status = 'started') OR status = 'backoff';
-- The time filter of GET /workflows (since, until) in SQL.
CREATE INDEX workflows_created ON workflows (created_at);

DROP FUNCTION retinue_append(
    integer[], bigint[], text[], text[], text[], integer[], text[], text[], text[], text[],
    text[], text[], bigint[], integer[], text[], text[], text[], integer[], text[], text[],
    text[], timestamptz[], timestamptz[], timestamptz[], text[], text[], text[], text[],
    text[], text[], bigint[], text[], text[], text[], integer[], text[], text[], text[],
    text[], text[], text[], text[], text[], bigint[]);

-- An append touches a few rows per batch, found by primary key. The planner
-- guesses 100 rows for every jsonb_to_recordset, and once the tables hold a few
-- thousand rows it would join them by hashing a sequential scan of workflows
-- (bench workflow: half the throughput). So the function plans nested loops over
-- the indexes, always.
CREATE FUNCTION retinue_append(g jsonb) RETURNS void LANGUAGE plpgsql
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
                           request_hash, parent_id, trace_id)
    SELECT x.id, x.name, x.actor_key, x.partition, x.input, x.idempotency_key,
           x.request_hash, x.parent_id, coalesce(x.trace_id, '')
    FROM jsonb_to_recordset(g->'workflows') AS x(
        id text, name text, actor_key text, partition integer, input jsonb,
        idempotency_key text, request_hash text, parent_id text, trace_id text)
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
                                history, epoch, run_id)
        SELECT x.workflow_id, x.seq, x.partition, x.name, x.kind, x.status, x.attempt,
               x.input, x.output, x.error, x.started_at, x.finished_at, x.fire_at,
               x.history, x.epoch, x.run_id
        FROM jsonb_to_recordset(g->'steps') AS x(
            workflow_id text, seq bigint, partition integer, name text, kind text,
            status text, attempt integer, input jsonb, output jsonb, error text,
            started_at timestamptz, finished_at timestamptz, fire_at timestamptz,
            history jsonb, epoch bigint, run_id text)
        ON CONFLICT (workflow_id, seq) DO UPDATE SET
            partition = excluded.partition, name = excluded.name, kind = excluded.kind,
            status = excluded.status, attempt = excluded.attempt, input = excluded.input,
            output = excluded.output, error = excluded.error,
            started_at = excluded.started_at, finished_at = excluded.finished_at,
            fire_at = excluded.fire_at, history = excluded.history, epoch = excluded.epoch,
            run_id = excluded.run_id
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
        SET status = c.status, result = c.result, error = c.error, updated_at = now()
        FROM jsonb_to_recordset(g->'statuses')
            AS c(workflow_id text, status text, result jsonb, error text)
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

MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "initial schema", _V1_INITIAL_SCHEMA),
    Migration(2, "retinue_append: the write path in one statement", _V2_APPEND_FUNCTION),
    Migration(3, "scale-out: nodes, and the epoch each step and event was written under",
              _V3_NODES),
    Migration(4, "the journal as the fence: runs, step and status guards; one jsonb group",
              _V4_FENCES),
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
