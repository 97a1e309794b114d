// Overview: counts per status, throughput, error rates and latency, with small
// charts of the server's own samples (GET /api/overview).

import { api } from "./api.js";
import { lineChart } from "./charts.js";
import { REFRESH_MS, STATUSES, STATUS_COLORS } from "./constants.js";
import {
  actorLink, card, duration, empty, h, idLink, number, percent, pill, seconds, stat, when,
} from "./dom.js";
import { refresh } from "./shell.js";

const COLORS = {
  started: STATUS_COLORS.running, completed: STATUS_COLORS.completed, failed: STATUS_COLORS.failed,
  p50: "#0891b2", p99: "#9333ea", inFlight: STATUS_COLORS.running, mailbox: STATUS_COLORS.waiting,
  errors: STATUS_COLORS.failed,
};

function perSecond(value) {
  return `${number(value, value > 0 && value < 10 ? 2 : 0)}/s`;
}

function countsCard(data) {
  return card("Workflows",
    h("div", { class: "status-grid" }, STATUSES.map((status) =>
      h("a", { class: "status-count", href: `#/workflows?status=${status}` },
        pill(status), h("span", { class: "count" }, number(data.counts[status] ?? 0))))),
    h("div", { class: "card-foot" }, `${number(data.total)} in all`));
}

function statsRow(data) {
  const { rates, latency, runtime } = data;
  const window = `over the last ${duration(data.window_seconds * 1000)}`;
  return h("div", { class: "stats" },
    stat("Started", perSecond(rates.started), window),
    stat("Completed", perSecond(rates.completed), `${perSecond(rates.failed)} failed`),
    stat("Workflow failures", percent(rates.workflow_error_rate), "of those that ended"),
    stat("Step errors", percent(rates.step_error_rate), `${perSecond(rates.step_errors)} retried or failed`),
    stat("Command p50 / p99", `${seconds(latency.commands.p50)} / ${seconds(latency.commands.p99)}`,
      `${number(latency.commands.count)} commands`),
    stat("Step p50 / p99", `${seconds(latency.steps.p50)} / ${seconds(latency.steps.p99)}`,
      `journal append p99 ${seconds(latency.journal_append.p99)}`),
    stat("Actors", number(runtime.active_actors),
      `${number(runtime.passivations)} passivated · ${number(runtime.mailbox_depth)} queued`),
    stat("In flight", number(runtime.in_flight),
      `${number(runtime.timers)} timers · ${number(runtime.dead_letters)} dead-lettered`));
}

function charts(data, width, minutes) {
  const to = Date.parse(data.now);
  const from = to - minutes * 60_000;
  const points = (key) => data.samples.map((sample) => [sample.t * 1000, sample[key]]);
  const chartWidth = Math.max(260, Math.floor((width - 16) / 2));
  const common = { from, to, width: chartWidth };
  return h("div", { class: "charts" },
    lineChart({ ...common, title: "Workflows per second", format: (v) => number(v, v < 10 ? 1 : 0),
      series: [
        { label: "started", color: COLORS.started, points: points("started") },
        { label: "completed", color: COLORS.completed, points: points("completed") },
        { label: "failed", color: COLORS.failed, points: points("failed") },
      ] }),
    lineChart({ ...common, title: "Command latency (POST)", format: seconds,
      series: [
        { label: "p50", color: COLORS.p50, points: points("command_p50") },
        { label: "p99", color: COLORS.p99, points: points("command_p99") },
      ] }),
    lineChart({ ...common, title: "Step latency", format: seconds,
      series: [
        { label: "p50", color: COLORS.p50, points: points("step_p50") },
        { label: "p99", color: COLORS.p99, points: points("step_p99") },
      ] }),
    lineChart({ ...common, title: "Errors per second", format: (v) => number(v, v < 10 ? 1 : 0),
      series: [
        { label: "step errors", color: COLORS.errors, points: points("step_errors") },
        { label: "5xx commands", color: COLORS.p99, points: points("command_errors") },
      ] }),
    lineChart({ ...common, title: "Work in flight", format: (v) => number(v), integer: true,
      series: [
        { label: "in flight", color: COLORS.inFlight, points: points("in_flight") },
        { label: "mailboxes", color: COLORS.mailbox, points: points("mailbox_depth") },
      ] }),
    lineChart({ ...common, title: "Commands per second", format: (v) => number(v, v < 10 ? 1 : 0),
      series: [{ label: "commands", color: COLORS.started, points: points("commands") }] }));
}

function failures(page) {
  if (!page.workflows.length) return empty("No failed workflows.");
  return h("table", { class: "table" },
    h("tbody", {}, page.workflows.map((wf) => h("tr", {},
      h("td", {}, pill(wf.status)), h("td", {}, idLink(wf.id)), h("td", {}, wf.name),
      h("td", {}, actorLink(wf.actor_key)),
      h("td", { class: "error-cell", title: wf.error || "" }, wf.error || ""),
      h("td", { class: "right" }, when(wf.updated_at))))));
}

export function overviewView(root) {
  let minutes = 5;
  const picker = h("div", { class: "segmented" }, [1, 5, 15].map((m) => h("button", {
    type: "button", class: m === minutes ? "on" : "", "data-minutes": m,
    onclick: () => {
      minutes = m;
      for (const b of picker.children) b.classList.toggle("on", Number(b.dataset.minutes) === m);
      refresh(view);
    },
  }, `${m} min`)));
  const body = h("div", { class: "overview" });
  root.replaceChildren(h("div", { class: "page-head" }, h("h1", {}, "Overview"), picker), body);

  function draw(data, failed, shown) {
    const width = body.clientWidth || 900;
    body.replaceChildren(
      h("div", { class: "overview-top" }, countsCard(data), statsRow(data)),
      card(`Last ${shown} min`, charts(data, width - 34, shown)),
      card(h("span", {}, "Recent failures ", h("a", { href: "#/workflows?status=failed", class: "more" }, "all →")),
        failures(failed)));
  }

  const view = {
    interval: REFRESH_MS.overview,
    async load() {
      const shown = minutes;
      const [data, failed] = await Promise.all([
        api.overview(shown), api.workflows({ status: "failed", limit: 5 }),
      ]);
      return () => draw(data, failed, shown);
    },
  };
  return view;
}
