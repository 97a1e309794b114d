// The JSON API under the dashboard. The page itself needs no token; the API may.
// On a 401 (or a 403 that says the operator token is needed) the user is asked once,
// and the token is kept in sessionStorage (this tab only) and sent as a Bearer header
// from then on. Every POST says Content-Type: application/json, body or not: the
// server refuses POSTs that do not (other sites' pages cannot send that header).

import { tokenDialog } from "./dom.js";

const TOKEN_KEY = "retinue.token";
let asking = null;

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

export function hasToken() {
  return Boolean(sessionStorage.getItem(TOKEN_KEY));
}

export function forgetToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

async function askForToken(wrong) {
  // Requests that fail together share one dialog.
  if (!asking) {
    asking = tokenDialog(wrong).then((token) => {
      sessionStorage.setItem(TOKEN_KEY, token);
    }).finally(() => { asking = null; });
  }
  await asking;
}

function url(path, params) {
  const target = new URL(path, window.location.origin);
  for (const [key, value] of Object.entries(params || {})) {
    if (value !== null && value !== undefined && value !== "") {
      target.searchParams.set(key, value);
    }
  }
  return target;
}

async function call(method, path, params, payload) {
  for (;;) {
    const headers = { Accept: "application/json" };
    if (method === "POST") headers["Content-Type"] = "application/json";
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { method, headers };
    if (payload !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(payload);
    }
    const response = await fetch(url(path, params), init);
    if (response.status === 401) {
      await askForToken(Boolean(token));
      continue;
    }
    const challenge = response.headers.get("WWW-Authenticate") || "";
    if (response.status === 403 && challenge.includes("insufficient_scope")) {
      await askForToken("operator");
      continue;
    }
    const body = await response.json().catch(() => null);
    if (!response.ok) {
      throw new ApiError(response.status, (body && body.error) || response.statusText);
    }
    return body;
  }
}

const enc = encodeURIComponent;

// Whether the server has GET /api/workflow-counts; one that answered 404 (an older
// server) is not asked again while the page is open.
let countsRoute = true;

/** {counts: {status: n}}: from /api/workflow-counts, or an older server's overview. */
async function workflowCounts() {
  if (countsRoute) {
    try {
      return await call("GET", "/api/workflow-counts");
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 404)) throw error;
      countsRoute = false;
    }
  }
  const { counts } = await call("GET", "/api/overview", { minutes: 1 });
  return { counts };
}

export const api = {
  overview: (minutes) => call("GET", "/api/overview", { minutes }),
  workflowCounts,
  actors: (params) => call("GET", "/api/actors", params),
  events: (key, params) => call("GET", `/actors/${enc(key)}/events`, params),
  workflows: (params) => call("GET", "/workflows", params),
  workflow: (id) => call("GET", `/workflows/${enc(id)}`),
  trace: (id) => call("GET", `/workflows/${enc(id)}/trace`),
  deadLetters: () => call("GET", "/dead-letters"),
  retry: (id) => call("POST", `/workflows/${enc(id)}/retry`),
  cancel: (id) => call("POST", `/workflows/${enc(id)}/cancel`),
  fork: (id, fromSeq) => call("POST", `/workflows/${enc(id)}/fork`, null, { from_seq: fromSeq }),
  redeliver: (id) => call("POST", `/dead-letters/${enc(id)}/redeliver`),
};
