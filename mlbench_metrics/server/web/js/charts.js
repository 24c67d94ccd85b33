// Charts: one uPlot per metric, one line per rank (or per run in the compare view).
//
// A line keeps its points as the API sends them (dates in microseconds, step, epoch,
// value) and is turned into x/y arrays on every render, so the x axis, smoothing, log
// scale and the rate of cumulative series can change without fetching again.

import { el } from "./dom.js";

export const X_MODES = [
  ["step", "step"],
  ["epoch", "epoch"],
  ["time", "wall time"],
  ["relative", "time since start"],
];

const PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];
const HEIGHT = 260;

/** Chart-wide settings shared by every chart on a page. */
export function defaultOptions() {
  return { x: "step", smoothing: 0, log: false };
}

/** A stored value as a number: numbers stay, "nan" and "inf" as the server writes them. */
export function toNumber(value) {
  if (typeof value === "number") return value;
  const text = String(value).trim().toLowerCase();
  if (text === "nan" || text === "") return NaN;
  if (text === "inf" || text === "+inf" || text === "infinity") return Infinity;
  if (text === "-inf" || text === "-infinity") return -Infinity;
  return Number(text);
}

class Line {
  constructor(key, label, startUs, cumulative) {
    this.key = key;
    this.label = label;
    this.startUs = startUs;
    this.cumulative = cumulative;
    this.d = [];
    this.s = [];
    this.e = [];
    this.v = [];
    this.count = 0;
    this.downsampled = false;
  }

  /** Replace the points with a series object of the points API. */
  set(series) {
    this.d = [];
    this.s = [];
    this.e = [];
    this.v = [];
    this.append(series);
    this.count = series.count;
    this.downsampled = series.downsampled;
  }

  /** Add newly arrived points (reads never overlap: see `through`); keeps date order. */
  append(series) {
    const p = series.points;
    const d = p.date_us || [];
    let sorted = true;
    let added = 0;
    for (let i = 0; i < d.length; i++) {
      if (this.d.length && d[i] < this.d[this.d.length - 1]) sorted = false;
      this.d.push(d[i]);
      this.s.push(p.step ? p.step[i] : null);
      this.e.push(p.epoch ? p.epoch[i] : null);
      this.v.push(p.value[i]);
      added++;
    }
    this.count += added;
    if (!sorted) this.sortByDate();
    return added;
  }

  sortByDate() {
    const order = this.d.map((_, i) => i).sort((a, b) => this.d[a] - this.d[b] || a - b);
    for (const key of ["d", "s", "e", "v"]) this[key] = order.map((i) => this[key][i]);
  }

  hasSteps() {
    return this.s.some((s) => s !== null && s !== undefined);
  }

  /** [xs, ys] for the chart's settings (and with `withIndex`, each x's point index);
   *  cumulative series become a rate per second. */
  table(opts, withIndex) {
    const xs = [];
    const ys = [];
    const idx = [];
    const byIndex = opts.x === "step" && !this.hasSteps();
    let prevD = null;
    let prevV = null;
    for (let i = 0; i < this.d.length; i++) {
      let y = toNumber(this.v[i]);
      if (this.cumulative) {
        // As the dashboard draws them: 1000 * max(0, cur - prev) / max(1, dt in ms).
        const d = this.d[i];
        const previous = prevV;
        const dtMs = prevD === null ? 0 : (d - prevD) / 1000;
        prevD = d;
        prevV = y;
        if (previous === null) continue;
        y = (1000 * Math.max(0, y - previous)) / Math.max(1, dtMs);
      }
      let x;
      if (opts.x === "step") x = byIndex ? i : this.s[i];
      else if (opts.x === "epoch") x = this.e[i];
      else if (opts.x === "time") x = this.d[i] / 1e6;
      else x = (this.d[i] - this.startUs) / 1e6;
      if (x === null || x === undefined || !isFinite(x)) continue;
      if (!isFinite(y) || (opts.log && y <= 0)) y = null;
      xs.push(x);
      ys.push(y);
      idx.push(i);
    }
    sortPairs(xs, ys, idx);
    if (opts.smoothing > 0) smooth(ys, opts.smoothing);
    return withIndex ? [xs, ys, idx] : [xs, ys];
  }
}

