"""The webhook adapter of the domain's communication port (`actors.Communicator`).

It lives in the edge, not in actors/, because it speaks HTTP through aiohttp's
client, and the domain imports no aiohttp (an import-linter contract); server.py
plugs it in when COMMUNICATION_WEBHOOK_URL is set.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

import aiohttp
import anyio
import msgspec

from actors import Communicator, OutgoingMessage
from runtime import NonRetryableError

__all__ = ["WebhookCommunicator", "WebhookError"]

_encoder = msgspec.json.Encoder()


class WebhookError(Exception):
    """A delivery failed in a way worth retrying (5xx, timeout, connection)."""


class WebhookCommunicator(Communicator):
    """Delivers each message by POSTing its JSON to `url` with an Idempotency-Key
    header. Open it with `async with` (one ClientSession, closed on exit).

    5xx, 408, 429, timeouts and connection errors raise WebhookError (the step is
    retried with the same key); other 4xx and 3xx raise NonRetryableError."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            with anyio.CancelScope(shield=True):
                await self._session.close()
            self._session = None

    async def deliver(self, message: OutgoingMessage) -> str:
        """POST `message`; 'delivered' on a 2xx. Cancellable."""
        if self._session is None:
            raise WebhookError("the webhook communicator is not open; use `async with`")
        headers = {"Content-Type": "application/json",
                   "Idempotency-Key": message.idempotency_key}
        try:
            async with self._session.post(self.url, data=_encoder.encode(message),
                                          headers=headers, allow_redirects=False) as response:
                status = response.status
                detail = (await response.text(errors="replace"))[:200]
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WebhookError(f"could not reach the webhook {self.url} "
                               f"({type(exc).__name__}: {exc}); it will be retried") from exc
        return _delivery_status(self.url, status, detail)


def _delivery_status(url: str, status: int, detail: str) -> str:
    if 200 <= status < 300:
        return "delivered"
    if status >= 500 or status in (408, 429):
        raise WebhookError(f"the webhook {url} answered {status} ({detail!r}); it will be "
                           "retried with the same Idempotency-Key")
    raise NonRetryableError(f"the webhook {url} refused the message with {status} "
                            f"({detail!r}); fix the receiver or COMMUNICATION_WEBHOOK_URL, then "
                            "retry the workflow")
