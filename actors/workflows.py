"""The onboarding workflows, hosted by each customer's actor.

invite_customer: invite (LOW) -> start communicate (not awaited) -> verify
(durable wait for the token or the expiry timer) -> if verified, start
communicate -> return the invite result.
"""

from __future__ import annotations

from datetime import timedelta

from runtime import Reader, RetryPolicy, Runtime, WorkflowContext, WriteSet, current_step

from .communication import Communicator, OutboxCommunicator, OutgoingMessage
from .identity import customer_actor_key, customer_id_for
from .messages import (
    CommunicationRequest,
    CustomerInvited,
    CustomerVerified,
    InviteCustomer,
    InviteResult,
    MessageDelivered,
    MessageRecorded,
    VerifyCustomer,
    VerifyResult,
)
from .onboarding import (
    REMINDER_PATCH,
    lookup_invite,
    operate_expire,
    operate_invite,
    operate_verify,
    reminder_time,
    write_invite,
    write_verification,
)
from .projections import MESSAGE, project_message

__all__ = [
    "INVITE_WORKFLOW",
    "COMMUNICATE_WORKFLOW",
    "INVITE_EVENT",
    "VERIFY_SIGNAL",
    "DEFAULT_VERIFICATION_TTL",
    "Onboarding",
    "verify_event_key",
]

INVITE_WORKFLOW = "invite_customer"
COMMUNICATE_WORKFLOW = "communicate_to_customer"
INVITE_EVENT = "invite"
VERIFY_SIGNAL = "verify"
DEFAULT_VERIFICATION_TTL = timedelta(days=7)
# Added while invitations were waiting (issue 14): the invite event rides with the
# write's commit. Histories without the marker publish it in a step of its own.
INVITE_EVENT_PATCH = "invite-event-with-write"
DELIVERY_RETRY = RetryPolicy(max_attempts=8, initial_backoff=0.2, max_backoff=30.0)


def verify_event_key(request_id: str) -> str:
    """The workflow event that answers one verification request."""
    return f"verify:{request_id}"


