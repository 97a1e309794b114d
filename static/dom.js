// DOM and formatting helpers shared by the views. No innerHTML anywhere: every
// value from the server becomes text, so a payload cannot inject markup.

import { STATUS_NOTES } from "./constants.js";

const SVG_NS = "http://www.w3.org/2000/svg";

function build(el, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.setAttribute("class", value);
    else if (key === "text") el.textContent = value;
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** An HTML element: h("a", {href: "#/", class: "x", onclick: f}, "text", child). */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, same calling convention as h(). */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

// -- time and numbers -----------------------------------------------------------

export function toMs(iso) {
  return iso ? Date.parse(iso) : null;
}

/** "850 µs", "12 ms", "1.4 s", "3m 05s", "2h 03m", "6d 23h". */
export function duration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return "–";
  const abs = Math.abs(ms);
  if (abs === 0) return "0";
  if (abs < 0.001) return "<1 µs";
  if (abs < 1) return `${Math.round(abs * 1000)} µs`;
  if (abs < 10) return `${abs.toFixed(1)} ms`;
  if (abs < 1000) return `${Math.round(abs)} ms`;
  if (abs < 10_000) return `${(abs / 1000).toFixed(2)} s`;
  if (abs < 60_000) return `${(abs / 1000).toFixed(1)} s`;
  const sec = Math.floor(abs / 1000);
  if (sec < 3600) return `${Math.floor(sec / 60)}m ${String(sec % 60).padStart(2, "0")}s`;
  if (sec < 86_400) {
    return `${Math.floor(sec / 3600)}h ${String(Math.floor(sec / 60) % 60).padStart(2, "0")}m`;
  }
  return `${Math.floor(sec / 86_400)}d ${Math.floor(sec / 3600) % 24}h`;
}

/** "just now", "12s ago", "5m ago", "in 6d 23h". */
export function relative(iso, now = Date.now()) {
  const at = toMs(iso);
  if (at === null) return "–";
  const delta = now - at;
  if (Math.abs(delta) < 1500) return "just now";
  const text = duration(Math.abs(delta)).replace(/\.\d+ s$/, " s").replace(/ (m?s)$/, "$1");
  return delta >= 0 ? `${text} ago` : `in ${text}`;
}

export function absolute(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.` +
    `${pad(d.getMilliseconds(), 3)}`;
}

/** A <time> showing relative time, with the exact instant as its tooltip. */
export function when(iso, now) {
  return h("time", { datetime: iso || "", title: absolute(iso), class: "when" },
    relative(iso, now));
}

export function number(value, digits = 0) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString(undefined, {
    minimumFractionDigits: digits, maximumFractionDigits: digits,
  });
}

export function seconds(value) {
  return value === null || value === undefined ? "–" : duration(value * 1000);
}

export function percent(fraction) {
  if (fraction === null || fraction === undefined) return "–";
  const p = fraction * 100;
  return `${p === 0 || p >= 10 ? p.toFixed(0) : p.toFixed(1)}%`;
}

// -- ids, statuses, JSON -----------------------------------------------------------

/** "217c4f01…" for a hex id; a child's id keeps its ":seq" suffix. */
export function shortId(id) {
  if (!id) return "";
  const [head, ...rest] = id.split(":");
  const short = head.length > 12 ? `${head.slice(0, 8)}…` : head;
  return [short, ...rest].join(":");
}

export function workflowHref(id) {
  return `#/workflows/${encodeURIComponent(id)}`;
}

export function actorHref(key) {
  return `#/actors/${encodeURIComponent(key)}`;
}

export function idLink(id, { full = false } = {}) {
  return h("a", { href: workflowHref(id), class: "mono id", title: id },
    full ? id : shortId(id));
}

/** An actor key, customers shown as "customer 8c888861…". */
export function actorLink(key, { full = false } = {}) {
  const [kind, ...rest] = key.split(":");
  const id = rest.join(":");
  return h("a", { href: actorHref(key), class: "mono id", title: key },
    id && !full ? `${kind}:${shortId(id)}` : key);
}

/** A status as a coloured pill (app.css: .pill-<status>), its meaning as a tooltip. */
export function pill(status) {
  return h("span", { class: `pill pill-${status}`, title: STATUS_NOTES[status] }, status);
}

