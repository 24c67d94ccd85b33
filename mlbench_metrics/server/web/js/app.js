// The page's router: #/ (runs), #/run/<id>, #/compare?runs=1,2&metric=loss.

import { ApiError, captureToken, setToken } from "./api.js";
import { comparePage } from "./compare.js";
import { banner, el } from "./dom.js";
import { runPage } from "./run.js";
import { runsPage } from "./runs.js";

captureToken();

const RETRY_MS = 2000;
let cleanup = null;
let navigation = 0;

function tokenForm(main, message) {
  const input = el("input", { type: "password", autocomplete: "off", "aria-label": "token", placeholder: "token" });
  main.replaceChildren(
    el("h1", {}, "This server needs a token"),
    el("p", {}, message),
    el("p", { class: "muted" }, "Open the address `mlbench-metrics serve` printed (it ends in ?token=…), or paste the token here:"),
    el(
      "form",
      {
        class: "toolbar",
        onsubmit: (e) => {
          e.preventDefault();
          setToken(input.value.trim());
          route();
        },
      },
      input,
      el("button", { type: "submit" }, "Use token"),
    ),
  );
}

async function route() {
  const current = ++navigation;
  if (cleanup) cleanup();
  cleanup = null;
  banner("");
  const main = document.getElementById("main");
  const hash = window.location.hash.replace(/^#/, "") || "/";
  const [path, search] = hash.split("?");
  const query = new URLSearchParams(search || "");
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === (path.startsWith("/compare") ? "compare" : path === "/" ? "runs" : ""));
  }
  main.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  const runMatch = /^\/run\/(\d+)$/.exec(path);
  try {
    let stop;
    if (runMatch) stop = await runPage(main, runMatch[1], query);
    else if (path.startsWith("/compare")) stop = await comparePage(main, query);
    else if (path === "/") stop = await runsPage(main, query);
    else main.replaceChildren(el("h1", {}, "Not found"), el("p", {}, el("a", { href: "#/" }, "Back to the runs")));
    if (current !== navigation) {
      if (stop) stop(); // the user moved on while this page loaded
    } else {
      cleanup = stop || null;
    }
  } catch (e) {
    if (current !== navigation) return;
    if (e instanceof ApiError && e.status === 401) tokenForm(main, e.message);
    else if (e instanceof ApiError && e.status === 404 && runMatch) main.replaceChildren(el("h1", {}, `Run ${runMatch[1]} not found`), el("p", {}, el("a", { href: "#/" }, "Back to the runs")));
    else {
      banner(e.message || String(e));
      if (e instanceof ApiError && (e.status === 0 || e.status >= 500)) {
        // Down or overloaded: load the page again once it answers, without a reload.
        main.replaceChildren(el("p", { class: "muted" }, "The server does not answer; trying again every few seconds…"));
        const retry = setTimeout(() => current === navigation && route(), RETRY_MS);
        cleanup = () => clearTimeout(retry);
      }
    }
  }
}

window.addEventListener("hashchange", route);
route();
