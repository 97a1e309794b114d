// The Gantt-like timeline of a workflow's trace (GET /workflows/{id}/trace).
//
// One row per span: the workflow, each step in seq order, and under a step that
// started a child, the child's own rows. A step tried more than once is drawn as
// its attempts (failed ones red) joined by the backoff between them; waits for a
// signal or a timer, and a step backing off until its next attempt (a durable
// timer too), are hatched. Long idle stretches (a workflow waiting hours for
// its customer) are folded into a marked break so the busy parts stay readable.

import { duration, h, s, toMs } from "./dom.js";

const ROW = 24;
const LABEL = 270;
const RIGHT = 78;
const AXIS = 26;
const BREAK = 44;
const INDENT = 14;
const MIN_FOLD = 500; // ms: shorter idle stretches are drawn to scale
const ICONS = {
  workflow: "▣", step: "▸", write: "✎", wait: "◷", sleep: "◷", child: "↳", event: "◆",
};

/** The rows to draw, parents before children, steps by seq. */
export function timelineRows(spans, rootId) {
  const flows = new Map();
  const attempts = new Map();
  for (const span of spans) {
    if (!flows.has(span.workflow_id)) flows.set(span.workflow_id, { span: null, steps: [] });
    const flow = flows.get(span.workflow_id);
    if (span.kind === "workflow") flow.span = span;
    else if (span.kind === "attempt") {
      if (!attempts.has(span.parent_span_id)) attempts.set(span.parent_span_id, []);
      attempts.get(span.parent_span_id).push(span);
    } else flow.steps.push(span);
  }
  const rows = [];
  const seen = new Set();
  const visit = (id, depth) => {
    const flow = flows.get(id);
    if (!flow || !flow.span || seen.has(id)) return;
    seen.add(id);
    rows.push({ span: flow.span, depth, attempts: [] });
    flow.steps.sort((a, b) => a.seq - b.seq);
    for (const step of flow.steps) {
      rows.push({ span: step, depth: depth + 1, attempts: attempts.get(step.span_id) || [] });
      if (step.kind === "child" && step.child_workflow_id) visit(step.child_workflow_id, depth + 2);
    }
  };
  visit(rootId, 0);
  for (const id of flows.keys()) visit(id, 1);
  return rows;
}

function endOf(span, now) {
  return span.finished_at ? toMs(span.finished_at) : now;
}

/** A step waiting for its next attempt (status "backoff", a durable timer). */
function backingOff(span) {
  return span.status === "backoff" && !span.finished_at;
}

/** Spans that wait rather than work: drawn hatched, and their time may be folded. */
function isIdle(span) {
  return span.kind === "workflow" || span.kind === "wait" || span.kind === "sleep"
    || backingOff(span);
}

/** Busy intervals: every span but workflows and waits, whose ends are instants. */
function busyIntervals(spans, now) {
  const busy = [];
  for (const span of spans) {
    const start = toMs(span.started_at);
    if (!isIdle(span)) busy.push([start, endOf(span, now)]);
    else {
      busy.push([start, start]);
      if (span.finished_at) busy.push([toMs(span.finished_at), toMs(span.finished_at)]);
    }
  }
  busy.sort((a, b) => a[0] - b[0]);
  const merged = [];
  for (const [a, b] of busy) {
    const last = merged[merged.length - 1];
    if (last && a <= last[1]) last[1] = Math.max(last[1], b);
    else merged.push([a, b]);
  }
  return merged;
}

/** Idle gaps to fold: the longest, while each is over MIN_FOLD and a quarter of what is left. */
function foldedGaps(merged, t0, t1) {
  const edges = [...merged.map(([a, b]) => [a, b]), [t1, t1]];
  const gaps = [];
  for (let i = 1; i < edges.length; i += 1) {
    const start = edges[i - 1][1];
    const end = edges[i][0];
    if (end > start) gaps.push({ start, end, length: end - start });
  }
  gaps.sort((a, b) => b.length - a.length);
  let left = t1 - t0;
  const chosen = [];
  for (const gap of gaps) {
    if (gap.length <= 0.25 * left || gap.length < MIN_FOLD) break;
    chosen.push(gap);
    left -= gap.length;
  }
  return left > 0 ? chosen.sort((a, b) => a.start - b.start) : [];
}