function sortPairs(xs, ...others) {
  for (let i = 1; i < xs.length; i++) {
    if (xs[i] < xs[i - 1]) {
      const order = xs.map((_, k) => k).sort((a, b) => xs[a] - xs[b] || a - b);
      for (const column of [xs, ...others]) {
        const sorted = order.map((k) => column[k]);
        for (let k = 0; k < sorted.length; k++) column[k] = sorted[k];
      }
      return;
    }
  }
}

/** TensorBoard's smoothing: an exponential moving average, debiased at the start. */
function smooth(ys, weight) {
  let last = 0;
  let n = 0;
  for (let i = 0; i < ys.length; i++) {
    if (ys[i] === null) continue;
    last = last * weight + (1 - weight) * ys[i];
    n++;
    ys[i] = last / (1 - Math.pow(weight, n));
  }
}

const COMPACT = new Intl.NumberFormat(undefined, { notation: "compact", maximumSignificantDigits: 4 });

/** A y tick: 125000 -> "125K", 0.00012 -> "1.2e-4", 0.25 -> "0.25". */
function fmtTick(v) {
  if (v === null || v === undefined) return "";
  const a = Math.abs(v);
  if (a >= 10000) return COMPACT.format(v);
  if (a !== 0 && a < 0.001) return v.toExponential(1);
  return String(+v.toPrecision(4));
}

function xLabel(opts, byIndex) {
  if (opts.x === "step") return byIndex ? "point (no step recorded)" : "step";
  if (opts.x === "epoch") return "epoch";
  if (opts.x === "time") return "time";
  return "seconds since start";
}

/** One chart card: a title, a note, and a uPlot drawing its lines. */
export class Chart {
  constructor(parent, title, opts) {
    this.title = title;
    this.opts = opts;
    this.lines = new Map();
    this.plot = null;
    this.shape = "";
    this.zoomed = false;
    // Zooming into a downsampled chart asks `onZoom(sinceUs, untilUs)` for the points of the
    // window at full resolution; they are drawn (`detail`) until the zoom is reset.
    this.onZoom = null;
    this.detail = null;
    this.zoomGeneration = 0;
    this.zoomTimer = null;
    this.heading = el("h3", {}, title);
    this.note = el("p", { class: "note" });
    this.body = el("div", { class: "plot" });
    this.card = el("section", { class: "chart", dataset: { metric: title } }, this.heading, this.note, this.body);
    parent.append(this.card);
    this.resizer = new ResizeObserver(() => {
      if (this.plot && this.body.clientWidth && Math.abs(this.plot.width - this.body.clientWidth) > 2) {
        this.plot.setSize({ width: this.body.clientWidth, height: HEIGHT });
      }
    });
    this.resizer.observe(this.body);
    // A double-click resets the zoom: leave the detail first, so uPlot resets to the whole range.
    this.body.addEventListener(
      "dblclick",
      () => {
        if (!this.detail) return;
        this.detail = null;
        this.zoomed = false;
        this.zoomGeneration++;
        this.render(false);
      },
      true,
    );
  }

  line(key, label, startUs, cumulative) {
    let line = this.lines.get(key);
    if (!line) {
      line = new Line(key, label, startUs, cumulative);
      this.lines.set(key, line);
    }
    return line;
  }

  isCumulative() {
    return [...this.lines.values()].some((l) => l.cumulative);
  }

