// Charts: one uPlot per metric, one line per rank (or per run in the compare view).
//
// A line keeps its points as the API sends them (dates in microseconds, step, epoch,
// value) and is turned into x/y arrays on every render, so the x axis, smoothing, log
// scale and the rate of cumulative series can change without fetching again.

import { el } from "./dom.js";
import { Line, fold, isText, smooth, toNumber } from "./lines.js";
import { savePng } from "./png.js";

export { toNumber };

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
  return { x: "step", smoothing: 0, log: false, fold: false };
}


/** A colour as rgba with this opacity ("#1f77b4" or "hsl(...)" as the palette and callers give them). */
function fade(colour, alpha) {
  const hex = /^#([0-9a-f]{6})$/i.exec(colour);
  if (!hex) return colour.replace(/^hsl\((.*)\)$/, `hsla($1, ${alpha})`);
  const n = parseInt(hex[1], 16);
  return `rgba(${n >> 16}, ${(n >> 8) & 255}, ${n & 255}, ${alpha})`;
}

function smoothCopy(ys, weight) {
  const out = ys.slice();
  smooth(out, weight);
  return out;
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
    const save = el("button", { type: "button", title: "save this chart as a PNG image", onclick: () => this.savePng() }, "PNG");
    this.card = el("section", { class: "chart", dataset: { metric: title } }, el("div", { class: "chart-head" }, this.heading, save), this.note, this.body);
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

  line(key, label, startUs, cumulative, group, colour) {
    let line = this.lines.get(key);
    if (!line) {
      line = new Line(key, label, startUs, cumulative, group, colour);
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
          const line = old ? new Line(s.name, old.label, old.startUs, s.cumulative, old.group, old.colour) : new Line(s.name, s.name, 0, s.cumulative);
          line.set(s);
          this.detail.set(s.name, line);
        }
        this.render(false);
      } catch (e) {
        // keep the downsampled points
      }
    }, 250);
  }

  /**
   * What to draw: aligned data and a uPlot series spec for each column, from the lines.
   * A line is one series, or with `opts.fold` the lines of a group (a run's ranks) are one
   * mean with a min/max band. With smoothing, each is drawn smoothed over its raw line,
   * which is drawn faintly behind it (as TensorBoard does).
   */
  plan(lines) {
    const raw = Object.assign({}, this.opts, { smoothing: 0 });
    const groups = new Map();
    for (const line of lines) {
      const key = this.opts.fold ? line.group : line.key;
      if (!groups.has(key)) groups.set(key, []);
      groups.get(key).push(line);
    }
    const tables = [];
    const specs = [];
    const bands = [];
    const weight = this.opts.smoothing;
    let index = 0;
    let drawn = 0;
    for (const members of groups.values()) {
      const colour = members[0].colour || PALETTE[index++ % PALETTE.length];
      const folded = members.length > 1;
      const each = members.map((l) => l.table(raw));
      drawn += each.reduce((n, t) => n + t[0].length, 0);
      const [xs, mean, lo, hi] = fold(each);
      const label = folded ? `${members[0].group} (mean of ${members.length})` : members[0].label;
      const single = mean.filter((y) => y !== null).length === 1;
      const marker = { show: single, size: 9, fill: colour };
      if (weight > 0) {
        tables.push([xs, mean]);
        specs.push({ label: label + " (raw)", stroke: fade(colour, 0.25), width: 1, spanGaps: true, points: marker, raw: true });
      }
      const smoothed = (ys) => (weight > 0 ? smoothCopy(ys, weight) : ys);
      tables.push([xs, smoothed(mean)]);
      specs.push({ label, stroke: colour, width: 1.5, spanGaps: true, points: marker });
      if (folded) {
        tables.push([xs, smoothed(hi)], [xs, smoothed(lo)]);
        specs.push({ label: label + " max", stroke: "transparent", width: 0, spanGaps: true, points: { show: false }, raw: true });
        specs.push({ label: label + " min", stroke: "transparent", width: 0, spanGaps: true, points: { show: false }, raw: true });
        bands.push({ series: [specs.length - 1, specs.length], fill: fade(colour, 0.15) });
      }
    }
    return { tables, specs, bands, drawn };
  }

  /** Redraw from the lines' points; `rebuild` when the settings changed. */
  render(rebuild) {
    if (rebuild) this.detail = null;
    const source = this.detail || this.lines;
    const lines = [...source.values()].sort((a, b) => a.label.localeCompare(b.label, undefined, { numeric: true }));
    const { tables, specs, bands, drawn: shown } = this.plan(lines);
    const points = [...this.lines.values()].reduce((n, l) => n + l.count, 0);
    const byIndex = this.opts.x === "step" && lines.length > 0 && !lines.some((l) => l.hasSteps());
    this.heading.textContent = this.title + (this.isCumulative() ? " (rate per second)" : "");
    const parts = [`${points.toLocaleString()} ${points === 1 ? "point" : "points"}`];
    if (this.detail) {
      const inWindow = lines.reduce((n, l) => n + l.count, 0);
      parts.push(`zoomed: ${shown.toLocaleString()} drawn of the window's ${inWindow.toLocaleString()}`);
    }
    else if (lines.some((l) => l.downsampled)) parts.push(`${shown.toLocaleString()} drawn (min and max of each pixel column)`);
    // Text values are listed apart (the run page's "Text values"); NaN and infinities are
    // stored (a diverging loss must show) but cannot be drawn, so say so.
    const texts = [...this.lines.values()].reduce((n, l) => n + l.texts().length, 0);
    const notFinite = lines.reduce((n, l) => n + l.v.filter((v) => !isText(v) && !isFinite(toNumber(v))).length, 0);
    if (texts) parts.push(`${texts.toLocaleString()} text ${texts === 1 ? "value" : "values"} (listed under Text values)`);
    if (notFinite) parts.push(`${notFinite.toLocaleString()} not finite (NaN or infinite), not drawn`);
    if (!shown && points > texts) parts.push(`none has ${this.opts.x === "epoch" ? "an epoch" : "this x value"}`);
    if (this.extraNote) parts.push(this.extraNote); // the page's own word (compare: runs without this metric)
    this.note.textContent = parts.join(" · ");
    // A metric of text values only has nothing to draw: its values are listed instead.
    this.card.classList.toggle("textonly", points > 0 && texts === points && !this.detail);
    if (!shown) {
      this.destroyPlot();
      return;
    }
    const data = tables.length === 1 ? tables[0] : uPlot.join(tables);
    const shape = JSON.stringify([specs.map((sp) => [sp.label, sp.stroke, sp.points.show]), this.opts, byIndex]);
    if (this.detail && this.plot && !rebuild && shape === this.shape) {
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
        series: [{ label: xLabel(this.opts, byIndex) }, ...specs.map(({ raw, ...spec }) => spec)],
        bands,
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
    // The faint raw lines and the band's edges are not rows of the legend.
    const rows = this.plot.root.querySelectorAll(".u-legend .u-series");
    specs.forEach((spec, i) => {
      if (spec.raw && rows[i + 1]) rows[i + 1].style.display = "none";
    });
  }

  /** Download the chart as a PNG: its title, the plot as drawn, and a legend of its lines. */
  savePng() {
    if (this.plot) savePng(this.plot, this.heading.textContent, this.title);
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

/** Show only the charts whose title has every word of `text`; returns how many are shown. */
export function filterCharts(charts, text) {
  const words = (text || "").toLowerCase().split(/\s+/).filter(Boolean);
  let visible = 0;
  for (const chart of charts) {
    chart.card.hidden = !words.every((w) => chart.title.toLowerCase().includes(w));
    if (!chart.card.hidden) visible++;
  }
  return visible;
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
  const fold = el("input", { type: "checkbox", checked: !!opts.fold, onchange: (e) => ((opts.fold = e.target.checked), changed("fold")) });
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
    el("label", { title: "draw a run's ranks as their mean with a band from min to max" }, fold, " ranks as mean and band"),
    filter,
    el("span", { class: "hint" }, "drag to zoom, double-click to reset"),
  );
}
