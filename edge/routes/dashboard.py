"""The dashboard's numbers and views: the overview (rates, percentiles, samples),
the workflows per status, the active actors, an actor's event log, and a workflow's
trace."""

from __future__ import annotations

from aiohttp import web

from edge.redaction import redact
from edge.routing import ANY_ID, BAD, WORKFLOW_MISSING, Route, Services
from edge.sampler import Sampler
from edge.schemas import (
    ActorReply,
    ActorsQuery,
    ActorsReply,
    EventReply,
    EventsQuery,
    EventsReply,
    OverviewQuery,
    OverviewReply,
    TraceReply,
    WorkflowCountsReply,
    every_status,
    json_response,
)
from edge.validation import query, workflow_id
from journal import DomainEvent, WorkflowNotFoundError
from runtime import trace_spans

__all__ = ["Dashboard"]


class Dashboard:
    """GET /workflows/{id}/trace, GET /api/overview, GET /api/workflow-counts,
    GET /api/actors and GET /actors/{key}/events: what the dashboard's page shows."""

    def __init__(self, services: Services, sampler: Sampler) -> None:
        self._s = services
        self._sampler = sampler

    def routes(self) -> list[Route]:
        return [
            Route("GET", "/workflows/{id}/trace", self.trace,
                  "A workflow's trace: spans of it, its steps, their attempts, and its "
                  "descendants, with ids derived from the journal",
                  {200: ("the spans, each workflow's in seq order", TraceReply),
                   404: WORKFLOW_MISSING}, id_schema=ANY_ID),
            Route("GET", "/api/overview", self.overview,
                  "Workflows per status, rates, latency percentiles and recent samples",
                  {200: ("the numbers over the last `minutes`", OverviewReply), 400: BAD},
                  query=OverviewQuery),
            Route("GET", "/api/workflow-counts", self.workflow_counts,
                  "Workflows per status, without the overview's rates and samples",
                  {200: ("the number of workflows in each status", WorkflowCountsReply)}),
            Route("GET", "/api/actors", self.actors,
                  "Active actors with their mailbox depth and running workflow; passivations",
                  {200: ("the actors, busiest first", ActorsReply), 400: BAD},
                  query=ActorsQuery),
            Route("GET", "/actors/{key}/events", self.events,
                  "An actor's event log, oldest first (tokens redacted)",
                  {200: ("the events", EventsReply), 400: BAD}, query=EventsQuery),
        ]

    async def trace(self, request: web.Request) -> web.Response:
        wid = workflow_id(request)
        spans = await trace_spans(self._s.journal, wid)
        if not spans:
            raise WorkflowNotFoundError(wid)
        return json_response(200, TraceReply(trace_id=spans[0].trace_id, workflow_id=wid,
                                             spans=spans))

    async def overview(self, request: web.Request) -> web.Response:
        q = query(request, OverviewQuery, "minutes (1 to 15)")
        counts = await self._s.journal.count_workflows_by_status()
        return json_response(200, self._sampler.overview(counts, q.minutes))

    async def workflow_counts(self, request: web.Request) -> web.Response:
        counts = await self._s.journal.count_workflows_by_status()
        return json_response(200, WorkflowCountsReply(counts=every_status(counts)))

    async def actors(self, request: web.Request) -> web.Response:
        q = query(request, ActorsQuery, "q (part of an actor key) and limit (1 to 1000)")
        runtime = self._s.runtime
        stats = runtime.statistics()
        found = [a for a in runtime.actors() if not q.q or q.q in a[0]]
        found.sort(key=lambda a: (a[2] is None, -a[1], a[0]))  # busy, then deep mailboxes
        passivated = runtime.metrics.registry.get_sample_value("retinue_passivations_total")
        return json_response(200, ActorsReply(
            active=stats.active_actors, passivated=int(passivated or 0),
            mailbox_depth=stats.mailbox_depth, in_flight=stats.in_flight,
            actors=[ActorReply(key=key, mailbox_depth=depth, current_workflow=current)
                    for key, depth, current in found[:q.limit]],
            truncated=len(found) > q.limit,
        ))

    async def events(self, request: web.Request) -> web.Response:
        key = request.match_info["key"]
        q = query(request, EventsQuery, "after (an event seq) and limit (1 to 1000)")
        events = await self._s.journal.read_events(key, q.after)
        page = events[:q.limit]
        return json_response(200, EventsReply(
            actor_key=key, events=[_event(event) for event in page],
            next_after=page[-1].seq if len(events) > q.limit else None,
        ))


def _event(event: DomainEvent) -> EventReply:
    return EventReply(seq=event.seq, type=event.type, payload=redact(event.payload),
                      workflow_id=event.workflow_id, created_at=event.created_at)
