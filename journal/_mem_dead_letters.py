"""MemoryJournal's dead letters (the `DeadLetters` protocol)."""

from __future__ import annotations

from typing import Any

import msgspec

from ._mem_state import MemoryState
from .base import DeadLetters
from .records import DeadLetter

__all__ = ["MemoryDeadLetters"]


class MemoryDeadLetters(MemoryState, DeadLetters):
    """Dead letters in memory."""

    async def add_dead_letter(self, actor_key: str, message: Any, error: str) -> DeadLetter:
        letter = DeadLetter(
            id=next(self._dead_letter_ids),
            actor_key=actor_key,
            message=message,
            error=error,
            created_at=self._now(),
        )
        self._dead_letters[letter.id] = letter
        return letter

    async def list_dead_letters(self, *, include_redelivered: bool = False) -> list[DeadLetter]:
        return [
            letter
            for letter in self._dead_letters.values()
            if include_redelivered or letter.redelivered_at is None
        ]

    async def take_dead_letter(self, letter_id: int) -> DeadLetter | None:
        letter = self._dead_letters.get(letter_id)
        if letter is None or letter.redelivered_at is not None:
            return None
        taken = msgspec.structs.replace(letter, redelivered_at=self._now())
        self._dead_letters[letter_id] = taken
        return taken
