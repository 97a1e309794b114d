// What the views agree on: the statuses, which of them are final, their colours,
// and how often each page refreshes. Change them here, nowhere else.

/** A workflow's statuses, in the order the tabs and counts show them. */
export const STATUSES = ["pending", "running", "waiting", "parked", "completed", "failed", "cancelled"];

/** The statuses a workflow does not leave on its own (an operator may retry a failed one). */
export const FINISHED = ["completed", "failed", "cancelled"];

export function isFinished(status) {
  return FINISHED.includes(status);
}

/**
 * A step's statuses as the journal records them. "backoff": an attempt failed and
 * the next one is due at the step's fire_at (a durable timer), drawn like a wait.
 */
export const STEP_STATUSES = ["started", "completed", "failed", "retrying", "backoff"];

/** What a status means, where its name alone does not say (a pill's tooltip). */
export const STATUS_NOTES = {
  parked: "Its code, replayed, disagrees with its journal: it waits for an operator",
  backoff: "An attempt failed; the next one is due at its timer",
  retrying: "It failed, and an operator asked for a retry",
};

/**
 * Status colours for what JS draws (the overview's charts). app.css's :root
 * declares the same colours as --<status> for the styles; the browser test checks
 * that the two agree.
 */
export const STATUS_COLORS = {
  pending: "#64748b",
  running: "#2563eb",
  waiting: "#d97706",
  parked: "#c026d3",
  completed: "#16a34a",
  failed: "#dc2626",
  cancelled: "#6b7280",
};

/** How often (ms) the shell reloads each page while Live is on and the tab is visible. */
export const REFRESH_MS = {
  overview: 2000,
  workflows: 3000,
  workflow: 2500,
  actors: 2000,
  actor: 3000,
  deadLetters: 3000,
};

/** While paused (or the tab is hidden), how often the shell looks again (ms). */
export const PAUSED_POLL_MS = 1000;