  /** The dates (µs) of the window x = min..max, widened to the nearest points outside it. */
  dateRange(min, max) {
    let before = -Infinity;
    let after = Infinity;
    let lo = Infinity;
    let hi = -Infinity;
    for (const line of this.lines.values()) {
      const [xs, , idx] = line.table(Object.assign({}, this.opts, { smoothing: 0 }), true);
      for (let k = 0; k < xs.length; k++) {
        const d = line.d[idx[k]];
        if (xs[k] < min) before = Math.max(before, d);
        else if (xs[k] > max) after = Math.min(after, d);
        else {
          lo = Math.min(lo, d);
          hi = Math.max(hi, d);
        }
      }
    }
    const since = isFinite(before) ? before : lo;
    const until = isFinite(after) ? after : hi;
    return isFinite(since) && isFinite(until) && since <= until ? [since, until] : null;
  }

  /** New data drawn in the same x window (uPlot draws nothing after setData(data, false) alone). */
  keepWindow(data) {
    const { min, max } = this.plot.scales.x;
    this.plot.setData(data, false);
    this.keeping = [min, max];
    this.plot.setScale("x", { min, max });
  }

  zoomChanged(u) {
    const [min, max] = [u.scales.x.min, u.scales.x.max];
    if (this.keeping && this.keeping[0] === min && this.keeping[1] === max) {
      this.keeping = null; // our own redraw of the same window, not the user's zoom
      return;
    }
    this.keeping = null;
    clearTimeout(this.zoomTimer);
    const generation = ++this.zoomGeneration;
    if (!this.zoomed) {
      if (this.detail) {
        this.detail = null;
        this.render(false);
      }
      return;
    }
    if (!this.onZoom || ![...this.lines.values()].some((l) => l.downsampled)) return;
    this.zoomTimer = setTimeout(async () => {
      const range = this.dateRange(min, max);
      if (!range) return;
      try {
        const series = await this.onZoom(range[0], range[1]);
        if (generation !== this.zoomGeneration || !this.zoomed) return;
        this.detail = new Map();
        for (const s of series) {
          const old = this.lines.get(s.name);
          const line = new Line(s.name, s.name, old ? old.startUs : 0, s.cumulative);
          line.set(s);
          this.detail.set(s.name, line);
        }
        this.render(false);
      } catch (e) {
        // keep the downsampled points
      }
    }, 250);
  }