class Onboarding:
    """The onboarding application: registers its workflows on a Runtime."""

    def __init__(
        self,
        *,
        communicator: Communicator | None = None,
        verification_ttl: timedelta = DEFAULT_VERIFICATION_TTL,
    ) -> None:
        self.communicator = communicator or OutboxCommunicator()
        self.verification_ttl = verification_ttl

    def register(self, runtime: Runtime) -> None:
        runtime.register(self.invite_customer, name=INVITE_WORKFLOW)
        runtime.register(self.communicate_to_customer, name=COMMUNICATE_WORKFLOW)

    async def invite(
        self, runtime: Runtime, command: InviteCustomer, **options: str | None
    ) -> tuple[str, bool]:
        """Accept an invite durably; (workflow id, created)."""
        customer_id = customer_id_for(command.email)
        row, created = await runtime.start_workflow(
            INVITE_WORKFLOW, command, actor_key=customer_actor_key(customer_id), **options
        )
        return row.id, created

    # -- invite_customer --------------------------------------------------------

    async def invite_customer(self, ctx: WorkflowContext, command: InviteCustomer) -> InviteResult:
        data = await ctx.step("invite.lookup", lookup_invite, ctx.reader, command, effect=False)
        event = await ctx.step(
            "invite.operate", operate_invite, command, data, ctx.workflow_id, effect=False
        )
        if isinstance(event, CustomerInvited):
            result = InviteResult(
                id=event.customer_id, email=event.email, invited=True, workflow_id=ctx.workflow_id
            )
        else:
            result = InviteResult(
                id=event.customer_id, email=command.email.strip().lower(), invited=False,
                workflow_id=ctx.workflow_id, error=event.reason,
            )
        if await ctx.patched(INVITE_EVENT_PATCH):
            # The invite's answer commits with the write: the edge's 200 waits for
            # one commit, not for the next one (after the verification wait's read).
            await ctx.write("invite.write", write_invite, event, publish=(INVITE_EVENT, result))
        else:  # histories from before the patch: the event is a step after the write
            await ctx.write("invite.write", write_invite, event)
            await ctx.set_event(INVITE_EVENT, result)
        if not isinstance(event, CustomerInvited):
            return result
        await ctx.start_child(COMMUNICATE_WORKFLOW, self._request("invitation", event))
        if await self._verify_customer(ctx, event):
            await ctx.start_child(COMMUNICATE_WORKFLOW, self._request("welcome", event))
        return result

    @staticmethod
    def _request(kind: str, invited: CustomerInvited) -> CommunicationRequest:
        token = invited.token if kind in ("invitation", "reminder") else ""
        return CommunicationRequest(
            type=kind, customer_id=invited.customer_id, email=invited.email, token=token
        )

    async def _verify_customer(self, ctx: WorkflowContext, invited: CustomerInvited) -> bool:
        """Wait for the right token until the invitation expires, reminding the
        customer two days before; True if verified."""
        deadline = invited.invited_at + self.verification_ttl
        # The reminder came with a deploy while invitations were open: those go
        # on along the old path (no marker in their history), new ones remind.
        remind_at = None
        if await ctx.patched(REMINDER_PATCH):
            remind_at = reminder_time(invited, self.verification_ttl)
        while True:
            now = await ctx.now()
            reminding = remind_at is not None and now < remind_at
            until = remind_at if reminding and remind_at is not None else deadline
            wake = await ctx.wait_for_signal(
                VERIFY_SIGNAL, timeout=max(0.0, (until - now).total_seconds()),
                payload_type=VerifyCustomer,
            )
            if wake.timed_out and reminding:
                remind_at = None
                await ctx.start_child(COMMUNICATE_WORKFLOW, self._request("reminder", invited))
                continue
            if wake.timed_out:
                expired = await ctx.step(
                    "verify.operate_expire", operate_expire, invited, now, effect=False
                )
                await ctx.write("verify.write", write_verification, invited, expired)
                return False
            command: VerifyCustomer = wake.payload
            verify_at = await ctx.now()
            outcome = await ctx.step(
                "verify.operate", operate_verify, invited, command, verify_at, effect=False
            )
            if isinstance(outcome, CustomerVerified):
                await ctx.write("verify.write", write_verification, invited, outcome)
                await ctx.set_event(
                    verify_event_key(command.request_id),
                    VerifyResult(id=invited.customer_id, verified=True),
                )
                return True
            await ctx.set_event(
                verify_event_key(command.request_id),
                VerifyResult(id=invited.customer_id, verified=False, error=outcome.reason),
            )

    # -- communicate_to_customer ---------------------------------------------------

    async def communicate_to_customer(
        self, ctx: WorkflowContext, request: CommunicationRequest
    ) -> str:
        """Record the message, deliver it (at least once, one idempotency key), mark it."""
        recorded = await ctx.step("communicate.prepare", self._prepare, ctx.workflow_id,
                                  request, ctx.reader, effect=False)
        await ctx.write("communicate.record", _write_message, recorded)
        status = await ctx.step(
            "communicate.deliver", self._deliver, recorded, request, retry=DELIVERY_RETRY
        )
        delivered = MessageDelivered(
            message_id=recorded.message_id, customer_id=recorded.customer_id,
            status=status, delivered_at=await ctx.now(),
        )
        await ctx.write("communicate.mark", _write_message, recorded, delivered)
        return status

    @staticmethod
    def _prepare(message_id: str, request: CommunicationRequest, db: Reader) -> MessageRecorded:
        return MessageRecorded(
            message_id=message_id, customer_id=request.customer_id, type=request.type,
            email=request.email, token=request.token,
            # The delivery step is the one after the record step: its key is stable.
            idempotency_key=f"{message_id}:{current_step().seq + 2}",
            recorded_at=db.now(),
        )

    async def _deliver(self, recorded: MessageRecorded, request: CommunicationRequest) -> str:
        message = OutgoingMessage(
            type=request.type, customer_id=request.customer_id, email=request.email,
            token=request.token, idempotency_key=current_step().idempotency_key,
        )
        return await self.communicator.deliver(message)


def _write_message(
    db: WriteSet, recorded: MessageRecorded, delivered: MessageDelivered | None = None
) -> None:
    # Messages are projected from the log alone, so a rebuild gives the same rows.
    message = project_message(None, recorded)
    if delivered is not None:
        message = project_message(message, delivered)
    assert message is not None
    db.put(MESSAGE, message.id, message, owner=message.customer_id)
    db.emit(delivered if delivered is not None else recorded)
