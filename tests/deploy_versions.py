"""Other versions of the onboarding workflows, for the deploy tests.

Run one with `RETINUE_WORKFLOWS=tests.deploy_versions:VersionA python server.py`.

- VersionA: the invite workflow before the reminder (the code that was deployed
  when the first customers were invited).
- version B is the real `actors.Onboarding`: the reminder behind
  `ctx.patched("verification-reminder")`.
- VersionC: the invite workflow changed WITHOUT a patch: an audit step inserted
  before the verification wait. Histories of A and B disagree with it there, so
  their waiting workflows are parked when they replay.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from actors import Onboarding
from actors.messages import CustomerInvited, CustomerVerified, VerifyCustomer, VerifyResult
from actors.onboarding import operate_expire, operate_verify, write_verification
from actors.workflows import VERIFY_SIGNAL, verify_event_key
from runtime import WorkflowContext

__all__ = ["VersionA", "VersionC"]


class VersionA(Onboarding):
    """Onboarding as it was before the reminder."""

    async def _verify_customer(self, ctx: WorkflowContext, invited: CustomerInvited) -> bool:
        await self._before_wait(ctx, invited)
        deadline = invited.invited_at + self.verification_ttl
        while True:
            now = await ctx.now()
            wake = await ctx.wait_for_signal(
                VERIFY_SIGNAL, timeout=max(0.0, (deadline - now).total_seconds())
            )
            if wake.timed_out:
                expired = await ctx.step(
                    "verify.operate_expire", operate_expire, invited, now, effect=False
                )
                await ctx.write("verify.write", write_verification, invited, expired)
                return False
            if await self._verified(ctx, invited, msgspec.convert(wake.payload, VerifyCustomer)):
                return True

    async def _before_wait(self, ctx: WorkflowContext, invited: CustomerInvited) -> None:
        """Nothing in version A."""

    @staticmethod
    async def _verified(
        ctx: WorkflowContext, invited: CustomerInvited, command: VerifyCustomer
    ) -> bool:
        verify_at = await ctx.now()
        outcome = await ctx.step(
            "verify.operate", operate_verify, invited, command, verify_at, effect=False
        )
        if isinstance(outcome, CustomerVerified):
            await ctx.write("verify.write", write_verification, invited, outcome)
            result = VerifyResult(id=invited.customer_id, verified=True)
        else:
            result = VerifyResult(id=invited.customer_id, verified=False, error=outcome.reason)
        await ctx.set_event(verify_event_key(command.request_id), result)
        return result.verified


def _audit(customer_id: str, at: datetime) -> str:
    return f"{customer_id} waits since {at.isoformat()}"


class VersionC(VersionA):
    """A's workflow with a step inserted before the wait, and no patch: a
    deploy that breaks every history that reached the wait."""

    async def _before_wait(self, ctx: WorkflowContext, invited: CustomerInvited) -> None:
        await ctx.step("verify.audit", _audit, invited.customer_id, invited.invited_at,
                       effect=False)
