// Small SVG line charts of the server's samples (GET /api/overview).

import { h, s } from "./dom.js";

const PAD = { top: 8, right: 10, bottom: 18, left: 44 };

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

function clock(ms) {
  const d = new Date(ms);
  return `${String(d.getHours()).padStart(2, "0")}:${String(d.getMinutes()).padStart(2, "0")}`;
}

/**
 * A line chart. series: [{label, color, points: [[tMs, value|null], ...]}];
 * from/to: the time domain (ms); format: a value formatter for the axis and hover.
 */
export function lineChart({ title, series, from, to, width, height = 132, format, integer = false }) {
  const inner = { w: Math.max(60, width - PAD.left - PAD.right), h: height - PAD.top - PAD.bottom };
  const values = series.flatMap((line) => line.points.map(([, v]) => v)).filter((v) => v !== null);
  const top = integer ? Math.max(2, 2 * Math.ceil(niceMax(Math.max(0, ...values)) / 2))
    : niceMax(Math.max(0, ...values));
  const x = (t) => PAD.left + ((t - from) / Math.max(1, to - from)) * inner.w;
  const y = (v) => PAD.top + inner.h - (v / top) * inner.h;

  const svg = s("svg", { class: "chart", width, height, viewBox: `0 0 ${width} ${height}`,
    role: "img", "aria-label": title });
  for (const fraction of [0, 0.5, 1]) {
    const gy = y(top * fraction);
    svg.append(
      s("line", { x1: PAD.left, x2: PAD.left + inner.w, y1: gy, y2: gy, class: "grid" }),
      s("text", { x: PAD.left - 6, y: gy + 3, class: "axis", "text-anchor": "end" },
        format(top * fraction)));
  }
  const ticks = 4;
  for (let i = 0; i <= ticks; i += 1) {
    const t = from + ((to - from) * i) / ticks;
    svg.append(s("text", { x: x(t), y: height - 4, class: "axis",
      "text-anchor": i === 0 ? "start" : i === ticks ? "end" : "middle" }, clock(t)));
  }
  for (const line of series) {
    const path = [];
    let pen = "M";
    for (const [t, v] of line.points) {
      if (v === null || t < from) { pen = "M"; continue; }
      path.push(`${pen}${x(t).toFixed(1)},${y(v).toFixed(1)}`);
      pen = "L";
    }
    if (path.length) {
      svg.append(s("path", { d: path.join(""), stroke: line.color, class: "series" }));
    }
    if (path.length === 1) {
      const [t, v] = line.points.find(([, value]) => value !== null);
      svg.append(s("circle", { cx: x(t), cy: y(v), r: 2.5, fill: line.color }));
    }
  }
  const hover = s("g", { class: "hover", visibility: "hidden" },
    s("line", { y1: PAD.top, y2: PAD.top + inner.h, class: "hover-line" }));
  svg.append(hover);
  const readout = h("div", { class: "chart-readout" });
  svg.addEventListener("mousemove", (event) => {
    const box = svg.getBoundingClientRect();
    const t = from + ((event.clientX - box.left - PAD.left) / inner.w) * (to - from);
    const near = nearestTime(series, t);
    if (near === null) return;
    hover.setAttribute("visibility", "visible");
    hover.firstChild.setAttribute("x1", x(near));
    hover.firstChild.setAttribute("x2", x(near));
    readout.replaceChildren(clock(near) + " ", ...series.map((line) => {
      const point = line.points.find(([pt]) => pt === near);
      return h("span", { class: "readout-item" }, h("i", { class: "swatch", "data-color": line.color }), `${line.label} ${point && point[1] !== null
        ? format(point[1]) : "–"}`);
    }));
    paintSwatches(readout);
  });
  svg.addEventListener("mouseleave", () => {
    hover.setAttribute("visibility", "hidden");
    readout.replaceChildren();
  });
  const legend = h("div", { class: "legend" }, series.map((line) =>
    h("span", { class: "legend-item" }, h("i", { class: "swatch", "data-color": line.color }),
      line.label)));
  paintSwatches(legend);
  return h("figure", { class: "chart-box" },
    h("figcaption", {}, h("span", { class: "chart-title" }, title), legend), svg, readout);
}

// Colours are set through the CSSOM: the page's CSP forbids style attributes.
function paintSwatches(root) {
  for (const swatch of root.querySelectorAll(".swatch[data-color]")) {
    swatch.style.background = swatch.dataset.color;
  }
}

function nearestTime(series, t) {
  let best = null;
  for (const line of series) {
    for (const [pt] of line.points) {
      if (best === null || Math.abs(pt - t) < Math.abs(best - t)) best = pt;
    }
  }
  return best;
}
