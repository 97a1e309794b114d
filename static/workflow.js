// One workflow: its input and result, its trace as a timeline, each step's output
// or error on click, and its actor's event log beside it.

import { api } from "./api.js";
import { REFRESH_MS, isFinished } from "./constants.js";
import {
  absolute, actorLink, card, confirmDialog, copyButton, duration, empty, h, idLink, jsonBlock,
  pill, relative, toMs, toast, when, workflowHref,
} from "./dom.js";
import { refresh } from "./shell.js";
import { renderTimeline, timelineLegend } from "./timeline.js";

function field(label, ...value) {
  return [h("dt", {}, label), h("dd", {}, ...value)];
}

/** Nothing runs it: an operator may fork it (see POST /workflows/{id}/fork). */
function forkable(status) {
  return isFinished(status) || status === "parked";
}

function header(wf, actions) {
  const ended = isFinished(wf.status);
  const took = (ended ? toMs(wf.updated_at) : Date.now()) - toMs(wf.created_at);
  return h("div", { class: "wf-head" },
    h("div", { class: "crumbs" }, h("a", { href: "#/workflows" }, "Workflows"), " / ",
      wf.parent_id ? [idLink(wf.parent_id), " / "] : null, h("span", { class: "mono" }, wf.id)),
    h("div", { class: "wf-title" },
      h("h1", {}, wf.name), pill(wf.status),
      wf.pruned_at ? h("span", { class: "pill pill-pruned", "data-pruned": wf.pruned_at }, "pruned") : null,
      wf.cancel_requested && !ended ? h("span", { class: "pill pill-cancelled" }, "cancel requested") : null,
      h("span", { class: "grow" }), actions),
    h("dl", { class: "facts" },
      field("ID", h("span", { class: "mono" }, wf.id), copyButton(wf.id)),
      field("Actor", actorLink(wf.actor_key)),
      field("Version", h("span", { class: "mono", title: "the application version it started under" },
        wf.app_version || "–")),
      wf.parent_id ? field("Parent", idLink(wf.parent_id)) : null,
      wf.forked_from ? field("Forked from", idLink(wf.forked_from),
        ` at step #${wf.forked_at_seq}`) : null,
      field("Trace", h("span", { class: "mono", title: wf.trace_id }, wf.trace_id.slice(0, 16) + "…"),
        copyButton(wf.trace_id)),
      field("Created", when(wf.created_at)),
      field(ended ? "Ended" : "Updated", when(wf.updated_at)),
      field(ended ? "Took" : "Running for", duration(took)),
      wf.pruned_at ? field("Pruned", when(wf.pruned_at)) : null,
      wf.idempotency_key ? field("Idempotency key", h("span", { class: "mono" }, wf.idempotency_key)) : null),
    wf.parked ? parkedCallout(wf.parked) : null,
    wf.error && !wf.parked ? h("div", { class: "callout callout-error" }, h("strong", {}, "Error "), wf.error) : null);
}

// A parked workflow: what the code deployed now asked for, beside what its
// journal holds at that seq, each with the version whose code it is.
function parkedCallout(parked) {
  const side = (title, step, version) => h("div", { class: "parked-side" },
    h("div", { class: "muted small" }, title),
    h("div", { class: "mono parked-step" }, step),
    h("div", { class: "small" }, "version ", h("span", { class: "mono" }, version || "unknown")));
  return h("div", { class: "callout callout-parked", id: "parked-mismatch" },
    h("strong", {}, `Parked at step #${parked.seq}`),
    " — its replayed code disagrees with its journal. Deploy code that matches (or put the change behind ",
    h("code", {}, "ctx.patched(name)"), "), or retry or cancel it.",
    h("div", { class: "parked-sides" },
      side("Expected by the code running now", parked.expected, parked.running_version),
      side("Found in the journal", parked.found, parked.found_version)));
}

// A pruned workflow has no steps left to draw: say so, and when, instead of an
// empty timeline.
function prunedNote(wf) {
  return h("div", { class: "callout callout-pruned", "data-pruned": wf.pruned_at },
    h("strong", {}, "Pruned "), when(wf.pruned_at), h("span", {}, ` (${absolute(wf.pruned_at)}). `),
    "This workflow finished longer ago than the retention period (RETINUE_RETENTION), so its ",
    "steps, signals and published events were removed. Its status, input and result stay, and ",
    "so does the actor's event log beside.");
}

