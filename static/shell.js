// The refresh bus: the one place where a page's data is loaded and drawn.
//
// A view is { interval, load(), unmount?() }. load() fetches what the view shows and
// returns a function that draws it; only this module calls load():
//   - when the view is mounted,
//   - every view.interval ms while "Live" is on and the tab is visible,
//   - whenever the view asks with refresh(view) (a filter changed, an action was taken).
// Every load gets the next generation; when its answer arrives after a newer load
// (or a page change) began, it is dropped, so an older answer never overwrites a
// newer one. A failure is shown in the bar under the top bar, and the next load that
// succeeds clears it. Views never load or draw themselves on a timer.

import { ApiError } from "./api.js";
import { PAUSED_POLL_MS } from "./constants.js";
import { h } from "./dom.js";

const problem = document.getElementById("problem");
const updated = document.getElementById("updated");

let current = null;
let generation = 0;
let timer = null;
let live = true;

/** Leave the current view (its unmount() runs) and show the one make() builds. */
export function mount(make) {
  clearTimeout(timer);
  generation += 1; // whatever the page we leave still has in flight is dropped
  if (current && current.unmount) current.unmount();
  document.body.dataset.loaded = "false";
  current = make();
  return refresh(current);
}

/**
 * Load and draw `view` again, now; a no-op for a view no longer shown. The
 * promise settles when this load is drawn or dropped; it never rejects.
 */
export function refresh(view) {
  if (!view || view !== current) return Promise.resolve();
  generation += 1;
  return run(generation);
}

/** "Live" on or off; switching it on refreshes at once. */
export function setLive(on) {
  live = on;
  if (live) refresh(current);
}

async function run(gen) {
  clearTimeout(timer);
  let failure = null;
  let drawing = false;
  let draw = null;
  try {
    draw = await current.load();
  } catch (error) {
    failure = error;
  }
  if (gen !== generation) return; // overtaken: the newer load draws and schedules
  if (!failure) {
    try {
      draw();
    } catch (error) {
      console.error(error); // a bug in the page, not the server's answer
      failure = error;
      drawing = true;
    }
  }
  showProblem(failure, drawing);
  if (!failure) {
    updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "true";
  }
  schedule(gen);
}

function schedule(gen) {
  clearTimeout(timer);
  timer = setTimeout(() => {
    if (gen !== generation) return;
    if (live && !document.hidden) refresh(current);
    else schedule(gen);
  }, live ? current.interval : PAUSED_POLL_MS);
}

function showProblem(error, drawing) {
  if (!error) {
    problem.hidden = true;
    return;
  }
  const text = error instanceof ApiError ? `${error.status}: ${error.message}`
    : drawing ? `The page could not draw the answer (${error.message}).`
      : `Cannot reach the server (${error.message}). Retrying…`;
  problem.replaceChildren(h("strong", {}, "Could not load. "), text);
  problem.hidden = false;
}