export function copyButton(text) {
  return h("button", {
    class: "copy", type: "button", title: "Copy", "aria-label": "Copy",
    onclick: async (event) => {
      event.stopPropagation();
      try {
        await navigator.clipboard.writeText(text);
        toast("Copied");
      } catch {
        toast("Copy is not allowed here", "error");
      }
    },
  }, s("svg", { width: 12, height: 12, viewBox: "0 0 12 12", "aria-hidden": "true" },
    s("rect", { x: 0.5, y: 2.5, width: 7, height: 9, rx: 1.5 }),
    s("path", { d: "M3.5 2.5V1.5a1 1 0 0 1 1-1h5a1 1 0 0 1 1 1v7a1 1 0 0 1-1 1h-1" })));
}

const JSON_TOKEN = /("(?:\\.|[^"\\])*")(\s*:)?|\b(true|false|null)\b|(-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)/g;

/** Pretty JSON, coloured by token type, built from text nodes. */
export function jsonBlock(value) {
  const text = value === undefined ? "null" : JSON.stringify(value, null, 2);
  const pre = h("pre", { class: "json" });
  let last = 0;
  for (const match of text.matchAll(JSON_TOKEN)) {
    pre.append(text.slice(last, match.index));
    const [all, str, colon, word, num] = match;
    const kind = str ? (colon ? "key" : "str") : word ? "lit" : num ? "num" : "";
    pre.append(h("span", { class: `j-${kind}` }, str ? str : all));
    if (colon) pre.append(colon);
    last = match.index + all.length;
  }
  pre.append(text.slice(last));
  return pre;
}

// -- dialogs and toasts -------------------------------------------------------------

function overlay(dialog) {
  const back = h("div", { class: "overlay" }, dialog);
  document.body.append(back);
  return back;
}

/** A modal asking to confirm an operator action; resolves true or false. */
export function confirmDialog({ title, message, confirm, danger = false }) {
  return new Promise((resolve) => {
    let back;
    const close = (answer) => {
      back.remove();
      document.removeEventListener("keydown", onKey);
      resolve(answer);
    };
    const onKey = (event) => { if (event.key === "Escape") close(false); };
    const ok = h("button", {
      class: `btn ${danger ? "btn-danger" : "btn-primary"}`, type: "button",
      "data-confirm": "yes", onclick: () => close(true),
    }, confirm);
    back = overlay(h("div", { class: "dialog", role: "dialog", "aria-modal": "true" },
      h("h2", {}, title),
      h("p", {}, message),
      h("div", { class: "dialog-actions" },
        h("button", { class: "btn", type: "button", onclick: () => close(false) }, "Cancel"),
        ok)));
    document.addEventListener("keydown", onKey);
    ok.focus();
  });
}

/** A modal asking for the server's token; resolves with it. `wrong` is why the last
 * one failed: true (refused), "operator" (valid, but the operator token is needed). */
export function tokenDialog(wrong) {
  return new Promise((resolve) => {
    const input = h("input", {
      type: "password", name: "token", autocomplete: "current-password", required: true,
      placeholder: "RETINUE_OPERATOR_TOKEN or RETINUE_API_TOKEN", class: "input wide",
    });
    const form = h("form", { class: "dialog", role: "dialog", "aria-modal": "true" },
      h("h2", {}, "API token"),
      h("p", {}, wrong === "operator"
        ? "That token is the API token; the dashboard needs the operator token "
          + "(RETINUE_OPERATOR_TOKEN)."
        : wrong
          ? "That token was refused. Enter the server's API token (its operator "
            + "token, if it has one)."
          : "This server asks for its API token (its operator token, if it has one). "
            + "It is kept for this tab only."),
      input,
      h("div", { class: "dialog-actions" },
        h("button", { class: "btn btn-primary", type: "submit" }, "Continue")));
    const back = overlay(form);
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      back.remove();
      resolve(input.value.trim());
    });
    input.focus();
  });
}

export function toast(message, kind = "ok") {
  let box = document.getElementById("toasts");
  if (!box) {
    box = h("div", { id: "toasts" });
    document.body.append(box);
  }
  const note = h("div", { class: `toast toast-${kind}`, role: "status" }, message);
  box.append(note);
  setTimeout(() => note.remove(), kind === "error" ? 7000 : 3500);
}

export function empty(text) {
  return h("div", { class: "empty" }, text);
}

/** A number with its label over it and an optional line under it. */
export function stat(label, value, sub) {
  return h("div", { class: "stat" }, h("div", { class: "stat-label" }, label),
    h("div", { class: "stat-value" }, value), sub ? h("div", { class: "stat-sub" }, sub) : null);
}

export function card(title, ...body) {
  return h("section", { class: "card" },
    title ? h("header", { class: "card-head" }, title) : null,
    h("div", { class: "card-body" }, ...body));
}
