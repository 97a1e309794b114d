"""Customers hash into a fixed set of partitions; each has an owner and an epoch."""

from __future__ import annotations

import zlib

from journal import PARTITION_COUNT

__all__ = ["partition_of"]


def partition_of(actor_key: str) -> int:
    """The partition of `actor_key`: stable across processes and releases."""
    return zlib.crc32(actor_key.encode()) % PARTITION_COUNT
