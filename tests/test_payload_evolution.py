"""Payload evolution: rows written by an OLD shape of a Struct decode under the
NEW one, against both journals. A field added with a default takes its default;
a dropped field is ignored; a field whose type changed fails the workflow with
an error naming the step and the field, and the runtime goes on.

"Old code" here is either an old Struct written through the runtime, or the raw
dicts the old code stored, appended through the journal."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

import actors
import journal as journal_package
import runtime as runtime_package
from actors import (
    CUSTOMER,
    INVITE_WORKFLOW,
    MESSAGE,
    VERIFY_SIGNAL,
    Customer,
    CustomerInvited,
    CustomerVerified,
    InviteResult,
    Message,
    MessageRecorded,
    Onboarding,
    customer_actor_key,
    customer_id_for,
    decode_event,
    rebuild_projections,
)
from journal import (
    Document,
    DomainEvent,
    Journal,
    NewWorkflow,
    RunFence,
    StatusChange,
    StepRecord,
)
from runtime import PayloadDecodeError, Runtime, WorkflowContext, WorkflowFn, partition_of
from runtime.codec import decode_recorded, from_json_value, to_json_value

from .journal_support import batch
from .server_support import Served
from .support import wait_status

T0 = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)

# -- an order workflow, in the shapes of two deploys ----------------------------------


class OrderV1(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    gift_wrap: bool  # dropped in v2


class OrderV2(msgspec.Struct, frozen=True, kw_only=True):
    sku: str
    quantity: int = 1  # added in v2, with a default


class QuoteV1(msgspec.Struct, frozen=True, kw_only=True):
    amount: int
    currency: str
    legacy_code: str  # dropped in v2


class QuoteV2(msgspec.Struct, frozen=True, kw_only=True):
    amount: int
    currency: str
    discount: int = 0  # added in v2


class QuoteAmountAsText(msgspec.Struct, frozen=True, kw_only=True):
    """A type change: `amount` was an int. Not supported: the replay fails."""

    amount: str
    currency: str


class QuoteRenamed(msgspec.Struct, frozen=True, kw_only=True):
    """A rename done right: the attribute is new, the stored name stays."""

    total: int = msgspec.field(name="amount")
    currency: str


class ApprovalV1(msgspec.Struct, frozen=True, kw_only=True):
    approved_by: str
    note: str  # dropped in v2


class ApprovalV2(msgspec.Struct, frozen=True, kw_only=True):
    approved_by: str
    level: str = "manager"  # added in v2


class Deploy:
    """One deploy of the order workflow: its step functions count their calls, and
    the workflow keeps what it decoded, so the test can look at both."""

    def __init__(self) -> None:
        self.quotes = 0
        self.seen: list[tuple[Any, Any, Any]] = []

    def quote_v1(self, order: OrderV1) -> QuoteV1:
        self.quotes += 1
        return QuoteV1(amount=1200, currency="EUR", legacy_code=f"Q-{order.sku}")

    def quote_v2(self, order: OrderV2) -> QuoteV2:
        self.quotes += 1
        return QuoteV2(amount=1000 * order.quantity, currency="EUR", discount=5)

    def quote_as_text(self, order: OrderV2) -> QuoteAmountAsText:
        self.quotes += 1
        return QuoteAmountAsText(amount="12.00", currency="EUR")

    def quote_renamed(self, order: OrderV2) -> QuoteRenamed:
        self.quotes += 1
        return QuoteRenamed(total=1000, currency="EUR")

    async def v1(self, ctx: WorkflowContext, order: OrderV1) -> str:
        quote = await ctx.step("quote", self.quote_v1, order)
        wake = await ctx.wait_for_signal("approve")
        approval = msgspec.convert(wake.payload, ApprovalV1)
        self.seen.append((order, quote, approval))
        return f"{quote.amount} {quote.currency}"

    def v2(self, quote_fn: Any) -> Any:
        async def order(ctx: WorkflowContext, order: OrderV2) -> Any:
            quote = await ctx.step("quote", quote_fn, order)
            wake = await ctx.wait_for_signal("approve", payload_type=ApprovalV2)
            self.seen.append((order, quote, wake.payload))
            return quote

        return order


@asynccontextmanager
async def _deployed(
    journal: Journal, *, onboarding: Onboarding | None = None, **workflows: WorkflowFn
) -> AsyncIterator[Runtime]:
    """A deploy: a Runtime with this release's workflows registered BEFORE it
    opens, so the workflows it recovers find their code."""
    rt = Runtime(journal)
    if onboarding is not None:
        onboarding.register(rt)
    for name, workflow in workflows.items():
        rt.register(workflow, name=name)
    async with rt:
        yield rt


async def _start_v1(journal: Journal, deploy: Deploy) -> str:
    """Deploy 1 takes an order and waits for its approval; an old-shaped approval
    is then stored while no runtime runs (the deploy in between)."""
    async with Runtime(journal) as rt:
        rt.register(deploy.v1, name="order")
        row, _ = await rt.start_workflow(
            "order", OrderV1(sku="lamp", gift_wrap=True), actor_key="shop:1"
        )
        await wait_status(journal, row.id, "waiting")
    await journal.send_signal(
        row.id, "approve", to_json_value(ApprovalV1(approved_by="ada", note="ok"))
    )
    return row.id


async def test_a_waiting_workflow_resumes_after_a_deploy_that_added_and_dropped_fields(
    journal: Journal,
) -> None:
    old, new = Deploy(), Deploy()
    workflow_id = await _start_v1(journal, old)
    async with _deployed(journal, order=new.v2(new.quote_v2)) as rt:
        done = await rt.wait_for_finish(workflow_id, 5)
    assert done is not None and done.status == "completed", done
    assert (old.quotes, new.quotes) == (1, 0)  # the quote was replayed, not run again
    # Each stored value decoded into the new shape: dropped fields ignored, added
    # fields at their defaults, and nothing of the old values lost.
    assert new.seen == [(
        OrderV2(sku="lamp", quantity=1),
        QuoteV2(amount=1200, currency="EUR", discount=0),
        ApprovalV2(approved_by="ada", level="manager"),
    )]
    # The result, written by the new code, reads back as the new shape.
    assert from_json_value(done.result, QuoteV2) == QuoteV2(amount=1200, currency="EUR")


async def test_a_result_written_by_the_old_shape_reads_as_the_new(journal: Journal) -> None:
    old = Deploy()
    workflow_id = await _start_v1(journal, old)
    async with _deployed(journal, order=old.v1) as rt:
        done = await rt.wait_for_finish(workflow_id, 5)
    assert done is not None and done.result == "1200 EUR"
    step = (await journal.load_steps(workflow_id))[0]
    assert step.output == {"amount": 1200, "currency": "EUR", "legacy_code": "Q-lamp"}
    assert decode_recorded(step.output, QuoteV2, workflow_id=workflow_id, where="x") \
        == QuoteV2(amount=1200, currency="EUR")


async def test_a_type_change_fails_the_workflow_naming_the_step_and_field_and_a_fix_resumes_it(
    journal: Journal,
) -> None:
    old, broken, fixed = Deploy(), Deploy(), Deploy()
    workflow_id = await _start_v1(journal, old)
    deploy = _deployed(journal, order=broken.v2(broken.quote_as_text),
                       other=fixed.v2(fixed.quote_v2))
    async with deploy as rt:
        failed = await rt.wait_for_finish(workflow_id, 5)
        assert failed is not None and failed.status == "failed"
        error = failed.error or ""
        assert f"workflow {workflow_id!r}" in error
        assert "the output of step 'quote' (seq 1)" in error
        assert "QuoteAmountAsText" in error and "at `$.amount`" in error
        assert f"POST /workflows/{workflow_id}/retry" in error
        # The runtime and that very actor go on with other work.
        other, _ = await rt.start_workflow("other", OrderV2(sku="desk"), actor_key="shop:1")
        await rt.signal(other.id, "approve", ApprovalV2(approved_by="bob"))
        other_done = await rt.wait_for_finish(other.id, 5)
        assert other_done is not None and other_done.status == "completed"
        assert await rt.journal.list_dead_letters() == []
    assert broken.quotes == 0 and broken.seen == []
    # The fix deployed (a shape that reads what was stored), the operator retries.
    async with _deployed(journal, order=fixed.v2(fixed.quote_renamed)) as rt:
        await rt.retry(workflow_id)
        done = await rt.wait_for_finish(workflow_id, 5)
    assert done is not None and done.status == "completed", done
    assert fixed.seen[-1][1] == QuoteRenamed(total=1200, currency="EUR")
    assert fixed.quotes == 1  # only the other workflow's quote ran


async def test_an_input_that_no_longer_decodes_fails_the_workflow_naming_it(
    journal: Journal,
) -> None:
    deploy = Deploy()
    async with Runtime(journal) as rt:
        rt.register(deploy.v2(deploy.quote_v2), name="order")
        # Stored by older code, whose `quantity` was a text ("two").
        row, _ = await rt.start_workflow("order", {"sku": "lamp", "quantity": "two"},
                                         actor_key="shop:1")
        done = await rt.wait_for_finish(row.id, 5)
    assert done is not None and done.status == "failed"
    assert "its input" in (done.error or "") and "at `$.quantity`" in (done.error or "")
    assert deploy.quotes == 0


async def test_a_signal_payload_that_no_longer_decodes_fails_the_workflow_naming_it(
    journal: Journal,
) -> None:
    old, new = Deploy(), Deploy()
    async with _deployed(journal, order=old.v1) as rt:
        row, _ = await rt.start_workflow("order", OrderV1(sku="lamp", gift_wrap=False),
                                         actor_key="shop:1")
        await wait_status(journal, row.id, "waiting")
    # Stored by older code, whose `approved_by` was a user number.
    await journal.send_signal(row.id, "approve", {"approved_by": 7, "note": ""})
    async with _deployed(journal, order=new.v2(new.quote_v2)) as rt:
        done = await rt.wait_for_finish(row.id, 5)
    assert done is not None and done.status == "failed"
    assert "the payload of signal 'approve' (seq 2)" in (done.error or "")
    assert "ApprovalV2" in (done.error or "") and "at `$.approved_by`" in (done.error or "")
    assert new.seen == []


def test_a_renamed_field_with_a_default_silently_loses_the_stored_value() -> None:
    """Why renames are not supported as a new field with a default: the stored
    value is under the old name, so the new field reads as its default, with no
    error. Keep the stored name instead (msgspec.field(name=...))."""

    class QuoteRenamedWrongly(msgspec.Struct, frozen=True, kw_only=True):
        total: int = 0  # was `amount`
        currency: str

    stored = to_json_value(QuoteV1(amount=1200, currency="EUR", legacy_code="x"))
    assert from_json_value(stored, QuoteRenamedWrongly).total == 0  # the 1200 is gone
    assert from_json_value(stored, QuoteRenamed).total == 1200
    assert to_json_value(QuoteRenamed(total=7, currency="EUR")) == {"amount": 7, "currency": "EUR"}


# -- the onboarding domain: rows stored by older code ----------------------------------

EMAIL = "ada@example.com"
CID = customer_id_for(EMAIL)
KEY = customer_actor_key(CID)


def _old_invited() -> dict[str, Any]:
    """A CustomerInvited as an older release stored it: with a `channel` field
    this release dropped, and without `workflow_id`, added since (with a default)."""
    return {"kind": "CustomerInvited", "customer_id": CID, "email": EMAIL, "token": "tok",
            "invited_at": T0.isoformat(), "channel": "email"}


def _old_events() -> tuple[DomainEvent, ...]:
    payloads = [
        _old_invited(),
        {"kind": "MessageRecorded", "message_id": "m1", "customer_id": CID,
         "type": "invitation", "email": EMAIL, "token": "tok", "idempotency_key": "m1:3",
         "recorded_at": T0.isoformat(), "template": "invite-v1"},
        {"kind": "CustomerVerified", "customer_id": CID, "verified_at": T0.isoformat(),
         "method": "link"},
    ]
    return tuple(
        DomainEvent(actor_key=KEY, seq=i, type=p["kind"], payload=p)
        for i, p in enumerate(payloads, start=1)
    )


async def test_old_events_decode_and_rebuild_the_projections(journal: Journal) -> None:
    await journal.append(batch(events=_old_events()))
    stored = [e.payload for e in await journal.read_events(KEY)]
    invited = decode_event(stored[0])
    assert invited == CustomerInvited(customer_id=CID, email=EMAIL, token="tok", invited_at=T0)
    assert invited.workflow_id == ""
    assert isinstance(decode_event(stored[1]), MessageRecorded)
    assert await rebuild_projections(journal) == {CUSTOMER: 1, MESSAGE: 1}
    customer = await journal.get_document(CUSTOMER, CID)
    assert customer is not None
    assert from_json_value(customer.data, Customer) == Customer(
        id=CID, email=EMAIL, verified=True, status="verified", invited_at=T0, verified_at=T0
    )


async def test_an_old_invite_in_flight_finishes_under_the_new_code(journal: Journal) -> None:
    """An invite accepted and half run by an older release (its input, lookup and
    operate outputs stored in the old shapes), then a deploy: the new code replays
    those steps into the new Structs, waits, and takes an old-shaped VerifyCustomer."""
    workflow_id = "wf-old-invite"
    partition = partition_of(KEY)
    await journal.create_workflow(NewWorkflow(
        id=workflow_id, name=INVITE_WORKFLOW, actor_key=KEY, partition=partition,
        input={"kind": "InviteCustomer", "email": EMAIL, "referrer": "newsletter"},
    ))
    now = datetime.now(UTC)
    lookup = {"existing_customer_id": None, "now": now.isoformat(), "token": "tok",
              "source": "web"}
    invited = {**_old_invited(), "invited_at": now.isoformat(), "workflow_id": workflow_id}
    steps = tuple(
        StepRecord(workflow_id=workflow_id, seq=seq, name=name, kind="step", status="completed",
                   attempt=1, output=output, started_at=now, finished_at=now)
        for seq, name, output in ((1, "invite.lookup", lookup), (2, "invite.operate", invited))
    )
    await journal.append(batch(
        partition=partition, epoch=None,
        run=RunFence(workflow_id=workflow_id, run_id="old-release", previous=None),
        steps=steps, statuses=(StatusChange(workflow_id=workflow_id, status="running"),),
    ))
    onboarding = Onboarding()
    async with _deployed(journal, onboarding=onboarding):  # recovery resumes it
        await wait_status(journal, workflow_id, "waiting")
    # While no runtime runs, an older edge stored the verification: no request_id
    # yet (added since, with a default), and a field since dropped.
    await journal.send_signal(workflow_id, VERIFY_SIGNAL, {
        "kind": "VerifyCustomer", "customer_id": CID, "token": "tok", "via": "mobile"})
    async with _deployed(journal, onboarding=onboarding) as rt:
        done = await rt.wait_for_finish(workflow_id, 5)
    assert done is not None and done.status == "completed", done
    assert from_json_value(done.result, InviteResult) == InviteResult(
        id=CID, email=EMAIL, invited=True, workflow_id=workflow_id)
    events = [decode_event(e.payload) for e in await journal.read_events(KEY)]
    assert [type(e) for e in events if isinstance(e, CustomerInvited | CustomerVerified)] == [
        CustomerInvited, CustomerVerified]
    customer = await journal.get_document(CUSTOMER, CID)
    assert customer is not None and customer.data["status"] == "verified"
    assert "channel" not in events[0].__struct_fields__


async def test_old_projection_documents_are_served(served: Served) -> None:
    """Documents stored by an older release, with a field since dropped and
    without one since added, still read over HTTP."""
    old_customer = {"id": CID, "email": EMAIL, "invited": True, "verified": False,
                    "status": "invited", "invited_at": T0.isoformat(), "tier": "gold"}
    old_message = {"id": "m1", "customer_id": CID, "type": "invitation", "email": EMAIL,
                   "idempotency_key": "m1:3", "status": "recorded",
                   "recorded_at": T0.isoformat(), "template": "invite-v1"}
    await served.journal.append(batch(epoch=None, documents=(
        Document(kind=CUSTOMER, id=CID, data=old_customer, unique_key=EMAIL),
        Document(kind=MESSAGE, id="m1", data=old_message, owner=CID),
    )))
    reply = await served.client.get(f"/customers/{CID}")
    assert reply.status == 200, await reply.text()
    body = await reply.json()
    assert (body["email"], body["status"]) == (EMAIL, "invited") and "tier" not in body
    messages = await served.client.get(f"/customers/{CID}/messages")
    assert messages.status == 200, await messages.text()
    assert [m["type"] for m in (await messages.json())["messages"]] == ["invitation"]
    assert from_json_value(old_message, Message).status == "recorded"


# -- no Struct read back from the journal refuses a field it does not know ------------


def _structs(package: Any) -> Iterator[type[msgspec.Struct]]:
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, msgspec.Struct) \
                    and value.__module__ == module.__name__:
                yield value


@pytest.mark.parametrize("package", [actors, runtime_package, journal_package],
                         ids=lambda p: p.__name__)
def test_no_stored_struct_forbids_unknown_fields(package: Any) -> None:
    """Rows outlive the code that wrote them. Only the edge's request bodies may
    refuse unknown fields; nothing below the edge may."""
    structs = list(_structs(package))
    assert structs
    refusing = [s.__qualname__ for s in structs if s.__struct_config__.forbid_unknown_fields]
    assert refusing == [], f"{refusing} refuse unknown fields: stored rows would not decode"


def test_the_error_names_the_workflow_the_place_and_the_field() -> None:
    with pytest.raises(PayloadDecodeError) as caught:
        decode_recorded({"amount": 5, "currency": "EUR"}, QuoteAmountAsText,
                        workflow_id="wf-1", where="the output of step 'quote' (seq 1)")
    assert (caught.value.workflow_id, caught.value.where) == (
        "wf-1", "the output of step 'quote' (seq 1)")
    assert "Expected `str`, got `int` - at `$.amount`" in str(caught.value)
