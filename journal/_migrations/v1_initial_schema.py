"""Migration 1: the initial schema.

Shipped: never edit; add a new migration instead.
"""

from __future__ import annotations

from typing import Final

# The partition table is filled with 0..255: PARTITION_COUNT never changes for a
# database (tests hold the two together).
SQL: Final = """
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
