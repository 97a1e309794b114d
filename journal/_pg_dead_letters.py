"""PostgresJournal's dead letters (the `DeadLetters` protocol)."""

from __future__ import annotations

from typing import Any, Final

from ._pg_shared import PostgresBase, optional
from ._pgconn import boundary
from .base import DeadLetters
from .records import DeadLetter

__all__ = ["PostgresDeadLetters"]

_DEAD_LETTER_COLUMNS: Final = " id, actor_key, message, error, created_at, redelivered_at "
_ADD_DEAD_LETTER: Final = (
    "INSERT INTO dead_letters (actor_key, message, error) VALUES ($1, $2, $3) RETURNING"
    + _DEAD_LETTER_COLUMNS
)
_LIST_DEAD_LETTERS: Final = (
    "SELECT"
    + _DEAD_LETTER_COLUMNS
    + "FROM dead_letters WHERE $1 OR redelivered_at IS NULL ORDER BY id"
)
_TAKE_DEAD_LETTER: Final = (
    """
UPDATE dead_letters SET redelivered_at = now()
WHERE id = $1 AND redelivered_at IS NULL
RETURNING"""
    + _DEAD_LETTER_COLUMNS
)


class PostgresDeadLetters(PostgresBase, DeadLetters):
    """Dead letters on PostgreSQL."""

    @boundary
    async def add_dead_letter(self, actor_key: str, message: Any, error: str) -> DeadLetter:
        row = await self._pool.fetchrow(_ADD_DEAD_LETTER, actor_key, message, error)
        assert row is not None  # INSERT ... RETURNING always returns the row
        return DeadLetter(**row)

    @boundary
    async def list_dead_letters(self, *, include_redelivered: bool = False) -> list[DeadLetter]:
        rows = await self._pool.fetch(_LIST_DEAD_LETTERS, include_redelivered)
        return [DeadLetter(**row) for row in rows]

    @boundary
    async def take_dead_letter(self, letter_id: int) -> DeadLetter | None:
        row = await self._pool.fetchrow(_TAKE_DEAD_LETTER, letter_id)
        return optional(lambda r: DeadLetter(**r), row)
