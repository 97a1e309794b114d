"""Dead letters: messages that crashed their actor repeatedly, and redelivering one."""

from __future__ import annotations

from aiohttp import web

from edge.errors import NotFound
from edge.redaction import redact
from edge.routing import BAD, BUSY, INT_ID, Route, Services
from edge.schemas import (
    DeadLetterReply,
    DeadLettersReply,
    ErrorReply,
    RedeliverReply,
    json_response,
)
from edge.validation import dead_letter_id
from journal import DeadLetter

__all__ = ["DeadLetters"]


class DeadLetters:
    """GET /dead-letters and POST /dead-letters/{id}/redeliver."""

    def __init__(self, services: Services) -> None:
        self._s = services

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/dead-letters", self.list_dead_letters,
                  "Messages that crashed their actor repeatedly, not yet redelivered",
                  {200: ("the dead letters", DeadLettersReply)}),
            Route("POST", "/dead-letters/{id}/redeliver", self.redeliver,
                  "Send a dead letter to its actor again",
                  {202: ("redelivered", RedeliverReply), 400: BAD,
                   404: ("unknown or already redelivered", ErrorReply), 503: BUSY},
                  command="redeliver", id_schema=INT_ID),
        ]

    async def list_dead_letters(self, request: web.Request) -> web.Response:
        letters = await self._s.journal.list_dead_letters()
        return json_response(200, DeadLettersReply(dead_letters=[_letter(dl) for dl in letters]))

    async def redeliver(self, request: web.Request) -> web.Response:
        letter_id = dead_letter_id(request)
        self._s.require_ready()
        letter = await self._s.runtime.redeliver(letter_id)
        if letter is None:
            raise NotFound.dead_letter(letter_id)
        self._s.metrics.accepted.labels("redeliver").inc()
        workflow_id = str(letter.message.get("workflow_id", ""))
        return json_response(202, RedeliverReply(id=letter_id, workflow_id=workflow_id,
                                                 status_url=f"/workflows/{workflow_id}"))


def _letter(letter: DeadLetter) -> DeadLetterReply:
    return DeadLetterReply(
        id=letter.id, actor_key=letter.actor_key, message=redact(letter.message),
        error=letter.error, created_at=letter.created_at, redelivered_at=letter.redelivered_at,
    )


# The operator CLI (edge/cli) shows dead letters it reads from the database as the API does.
dead_letter_reply = _letter
