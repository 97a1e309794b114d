"""Migration 2: the write path as one SQL function.

Shipped: never edit; add a new migration instead.
"""

from __future__ import annotations

from typing import Final

# The whole write path as one function: a group commit is then one statement, one
# round trip and one implicit transaction. Stale leases and unknown workflows
# raise with Retinue's own SQLSTATEs (RF001, RF002), translated in _pgconn.
SQL: Final = """
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
