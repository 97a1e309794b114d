// Actors: the active ones with their mailbox depth and what each is doing, the
// passivated count; and one actor's event log and workflows.

import { api } from "./api.js";
import { REFRESH_MS } from "./constants.js";
import {
  actorLink, empty, h, idLink, jsonBlock, number, pill, relative, shortId, stat, when,
} from "./dom.js";
import { refresh } from "./shell.js";

function depthBar(depth, most) {
  const fill = h("span", { class: "depth-fill" });
  fill.style.width = `${most ? Math.round((depth / most) * 100) : 0}%`;
  return h("span", { class: "depth" }, h("span", { class: "depth-track" }, fill), number(depth));
}

export function actorsView(root) {
  const search = h("input", { class: "input", placeholder: "filter by key", name: "q" });
  search.addEventListener("input", () => refresh(view));
  const stats = h("div", { class: "stats" });
  const body = h("div", { class: "card table-card" });
  root.replaceChildren(h("div", { class: "page-head" }, h("h1", {}, "Actors"), search), stats, body);

  function draw(data) {
    stats.replaceChildren(
      stat("Active", number(data.active), "in memory now"),
      stat("Passivated", number(data.passivated), "idle actors stopped since start"),
      stat("Mailboxes", number(data.mailbox_depth), "messages queued"),
      stat("In flight", number(data.in_flight), "accepted, not yet done"));
    if (!data.actors.length) {
      body.replaceChildren(empty("No active actor. Actors start on their first message and passivate when idle."));
      return;
    }
    const most = Math.max(...data.actors.map((a) => a.mailbox_depth));
    body.replaceChildren(h("table", { class: "table", id: "actor-table" },
      h("thead", {}, h("tr", {}, ["Actor", "Mailbox", "Doing"].map((t) => h("th", {}, t)))),
      h("tbody", {}, data.actors.map((actor) => h("tr", {},
        h("td", {}, actorLink(actor.key, { full: true })),
        h("td", {}, depthBar(actor.mailbox_depth, most)),
        h("td", {}, actor.current_workflow
          ? [pill("running"), " ", idLink(actor.current_workflow)]
          : h("span", { class: "muted" }, "idle")))))));
    if (data.truncated) {
      body.append(h("div", { class: "card-foot" }, "More actors match; narrow the filter."));
    }
  }

  const view = {
    interval: REFRESH_MS.actors,
    async load() {
      const data = await api.actors({ q: search.value.trim(), limit: 500 });
      return () => draw(data);
    },
  };
  return view;
}

export function actorView(root, params, key) {
  const open = new Set();
  const flows = h("div", { class: "card table-card" });
  const log = h("div", { class: "card" });
  root.replaceChildren(
    h("div", { class: "crumbs" }, h("a", { href: "#/actors" }, "Actors"), " / ",
      h("span", { class: "mono" }, key)),
    h("div", { class: "page-head" }, h("h1", { class: "mono" }, key)),
    h("div", { class: "two-col" },
      h("div", {}, h("h2", {}, "Event log"), log),
      h("div", {}, h("h2", {}, "Workflows ", h("a", { class: "more",
        href: `#/workflows?customer=${encodeURIComponent(key)}` }, "all →")), flows)));

  function eventRow(event) {
    const row = h("tr", { class: open.has(event.seq) ? "open" : "",
      onclick: (e) => {
        if (e.target.closest("a")) return;
        if (open.has(event.seq)) open.delete(event.seq); else open.add(event.seq);
        refresh(view);
      } },
    h("td", { class: "mono" }, String(event.seq)),
    h("td", {}, h("strong", {}, event.type),
      open.has(event.seq) ? jsonBlock(event.payload) : null),
    h("td", {}, event.workflow_id ? idLink(event.workflow_id) : "–"),
    h("td", { class: "right" }, when(event.created_at)));
    return row;
  }

  function draw(events, page) {
    log.replaceChildren(events.events.length
      ? h("table", { class: "table rows-link" }, h("tbody", {}, events.events.map(eventRow)))
      : empty("This actor has written no event."));
    flows.replaceChildren(page.workflows.length
      ? h("table", { class: "table" }, h("tbody", {}, page.workflows.map((wf) => h("tr", {},
        h("td", {}, pill(wf.status)), h("td", {}, idLink(wf.id)), h("td", {}, wf.name),
        h("td", { class: "right", title: wf.created_at }, relative(wf.created_at))))))
      : empty(`No workflow on ${shortId(key)}.`));
  }

  const view = {
    interval: REFRESH_MS.actor,
    async load() {
      const [events, page] = await Promise.all([
        api.events(key, { limit: 1000 }), api.workflows({ actor: key, limit: 20 }),
      ]);
      return () => draw(events, page);
    },
  };
  return view;
}