function attemptsTable(history) {
  return h("table", { class: "table compact" },
    h("thead", {}, h("tr", {}, ["#", "Started", "Took", "Outcome"].map((t) => h("th", {}, t)))),
    h("tbody", {}, history.map((entry) => h("tr", { class: entry.error ? "bad" : "" },
      h("td", {}, String(entry.attempt)),
      h("td", { title: absolute(entry.started_at) }, absolute(entry.started_at).slice(11)),
      h("td", {}, duration(toMs(entry.finished_at) - toMs(entry.started_at))),
      h("td", { class: entry.error ? "error-text" : "ok-text" }, entry.error || "ok")))));
}

function liveStatus(span) {
  if (span.finished_at || span.kind === "workflow") return span.status;
  if (span.kind === "wait" || span.kind === "sleep") return "waiting";
  return span.status === "started" ? "running" : span.status;
}

function spanDetails(span, detail, onFork) {
  if (!span) return empty("Click a row of the timeline to see its output, error and attempts.");
  const step = detail && span.seq ? detail.steps.find((st) => st.seq === span.seq) : null;
  const end = span.finished_at ? toMs(span.finished_at) : Date.now();
  const out = [
    h("div", { class: "detail-title" }, h("strong", {}, span.name), " ", pill(liveStatus(span))),
    h("dl", { class: "facts" },
      field("Workflow", idLink(span.workflow_id), ` ${span.workflow_name}`),
      span.seq ? field("Step", `#${span.seq} · ${span.kind}`) : null,
      span.seq && span.kind === "step" ? field("Idempotency key",
        h("span", { class: "mono" }, `${span.workflow_id}:${span.seq}`)) : null,
      field("Started", absolute(span.started_at)),
      field("Finished", span.finished_at ? absolute(span.finished_at) : "–"),
      field("Duration", span.finished_at ? duration(end - toMs(span.started_at))
        : `${duration(end - toMs(span.started_at))} so far`),
      span.fire_at ? field(span.status === "backoff" ? "Next attempt" : "Timer", `${absolute(span.fire_at)} (${relative(span.fire_at)})`) : null,
      span.kind === "wait" && span.finished_at ? field("Woken by", span.timed_out ? "the timer" : "a signal") : null,
      span.attempt > 1 ? field("Attempts", String(span.attempt)) : null,
      span.app_version ? field(span.kind === "workflow" ? "Started under" : "Written by",
        h("span", { class: "mono" }, `version ${span.app_version}`)) : null,
      field("Span", h("span", { class: "mono" }, span.span_id))),
  ];
  if (span.child_workflow_id) {
    out.push(h("p", {}, h("a", { class: "btn", href: workflowHref(span.child_workflow_id) },
      "Open child workflow →")));
  }
  if (onFork && span.seq) {
    out.push(h("p", {}, h("button", { class: "btn", type: "button", "data-action": "fork-here",
      title: "A new workflow keeps the completed steps before this one and runs the rest",
      onclick: () => onFork(span.seq) }, `Fork from step #${span.seq}`)));
  }
  if (span.kind === "workflow" && detail) {
    out.push(h("h3", {}, "Input"), jsonBlock(detail.input));
    if (detail.result !== null) out.push(h("h3", {}, "Result"), jsonBlock(detail.result));
  }
  if (step && Array.isArray(step.history) && step.history.length) {
    out.push(h("h3", {}, "Attempts"), attemptsTable(step.history));
  }
  if (span.error) {
    const recovered = span.status === "completed";
    out.push(h("h3", {}, recovered ? "Last error (a later attempt succeeded)" : "Error"),
      h("pre", { class: `error-block${recovered ? " recovered" : ""}` }, span.error));
  }
  if (step && step.output !== null && span.kind !== "workflow") {
    out.push(h("h3", {}, "Output"), jsonBlock(step.output));
  }
  return h("div", { class: "span-detail", "data-span": span.span_id }, out);
}

