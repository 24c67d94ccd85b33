// Talking to this server's API: the token, JSON reads, deletes and downloads.
//
// A `?token=` in the page's address is kept in sessionStorage and removed from the
// address at once, so it never appears in later URLs, the history or a bookmark. Every
// API call sends it as a bearer token. Not localStorage: that outlives the tab and is
// shared by everything ever served on 127.0.0.1:PORT, so any program a user runs later
// on the port would read the token (and with --exec, run commands with it). A tab's
// sessionStorage dies with the tab. A link whose token differs from the one in use asks
// before replacing it, so a link cannot silently switch the tab to another server's
// token (or to an attacker's).

import { notice } from "./dom.js";

const TOKEN_KEY = "mlbench-metrics.token";
// A request unanswered this long means a stopped or stuck server (a local one answers in
// milliseconds; even a million-point chart's first read takes a few seconds): say so
// while waiting, since fetch itself would wait for ever without a word.
const SLOW_MS = 4000;
const pending = new Set();
let slowShown = false;

setInterval(() => {
  let oldest = Infinity;
  for (const started of pending) oldest = Math.min(oldest, started.at);
  const waited = Date.now() - oldest;
  if (waited >= SLOW_MS) {
    notice(`The server has not answered for ${Math.round(waited / 1000)} s; still waiting…`);
    slowShown = true;
  } else if (slowShown) {
    notice("");
    slowShown = false;
  }
}, 1000);

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** Move a `?token=` from the address into storage, before anything else runs. */
export function captureToken() {
  try {
    localStorage.removeItem(TOKEN_KEY); // where earlier versions kept it: forget it there
  } catch (e) {
    // storage disabled: nothing was kept there either
  }
  const url = new URL(window.location.href);
  if (!url.searchParams.has("token")) return;
  const token = url.searchParams.get("token");
  const current = sessionStorage.getItem(TOKEN_KEY);
  const replace =
    !current ||
    current === token ||
    window.confirm("This link carries a different access token than the one this tab uses. Use the link's token instead?");
  if (token && replace) sessionStorage.setItem(TOKEN_KEY, token);
  url.searchParams.delete("token");
  history.replaceState(history.state, "", url.pathname + url.search + url.hash);
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

function headers(extra) {
  const out = Object.assign({ Accept: "application/json" }, extra || {});
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token) out.Authorization = "Bearer " + token;
  return out;
}

function url(path, params) {
  const u = new URL("/api/" + path, window.location.origin);
  for (const [key, value] of Object.entries(params || {})) {
    if (value === undefined || value === null || value === "") continue;
    for (const v of Array.isArray(value) ? value : [value]) u.searchParams.append(key, String(v));
  }
  return u;
}

async function failure(response) {
  let message = response.status + " " + response.statusText;
  try {
    const body = await response.json();
    if (body && body.message) message = body.message;
  } catch (e) {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message);
}

async function send(method, path, params, options) {
  let response;
  const started = { at: Date.now() };
  pending.add(started);
  try {
    response = await fetch(url(path, params), Object.assign({ method, headers: headers() }, options || {}));
  } catch (e) {
    throw new ApiError(0, "the server does not answer (" + e.message + ")");
  } finally {
    pending.delete(started);
  }
  if (!response.ok) throw await failure(response);
  return response;
}

/** GET a JSON answer from `/api/<path>`. */
export async function getJson(path, params) {
  const response = await send("GET", path, params);
  return response.json();
}

/** DELETE `/api/<path>`. */
export async function remove(path) {
  await send("DELETE", path);
}

/** Fetch a file with the token in a header, then hand it to the browser as a download. */
export async function download(path, params, fallbackName) {
  const response = await send("GET", path, params);
  const disposition = response.headers.get("content-disposition") || "";
  const match = /filename="?([^";]+)"?/.exec(disposition);
  const blob = await response.blob();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = match ? match[1] : fallbackName;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10000);
}