  /** Redraw from the lines' points; `rebuild` when the settings changed. */
  render(rebuild) {
    if (rebuild) this.detail = null;
    const source = this.detail || this.lines;
    const lines = [...source.values()].sort((a, b) => a.label.localeCompare(b.label, undefined, { numeric: true }));
    const tables = lines.map((l) => l.table(this.opts));
    const points = [...this.lines.values()].reduce((n, l) => n + l.count, 0);
    const shown = tables.reduce((n, t) => n + t[0].length, 0);
    const byIndex = this.opts.x === "step" && lines.length > 0 && !lines.some((l) => l.hasSteps());
    this.heading.textContent = this.title + (this.isCumulative() ? " (rate per second)" : "");
    const parts = [`${points.toLocaleString()} points`];
    if (this.detail) {
      const inWindow = lines.reduce((n, l) => n + l.count, 0);
      parts.push(`zoomed: ${shown.toLocaleString()} drawn of the window's ${inWindow.toLocaleString()}`);
    }
    else if (lines.some((l) => l.downsampled)) parts.push(`${shown.toLocaleString()} drawn (min and max of each pixel column)`);
    // NaN and infinities are stored (a diverging loss must show): they cannot be drawn, so say so.
    const notFinite = lines.reduce((n, l) => n + l.v.filter((v) => !isFinite(toNumber(v))).length, 0);
    if (notFinite) parts.push(`${notFinite.toLocaleString()} not finite (NaN or infinite), not drawn`);
    if (!shown && points) parts.push(`none has ${this.opts.x === "epoch" ? "an epoch" : "this x value"}`);
    this.note.textContent = parts.join(" · ");
    if (!shown) {
      this.destroyPlot();
      return;
    }
    const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
    const shape = JSON.stringify([lines.map((l) => l.key), this.opts, byIndex]);
    if (this.detail && this.plot && !rebuild) {
      this.keepWindow(data);
      return;
    }
    if (this.plot && !rebuild && shape === this.shape) {
      if (this.zoomed) this.keepWindow(data);
      else this.plot.setData(data);
      return;
    }
    this.destroyPlot();
    this.shape = shape;
    this.zoomed = false;
    const chart = this;
    this.plot = new uPlot(
      {
        width: this.body.clientWidth || 600,
        height: HEIGHT,
        scales: { x: { time: this.opts.x === "time" }, y: { distr: this.opts.log ? 3 : 1 } },
        axes: [
          this.opts.x === "time" ? { label: xLabel(this.opts, byIndex) } : { label: xLabel(this.opts, byIndex), values: (u, ticks) => ticks.map(fmtTick) },
          { size: 64, values: (u, ticks) => ticks.map(fmtTick) },
        ],
        series: [
          { label: xLabel(this.opts, byIndex) },
          ...lines.map((l, i) => ({
            label: l.label,
            stroke: PALETTE[i % PALETTE.length],
            width: 1.5,
            spanGaps: true,
            points: { show: false },
          })),
        ],
        cursor: { drag: { x: true, y: false }, sync: { key: "mlbench-" + this.opts.x } },
        hooks: {
          setScale: [
            (u, key) => {
              if (key !== "x" || !u.data[0].length) return;
              if (chart.detail) {
                // Drawing the detail keeps the scale; only a reset (double-click) leaves the zoom.
                chart.zoomed = !(u.scales.x.min <= chart.fullX[0] && u.scales.x.max >= chart.fullX[1]);
              } else {
                const xs = u.data[0];
                chart.fullX = [xs[0], xs[xs.length - 1]];
                chart.zoomed = u.scales.x.min > xs[0] || u.scales.x.max < xs[xs.length - 1];
              }
              chart.zoomChanged(u);
            },
          ],
          draw: [
            () => {
              chart.card.dataset.drawn = "1";
              if (!window.__mlbenchFirstChart) window.__mlbenchFirstChart = performance.now();
            },
          ],
        },
      },
      data,
      this.body,
    );
  }

  destroyPlot() {
    if (this.plot) this.plot.destroy();
    this.plot = null;
    this.shape = "";
  }

  destroy() {
    this.resizer.disconnect();
    this.destroyPlot();
    this.card.remove();
  }
}

/** The chart settings bar: x axis, smoothing, log scale, a metric filter; calls `changed(what)`. */
export function toolbar(opts, changed, withFilter) {
  const select = el(
    "select",
    { "aria-label": "x axis", onchange: (e) => ((opts.x = e.target.value), changed("x")) },
    X_MODES.map(([value, label]) => el("option", { value, selected: value === opts.x }, label)),
  );
  const smoothing = el("input", {
    type: "range",
    min: "0",
    max: "0.99",
    step: "0.01",
    value: String(opts.smoothing),
    "aria-label": "smoothing",
    oninput: (e) => {
      opts.smoothing = Number(e.target.value);
      shown.textContent = opts.smoothing.toFixed(2);
      changed("smoothing");
    },
  });
  const shown = el("span", { class: "num" }, opts.smoothing.toFixed(2));
  const log = el("input", { type: "checkbox", checked: opts.log, onchange: (e) => ((opts.log = e.target.checked), changed("log")) });
  const filter = withFilter
    ? el("input", {
        type: "search",
        placeholder: "filter metrics",
        "aria-label": "filter metrics",
        value: opts.filter || "",
        oninput: (e) => ((opts.filter = e.target.value), changed("filter")),
      })
    : null;
  return el(
    "div",
    { class: "toolbar" },
    el("label", {}, "x axis ", select),
    el("label", {}, "smoothing ", smoothing, " ", shown),
    el("label", {}, log, " log scale"),
    filter,
    el("span", { class: "hint" }, "drag to zoom, double-click to reset"),
  );
}
