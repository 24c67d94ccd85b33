// One run: details, configuration, output tails, downloads, and a chart per metric that
// keeps up with new points while the page is open.

import { ApiError, download, getJson } from "./api.js";
import { Chart, defaultOptions, filterCharts, toolbar } from "./charts.js";
import { banner, el, every, fmtDate, fmtDuration, isDone, runSeconds, stateBadge } from "./dom.js";
import { chartOptions, chartParams, saveView } from "./view.js";

const FIELDS = "date_us,step,epoch,value";
const TAIL = 200;
const POLL_MAX = 20000; // points of one series in one poll before the server downsamples them
const KEEP_MAX = 500000; // points a live line holds before its chart is read again, downsampled

/** Microseconds since the epoch as the ISO date the API takes, to the microsecond. */
function isoUs(us) {
  const ms = Math.floor(us / 1000);
  const micros = String(Math.round(us - ms * 1000)).padStart(3, "0");
  return new Date(ms).toISOString().replace("Z", micros + "Z");
}

/** Nested config as dotted keys: {"optim": {"lr": 0.1}} -> [["optim.lr", 0.1]]. */
function flatten(value, prefix, out) {
  if (value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else {
    out.push([prefix, typeof value === "string" ? value : JSON.stringify(value)]);
  }
  return out;
}

function definitionList(pairs) {
  return el("dl", { class: "details" }, pairs.filter(([, v]) => v !== "" && v !== undefined && v !== null).map(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
}

function tail(name, lines) {
  const shown = (lines || []).slice(-TAIL);
  return el(
    "details",
    { class: "log", open: shown.length > 0, dataset: { stream: name } },
    el("summary", {}, `${name} (${shown.length < (lines || []).length ? `last ${shown.length} of ` : ""}${(lines || []).length} lines)`),
    el("pre", {}, shown.join("\n")),
  );
}

export async function runPage(main, id, query) {
  const opts = chartOptions(query, defaultOptions());
  let xChosen = query.has("x"); // the x axis follows the data until the user (or the address) picks one
  const startUs = { value: 0 };
  const charts = new Map();
  let cursor = 0;
  let [run, details, catalog] = await Promise.all([
    getJson(`runs/${id}/`),
    getJson(`runs/${id}/details/`),
    getJson(`runs/${id}/series/`),
  ]);
  startUs.value = Date.parse(run.created_at) * 1000;
  cursor = catalog.cursor || 0;
  const firstCursor = cursor;
  const stale = new Set(); // metrics whose charts are to be read again whole (see poll)

  const head = el("div", { class: "heading" });
  const logs = el("div", { class: "logs" });
  const chartsBox = el("div", { class: "charts" });
  const textBox = el("section", { class: "panel text-values", hidden: true });
  const empty = el("p", { class: "muted" });
  const config = Object.keys(details.config || {}).length ? flatten(details.config, "", []) : [];
  const meta = Object.entries(run.job_metadata || {}).filter(([k]) => k !== "stdout" && k !== "stderr");
  const downloads = el(
    "div",
    { class: "downloads" },
    "Download: ",
    el("button", { type: "button", onclick: () => save(`metrics/${id}/`, { metric_type: "run", format: "zip" }, `metrics_${run.name}.zip`) }, "zip"),
    el("button", { type: "button", onclick: () => save(`runs/${id}/points/`, { format: "csv" }, `metrics_${run.name}.csv`) }, "CSV"),
    el("button", { type: "button", onclick: () => save(`runs/${id}/points/`, { format: "json" }, `metrics_${run.name}.json`) }, "JSON"),
  );
  main.replaceChildren(
    head,
    el(
      "div",
      { class: "columns" },
      el(
        "section",
        { class: "panel" },
        el("h2", {}, "Details"),
        definitionList([
          ["command", details.command],
          ["image", details.image],
          ["backend", details.backend],
          ["workers", run.num_workers],
          ["CPU limit", details.cpu_limit],
          ["GPU", details.gpu_enabled ? "yes" : "no"],
          ["job id", run.job_id],
          // The job's own fields (its command with the placeholders filled, pids, exit codes).
          ...meta.map(([k, v]) => ["job " + k.replace(/_/g, " "), typeof v === "string" ? v : JSON.stringify(v)]),
        ]),
        downloads,
      ),
      el(
        "section",
        { class: "panel config" },
        el("h2", {}, "Config"),
        config.length ? definitionList(config) : el("p", { class: "muted" }, "No configuration recorded (MetricsLogger(config={...}))."),
      ),
    ),
    logs,
    el("h2", {}, "Metrics"),
    toolbar(opts, changed, true),
    empty,
    textBox,
    chartsBox,
  );

  async function save(path, params, name) {
    try {
      await download(path, params, name);
    } catch (e) {
      banner(`Download failed: ${e.message}`);
    }
  }

  function drawHead() {
    const seconds = runSeconds(run, Date.now());
    head.replaceChildren(
      el("h1", {}, run.name),
      stateBadge(run.state),
      el(
        "span",
        { class: "muted" },
        ` #${run.id} · created ${fmtDate(run.created_at)}` +
          (run.finished_at ? ` · finished ${fmtDate(run.finished_at)}` : "") +
          (isFinite(seconds) ? ` · ${fmtDuration(seconds)}` : ""),
      ),
    );
    logs.replaceChildren(tail("stdout", (run.job_metadata || {}).stdout), tail("stderr", (run.job_metadata || {}).stderr));
    document.getElementById("live").hidden = isDone(run);
  }

  function chartFor(metric) {
    let chart = charts.get(metric);
    if (!chart) {
      chart = new Chart(chartsBox, metric, opts);
      const zoomed = chart;
      zoomed.onZoom = async (sinceUs, untilUs) => {
        const params = { metric, since: isoUs(sinceUs), until: isoUs(untilUs), fields: FIELDS };
        params.max_points = Math.max(200, Math.round(zoomed.body.clientWidth || 800));
        return (await getJson(`runs/${id}/points/`, params)).series;
      };
      charts.set(metric, chart);
      const sorted = [...charts.values()].sort((a, b) => a.title.localeCompare(b.title));
      chartsBox.append(...sorted.map((c) => c.card));
      applyFilter();
    }
    return chart;
  }

  function applyFilter() {
    const visible = filterCharts(charts.values(), opts.filter);
    empty.textContent = !charts.size ? "No metrics yet." : visible ? "" : "No metric matches the filter.";
  }

  function changed(what) {
    if (what === "x") xChosen = true;
    saveView(`/run/${id}`, chartParams(opts, xChosen));
    if (what === "filter") return applyFilter();
    for (const chart of charts.values()) chart.render(what !== "smoothing");
  }

  // Only what had arrived by `through` (a cursor): the polls take the rest, after it, so no
  // point is drawn twice and none need be dropped as "seen" (two in one µs are two).
  async function loadChart(metric, through) {
    const chart = chartFor(metric);
    const width = Math.max(200, Math.round(chart.body.clientWidth || 800));
    const answer = await getJson(`runs/${id}/points/`, { metric, max_points: width, fields: FIELDS, through });
    for (const s of answer.series) chart.line(s.name, s.name, startUs.value, s.cumulative, metric).set(s);
    chart.render(chart.plot === null || through === firstCursor);
    drawTexts();
  }

  // Text values (`log("note", "warming up")`) as a log: metric, step, time, value, newest last.
  function drawTexts() {
    const rows = [];
    for (const chart of charts.values()) {
      for (const line of chart.lines.values()) for (const t of line.texts()) rows.push(Object.assign({ name: line.label }, t));
    }
    rows.sort((a, b) => a.date_us - b.date_us || a.name.localeCompare(b.name));
    textBox.hidden = rows.length === 0;
    if (!rows.length) return;
    const shown = rows.slice(-TAIL);
    textBox.replaceChildren(
      el("h2", {}, `Text values (${shown.length < rows.length ? `last ${shown.length} of ` : ""}${rows.length})`),
      el(
        "table",
        {},
        el("thead", {}, el("tr", {}, ["metric", "step", "time", "value"].map((h) => el("th", {}, h)))),
        el("tbody", {}, shown.map((t) => el("tr", {}, el("td", {}, t.name), el("td", { class: "num" }, t.step === null || t.step === undefined ? "" : t.step), el("td", {}, fmtDate(new Date(t.date_us / 1000))), el("td", { class: "value" }, t.value)))),
      ),
    );
  }

  drawHead();
  const metrics = [...new Set(catalog.series.map((s) => s.metric))].sort();
  for (const metric of metrics) chartFor(metric);
  applyFilter();
  // Steps on the x axis when any series records them, else the time since the run started.
  if (!xChosen && catalog.series.length && !catalog.series.some((s) => s.has_step)) {
    opts.x = "relative";
    main.querySelector(".toolbar select").value = "relative";
  }
  const rest = metrics.slice();
  await Promise.all(
    [0, 1, 2].map(async () => {
      while (rest.length) await loadChart(rest.shift(), firstCursor);
    }),
  );

  // New points are appended as they come, downsampled by the server past POLL_MAX a series
  // (a tab left in the background for an hour, a very fast run); a chart that got such an
  // answer, or holds more than KEEP_MAX points, is read again whole, downsampled, so the
  // page's memory and each answer stay bounded however long it is open.
  async function poll() {
    const answer = await getJson(`runs/${id}/points/`, { after: cursor, fields: FIELDS, max_points: POLL_MAX });
    const dirty = new Set();
    for (const s of answer.series) {
      const chart = chartFor(s.metric);
      const line = chart.line(s.name, s.name, startUs.value, s.cumulative, s.metric);
      if (s.downsampled || line.d.length + s.points.date_us.length > KEEP_MAX) stale.add(s.metric);
      else if (line.append(s)) dirty.add(chart);
    }
    if (dirty.size) drawTexts();
    cursor = answer.cursor;
    for (const chart of dirty) chart.render(chart.plot === null);
    for (const metric of [...stale]) {
      await loadChart(metric, cursor); // throws while the server is gone: tried again next poll
      stale.delete(metric);
    }
  }

  async function refresh() {
    try {
      run = await getJson(`runs/${id}/`);
      drawHead();
      banner("");
    } catch (e) {
      banner(e instanceof ApiError && e.status === 404 ? `Run ${id} no longer exists (deleted).` : e.message);
      throw e;
    }
  }

  const stops = [every(1000, poll), every(2000, refresh)];
  return () => {
    stops.forEach((stop) => stop());
    charts.forEach((c) => c.destroy());
    document.getElementById("live").hidden = true;
  };
}