/** A piecewise-linear time scale: busy time is linear, each folded gap BREAK px. */
export function timeScale(spans, now, width, fold = true) {
  const starts = spans.map((span) => toMs(span.started_at));
  const t0 = Math.min(...starts);
  const t1 = Math.max(t0 + 1, ...spans.map((span) => endOf(span, now)));
  const gaps = fold ? foldedGaps(busyIntervals(spans, now), t0, t1) : [];
  const linear = t1 - t0 - gaps.reduce((sum, gap) => sum + gap.length, 0);
  const k = (width - gaps.length * BREAK) / linear;
  const x = (t) => {
    const at = Math.min(Math.max(t, t0), t1);
    let px = 0;
    let cursor = t0;
    for (const gap of gaps) {
      if (at <= gap.start) break;
      if (at < gap.end) return px + (gap.start - cursor) * k + (BREAK * (at - gap.start)) / gap.length;
      px += (gap.start - cursor) * k + BREAK;
      cursor = gap.end;
    }
    return px + (at - cursor) * k;
  };
  return { x, t0, t1, gaps, linear, k };
}

function niceStep(ms) {
  const power = 10 ** Math.floor(Math.log10(Math.max(ms, 0.001)));
  for (const step of [1, 2, 5, 10]) if (step * power >= ms) return step * power;
  return 10 * power;
}

/** Ticks in each linear piece, labelled by their offset from the trace's start. */
function ticks(scale, width) {
  const step = niceStep(scale.linear / Math.max(1, width / 90));
  const pieces = [];
  let cursor = scale.t0;
  for (const gap of scale.gaps) {
    pieces.push([cursor, gap.start]);
    cursor = gap.end;
  }
  pieces.push([cursor, scale.t1]);
  const out = [];
  for (const [a, b] of pieces) {
    for (let t = scale.t0 + Math.ceil((a - scale.t0) / step) * step; t <= b; t += step) {
      out.push(t);
      if (out.length > 200) return out;
    }
  }
  return out;
}

function label(text, room) {
  const chars = Math.max(4, Math.floor(room / 6.9));
  return text.length > chars ? `${text.slice(0, chars - 1)}…` : text;
}

function rowStatus(row) {
  const { span } = row;
  if (span.kind === "wait" || span.kind === "sleep") {
    return span.finished_at ? (span.timed_out ? "timed-out" : "completed") : "waiting";
  }
  if (span.kind === "workflow") return span.status;
  if (!span.finished_at && span.status === "started") return "running";
  return span.status;
}

function rowMeta(row, now) {
  const { span } = row;
  const status = rowStatus(row);
  if (status === "waiting" || status === "backoff" || status === "parked") return status;
  if (status === "running" || status === "pending") return status;
  if (span.kind === "event") return "";
  return duration(endOf(span, now) - toMs(span.started_at));
}

function tooltip(row, now) {
  const { span } = row;
  const parts = [`${span.kind} ${span.name}`, rowStatus(row), rowMeta(row, now)];
  if (row.attempts.length) parts.push(`${row.attempts.length} attempts`);
  if (span.fire_at) {
    parts.push(`${backingOff(span) ? "next attempt" : "timer"} ${new Date(span.fire_at).toLocaleString()}`);
  }
  if (span.error) parts.push(span.error);
  return parts.filter(Boolean).join(" · ");
}

function bar(x1, x2, y, height, cls) {
  return s("rect", { x: x1, y, width: Math.max(2, x2 - x1), height, rx: 2, class: cls });
}

