// Parallel coordinates in plain SVG: one vertical axis per config key and one for a metric,
// one line per run. Dragging along an axis brushes a range; the runs outside every brush
// are drawn grey and left out of the table. A click on an axis without a drag clears it.

import { show } from "./table.js";

const NS = "http://www.w3.org/2000/svg";
const HEIGHT = 340;
const TOP = 48;
const BOTTOM = 28;
const SIDE = 90;

function svg(tag, attrs, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text; // text, never markup
  return node;
}

/** An axis's scale over the runs' values: numbers (log when they span 100x and more, all > 0) or categories. */
function scaleFor(values) {
  const present = values.filter((v) => v !== undefined && v !== null && v !== "");
  const numeric = present.length > 0 && present.every((v) => typeof v === "number" && isFinite(v));
  if (numeric) {
    let lo = Math.min(...present);
    let hi = Math.max(...present);
    const log = lo > 0 && hi / lo >= 100;
    const f = log ? Math.log10 : (v) => v;
    if (lo === hi) [lo, hi] = log ? [lo / 2, hi * 2] : [lo - 1, hi + 1];
    const a = f(lo);
    const b = f(hi);
    return {
      numeric: true,
      pos: (v) => (typeof v === "number" && isFinite(v) ? (f(v) - a) / (b - a) : null),
      ticks: [lo, log ? Math.pow(10, (a + b) / 2) : (lo + hi) / 2, hi],
      inRange: (v, r) => typeof v === "number" && v >= r[0] && v <= r[1],
      fromPos: (p) => (log ? Math.pow(10, a + p * (b - a)) : a + p * (b - a)),
    };
  }
  const cats = [...new Set(present.map(show))].sort((x, y) => x.localeCompare(y, undefined, { numeric: true }));
  const at = new Map(cats.map((c, i) => [c, cats.length === 1 ? 0.5 : i / (cats.length - 1)]));
  return {
    numeric: false,
    pos: (v) => (v === undefined || v === null || v === "" ? null : at.get(show(v))),
    ticks: cats.length <= 12 ? cats : [cats[0], cats[cats.length - 1]],
    inRange: (v, r) => v !== undefined && v !== null && r.includes(show(v)),
    fromPos: null,
    cats,
    at,
  };
}

/**
 * Draw into `box`. `axes`: [{key, label, value(run)}]; `runs`: the runs to draw; `brushes`:
 * Map key -> [lo, hi] (numbers) or a list of categories; `onBrush(brushes)` after a drag.
 * Returns `passes(run)`: whether a run is inside every brush.
 */
