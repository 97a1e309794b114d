"""The domain's pure parts: operate functions and projectors. No database, no event loop."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from actors import (
    ALREADY_INVITED,
    WRONG_TOKEN,
    AlreadyVerifiedError,
    CustomerInvited,
    CustomerInviteFailed,
    CustomerVerificationExpired,
    CustomerVerified,
    InvalidEmailError,
    InvitationExpiredError,
    InviteCustomer,
    MessageDelivered,
    MessageRecorded,
    VerificationRejected,
    VerifyCustomer,
    customer_id_for,
    decode_event,
    ensure_verifiable,
    normalize_email,
    project_customer,
    project_message,
)
from actors.onboarding import InviteLookup, operate_expire, operate_invite, operate_verify
from actors.projections import rebuild

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def _invited(email: str = "ada@example.com", token: str = "tok") -> CustomerInvited:
    return CustomerInvited(
        customer_id=customer_id_for(email), email=email, token=token, invited_at=NOW,
        workflow_id="wf-1",
    )


def test_customer_id_is_stable_over_email_spelling() -> None:
    assert customer_id_for(" Ada@Example.COM ") == customer_id_for("ada@example.com")
    assert customer_id_for("ada@example.com") != customer_id_for("bob@example.com")


@pytest.mark.parametrize("bad", ["", "ada", "ada@", "@example.com", "a b@example.com", "x" * 300])
def test_bad_emails_are_refused_with_an_example(bad: str) -> None:
    with pytest.raises(InvalidEmailError, match="ada@example.com"):
        normalize_email(bad)


def test_operate_invite_invites_a_new_email_with_the_handed_in_token_and_time() -> None:
    data = InviteLookup(existing_customer_id=None, now=NOW, token="t0k")
    event = operate_invite(InviteCustomer(email="Ada@Example.com"), data, "wf-9")
    assert event == CustomerInvited(
        customer_id=customer_id_for("ada@example.com"), email="ada@example.com", token="t0k",
        invited_at=NOW, workflow_id="wf-9",
    )


def test_operate_invite_refuses_an_existing_customer() -> None:
    existing = customer_id_for("ada@example.com")
    data = InviteLookup(existing_customer_id=existing, now=NOW, token="t0k")
    event = operate_invite(InviteCustomer(email="ada@example.com"), data, "wf-9")
    assert event == CustomerInviteFailed(customer_id=existing, reason=ALREADY_INVITED)


def test_operate_verify_accepts_only_the_right_token() -> None:
    invited = _invited(token="secret")
    good = VerifyCustomer(customer_id=invited.customer_id, token="secret")
    bad = VerifyCustomer(customer_id=invited.customer_id, token="guess")
    later = NOW + timedelta(hours=1)
    assert operate_verify(invited, good, later) == CustomerVerified(
        customer_id=invited.customer_id, verified_at=later
    )
    assert operate_verify(invited, bad, later) == VerificationRejected(
        customer_id=invited.customer_id, reason=WRONG_TOKEN
    )


def test_operate_expire() -> None:
    invited = _invited()
    assert operate_expire(invited, NOW) == CustomerVerificationExpired(
        customer_id=invited.customer_id, expired_at=NOW
    )


def test_only_a_customer_whose_invitation_is_open_can_be_verified() -> None:
    customer = project_customer(None, _invited())
    assert customer is not None
    assert ensure_verifiable(customer) is customer
    verified = project_customer(customer, CustomerVerified(customer_id=customer.id,
                                                           verified_at=NOW))
    expired = project_customer(customer, CustomerVerificationExpired(customer_id=customer.id))
    assert verified is not None and expired is not None
    with pytest.raises(AlreadyVerifiedError, match=f"customer {customer.id} is already") as done:
        ensure_verifiable(verified)
    assert (done.value.reason, done.value.customer_id) == ("already_verified", customer.id)
    with pytest.raises(InvitationExpiredError, match="can no longer be verified") as late:
        ensure_verifiable(expired)
    assert (late.value.reason, late.value.customer_id) == ("expired", customer.id)


def test_project_customer_follows_the_life_cycle() -> None:
    invited = _invited()
    customer = project_customer(None, invited)
    assert customer is not None
    assert (customer.invited, customer.verified, customer.status) == (True, False, "invited")
    verified_event = CustomerVerified(customer_id=customer.id, verified_at=NOW)
    verified = project_customer(customer, verified_event)
    assert verified is not None
    assert (verified.verified, verified.status, verified.verified_at) == (True, "verified", NOW)
    expired = project_customer(customer, CustomerVerificationExpired(customer_id=customer.id))
    assert expired is not None and expired.status == "expired" and not expired.verified


def test_project_customer_ignores_events_before_the_invite() -> None:
    event = CustomerVerified(customer_id="nobody", verified_at=NOW)
    assert project_customer(None, event) is None
    failed = CustomerInviteFailed(customer_id="x", reason=ALREADY_INVITED)
    assert project_customer(None, failed) is None


def test_project_message_records_then_delivers() -> None:
    recorded = MessageRecorded(
        message_id="m1", customer_id="c1", type="invitation", email="a@b.co", token="t",
        idempotency_key="m1:3", recorded_at=NOW,
    )
    message = project_message(None, recorded)
    assert message is not None and message.status == "pending"
    delivered = project_message(
        message, MessageDelivered(message_id="m1", customer_id="c1", status="delivered",
                                  delivered_at=NOW)
    )
    assert delivered is not None and delivered.status == "delivered"
    assert delivered.idempotency_key == "m1:3"


def test_events_round_trip_through_their_json_log_form() -> None:
    for event in [
        _invited(),
        CustomerInviteFailed(customer_id="c", reason=ALREADY_INVITED),
        CustomerVerified(customer_id="c", verified_at=NOW),
        CustomerVerificationExpired(customer_id="c"),
    ]:
        assert decode_event(msgspec.to_builtins(event)) == event


def test_rebuild_folds_a_log_into_the_same_rows_as_the_writes() -> None:
    invited = _invited()
    verified = CustomerVerified(customer_id=invited.customer_id, verified_at=NOW)
    log = [msgspec.to_builtins(e) for e in (invited, verified)]
    customers, messages = rebuild(log)
    assert customers == {invited.customer_id: project_customer(project_customer(None, invited),
                                                               verified)}
    assert messages == {}
