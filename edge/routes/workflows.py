"""Workflows: list and read them (tokens redacted), and the operator's retry and
cancel."""

from __future__ import annotations

import msgspec
from aiohttp import web

from edge.errors import InvalidQuery
from edge.redaction import redact
from edge.routing import ANY_ID, BAD, BUSY, WORKFLOW_MISSING, Route, Services
from edge.schemas import (
    ActionReply,
    ErrorReply,
    StepReply,
    WorkflowQuery,
    WorkflowReply,
    WorkflowsReply,
    WorkflowSummary,
    json_response,
)
from edge.validation import customer_actor, workflow_id, workflow_query
from journal import StepRecord, WorkflowNotFoundError, WorkflowRow
from runtime import parse_trace_ref

__all__ = ["Workflows"]


class Workflows:
    """GET /workflows, GET /workflows/{id}, POST /workflows/{id}/retry and
    POST /workflows/{id}/cancel."""

    def __init__(self, services: Services) -> None:
        self._s = services

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/workflows", self.list_workflows, "Workflows, newest first",
                  {200: ("a page of workflows", WorkflowsReply), 400: BAD},
                  query=WorkflowQuery),
            Route("GET", "/workflows/{id}", self.get_workflow,
                  "A workflow with its steps and children (tokens redacted)",
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
        wid = workflow_id(request)
        row = await self._s.journal.get_workflow(wid)
        if row is None:
            raise WorkflowNotFoundError(wid)
        steps = await self._s.journal.load_steps(wid)
        children = await self._s.journal.children(wid)
        return json_response(200, WorkflowReply(
            **msgspec.structs.asdict(_summary(row)),
            input=redact(row.input), result=redact(row.result),
            steps=[_step(step) for step in steps],
            children=[_summary(child) for child in children],
        ))

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


def _summary(row: WorkflowRow) -> WorkflowSummary:
    """A workflow row as the API shows it in lists."""
    return WorkflowSummary(
        id=row.id, name=row.name, actor_key=row.actor_key, status=row.status,
        parent_id=row.parent_id, error=row.error, cancel_requested=row.cancel_requested,
        idempotency_key=row.idempotency_key, trace_id=parse_trace_ref(row.trace_id)[0],
        created_at=row.created_at, updated_at=row.updated_at, app_version=row.app_version,
        parked=row.parked,
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
step_reply = _step
