// A chart's lines: the points of one series as the API sends them (dates in microseconds,
// step, epoch, value), turned into x/y arrays on every render so the x axis, smoothing,
// log scale and the rate of cumulative series can change without fetching again; and the
// fold of several ranks' lines into their mean with a min/max band.

/** A stored value as a number: numbers stay, "nan" and "inf" as the server writes them. */
export function toNumber(value) {
  if (typeof value === "number") return value;
  const text = String(value).trim().toLowerCase();
  if (text === "nan" || text === "") return NaN;
  if (text === "inf" || text === "+inf" || text === "infinity") return Infinity;
  if (text === "-inf" || text === "-infinity") return -Infinity;
  return Number(text);
}

const NOT_FINITE_TEXT = /^\s*[+-]?(nan|inf|infinity)\s*$/i;

/** Whether a stored value is text as logged (`log("note", "warming up")`), not a number, NaN or an infinity. */
export function isText(value) {
  return typeof value === "string" && isNaN(toNumber(value)) && !NOT_FINITE_TEXT.test(value);
}

export class Line {
  /** `group`: lines of one group (a run's ranks) share a colour and can be folded into one. */
  constructor(key, label, startUs, cumulative, group, colour) {
    this.key = key;
    this.label = label;
    this.group = group === undefined ? key : group;
    this.colour = colour || null;
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

  /** The text values, as {step, epoch, date_us, value}, in date order. */
  texts() {
    const out = [];
    for (let i = 0; i < this.v.length; i++) {
      if (isText(this.v[i])) out.push({ step: this.s[i], epoch: this.e[i], date_us: this.d[i], value: this.v[i] });
    }
    return out;
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
export function smooth(ys, weight) {
  let last = 0;
  let n = 0;
  for (let i = 0; i < ys.length; i++) {
    if (ys[i] === null) continue;
    last = last * weight + (1 - weight) * ys[i];
    n++;
    ys[i] = last / (1 - Math.pow(weight, n));
  }
}

/** Several lines' [xs, ys] folded into one: [xs, mean, min, max] over the lines at each x. */
export function fold(tables) {
  if (tables.length === 1) return [tables[0][0], tables[0][1], tables[0][1], tables[0][1]];
  const joined = uPlot.join(tables);
  const xs = joined[0];
  const mean = [];
  const lo = [];
  const hi = [];
  for (let i = 0; i < xs.length; i++) {
    let sum = 0;
    let n = 0;
    let min = Infinity;
    let max = -Infinity;
    for (let k = 1; k < joined.length; k++) {
      const y = joined[k][i];
      if (y === null || y === undefined) continue;
      sum += y;
      n++;
      min = Math.min(min, y);
      max = Math.max(max, y);
    }
    mean.push(n ? sum / n : null);
    lo.push(n ? min : null);
    hi.push(n ? max : null);
  }
  return [xs, mean, lo, hi];
}