function drawAttempts(row, scale, y, now) {
  const out = [];
  const sorted = [...row.attempts].sort((a, b) => toMs(a.started_at) - toMs(b.started_at));
  sorted.forEach((attempt, i) => {
    const a = scale.x(toMs(attempt.started_at));
    const b = scale.x(endOf(attempt, now));
    out.push(s("g", { class: "attempt", "data-attempt": attempt.attempt,
      "data-status": attempt.status },
    s("title", {}, `attempt ${attempt.attempt}: ${attempt.error || "ok"}`),
    bar(a, b, y, 12, `bar status-${attempt.status}`)));
    const next = sorted[i + 1];
    if (!next && backingOff(row.span)) {
      out.push(...waitBar(row.span, b, scale.x(now), scale, y));
      return;
    }
    const until = next ? toMs(next.started_at) : (row.span.finished_at ? null : now);
    if (until !== null) {
      const end = scale.x(until);
      out.push(s("line", { x1: b, x2: end, y1: y + 6, y2: y + 6, class: "backoff" }));
      if (!next) out.push(bar(end - 2, end, y, 12, "bar status-running"));
    }
  });
  return out;
}

/** The red mark of a span's timer, if it has one in view. */
function timerMark(span, scale, y) {
  if (!span.fire_at || toMs(span.fire_at) > scale.t1) return [];
  const fx = scale.x(toMs(span.fire_at));
  return [s("line", { x1: fx, x2: fx, y1: y - 3, y2: y + 15, class: "timer-mark" })];
}

/** A hatched wait from x1 to x2, and its timer's mark. */
function waitBar(span, x1, x2, scale, y) {
  return [bar(x1, x2, y, 12, `bar status-${rowStatus({ span })} wait`), ...timerMark(span, scale, y)];
}

function drawBar(row, scale, y, now) {
  const { span } = row;
  const start = scale.x(toMs(span.started_at));
  const end = scale.x(endOf(span, now));
  const status = rowStatus(row);
  if (span.kind === "workflow") return [bar(start, end, y + 3, 6, `bar wf status-${status}`)];
  if (span.kind === "event") {
    const cy = y + 6;
    return [s("path", { d: `M${start},${cy - 5}L${start + 5},${cy}L${start},${cy + 5}L${start - 5},${cy}Z`,
      class: "event-mark" })];
  }
  if (row.attempts.length) return drawAttempts(row, scale, y, now);
  if (isIdle(span)) return waitBar(span, start, end, scale, y);
  return [bar(start, end, y, 12, `bar status-${status}`), ...timerMark(span, scale, y)];
}

/**
 * The timeline as an SVG element.
 * options: width (px), now (ms), selected (span id), onSelect(span), fold (bool).
 */
export function renderTimeline(spans, rootId, { width, now, selected, onSelect, fold = true }) {
  const rows = timelineRows(spans, rootId);
  const plot = Math.max(160, width - LABEL - RIGHT);
  const scale = timeScale(spans, now, plot, fold);
  const height = AXIS + rows.length * ROW + 6;
  const svg = s("svg", { class: "timeline", width, height, viewBox: `0 0 ${width} ${height}`,
    role: "img", "aria-label": "Timeline of the workflow's steps" });
  svg.append(s("defs", {}, s("pattern", { id: "hatch", width: 6, height: 6,
    patternUnits: "userSpaceOnUse", patternTransform: "rotate(45)" },
  s("rect", { width: 6, height: 6, class: "hatch-bg" }),
  s("line", { x1: 0, y1: 0, x2: 0, y2: 6, class: "hatch-line" }))));

  const grid = s("g", { class: "tl-grid", transform: `translate(${LABEL},0)` });
  const folds = scale.gaps.map((gap) => scale.x(gap.start));
  const nowX = spans.some((span) => !span.finished_at) ? scale.x(now) : null;
  for (const t of ticks(scale, plot)) {
    const tx = scale.x(t);
    // A label that would run into a fold's or now's label is left out.
    const crowded = [...folds.map((fx) => fx - tx), (nowX ?? Infinity) - tx]
      .some((room) => room >= 0 && room < 46);
    if (crowded && t !== scale.t0) {
      grid.append(s("line", { x1: tx, x2: tx, y1: AXIS - 4, y2: height, class: "tick" }));
      continue;
    }
    grid.append(
      s("line", { x1: tx, x2: tx, y1: AXIS - 4, y2: height, class: "tick" }),
      s("text", { x: tx + 3, y: AXIS - 10, class: "axis" }, t === scale.t0 ? "0" : duration(t - scale.t0)));
  }
  for (const gap of scale.gaps) {
    const gx = scale.x(gap.start);
    grid.append(
      s("rect", { x: gx, y: AXIS - 4, width: BREAK, height: height - AXIS + 4, class: "fold" }),
      s("path", { d: zigzag(gx + BREAK / 2, AXIS - 4, height), class: "fold-edge" }),
      s("text", { x: gx + BREAK / 2, y: AXIS - 10, class: "axis fold-label", "text-anchor": "middle" },
        duration(gap.length)),
      s("title", {}, `${duration(gap.length)} with nothing running, folded`));
  }
  svg.append(grid);

  rows.forEach((row, i) => svg.append(drawRow(row, i, { scale, now, width, selected, onSelect })));
  if (nowX !== null) {
    const nx = LABEL + nowX;
    svg.append(s("line", { x1: nx, x2: nx, y1: AXIS - 4, y2: height, class: "now-mark" }),
      s("text", { x: nx + 4, y: AXIS - 10, class: "axis now-label" }, "now"));
  }
  return svg;
}

