"""Migration 7: forks (a workflow started again from one of its steps).

Shipped: never edit; add a new migration instead.
"""

from __future__ import annotations

from typing import Final

# A fork is a new workflow (same name, input and actor key) holding copies of
# the original's completed steps before `forked_at_seq`. The link is kept both
# ways: the fork names its original, and the original finds its forks through
# the partial index (most workflows are not forks).
SQL: Final = """
ALTER TABLE workflows ADD COLUMN forked_from text;
ALTER TABLE workflows ADD COLUMN forked_at_seq bigint;
CREATE INDEX workflows_forked_from ON workflows (forked_from, position)
    WHERE forked_from IS NOT NULL;
"""