function eventLog(events, ids, open) {
  if (!events.length) return empty("No events yet.");
  return h("ol", { class: "events" }, events.map((event) => {
    const mine = ids.has(event.workflow_id);
    const item = h("li", { class: `event${mine ? " mine" : ""}${open.has(event.seq) ? " open" : ""}` },
      h("div", { class: "event-line" },
        h("span", { class: "seq" }, String(event.seq)),
        h("span", { class: "event-type" }, event.type),
        event.workflow_id ? idLink(event.workflow_id) : null,
        h("span", { class: "grow" }), h("span", { class: "muted small" }, relative(event.created_at))),
      open.has(event.seq) ? jsonBlock(event.payload) : null);
    item.addEventListener("click", (e) => {
      if (e.target.closest("a")) return;
      if (open.has(event.seq)) open.delete(event.seq); else open.add(event.seq);
      item.replaceWith(eventLog([event], ids, open).firstChild);
    });
    return item;
  }));
}

function childrenTable(children, none = "No children.") {
  if (!children.length) return empty(none);
  return h("table", { class: "table compact" }, h("tbody", {}, children.map((child) => h("tr", {},
    h("td", {}, pill(child.status)), h("td", {}, idLink(child.id)),
    h("td", {}, child.forked_at_seq ? `from step #${child.forked_at_seq}` : child.name),
    h("td", { class: "right" }, when(child.updated_at))))));
}

/** The first step worth forking from: the first that did not complete, else the end. */
function defaultForkSeq(steps) {
  const stuck = steps.find((st) => st.status !== "completed");
  if (stuck) return stuck.seq;
  return steps.length ? Math.max(...steps.map((st) => st.seq)) + 1 : 1;
}

/** A choice of every seq a fork may start from: 1 to the last step + 1. */
function seqChooser(steps, seq) {
  const last = steps.length ? Math.max(...steps.map((st) => st.seq)) : 0;
  const options = [];
  for (let n = 1; n <= last + 1; n += 1) {
    const st = steps.find((x) => x.seq === n);
    options.push(h("option", { value: String(n), selected: n === seq },
      st ? `#${n} ${st.name} (${st.status})` : `#${n} (after the last step)`));
  }
  return h("select", { class: "input", name: "from_seq", "data-fork-seq": "" }, options);
}

