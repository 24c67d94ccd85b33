// The runs table for choosing between runs: config and chosen metrics as sortable columns,
// "differences only", a filter with conditions, states that update while you look, a
// parallel-coordinates view whose brushes filter the table, and runs picked to compare.
// Everything chosen is in the address (see view.js); column choices are also remembered.

import { getJson, remove } from "./api.js";
import { banner, el, every, fmtDate, fmtDuration, isRunning, runSeconds, stateBadge } from "./dom.js";
import { brushesFromText, brushesToText, parallelCoordinates } from "./parcoords.js";
import { FIGURES, cell, differingKeys, filterMetrics, flatten, matches, parseFilter, show, sortRuns } from "./table.js";
import { listParam, pref, saveView, setPref } from "./view.js";

const FIXED = [
  ["name", "Run"],
  ["state", "State"],
  ["created_at", "Created"],
  ["duration", "Duration"],
];
const MAX_PC_AXES = 16;
const PAGE = 100; // rows drawn at first, and added by "Show more"

export async function runsPage(main, query) {
  const urlCols = listParam(query, "cols");
  const state = {
    answer: { runs: [], metrics: [] },
    signature: "",
    runs: [],
    filter: query.get("q") || "",
    cols: urlCols.length || query.has("cols") ? urlCols : pref("cols", []), // "metric:figure"
    hide: new Set(query.has("hide") ? listParam(query, "hide") : pref("hide", [])),
    sort: query.get("sort") || "",
    desc: query.get("desc") === "1",
    diff: query.get("diff") === "1",
    ranks: query.get("ranks") === "mean" ? "mean" : "0",
    pc: query.get("pc") === "1",
    pcm: query.get("pcm") || "",
    brushes: brushesFromText(query.get("brush")),
    picked: new Set(listParam(query, "runs").map(Number)),
    limit: PAGE,
  };
  const filter = el("input", {
    type: "search",
    placeholder: "filter: words, or lr=0.1 train_loss<0.5",
    "aria-label": "filter runs",
    value: state.filter,
    oninput: (e) => ((state.filter = e.target.value), changed(false)),
  });
  const toggle = (label, key, refetch) =>
    el("label", {}, el("input", { type: "checkbox", checked: state[key], onchange: (e) => ((state[key] = e.target.checked), changed(refetch)) }), " " + label);
  const compare = el("button", { type: "button", disabled: true, onclick: () => (location.hash = "#/compare?runs=" + [...state.picked].sort((a, b) => a - b).join(",")) }, "Compare selected");
  const menu = el("details", { class: "menu" }, el("summary", {}, "Columns"));
  const thead = el("thead");
  const tbody = el("tbody");
  const count = el("span", { class: "muted" });
  const pcBox = el("div", { class: "pc-box" });
  const pcMetric = el("select", { "aria-label": "parallel coordinates metric", onchange: (e) => ((state.pcm = e.target.value), changed(false)) });
  let rowCache = new WeakMap(); // run (as last read) -> its row, while the columns stay the same
  let builtFor = "";
  const pcPanel = el("section", { class: "panel hparams" }, el("div", { class: "toolbar" }, el("h2", {}, "Hyperparameters"), el("label", {}, "metric ", pcMetric), el("span", { class: "hint" }, "drag along an axis to filter the table; click an axis to clear it")), pcBox);
  main.replaceChildren(
    el("div", { class: "heading" }, el("h1", {}, "Runs"), count),
    el("div", { class: "toolbar" }, filter, toggle("differences only", "diff", false), toggle("parallel coordinates", "pc", false), menu, compare),
    pcPanel,
    el("div", { class: "table-wrap" }, el("table", { class: "runs" }, thead, tbody)),
  );

  const metricsAsked = () => {
    const names = state.cols.map((c) => c.slice(0, c.lastIndexOf(":")));
    if (state.pc && state.pcm) names.push(state.pcm.slice(0, state.pcm.lastIndexOf(":")));
    return [...new Set([...names, ...filterMetrics(parseFilter(state.filter), state.answer.metrics)])];
  };

  let loads = 0; // an answer older than the newest asked for is dropped (it may lack a new column's figures)
  async function load() {
    const current = ++loads;
    const answer = await getJson("runs/table/", { metric: metricsAsked(), ranks: state.ranks === "mean" ? "mean" : "" });
    if (current !== loads) return;
    const signature = JSON.stringify(answer);
    if (signature === state.signature) return void tick();
    state.answer = answer;
    state.signature = signature;
    state.runs = answer.runs.map((r) => Object.assign(r, { flat: flatten(r.config) }));
    draw();
  }

  // A change of view: saved in the address; read again from the server when it needs other figures.
  function save() {
    saveView("/", {
      q: state.filter,
      cols: state.cols,
      hide: [...state.hide],
      sort: state.sort,
      desc: state.desc,
      diff: state.diff,
      ranks: state.ranks === "mean" ? "mean" : "",
      pc: state.pc,
      pcm: state.pc ? state.pcm : "",
      brush: brushesToText(state.brushes),
      runs: [...state.picked].sort((a, b) => a - b),
    });
  }

  function changed(refetch) {
    draw(); // at once with what is here (it also picks the chart's metric); then again if other figures are needed
    save();
    const asked = metricsAsked().filter((m) => state.answer.metrics.includes(m));
    const missing = asked.some((m) => !state.runs.some((r) => m in r.metrics));
    if (refetch || missing) load().catch((e) => banner(e.message));
  }

  function setCols(cols) {
    state.cols = cols;
    setPref("cols", cols);
    changed(true);
  }

  async function del(run) {
    if (!window.confirm(`Delete run ${run.id} (${run.name}) and its ${run.series} series? This cannot be undone.`)) return;
    try {
      await remove(`runs/${run.id}/`);
      state.picked.delete(run.id);
      await load();
    } catch (e) {
      banner(`Could not delete run ${run.id}: ${e.message}`);
    }
  }

  function drawMenu(configKeys) {
    const open = menu.open;
    const ranked = (m) => state.runs.some((r) => r.metrics[m] && r.metrics[m].ranks > 1);
    const metricRows = state.answer.metrics.map((m) =>
      el(
        "div",
        { class: "menu-row" },
        el("span", { class: "menu-name", title: m }, m),
        FIGURES.map((f) => {
          const key = `${m}:${f}`;
          return el("label", {}, el("input", { type: "checkbox", "aria-label": `${m} ${f}`, checked: state.cols.includes(key), onchange: (e) => setCols(e.target.checked ? [...state.cols, key] : state.cols.filter((c) => c !== key)) }), ` ${f}`);
        }),
      ),
    );
    const ranks = el(
      "select",
      { "aria-label": "ranks", onchange: (e) => ((state.ranks = e.target.value), changed(true)) },
      el("option", { value: "0", selected: state.ranks === "0" }, "rank 0"),
      el("option", { value: "mean", selected: state.ranks === "mean" }, "mean over ranks"),
    );
    const configRows = configKeys.map((k) =>
      el("label", { class: "menu-row" }, el("input", { type: "checkbox", "aria-label": `config ${k}`, checked: !state.hide.has(k), onchange: (e) => {
        if (e.target.checked) state.hide.delete(k);
        else state.hide.add(k);
        setPref("hide", [...state.hide]);
        changed(false);
      } }), " " + k),
    );
    menu.replaceChildren(
      el("summary", {}, "Columns"),
      el("div", { class: "menu-body" },
        el("h3", {}, "Metrics"),
        state.answer.metrics.length ? metricRows : el("p", { class: "muted" }, "No metrics yet."),
        state.answer.metrics.some(ranked) ? el("label", { class: "menu-row" }, "ranked metrics: ", ranks) : null,
        el("h3", {}, "Config"),
        configRows.length ? configRows : el("p", { class: "muted" }, "No run has a config."),
      ),
    );
    menu.open = open;
  }

  function header(key, label, sub) {
    const sorted = state.sort === key;
    return el(
      "th",
      { class: "sortable" + (sorted ? " sorted" : ""), dataset: { col: key }, title: "sort by " + label, "aria-sort": sorted ? (state.desc ? "descending" : "ascending") : null, onclick: () => {
        if (state.sort === key) state.desc = !state.desc;
        else [state.sort, state.desc] = [key, key === "created_at"];
        changed(false);
      } },
      el("span", { class: "col-label" }, label),
      sub ? el("span", { class: "sub" }, sub) : null,
      sorted ? (state.desc ? " ▼" : " ▲") : null,
    );
  }

  function draw() {
    const now = Date.now();
    for (const r of state.runs) if (r.seconds === undefined || isRunning(r)) r.seconds = runSeconds(r, now);
    const parsed = parseFilter(state.filter);
    const filtered = state.runs.filter((r) => matches(r, parsed, state.answer.metrics));
    const allKeys = [...new Set(state.runs.flatMap((r) => Object.keys(r.flat)))].sort();
    drawMenu(allKeys);
    let configKeys = allKeys.filter((k) => !state.hide.has(k) && filtered.some((r) => k in r.flat));
    if (state.diff) configKeys = differingKeys(filtered, configKeys);
    const metricCols = state.cols.filter((c) => state.answer.metrics.includes(c.slice(0, c.lastIndexOf(":"))));

    pcPanel.hidden = !state.pc;
    const pcChoices = metricCols.length ? metricCols : state.answer.metrics.map((m) => m + ":last");
    if (!pcChoices.includes(state.pcm)) state.pcm = pcChoices[0] || "";
    pcMetric.replaceChildren(...pcChoices.map((c) => el("option", { value: c, selected: c === state.pcm }, c.replace(":", " "))));
    let passes = () => true;
    if (state.pc) {
      const axes = configKeys.slice(0, MAX_PC_AXES).map((k) => ({ key: "config:" + k, label: k, value: (r) => r.flat[k] }));
      if (state.pcm) axes.push({ key: "metric:" + state.pcm, label: state.pcm.replace(":", " "), value: (r) => cell(r, "metric:" + state.pcm) });
      for (const key of [...state.brushes.keys()]) if (!axes.some((a) => a.key === key)) state.brushes.delete(key);
      if (axes.length) passes = parallelCoordinates(pcBox, axes, filtered, state.brushes, (b) => ((state.brushes = b), changed(false)));
      else pcBox.replaceChildren(el("p", { class: "muted" }, "No config keys or metrics to draw."));
    }
    const shown = state.sort ? sortRuns(filtered.filter(passes), state.sort, state.desc) : filtered.filter(passes).sort((a, b) => b.id - a.id);

    const rankNote = (m) => (state.runs.some((r) => r.metrics[m] && r.metrics[m].ranks > 1) ? (state.ranks === "mean" ? " (mean of ranks)" : " (rank 0)") : "");
    const all = el("input", { type: "checkbox", "aria-label": "select all shown", onchange: (e) => {
      for (const r of shown) e.target.checked ? state.picked.add(r.id) : state.picked.delete(r.id);
      changed(false);
    } });
    all.checked = shown.length > 0 && shown.every((r) => state.picked.has(r.id));
    thead.replaceChildren(
      el("tr", {},
        el("th", {}, all),
        FIXED.map(([key, label]) => header(key, label)),
        metricCols.map((c) => {
          const m = c.slice(0, c.lastIndexOf(":"));
          return header("metric:" + c, m, c.slice(c.lastIndexOf(":") + 1) + rankNote(m));
        }),
        configKeys.map((k) => header("config:" + k, k, "config")),
        header("num_workers", "Workers"),
        header("series", "Series"),
        el("th", {}),
      ),
    );
    const columnsKey = JSON.stringify([metricCols, configKeys]);
    if (columnsKey !== builtFor) [rowCache, builtFor] = [new WeakMap(), columnsKey];
    const rows = shown.slice(0, state.limit).map((r) => {
      let tr = rowCache.get(r); // a run unchanged since the last draw keeps its row: sorting only moves rows
      if (!tr) rowCache.set(r, (tr = row(r, metricCols, configKeys)));
      tr.pick.checked = state.picked.has(r.id);
      return tr;
    });
    tbody.replaceChildren(...rows);
    if (!shown.length) {
      const span = 8 + metricCols.length + configKeys.length;
      tbody.append(el("tr", {}, el("td", { colspan: span, class: "muted" }, state.runs.length ? "No run matches the filter." : "No runs yet.")));
    }
    // Like MLflow's runs table, a page at a time: a thousand rows of thirty columns take
    // seconds to lay out, and sorting and filtering work on every run all the same.
    if (shown.length > state.limit) {
      const more = el("button", { type: "button", onclick: () => ((state.limit += PAGE), draw()) }, `Show ${Math.min(PAGE, shown.length - state.limit)} more`);
      const all = el("button", { type: "button", onclick: () => ((state.limit = Infinity), draw()) }, `Show all ${shown.length}`);
      tbody.append(el("tr", { class: "more" }, el("td", { colspan: 8 + metricCols.length + configKeys.length }, `${shown.length - state.limit} more runs `, more, " ", all)));
    }
    count.textContent = `${shown.length} of ${state.runs.length}` + (shown.length > state.limit ? ` (the first ${state.limit} shown)` : "");
    compare.disabled = state.picked.size < 1;
    // For benchmarks/runs_table.py: when the first table was on screen (after its layout and paint).
    if (!window.__mlbenchTableDrawn) requestAnimationFrame(() => setTimeout(() => (window.__mlbenchTableDrawn = window.__mlbenchTableDrawn || performance.now())));
  }

  function row(r, metricCols, configKeys) {
    const pick = el("input", { type: "checkbox", "aria-label": `select run ${r.id}`, checked: state.picked.has(r.id), onchange: (e) => {
      e.target.checked ? state.picked.add(r.id) : state.picked.delete(r.id);
      compare.disabled = state.picked.size < 1;
      save();
    } });
    const tr = el("tr", { dataset: { run: r.id } },
      el("td", {}, pick),
      el("td", { class: "name" }, el("a", { href: `#/run/${r.id}` }, r.name), el("span", { class: "muted" }, ` #${r.id}`)),
      el("td", {}, stateBadge(r.state, r.last_seen_at ? `last heard of ${fmtDate(r.last_seen_at)}` : null)),
      el("td", {}, fmtDate(r.created_at)),
      el("td", { class: "num" + (isRunning(r) ? " running" : ""), dataset: { duration: r.id } }, fmtDuration(r.seconds)),
      metricCols.map((c) => el("td", { class: "num", dataset: { col: "metric:" + c } }, show(cell(r, "metric:" + c)))),
      configKeys.map((k) => el("td", { class: "cfg", dataset: { col: "config:" + k } }, show(r.flat[k]))),
      el("td", { class: "num", dataset: { col: "num_workers" } }, r.num_workers),
      el("td", { class: "num", dataset: { col: "series" } }, r.series),
      el("td", {}, el("button", { type: "button", class: "danger", onclick: () => del(r) }, "Delete")),
    );
    tr.pick = pick;
    return tr;
  }

  // Nothing changed on the server: only running runs' elapsed times move.
  function tick() {
    const now = Date.now();
    for (const r of state.runs) {
      if (!isRunning(r)) continue;
      const td = tbody.querySelector(`td[data-duration="${r.id}"]`);
      if (td) td.textContent = fmtDuration(runSeconds(r, now));
    }
  }

  await load();
  // States update every 2 s; a table that takes the server long to build (thousands of runs)
  // is asked for less often, so an open tab costs it at most a tenth of its time.
  let nextPoll = 0;
  const stop = every(2000, async () => {
    if (Date.now() < nextPoll) return void tick();
    try {
      const started = Date.now();
      await load();
      nextPoll = Date.now() + 9 * (Date.now() - started);
      banner("");
    } catch (e) {
      banner(e.message); // e.g. the server stopped; the list comes back when it answers again
      throw e;
    }
  });
  return () => stop();
}
