"""Workflows: list and read them (tokens redacted), export one's history, and the
operator's retry, cancel and fork."""

from __future__ import annotations

from typing import Final

import msgspec
from aiohttp import web

from edge.errors import Conflict, IdempotencyConflict, InvalidFork, InvalidQuery
from edge.redaction import redact
from edge.routing import ANY_ID, BAD, BUSY, WORKFLOW_MISSING, Route, Services
from edge.schemas import (
    ActionReply,
    ErrorReply,
    ForkReply,
    ForkRequest,
    HistoryExport,
    StepReply,
    WorkflowQuery,
    WorkflowReply,
    WorkflowsReply,
    WorkflowSummary,
    json_response,
)
from edge.validation import (
    customer_actor,
    idempotency_key,
    read_json,
    request_hash,
    workflow_id,
    workflow_query,
)
from journal import (
    InvalidForkError,
    InvalidTransitionError,
    Journal,
    StepRecord,
    WorkflowNotFoundError,
    WorkflowRow,
)
from runtime import UnknownWorkflowTypeError, export_history, parse_trace_ref

__all__ = ["Workflows"]

_FORK_EXAMPLE: Final = '{"from_seq": 3}'
_fork_decoder: Final = msgspec.json.Decoder(ForkRequest)


class Workflows:
    """GET /workflows, GET /workflows/{id}, GET /workflows/{id}/export,
    POST /workflows/{id}/retry, POST /workflows/{id}/cancel and POST /workflows/{id}/fork."""

    def __init__(self, services: Services) -> None:
        self._s = services

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/workflows", self.list_workflows, "Workflows, newest first",
                  {200: ("a page of workflows", WorkflowsReply), 400: BAD},
                  query=WorkflowQuery),
            Route("GET", "/workflows/{id}", self.get_workflow,
                  "A workflow with its steps and children (tokens redacted); a pruned one "
                  "(`pruned_at` set) has no steps left",
                  {200: ("the workflow", WorkflowReply), 404: WORKFLOW_MISSING},
                  id_schema=ANY_ID),
            Route("POST", "/workflows/{id}/retry", self.retry,
                  "Resume a failed workflow from its failed step, or run a parked one "
                  "again with the code deployed now",
                  {202: ("retry recorded", ActionReply), 404: WORKFLOW_MISSING,
                   409: ("the workflow is neither failed nor parked", ErrorReply), 503: BUSY},
                  command="retry", id_schema=ANY_ID),
            Route("POST", "/workflows/{id}/cancel", self.cancel,
                  "Cancel a workflow and its children at their next step",
                  {202: ("cancel recorded", ActionReply), 404: WORKFLOW_MISSING,
                   409: ("the workflow has finished", ErrorReply), 503: BUSY},
                  command="cancel", id_schema=ANY_ID),
            Route("GET", "/workflows/{id}/export", self.export,
                  "The workflow's history as JSON (tokens redacted), for a replay test",
                  {200: ("the history", HistoryExport), 404: WORKFLOW_MISSING},
                  id_schema=ANY_ID),
            Route("POST", "/workflows/{id}/fork", self.fork,
                  "Start a finished or parked workflow again from step `from_seq`: earlier "
                  "completed steps are kept, the rest run with today's code",
                  {201: ("the fork was accepted; Location is its URL", ForkReply), 400: BAD,
                   404: WORKFLOW_MISSING, 409: ("the workflow is running or waiting: cancel "
                                                "it first", ErrorReply),
                   413: ("body over 64 KiB", ErrorReply), 415: BAD,
                   422: ("`from_seq` is not a seq of the workflow, or the Idempotency-Key "
                         "was used with another body", ErrorReply), 503: BUSY},
                  body=ForkRequest, command="fork", id_schema=ANY_ID, idempotent=True),
        ]

    async def list_workflows(self, request: web.Request) -> web.Response:
        query = workflow_query(request)
        actor = query.actor
        if query.customer is not None:
            if actor is not None:
                raise InvalidQuery.actor_and_customer()
            actor = customer_actor(query.customer)
        try:
            page = await self._s.journal.list_workflows(
                status=query.status, actor_key=actor, name=query.name, limit=query.limit,
                cursor=query.cursor, created_since=query.since, created_before=query.until,
            )
        except ValueError as exc:  # the journal could not read the cursor
            raise InvalidQuery.unknown_cursor(query.cursor) from exc
        return json_response(200, WorkflowsReply(
            workflows=[_summary(row) for row in page.workflows], next_cursor=page.next_cursor
        ))

    async def get_workflow(self, request: web.Request) -> web.Response:
        return json_response(200, await workflow_detail(self._s.journal, workflow_id(request)))

    async def export(self, request: web.Request) -> web.Response:
        exported = await export_history(self._s.journal, workflow_id(request))
        return json_response(200, redact(exported))

    async def retry(self, request: web.Request) -> web.Response:
        wid = workflow_id(request)
        self._s.require_ready()
        await self._s.runtime.retry(wid)
        self._s.metrics.accepted.labels("retry").inc()
        return json_response(202, ActionReply(workflow_id=wid, action="retry", workflows=[wid],
                                              status_url=f"/workflows/{wid}"))

    async def cancel(self, request: web.Request) -> web.Response:
        wid = workflow_id(request)
        self._s.require_ready()
        ids = await self._s.runtime.cancel(wid)
        self._s.metrics.accepted.labels("cancel").inc()
        return json_response(202, ActionReply(workflow_id=wid, action="cancel", workflows=ids,
                                              status_url=f"/workflows/{wid}"))

    async def fork(self, request: web.Request) -> web.Response:
        wid = workflow_id(request)
        body = await read_json(request, _fork_decoder, _FORK_EXAMPLE)
        key = idempotency_key(request)
        digest = request_hash(f"POST /workflows/{wid}/fork", body)
        self._s.require_ready()
        try:
            row, created = await self._s.runtime.fork(
                wid, body.from_seq, idempotency_key=None if key is None else f"fork:{key}",
                request_hash=digest,
            )
        except InvalidTransitionError as exc:
            raise Conflict.not_forkable(wid, exc.status) from exc
        except InvalidForkError as exc:
            raise InvalidFork(str(exc)) from exc
        except UnknownWorkflowTypeError as exc:  # this server does not run that code
            raise Conflict(409, str(exc), reason="unknown_workflow") from exc
        if created:
            self._s.metrics.accepted.labels("fork").inc()
        elif row.request_hash != digest:
            raise IdempotencyConflict(key, row.id)
        else:
            self._s.metrics.deduplicated.labels("fork").inc()
        url = f"/workflows/{row.id}"
        return json_response(201, ForkReply(
            workflow_id=row.id, forked_from=row.forked_from or wid,
            from_seq=row.forked_at_seq or body.from_seq, status_url=url,
        ), {"Location": url})


