// Compare: pick runs (here, from the runs table's checkboxes or the address) and see a grid
// with one chart per metric they have, a colour per run; a run's ranks drawn each, or
// folded into their mean with a min/max band. The view (runs, x axis, smoothing, log
// scale, fold, metric filter) is the address.

import { getJson } from "./api.js";
import { Chart, defaultOptions, filterCharts, toolbar } from "./charts.js";
import { banner, el } from "./dom.js";
import { chartOptions, chartParams, listParam, saveView } from "./view.js";

const FIELDS = "date_us,step,epoch,value";
const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22"];

/** A run's colour as a small square (set through the CSSOM: the page's CSP refuses style attributes). */
function swatch(colour) {
  const box = el("span", { class: "swatch" });
  box.style.backgroundColor = colour;
  return box;
}

export async function comparePage(main, query) {
  const picked = new Set(listParam(query, "runs").filter((s) => /^\d+$/.test(s)).map(Number));
  const opts = chartOptions(query, defaultOptions());
  if (!query.has("filter") && query.get("metric")) opts.filter = query.get("metric"); // older links
  let xChosen = query.has("x"); // the x axis follows the data until the user (or the address) picks one
  const runs = await getJson("runs/");
  const charts = new Map();
  const chartBox = el("div", { class: "charts" });
  const note = el("p", { class: "muted" });
  let generation = 0; // a newer update() wins over one still waiting for answers

  const colourOf = (id) => COLOURS[[...picked].sort((a, b) => a - b).indexOf(id) % COLOURS.length];
  const runList = el("div", { class: "picklist compare-runs" });
  function drawRunList() {
    runList.replaceChildren(
      ...runs
        .slice()
        .sort((a, b) => b.id - a.id)
        .map((r) =>
          el(
            "label",
            { dataset: { run: r.id } },
            el("input", {
              type: "checkbox",
              checked: picked.has(r.id),
              onchange: (e) => {
                if (e.target.checked) picked.add(r.id);
                else picked.delete(r.id);
                redraw();
              },
            }),
            " ",
            picked.has(r.id) ? swatch(colourOf(r.id)) : null,
            `${r.name} `,
            el("span", { class: "muted" }, `#${r.id}`),
          ),
        ),
    );
  }
  main.replaceChildren(
    el("div", { class: "heading" }, el("h1", {}, "Compare runs")),
    el("section", { class: "panel" }, el("h2", {}, "Runs"), runs.length ? runList : el("p", { class: "muted" }, "No runs yet.")),
    toolbar(opts, changed, true),
    note,
    chartBox,
  );

  function save() {
    const ids = [...picked].sort((a, b) => a - b);
    saveView("/compare", Object.assign({ runs: ids }, chartParams(opts, xChosen)));
  }

  function changed(what) {
    if (what === "x") xChosen = true;
    save();
    if (what === "filter") return applyFilter();
    for (const chart of charts.values()) chart.render(what !== "smoothing");
  }

  function applyFilter() {
    const visible = filterCharts(charts.values(), opts.filter);
    if (charts.size && !visible) note.textContent = "No metric matches the filter.";
  }

  // From an event handler: a failure (the server gone, a run deleted) is said, not thrown away.
  function redraw() {
    update().catch((e) => banner(`Could not load the runs' metrics: ${e.message}`));
  }

  async function update() {
    const gen = ++generation;
    drawRunList();
    save();
    const ids = [...picked].filter((rid) => runs.some((r) => r.id === rid)).sort((a, b) => a - b);
    for (const chart of charts.values()) chart.destroy();
    charts.clear();
    if (ids.length < 1) return void (note.textContent = "Pick runs to compare: here, or with the runs table's checkboxes.");
    note.textContent = "Loading…";
    const width = Math.max(200, Math.round(chartBox.clientWidth / 2 || 600));
    const answers = await Promise.all(ids.map((rid) => getJson(`runs/${rid}/points/`, { max_points: width, fields: FIELDS })));
    if (gen !== generation) return;
    const names = [...new Set(answers.flatMap((a) => a.series.map((s) => s.metric)))].sort();
    if (!xChosen) {
      opts.x = answers.some((a) => a.series.some((s) => s.points.step.some((v) => v !== null))) ? "step" : "relative";
      main.querySelector('select[aria-label="x axis"]').value = opts.x;
    }
    for (const name of names) charts.set(name, new Chart(chartBox, name, opts));
    answers.forEach((answer, i) => {
      const run = runs.find((r) => r.id === ids[i]);
      const start = Date.parse(run.created_at) * 1000;
      const group = `${run.name} #${run.id}`;
      for (const s of answer.series) {
        charts.get(s.metric).line(`${run.id}/${s.name}`, `${group}: ${s.name}`, start, s.cumulative, group, colourOf(run.id)).set(s);
      }
    });
    for (const [name, chart] of charts) {
      const without = ids.filter((rid, i) => !answers[i].series.some((s) => s.metric === name));
      if (without.length) chart.extraNote = "not in " + without.map((rid) => { const r = runs.find((x) => x.id === rid); return `${r.name} #${r.id}`; }).join(", ");
      chart.render(true);
    }
    const drawn = [...charts.values()].filter((c) => !c.card.classList.contains("textonly")).length;
    note.textContent = names.length ? `${drawn} ${drawn === 1 ? "metric" : "metrics"} of ${ids.length} ${ids.length === 1 ? "run" : "runs"}` : "The picked runs have no metrics.";
    applyFilter();
  }

  await update();
  return () => charts.forEach((c) => c.destroy());
}
