// The dashboard's shell: a hash router over the views, and the top bar's buttons.
//
// Routes: #/overview, #/workflows?status=&name=&customer=&range=, #/workflows/<id>,
// #/actors, #/actors/<key>, #/dead-letters. Each view is mounted on the refresh bus
// (shell.js), which loads and draws it, keeps it live, and shows what failed.

import { forgetToken, hasToken } from "./api.js";
import { actorView, actorsView } from "./actors.js";
import { deadLettersView } from "./deadletters.js";
import { overviewView } from "./overview.js";
import { mount, setLive } from "./shell.js";
import { workflowView } from "./workflow.js";
import { workflowsView } from "./workflows.js";

const main = document.getElementById("main");
const liveButton = document.getElementById("live");
const forgetButton = document.getElementById("forget");

let live = true;

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

function show() {
  const [section, make] = route();
  for (const link of document.querySelectorAll("nav a[data-section]")) {
    link.classList.toggle("on", link.dataset.section === section);
  }
  mount(() => {
    main.replaceChildren();
    return make();
  });
}

liveButton.addEventListener("click", () => {
  live = !live;
  liveButton.classList.toggle("on", live);
  liveButton.textContent = live ? "Live" : "Paused";
  setLive(live);
});

forgetButton.addEventListener("click", () => {
  forgetToken();
  window.location.reload();
});

setInterval(() => { forgetButton.hidden = !hasToken(); }, 1000);
window.addEventListener("hashchange", show);
show();
