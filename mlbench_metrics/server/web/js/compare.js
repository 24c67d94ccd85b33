// Compare: pick several runs and see one metric overlaid, a line per run and rank.

import { getJson } from "./api.js";
import { Chart, defaultOptions, toolbar } from "./charts.js";
import { banner, el } from "./dom.js";

const FIELDS = "date_us,step,epoch,value";

export async function comparePage(main, query) {
  const picked = new Set((query.get("runs") || "").split(",").filter((s) => /^\d+$/.test(s)).map(Number));
  const opts = defaultOptions();
  let xChosen = false; // the x axis follows the data until the user picks one
  let metric = query.get("metric") || "";
  const runs = await getJson("runs/");
  const catalogs = new Map();
  const chartBox = el("div", { class: "charts wide" });
  const metricSelect = el("select", { "aria-label": "metric", onchange: (e) => ((metric = e.target.value), redraw()) });
  const note = el("p", { class: "muted" });
  let chart = null;
  let generation = 0; // a newer update() wins over one still waiting for answers

  const runList = el(
    "div",
    { class: "picklist" },
    runs
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
          ` ${r.name} `,
          el("span", { class: "muted" }, `#${r.id}`),
        ),
      ),
  );
  main.replaceChildren(
    el("div", { class: "heading" }, el("h1", {}, "Compare runs")),
    el("section", { class: "panel" }, el("h2", {}, "Runs"), runs.length ? runList : el("p", { class: "muted" }, "No runs yet.")),
    el("div", { class: "toolbar" }, el("label", {}, "metric ", metricSelect)),
    toolbar(
      opts,
      (what) => {
        if (what === "x") xChosen = true;
        if (chart) chart.render(what !== "smoothing");
      },
      false,
    ),
    note,
    chartBox,
  );

  // From an event handler: a failure (the server gone, a run deleted) is said, not thrown away.
  function redraw() {
    update().catch((e) => banner(`Could not load the runs' metrics: ${e.message}`));
  }

  async function catalog(runId) {
    if (!catalogs.has(runId)) catalogs.set(runId, await getJson(`runs/${runId}/series/`));
    return catalogs.get(runId);
  }

  async function update() {
    const gen = ++generation;
    const ids = [...picked].filter((rid) => runs.some((r) => r.id === rid)).sort((a, b) => a - b);
    history.replaceState(history.state, "", `#/compare?runs=${ids.join(",")}${metric ? "&metric=" + encodeURIComponent(metric) : ""}`);
    const cats = await Promise.all(ids.map(catalog));
    if (gen !== generation) return;
    const names = [...new Set(cats.flatMap((c) => c.series.map((s) => s.metric)))].sort();
    if (!names.includes(metric)) metric = names[0] || "";
    if (!xChosen) {
      const series = cats.flatMap((c) => c.series.filter((s) => s.metric === metric));
      opts.x = series.some((s) => s.has_step) ? "step" : "relative";
      main.querySelector('select[aria-label="x axis"]').value = opts.x;
    }
    metricSelect.replaceChildren(...names.map((m) => el("option", { value: m, selected: m === metric }, m)));
    if (chart) chart.destroy();
    chart = null;
    if (ids.length < 1) return void (note.textContent = "Pick runs to compare.");
    if (!metric) return void (note.textContent = "The picked runs have no metrics.");
    note.textContent = "";
    chart = new Chart(chartBox, metric, opts);
    const width = Math.max(200, Math.round(chart.body.clientWidth || 800));
    try {
      const answers = await Promise.all(ids.map((rid) => getJson(`runs/${rid}/points/`, { metric, max_points: width, fields: FIELDS })));
      if (gen !== generation) return;
      answers.forEach((answer, i) => {
        const run = runs.find((r) => r.id === ids[i]);
        const start = Date.parse(run.created_at) * 1000;
        for (const s of answer.series) chart.line(`${run.id}/${s.name}`, `${run.name} #${run.id}: ${s.name}`, start, s.cumulative).set(s);
      });
      chart.render(true);
    } catch (e) {
      banner(`Could not load ${metric}: ${e.message}`);
    }
  }

  await update();
  return () => chart && chart.destroy();
}
