// Dead letters and failed workflows, with the operator's actions behind a
// confirmation: redeliver a letter, retry a failed workflow.

import { api } from "./api.js";
import { REFRESH_MS } from "./constants.js";
import {
  actorLink, confirmDialog, empty, h, idLink, jsonBlock, pill, toast, when,
} from "./dom.js";
import { refresh } from "./shell.js";

async function confirmed(options, action, done) {
  if (!(await confirmDialog(options))) return;
  try {
    await action();
    toast(done);
  } catch (error) {
    toast(error.message, "error");
  }
}

export function deadLettersView(root) {
  const letters = h("div", { class: "card table-card" });
  const failed = h("div", { class: "card table-card" });
  root.replaceChildren(
    h("div", { class: "page-head" }, h("h1", {}, "Dead letters")),
    h("p", { class: "muted" }, "Messages that crashed their actor repeatedly. Redelivering one ",
      "sends it to its actor again (its workflow is retried if it failed)."),
    letters,
    h("div", { class: "page-head" }, h("h2", {}, "Failed workflows"),
      h("a", { class: "more", href: "#/workflows?status=failed" }, "all →")),
    failed);

  function letterRow(letter) {
    const workflowId = letter.message && letter.message.workflow_id;
    return h("tr", { "data-letter": letter.id },
      h("td", { class: "mono" }, `#${letter.id}`),
      h("td", {}, actorLink(letter.actor_key)),
      h("td", {}, workflowId ? idLink(workflowId) : jsonBlock(letter.message)),
      h("td", { class: "error-cell", title: letter.error }, letter.error),
      h("td", {}, when(letter.created_at)),
      h("td", { class: "right" }, h("button", {
        class: "btn btn-primary", type: "button", "data-action": "redeliver",
        onclick: () => confirmed({
          title: `Redeliver dead letter #${letter.id}?`,
          message: `Its message goes to ${letter.actor_key} again${workflowId
            ? `, and workflow ${workflowId} is retried from its failed step` : ""}.`,
          confirm: "Redeliver",
        }, () => api.redeliver(letter.id), `Dead letter #${letter.id} redelivered`).then(() => refresh(view)),
      }, "Redeliver")));
  }

  function failedRow(wf) {
    return h("tr", { "data-id": wf.id },
      h("td", {}, pill(wf.status)), h("td", {}, idLink(wf.id)), h("td", {}, wf.name),
      h("td", {}, actorLink(wf.actor_key)),
      h("td", { class: "error-cell", title: wf.error || "" }, wf.error || ""),
      h("td", {}, when(wf.updated_at)),
      h("td", { class: "right" }, h("button", {
        class: "btn btn-primary", type: "button", "data-action": "retry",
        onclick: () => confirmed({
          title: "Retry this workflow?",
          message: `Workflow ${wf.id} (${wf.name}) resumes from its failed step. Steps that completed are not run again.`,
          confirm: "Retry",
        }, () => api.retry(wf.id), "Retry recorded").then(() => refresh(view)),
      }, "Retry")));
  }

  function draw(dead, page) {
    letters.replaceChildren(dead.dead_letters.length
      ? h("table", { class: "table", id: "dead-letter-table" },
        h("thead", {}, h("tr", {}, ["", "Actor", "Message", "Error", "Created", ""].map((t) => h("th", {}, t)))),
        h("tbody", {}, dead.dead_letters.map(letterRow)))
      : empty("No dead letters."));
    failed.replaceChildren(page.workflows.length
      ? h("table", { class: "table", id: "failed-table" },
        h("thead", {}, h("tr", {}, ["Status", "Workflow", "Name", "Actor", "Error", "Failed", ""].map((t) => h("th", {}, t)))),
        h("tbody", {}, page.workflows.map(failedRow)))
      : empty("No failed workflows."));
  }

  const view = {
    interval: REFRESH_MS.deadLetters,
    async load() {
      const [dead, page] = await Promise.all([
        api.deadLetters(), api.workflows({ status: "failed", limit: 100 }),
      ]);
      return () => draw(dead, page);
    },
  };
  return view;
}