export function workflowView(root, params, id) {
  // details: the workflows (other than this one) whose steps the detail pane may
  // show, by id: the selected child's, loaded with the rest on each refresh.
  const state = { selected: null, fold: true, detail: null, spans: [], details: new Map(), open: new Set() };
  const head = h("div");
  const timelineBox = h("div", { class: "timeline-box" });
  const detailBox = h("div");
  const side = h("div", { class: "side" });
  const foldToggle = h("label", { class: "toggle" },
    h("input", { type: "checkbox", checked: true, onchange: (e) => { state.fold = e.target.checked; drawTimeline(); } }),
    " fold idle time");
  root.replaceChildren(head, h("div", { class: "wf-grid" },
    h("div", { class: "main-col" },
      card(h("span", { class: "card-title-row" }, "Timeline", h("span", { class: "grow" }), foldToggle),
        timelineLegend(), timelineBox),
      card("Step", detailBox)),
    side));

  const selectedSpan = (spans) => spans.find((sp) => sp.span_id === state.selected) || null;

  function select(span) {
    state.selected = span.span_id;
    drawTimeline();
    drawDetail();
    // A child's step: its output and attempts come with its workflow, loaded by the shell.
    if (span.workflow_id !== id && !state.details.has(span.workflow_id)) refresh(view);
  }

  function drawTimeline() {
    if (state.detail && state.detail.pruned_at) {
      timelineBox.replaceChildren(prunedNote(state.detail));
      return;
    }
    if (!state.spans.length) return;
    const width = Math.max(520, timelineBox.clientWidth);
    timelineBox.replaceChildren(renderTimeline(state.spans, id, {
      width, now: Date.now(), selected: state.selected, fold: state.fold, onSelect: select,
    }));
  }

  function drawDetail() {
    const span = selectedSpan(state.spans);
    const detail = span && span.workflow_id !== id
      ? state.details.get(span.workflow_id) || null : state.detail;
    const forkHere = span && span.workflow_id === id && state.detail
      && forkable(state.detail.status) ? fork : null;
    detailBox.replaceChildren(spanDetails(span, detail, forkHere));
  }

  async function fork(seq) {
    const steps = state.detail ? state.detail.steps : [];
    const chooser = seqChooser(steps, seq || defaultForkSeq(steps));
    const ok = await confirmDialog({
      title: "Fork this workflow?",
      message: h("span", {},
        `A new workflow starts with the input of ${id}. The steps that completed before the `
        + "chosen one are kept (not run again); the chosen step and every later one run "
        + "with the code deployed now. ",
        h("label", { class: "fork-choice" }, "Start from step ", chooser)),
      confirm: "Fork",
    });
    if (!ok) return;
    try {
      const reply = await api.fork(id, Number(chooser.value));
      toast(`Forked as ${reply.workflow_id}`);
      window.location.hash = workflowHref(reply.workflow_id);
    } catch (error) {
      toast(error.message, "error");
      refresh(view);
    }
  }

  async function act(kind) {
    const retry = kind === "retry";
    const ok = await confirmDialog({
      title: retry ? "Retry this workflow?" : "Cancel this workflow?",
      message: retry
        ? `Workflow ${id} resumes from its failed step. Steps that completed are not run again.`
        : `Workflow ${id} and its unfinished children stop at their next step. This cannot be undone.`,
      confirm: retry ? "Retry" : "Cancel workflow", danger: !retry,
    });
    if (!ok) return;
    try {
      await (retry ? api.retry(id) : api.cancel(id));
      toast(retry ? "Retry recorded" : "Cancel recorded");
    } catch (error) {
      toast(error.message, "error");
    }
    refresh(view);
  }

  function actions(wf) {
    return h("div", { class: "actions" },
      wf.status === "failed" ? h("button", { class: "btn btn-primary", type: "button",
        "data-action": "retry", onclick: () => act("retry") }, "Retry") : null,
      forkable(wf.status) ? h("button", { class: "btn", type: "button", "data-action": "fork",
        title: "Start a new workflow from one of its steps, with the code deployed now",
        onclick: () => fork(null) }, "Fork…") : null,
      isFinished(wf.status) ? null : h("button", { class: "btn btn-danger-outline",
        type: "button", "data-action": "cancel", onclick: () => act("cancel") }, "Cancel"));
  }

  function draw({ detail, trace, events, other }) {
    state.detail = detail;
    state.spans = trace.spans;
    state.details = new Map(other ? [[other.id, other]] : []);
    const ids = new Set(trace.spans.map((span) => span.workflow_id));
    head.replaceChildren(header(detail, actions(detail)));
    drawTimeline();
    drawDetail();
    side.replaceChildren(
      card("Input", jsonBlock(detail.input)),
      card("Result", detail.result === null ? empty(isFinished(detail.status)
        ? "No result." : "Not finished yet.") : jsonBlock(detail.result)),
      card(`Children (${detail.children.length})`, childrenTable(detail.children)),
      // replaceChildren would draw a null as the text "null".
      ...(detail.forks && detail.forks.length
        ? [card(`Forks (${detail.forks.length})`, childrenTable(detail.forks))] : []),
      card(h("span", {}, "Event log ", h("span", { class: "muted small" }, "of "),
        actorLink(detail.actor_key)), eventLog(events.events, ids, state.open)));
  }

  const resize = new ResizeObserver(() => drawTimeline());
  resize.observe(timelineBox);

  const view = {
    interval: REFRESH_MS.workflow,
    unmount() { resize.disconnect(); },
    async load() {
      const [detail, trace] = await Promise.all([api.workflow(id), api.trace(id)]);
      const span = selectedSpan(trace.spans);
      const [events, other] = await Promise.all([
        api.events(detail.actor_key, { limit: 500 }),
        span && span.workflow_id !== id ? api.workflow(span.workflow_id) : null,
      ]);
      return () => draw({ detail, trace, events, other });
    },
  };
  return view;
}
