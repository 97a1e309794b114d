"""Migration 6: retention (pruning finished workflows) and expiring idempotency keys.

Shipped: never edit; add a new migration instead.
"""

from __future__ import annotations

from typing import Final

# Retention. A finished workflow's row never changes (the status guard of
# migration 4), so its updated_at is the moment it finished: no new column, and
# nothing for retinue_append to learn. Once its end is older than the retention,
# the pruner deletes its steps, signals and published events and stamps
# `pruned_at`; the row, the event log and the documents stay.
#
#   - workflows_prunable holds only the rows a pruner may still take: finished,
#     not pruned, no idempotency key held (a live key keeps its stored answer).
#     Pruning a row takes it out, so the index stays as small as the backlog,
#     and an owner reads it by (partition, end) for the partitions it holds.
#   - workflows_keyed finds the keys to expire, by (partition, acceptance).
#   - signals_workflow: a pruned workflow's signals, consumed ones included
#     (signals_unconsumed covers only the others).
SQL: Final = """
ALTER TABLE workflows ADD COLUMN pruned_at timestamptz;
CREATE INDEX workflows_prunable ON workflows (partition, updated_at)
    WHERE status IN ('completed', 'failed', 'cancelled') AND pruned_at IS NULL
      AND idempotency_key IS NULL;
CREATE INDEX workflows_keyed ON workflows (partition, created_at)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX signals_workflow ON signals (workflow_id);
"""