function zigzag(x, top, bottom) {
  const points = [];
  for (let y = top, i = 0; y <= bottom; y += 6, i += 1) points.push(`${x + (i % 2 ? 3 : -3)},${y}`);
  return `M${points.join("L")}`;
}

function drawRow(row, i, { scale, now, width, selected, onSelect }) {
  const { span } = row;
  const y = AXIS + i * ROW;
  const status = rowStatus(row);
  const group = s("g", {
    class: `tl-row${span.span_id === selected ? " selected" : ""}${span.kind === "workflow" ? " tl-wf" : ""}`,
    "data-kind": span.kind, "data-name": span.name, "data-status": status,
    "data-seq": span.seq ?? "", "data-workflow": span.workflow_id, "data-span": span.span_id,
    "data-attempts": row.attempts.length || (span.attempt ?? ""), tabindex: 0,
  });
  group.addEventListener("click", () => onSelect(span));
  group.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); onSelect(span); }
  });
  const indent = 8 + row.depth * INDENT;
  const badge = row.attempts.length > 1 ? `×${row.attempts.length}` : "";
  const room = LABEL - indent - 22 - (badge ? 26 : 0) - (span.seq ? 22 : 0);
  group.append(
    s("title", {}, tooltip(row, now)),
    s("rect", { x: 0, y, width, height: ROW, class: "row-bg" }),
    s("text", { x: indent, y: y + 16, class: `icon kind-${span.kind}` }, ICONS[span.kind] || "•"),
    span.seq ? s("text", { x: indent + 16, y: y + 16, class: "seq" }, String(span.seq)) : null,
    s("text", { x: indent + (span.seq ? 38 : 16), y: y + 16, class: "name" }, label(span.name, room)),
    badge ? s("text", { x: LABEL - 12, y: y + 16, class: "badge", "text-anchor": "end" }, badge) : null,
    s("g", { transform: `translate(${LABEL},${y + 6})` }, drawBar(row, scale, 0, now)),
    s("text", { x: width - 8, y: y + 16, class: `meta meta-${status}`, "text-anchor": "end" },
      rowMeta(row, now)));
  return group;
}

export function timelineLegend() {
  const item = (cls, text) => h("span", { class: "legend-item" }, h("i", { class: `key ${cls}` }), text);
  return h("div", { class: "legend tl-legend" },
    item("status-completed", "completed"), item("status-failed", "failed attempt"),
    item("backoff-key", "backoff"), item("status-running", "running"),
    item("wait-key", "waiting (signal / timer)"), item("fold-key", "idle time folded"));
}