async def workflow_detail(journal: Journal, wid: str) -> WorkflowReply:
    """GET /workflows/{id}'s answer: the workflow with its steps, children and
    forks (tokens redacted). Raises WorkflowNotFoundError."""
    row = await journal.get_workflow(wid)
    if row is None:
        raise WorkflowNotFoundError(wid)
    steps = await journal.load_steps(wid)
    children = await journal.children(wid)
    forks = await journal.forks(wid)
    return WorkflowReply(
        **msgspec.structs.asdict(_summary(row)),
        input=redact(row.input), result=redact(row.result),
        steps=[_step(step) for step in steps],
        children=[_summary(child) for child in children],
        forks=[_summary(fork) for fork in forks],
    )


def _summary(row: WorkflowRow) -> WorkflowSummary:
    """A workflow row as the API shows it in lists."""
    return WorkflowSummary(
        id=row.id, name=row.name, actor_key=row.actor_key, status=row.status,
        parent_id=row.parent_id, error=row.error, cancel_requested=row.cancel_requested,
        idempotency_key=row.idempotency_key, trace_id=parse_trace_ref(row.trace_id)[0],
        created_at=row.created_at, updated_at=row.updated_at, pruned_at=row.pruned_at,
        forked_from=row.forked_from, forked_at_seq=row.forked_at_seq,
        app_version=row.app_version, parked=row.parked,
    )


def _step(step: StepRecord) -> StepReply:
    return StepReply(
        seq=step.seq, name=step.name, kind=step.kind, status=step.status, attempt=step.attempt,
        started_at=step.started_at, finished_at=step.finished_at, fire_at=step.fire_at,
        output=redact(step.output), error=step.error, history=step.history,
        app_version=step.app_version,
    )


# The operator CLI (edge/cli) shows rows it reads from the database as the API does.
workflow_summary = _summary
