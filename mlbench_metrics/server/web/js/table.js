// The runs table's logic, apart from the page: config flattened into columns, the filter's
// words and conditions, sorting, and which config columns differ between runs.

import { toNumber } from "./charts.js";

export const FIGURES = ["last", "min", "max"];

/**
 * Nested config as dotted keys: {"optim": {"lr": 0.1}} -> {"optim.lr": 0.1}; lists stay whole.
 * The result has no prototype: a key such as "toString" or "__proto__" (in a config, or asked
 * about by a filter or a column in a link) is only ever the config's own key.
 */
export function flatten(value, prefix, out) {
  out = out || Object.create(null);
  if (value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else if (prefix) {
    out[prefix] = value;
  }
  return out;
}

/** A config or metric value as the table shows it. */
export function show(value) {
  if (value === undefined || value === null) return "";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : String(+value.toPrecision(5));
  if (typeof value === "string") return value;
  return JSON.stringify(value);
}

/** A run's value in a column: "config:optimizer.lr", "metric:loss:min", or a run field. */
export function cell(run, column) {
  if (column.startsWith("config:")) return run.flat[column.slice(7)];
  if (column.startsWith("metric:")) {
    const at = column.lastIndexOf(":");
    const figures = run.metrics[column.slice(7, at)];
    return figures ? figures[column.slice(at + 1)] : undefined;
  }
  if (column === "duration") return run.seconds;
  return run[column];
}

const OPERATORS = ["<=", ">=", "!=", "=", "<", ">"];

/**
 * The filter's words: "lr=0.1 train_loss<0.5 sgd" -> conditions and plain words. A condition
 * is KEY OP VALUE with OP one of = != < > <= >=; everything else is a word matched
 * against the run's id, name, state and config values.
 */
export function parseFilter(text) {
  const conditions = [];
  const words = [];
  for (const word of text.trim().split(/\s+/).filter(Boolean)) {
    const match = /^([^<>=!]+)(<=|>=|!=|=|<|>)(.*)$/.exec(word);
    if (match && OPERATORS.includes(match[2]) && match[3] !== "") conditions.push({ key: match[1], op: match[2], value: match[3] });
    else words.push(word.toLowerCase());
  }
  return { conditions, words };
}

/** Metric names a filter's conditions ask about (the table must read their figures). */
export function filterMetrics(filter, metricNames) {
  const out = new Set();
  for (const c of filter.conditions) {
    const [name] = metricKey(c.key, metricNames);
    if (name) out.add(name);
  }
  return [...out];
}

/** "train_loss" -> ["train_loss", "last"]; "train_loss.min" -> ["train_loss", "min"]; else [null]. */
function metricKey(key, metricNames) {
  if (metricNames.includes(key)) return [key, "last"];
  const at = key.lastIndexOf(".");
  if (at > 0 && FIGURES.includes(key.slice(at + 1)) && metricNames.includes(key.slice(0, at))) return [key.slice(0, at), key.slice(at + 1)];
  return [null, null];
}

/** What a condition's key means for a run: a config key (exact, or its last parts), a metric, or a field. */
function lookup(run, key, metricNames) {
  if (key in run.flat) return run.flat[key];
  const [name, figure] = metricKey(key, metricNames);
  if (name) return (run.metrics[name] || {})[figure];
  if (["id", "name", "state"].includes(key)) return run[key];
  const suffix = "." + key;
  for (const k of Object.keys(run.flat)) if (k.endsWith(suffix)) return run.flat[k];
  return undefined;
}

function compare(a, b) {
  const x = typeof a === "number" ? a : toNumber(a);
  const y = toNumber(b);
  if (!isNaN(x) && !isNaN(y) && typeof a !== "boolean") return x < y ? -1 : x > y ? 1 : 0;
  const s = show(a).toLowerCase();
  const t = String(b).toLowerCase();
  return s < t ? -1 : s > t ? 1 : 0;
}

/** Whether a run passes the parsed filter. */
export function matches(run, filter, metricNames) {
  for (const c of filter.conditions) {
    const value = lookup(run, c.key, metricNames);
    if (value === undefined || value === null) return false;
    const order = compare(value, c.value);
    const ok = { "=": order === 0, "!=": order !== 0, "<": order < 0, ">": order > 0, "<=": order <= 0, ">=": order >= 0 }[c.op];
    if (!ok) return false;
  }
  if (!filter.words.length) return true;
  const text = `${run.id} ${run.name} ${run.state} ${Object.values(run.flat).map(show).join(" ")}`.toLowerCase();
  return filter.words.every((w) => text.includes(w));
}

/** Sort runs by a column (missing values last, numbers as numbers, ties by id, newest first). */
export function sortRuns(runs, column, descending) {
  const sign = descending ? -1 : 1;
  return runs.slice().sort((a, b) => {
    const x = cell(a, column);
    const y = cell(b, column);
    const xMissing = x === undefined || x === null || x === "";
    const yMissing = y === undefined || y === null || y === "";
    if (xMissing !== yMissing) return xMissing ? 1 : -1;
    if (!xMissing) {
      const order = typeof x === "number" && typeof y === "number" ? x - y : compare(x, show(y));
      if (order) return sign * order;
    }
    return b.id - a.id;
  });
}

/** Config keys whose values are not the same in every one of `runs` (a missing key is a value). */
export function differingKeys(runs, keys) {
  return keys.filter((key) => {
    const first = show(runs.length ? runs[0].flat[key] : undefined) + (runs.length && key in runs[0].flat ? "" : "\u0000");
    return runs.some((r) => show(r.flat[key]) + (key in r.flat ? "" : "\u0000") !== first);
  });
}
