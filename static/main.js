// The dashboard's shell: a hash router over the views, and live refresh.
//
// Routes: #/overview, #/workflows?status=&name=&customer=&range=, #/workflows/<id>,
// #/actors, #/actors/<key>, #/dead-letters. Each view has refresh() (fetch and
// draw) and interval (ms); while "Live" is on and the tab is visible, the current
// view refreshes itself on that interval.

import { ApiError, forgetToken, hasToken } from "./api.js";
import { actorView, actorsView } from "./actors.js";
import { deadLettersView } from "./deadletters.js";
import { h } from "./dom.js";
import { overviewView } from "./overview.js";
import { workflowView } from "./workflow.js";
import { workflowsView } from "./workflows.js";

const main = document.getElementById("main");
const problem = document.getElementById("problem");
const liveButton = document.getElementById("live");
const forgetButton = document.getElementById("forget");
const updated = document.getElementById("updated");

let live = true;
let current = null;
let generation = 0;
let timer = null;

function route() {
  const [path, query] = (window.location.hash.replace(/^#/, "") || "/overview").split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  const params = new URLSearchParams(query || "");
  const [section = "overview", ...rest] = parts;
  const id = rest.join("/");
  if (section === "workflows" && id) return ["workflows", () => workflowView(main, params, id)];
  if (section === "workflows") return ["workflows", () => workflowsView(main, params)];
  if (section === "actors" && id) return ["actors", () => actorView(main, params, id)];
  if (section === "actors") return ["actors", () => actorsView(main, params)];
  if (section === "dead-letters") return ["dead-letters", () => deadLettersView(main, params)];
  return ["overview", () => overviewView(main, params)];
}

function showProblem(error) {
  if (!error) {
    problem.hidden = true;
    return;
  }
  const text = error instanceof ApiError ? `${error.status}: ${error.message}`
    : `Cannot reach the server (${error.message}). Retrying…`;
  problem.replaceChildren(h("strong", {}, "Could not load. "), text);
  problem.hidden = false;
}

async function refresh(gen) {
  if (gen !== generation) return;
  try {
    await current.refresh();
    showProblem(null);
    updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "true";
  } catch (error) {
    if (gen !== generation) return;
    showProblem(error);
  }
  if (gen === generation) schedule(gen);
}

function schedule(gen) {
  clearTimeout(timer);
  timer = setTimeout(() => {
    if (live && !document.hidden) refresh(gen);
    else schedule(gen);
  }, live ? current.interval : 1000);
}

function show() {
  clearTimeout(timer);
  if (current && current.unmount) current.unmount();
  generation += 1;
  document.body.dataset.loaded = "false";
  const [section, make] = route();
  for (const link of document.querySelectorAll("nav a[data-section]")) {
    link.classList.toggle("on", link.dataset.section === section);
  }
  main.replaceChildren();
  current = make();
  refresh(generation);
}

liveButton.addEventListener("click", () => {
  live = !live;
  liveButton.classList.toggle("on", live);
  liveButton.textContent = live ? "Live" : "Paused";
  if (live) refresh(generation);
});

forgetButton.addEventListener("click", () => {
  forgetToken();
  window.location.reload();
});

setInterval(() => { forgetButton.hidden = !hasToken(); }, 1000);
window.addEventListener("hashchange", show);
show();
