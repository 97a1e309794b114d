// Workflows: a filterable, paginated list with counts per status (GET /workflows).

import { ApiError, api } from "./api.js";
import { REFRESH_MS, STATUSES, isFinished } from "./constants.js";
import {
  actorLink, duration, empty, h, idLink, number, pill, toMs, toast, when, workflowHref,
} from "./dom.js";
import { refresh } from "./shell.js";

const RANGES = [
  ["", "Any time"], ["15m", "Last 15 minutes"], ["1h", "Last hour"], ["24h", "Last 24 hours"],
  ["7d", "Last 7 days"], ["custom", "Custom…"],
];
const RANGE_MS = { "15m": 900_000, "1h": 3_600_000, "24h": 86_400_000, "7d": 604_800_000 };
const FILTERS = ["status", "name", "customer", "range", "since", "until"];

function isoOf(local) {
  const at = local ? new Date(local) : null;
  return at && !Number.isNaN(at.getTime()) ? at.toISOString() : null;
}

function localOf(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** The API's query from the page's filters. */
function queryOf(filters, cursor) {
  const query = { status: filters.status, name: filters.name, limit: 50, cursor };
  const who = (filters.customer || "").trim();
  if (who.includes(":")) query.actor = who;
  else if (who) query.customer = who;
  if (RANGE_MS[filters.range]) query.since = new Date(Date.now() - RANGE_MS[filters.range]).toISOString();
  if (filters.range === "custom") {
    query.since = filters.since || null;
    query.until = filters.until || null;
  }
  return query;
}

function elapsed(wf, now) {
  const finished = isFinished(wf.status);
  const ms = (finished ? toMs(wf.updated_at) : now) - toMs(wf.created_at);
  return finished ? duration(ms) : h("span", { class: "muted" }, `${duration(ms)} so far`);
}

function table(page, now) {
  if (!page.workflows.length) return empty("No workflow matches these filters.");
  return h("table", { class: "table rows-link", id: "workflow-table" },
    h("thead", {}, h("tr", {}, ["Status", "Workflow", "Name", "Version", "Actor", "Created", "Duration", "Error"]
      .map((title) => h("th", {}, title)))),
    h("tbody", {}, page.workflows.map((wf) => h("tr", {
      "data-id": wf.id,
      onclick: (event) => {
        if (!event.target.closest("a")) window.location.hash = workflowHref(wf.id);
      },
    },
    h("td", {}, pill(wf.status), wf.pruned_at
      ? [" ", h("span", { class: "pill pill-pruned", title: `pruned ${wf.pruned_at}` }, "pruned")] : null),
    h("td", {}, idLink(wf.id), wf.parent_id ? h("span", { class: "muted small" }, " child") : null),
    h("td", {}, wf.name),
    h("td", { class: "mono small", title: "the application version it started under" }, wf.app_version || "–"),
    h("td", {}, actorLink(wf.actor_key)),
    h("td", {}, when(wf.created_at, now)),
    h("td", {}, elapsed(wf, now)),
    h("td", { class: "error-cell", title: wf.error || "" }, wf.error || "")))));
}

export function workflowsView(root, params) {
  const filters = Object.fromEntries(FILTERS.map((key) => [key, params.get(key) || ""]));
  const cursors = [null];
  const names = new Set(["invite_customer", "communicate_to_customer"]);

  const tabs = h("div", { class: "tabs" });
  const input = (key, attrs) => {
    const el = h("input", { class: "input", name: key, value: filters[key], ...attrs });
    el.addEventListener("change", () => { filters[key] = el.value.trim(); changed(); });
    return el;
  };
  const nameList = h("datalist", { id: "workflow-names" });
  const range = h("select", { class: "input", name: "range" },
    RANGES.map(([value, text]) => h("option", { value, selected: value === filters.range }, text)));
  const dateInput = (key) => {
    const el = h("input", { class: "input", type: "datetime-local", name: key,
      value: localOf(filters[key]) });
    el.addEventListener("change", () => { filters[key] = isoOf(el.value) || ""; changed(); });
    return el;
  };
  const since = dateInput("since");
  const until = dateInput("until");
  const custom = h("span", { class: "custom-range" }, since, "–", until);
  custom.hidden = filters.range !== "custom";
  range.addEventListener("change", () => {
    filters.range = range.value;
    custom.hidden = filters.range !== "custom";
    changed();
  });
  const goto = h("input", { class: "input mono", name: "id", placeholder: "workflow id",
    spellcheck: "false" });
  const gotoForm = h("form", { class: "goto" }, goto, h("button", { class: "btn", type: "submit" }, "Open"));
  gotoForm.addEventListener("submit", async (event) => {
    event.preventDefault();
    const id = goto.value.trim();
    if (!id) return;
    try {
      await api.workflow(id);
      window.location.hash = workflowHref(id);
    } catch (error) {
      toast(error instanceof ApiError && error.status === 404 ? `No workflow ${id}` : error.message, "error");
    }
  });
  const bar = h("div", { class: "filters" },
    h("label", {}, "Name", input("name", { list: "workflow-names", placeholder: "any" })), nameList,
    h("label", {}, "Customer", input("customer", { placeholder: "email, id or actor key", size: 26 })),
    h("label", {}, "Created", range), custom,
    h("a", { href: "#/workflows", class: "clear" }, "Clear"),
    h("span", { class: "grow" }), gotoForm);
  const body = h("div", { class: "card table-card" });
  const pager = h("div", { class: "pager" });
  root.replaceChildren(h("div", { class: "page-head" }, h("h1", {}, "Workflows"), tabs), bar, body, pager);

  function changed() {
    const query = new URLSearchParams();
    for (const key of FILTERS) if (filters[key]) query.set(key, filters[key]);
    const text = query.toString();
    window.history.replaceState(null, "", `#/workflows${text ? `?${text}` : ""}`);
    cursors.splice(0, cursors.length, null);
    refresh(view);
  }

  function renderTabs(counts) {
    const total = Object.values(counts).reduce((sum, n) => sum + n, 0);
    const tab = (status, label, count) => h("a", {
      class: `tab${filters.status === status ? " on" : ""}`, href: "#",
      "data-status": status || "all",
      onclick: (event) => { event.preventDefault(); filters.status = status; changed(); },
    }, label, h("span", { class: "tab-count" }, number(count)));
    tabs.replaceChildren(tab("", "All", total),
      ...STATUSES.map((status) => tab(status, status, counts[status] ?? 0)));
  }

  function renderPager(page) {
    const at = cursors.length - 1;
    pager.replaceChildren(
      h("span", { class: "muted" }, `Page ${at + 1} · ${page.workflows.length} shown`),
      h("button", { class: "btn", type: "button", disabled: at === 0, "data-page": "newer",
        onclick: () => { cursors.pop(); refresh(view); } }, "‹ Newer"),
      h("button", { class: "btn", type: "button", disabled: !page.next_cursor, "data-page": "older",
        onclick: () => { cursors.push(page.next_cursor); refresh(view); } }, "Older ›"));
  }

  function draw({ counts }, page, now) {
    for (const wf of page.workflows) names.add(wf.name);
    nameList.replaceChildren(...[...names].sort().map((name) => h("option", { value: name })));
    renderTabs(counts);
    body.replaceChildren(table(page, now));
    renderPager(page);
  }

  const view = {
    interval: REFRESH_MS.workflows,
    async load() {
      const now = Date.now();
      const [counts, page] = await Promise.all([
        api.workflowCounts(), api.workflows(queryOf(filters, cursors[cursors.length - 1])),
      ]);
      return () => draw(counts, page, now);
    },
  };
  return view;
}