export function parallelCoordinates(box, axes, runs, brushes, onBrush) {
  const width = Math.max(480, box.clientWidth || 900);
  const root = svg("svg", { width, height: HEIGHT, viewBox: `0 0 ${width} ${HEIGHT}`, class: "pc", role: "img", "aria-label": "parallel coordinates" });
  const plotH = HEIGHT - TOP - BOTTOM;
  const step = axes.length > 1 ? (width - 2 * SIDE) / (axes.length - 1) : 0;
  const xs = axes.map((_, i) => (axes.length > 1 ? SIDE + i * step : width / 2));
  const scales = axes.map((a) => scaleFor(runs.map(a.value)));
  const y = (p) => TOP + (1 - p) * plotH;

  const passes = (run) =>
    axes.every((a, i) => {
      const r = brushes.get(a.key);
      return !r || scales[i].inRange(a.value(run), r);
    });

  const metricScale = scales[scales.length - 1];
  const colour = (run) => {
    const p = metricScale ? metricScale.pos(axes[axes.length - 1].value(run)) : null;
    if (p === null || p === undefined) return "#6b7280";
    const hue = 240 - 240 * p; // blue (low) to red (high)
    return `hsl(${hue.toFixed(0)}, 70%, 45%)`;
  };

  const lines = svg("g", { class: "pc-lines" });
  const ordered = runs.slice().sort((a, b) => Number(passes(a)) - Number(passes(b))); // brushed-out ones behind
  for (const run of ordered) {
    const inside = passes(run);
    let d = "";
    let pen = false;
    axes.forEach((a, i) => {
      const p = scales[i].pos(a.value(run));
      if (p === null || p === undefined) {
        pen = false;
        return;
      }
      d += `${pen ? "L" : "M"}${xs[i].toFixed(1)},${y(p).toFixed(1)}`;
      pen = true;
    });
    if (!d) continue;
    const path = svg("path", { d, fill: "none", stroke: inside ? colour(run) : "#d1d5db", "stroke-width": inside ? 1.6 : 1, "stroke-opacity": inside ? 0.85 : 0.6, "data-run": run.id });
    path.append(svg("title", {}, `${run.name} #${run.id}`));
    lines.append(path);
  }
  root.append(lines);

  axes.forEach((a, i) => {
    const g = svg("g", { class: "pc-axis", "data-key": a.key });
    const x = xs[i];
    g.append(svg("line", { x1: x, x2: x, y1: TOP, y2: TOP + plotH, stroke: "#374151" }));
    const label = a.label.length > 20 ? a.label.slice(0, 19) + "…" : a.label;
    const title = svg("text", { x, y: TOP - 26, "text-anchor": "middle", class: "pc-label" }, label);
    title.append(svg("title", {}, a.label));
    g.append(title);
    const s = scales[i];
    for (const t of s.ticks) {
      const p = s.numeric ? s.pos(t) : s.at.get(t);
      if (p === null || p === undefined) continue;
      g.append(svg("line", { x1: x - 4, x2: x, y1: y(p), y2: y(p), stroke: "#374151" }));
      const text = s.numeric ? show(t) : t.length > 14 ? t.slice(0, 13) + "…" : t;
      g.append(svg("text", { x: x - 7, y: y(p) + 4, "text-anchor": "end", class: "pc-tick" }, text));
    }
    const r = brushes.get(a.key);
    if (r) {
      const [p0, p1] = s.numeric ? [s.pos(r[0]), s.pos(r[1])] : rangeOfCats(s, r);
      if (p0 !== null && p1 !== null) {
        g.append(svg("rect", { x: x - 9, y: y(Math.max(p0, p1)), width: 18, height: Math.max(3, Math.abs(y(p0) - y(p1))), class: "pc-brush" }));
      }
    }
    const hit = svg("rect", { x: x - 14, y: TOP - 6, width: 28, height: plotH + 12, class: "pc-hit", "data-key": a.key });
    g.append(hit);
    hit.addEventListener("pointerdown", (e) => startBrush(e, a, s, g, x));
    root.append(g);
  });
  box.replaceChildren(root);

  function posAt(clientY) {
    const rect = root.getBoundingClientRect();
    const py = ((clientY - rect.top) * HEIGHT) / rect.height;
    return Math.min(1, Math.max(0, 1 - (py - TOP) / plotH));
  }

  function startBrush(e, axis, s, g, x) {
    e.preventDefault();
    const start = posAt(e.clientY);
    const band = svg("rect", { x: x - 9, y: y(start), width: 18, height: 1, class: "pc-brush" });
    g.append(band);
    let end = start;
    const move = (m) => {
      end = posAt(m.clientY);
      band.setAttribute("y", y(Math.max(start, end)));
      band.setAttribute("height", Math.max(1, Math.abs(y(start) - y(end))));
    };
    const up = () => {
      window.removeEventListener("pointermove", move);
      window.removeEventListener("pointerup", up);
      const next = new Map(brushes);
      const [lo, hi] = [Math.min(start, end), Math.max(start, end)];
      if (hi - lo < 0.01) next.delete(axis.key); // a click: clear this axis
      else if (s.numeric) next.set(axis.key, [s.fromPos(lo), s.fromPos(hi)]);
      else next.set(axis.key, s.cats.filter((c) => s.at.get(c) >= lo - 1e-9 && s.at.get(c) <= hi + 1e-9));
      onBrush(next);
    };
    window.addEventListener("pointermove", move);
    window.addEventListener("pointerup", up);
  }

  return passes;
}

function rangeOfCats(s, cats) {
  const ps = cats.map((c) => s.at.get(c)).filter((p) => p !== undefined);
  return ps.length ? [Math.min(...ps), Math.max(...ps)] : [null, null];
}

/** Brushes as the address keeps them: "key:lo:hi" (numbers) or "key:~a|b" (categories), joined by ";". */
export function brushesToText(brushes) {
  return [...brushes.entries()]
    .map(([k, r]) => (typeof r[0] === "number" ? `${k}~${+r[0].toPrecision(6)}~${+r[1].toPrecision(6)}` : `${k}~~${r.join("|")}`))
    .join(";");
}

/** The inverse of brushesToText. */
export function brushesFromText(text) {
  const out = new Map();
  for (const part of (text || "").split(";").filter(Boolean)) {
    const cat = part.indexOf("~~");
    if (cat > 0) {
      out.set(part.slice(0, cat), part.slice(cat + 2).split("|"));
      continue;
    }
    const bits = part.split("~");
    if (bits.length < 3) continue;
    const hi = Number(bits.pop());
    const lo = Number(bits.pop());
    if (isFinite(lo) && isFinite(hi)) out.set(bits.join("~"), [lo, hi]);
  }
  return out;
}
