// The runs list: filter, states that update while you look, delete, pick runs to compare.

import { getJson, remove } from "./api.js";
import { banner, el, every, fmtDate, fmtDuration, runSeconds, stateBadge } from "./dom.js";

export async function runsPage(main, query) {
  const state = { runs: [], stats: {}, filter: query.get("q") || "", picked: new Set() };
  const filter = el("input", {
    type: "search",
    placeholder: "filter by name, state or id",
    "aria-label": "filter runs",
    value: state.filter,
    oninput: (e) => ((state.filter = e.target.value), draw()),
  });
  const compare = el("button", { type: "button", disabled: true, onclick: () => (location.hash = "#/compare?runs=" + [...state.picked].join(",")) }, "Compare selected");
  const tbody = el("tbody");
  const count = el("span", { class: "muted" });
  main.replaceChildren(
    el("div", { class: "heading" }, el("h1", {}, "Runs"), count),
    el("div", { class: "toolbar" }, filter, compare),
    el(
      "table",
      { class: "runs" },
      el("thead", {}, el("tr", {}, ["", "Run", "State", "Created", "Duration", "Workers", "Series", ""].map((h) => el("th", {}, h)))),
      tbody,
    ),
  );

  async function load() {
    const [runs, stats] = await Promise.all([getJson("runs/"), getJson("runs/stats/")]);
    state.runs = runs;
    state.stats = stats.runs || {};
    draw();
  }

  async function del(run) {
    const series = (state.stats[run.id] || {}).series || 0;
    if (!window.confirm(`Delete run ${run.id} (${run.name}) and its ${series} series? This cannot be undone.`)) return;
    try {
      await remove(`runs/${run.id}/`);
      state.picked.delete(run.id);
      await load();
    } catch (e) {
      banner(`Could not delete run ${run.id}: ${e.message}`);
    }
  }

  function draw() {
    const words = state.filter.trim().toLowerCase().split(/\s+/).filter(Boolean);
    const shown = state.runs
      .filter((r) => words.every((w) => `${r.id} ${r.name} ${r.state}`.toLowerCase().includes(w)))
      .sort((a, b) => b.id - a.id);
    const now = Date.now();
    tbody.replaceChildren(
      ...shown.map((r) => {
        const stats = state.stats[r.id] || {};
        const pick = el("input", {
          type: "checkbox",
          "aria-label": `select run ${r.id}`,
          checked: state.picked.has(r.id),
          onchange: (e) => {
            if (e.target.checked) state.picked.add(r.id);
            else state.picked.delete(r.id);
            compare.disabled = state.picked.size < 1;
          },
        });
        return el(
          "tr",
          { dataset: { run: r.id } },
          el("td", {}, pick),
          el("td", { class: "name" }, el("a", { href: `#/run/${r.id}` }, r.name), el("span", { class: "muted" }, ` #${r.id}`)),
          el("td", {}, stateBadge(r.state)),
          el("td", {}, fmtDate(r.created_at)),
          el("td", { class: "num" }, fmtDuration(runSeconds(r, now))),
          el("td", { class: "num" }, r.num_workers),
          el("td", { class: "num" }, stats.series || 0),
          el("td", {}, el("button", { type: "button", class: "danger", onclick: () => del(r) }, "Delete")),
        );
      }),
    );
    if (!shown.length) {
      tbody.append(el("tr", {}, el("td", { colspan: 8, class: "muted" }, state.runs.length ? "No run matches the filter." : "No runs yet.")));
    }
    count.textContent = `${shown.length} of ${state.runs.length}`;
    compare.disabled = state.picked.size < 1;
  }

  await load();
  const stop = every(2000, async () => {
    try {
      await load();
      banner("");
    } catch (e) {
      banner(e.message); // e.g. the server stopped; the list comes back when it answers again
      throw e;
    }
  });
  return () => stop();
}
