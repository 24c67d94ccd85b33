// The view is the address: what a page shows (runs, metrics, x axis, smoothing, log scale,
// filters, sort) lives in the #...?query, so a reload or a copied link shows the same view.
// Column choices are also remembered in localStorage (view preferences only, never a
// token or data) as the default for an address that names none.

const PREFS_KEY = "mlbench-metrics.view";

/** The current hash's path and query: "#/compare?runs=1,2" -> ["/compare", URLSearchParams]. */
export function currentView() {
  const hash = window.location.hash.replace(/^#/, "") || "/";
  const at = hash.indexOf("?");
  return [at < 0 ? hash : hash.slice(0, at), new URLSearchParams(at < 0 ? "" : hash.slice(at + 1))];
}

/**
 * Write `values` into the address's query (replacing the history entry: no new entry per
 * keystroke, and no hashchange, so the page is not loaded again). Empty values are left out.
 */
export function saveView(path, values) {
  const query = new URLSearchParams();
  for (const [key, value] of Object.entries(values)) {
    if (value === undefined || value === null || value === "" || value === false) continue;
    if (Array.isArray(value)) {
      if (value.length) query.set(key, value.join(","));
    } else query.set(key, value === true ? "1" : String(value));
  }
  const text = query.toString().replace(/%2C/g, ",");
  const hash = "#" + path + (text ? "?" + text : "");
  if (window.location.hash !== hash) history.replaceState(history.state, "", window.location.pathname + window.location.search + hash);
}

/** A comma-separated list parameter ("a,b" -> ["a", "b"]); [] when missing. */
export function listParam(query, key) {
  return (query.get(key) || "").split(",").filter(Boolean);
}

/** A number parameter within [min, max], or `fallback`. */
export function numberParam(query, key, fallback, min, max) {
  const text = query.get(key);
  if (text === null || text === "") return fallback;
  const n = Number(text);
  return isFinite(n) && n >= min && n <= max ? n : fallback;
}

/** A view preference remembered for this server (localStorage), or `fallback`. */
export function pref(key, fallback) {
  try {
    const all = JSON.parse(localStorage.getItem(PREFS_KEY) || "{}");
    return key in all ? all[key] : fallback;
  } catch (e) {
    return fallback;
  }
}

/** Remember a view preference (column choices and the like; never anything secret). */
export function setPref(key, value) {
  try {
    const all = JSON.parse(localStorage.getItem(PREFS_KEY) || "{}");
    all[key] = value;
    localStorage.setItem(PREFS_KEY, JSON.stringify(all));
  } catch (e) {
    // storage full or refused (a private window): the address still holds the view
  }
}

/** Chart settings from the address: x axis, smoothing, log scale, metric filter. */
export function chartOptions(query, opts) {
  const x = query.get("x");
  if (["step", "epoch", "time", "relative"].includes(x)) opts.x = x;
  opts.smoothing = numberParam(query, "smooth", opts.smoothing, 0, 0.99);
  opts.log = query.get("log") === "1";
  opts.fold = query.get("fold") === "1";
  if (query.has("filter")) opts.filter = query.get("filter");
  return opts;
}

/** The address's part for chart settings (see chartOptions); `xChosen`: leave x out while it follows the data. */
export function chartParams(opts, xChosen) {
  return { x: xChosen ? opts.x : "", smooth: opts.smoothing || "", log: opts.log, fold: opts.fold, filter: opts.filter || "" };
}
