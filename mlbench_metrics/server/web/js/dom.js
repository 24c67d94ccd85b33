// Building the page without ever parsing data as HTML: every value goes in as text.

/**
 * el("a", {href: "#/", class: "x"}, "text", child) -> an element.
 * Attributes are set with setAttribute, children strings become text nodes; `on*` keys
 * in attrs must be functions (event listeners), never strings.
 */
export function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Show a message in the banner (or hide it with no message). */
export function banner(message, kind) {
  const box = document.getElementById("banner");
  box.className = "banner " + (kind || "error");
  box.textContent = message || "";
  box.hidden = !message;
}

/** Show (or hide, with no message) the line that says the server is slow to answer. */
export function notice(message) {
  const box = document.getElementById("notice");
  box.textContent = message || "";
  box.hidden = !message;
}

const pad = (n) => String(n).padStart(2, "0");

/** A date as local "YYYY-MM-DD HH:MM:SS". */
export function fmtDate(value) {
  if (value === null || value === undefined || value === "") return "";
  const d = value instanceof Date ? value : new Date(value);
  if (isNaN(d)) return String(value);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** Seconds as "1h 02m", "3m 04s" or "5.2s". */
export function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "";
  if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + "s";
  const s = Math.floor(seconds);
  if (s < 3600) return `${Math.floor(s / 60)}m ${pad(s % 60)}s`;
  return `${Math.floor(s / 3600)}h ${pad(Math.floor((s % 3600) / 60))}m`;
}

/** A run's state as a badge; whatever state the server sends is shown, as text. */
export function stateBadge(state, title) {
  return el("span", { class: "state state-" + String(state).replace(/[^a-z]/g, ""), title }, state);
}

const DONE = new Set(["finished", "failed", "crashed", "lost"]);

/** Whether a run is over (finished, failed, crashed or lost): its time no longer runs. */
export function isDone(run) {
  return DONE.has(run.state);
}

/** Whether a run is going: neither over nor still waiting to start (`initialized`). */
export function isRunning(run) {
  return !isDone(run) && run.state !== "initialized";
}

/** A run's duration in seconds: until it ended (or was last heard of), or until now while it runs. */
export function runSeconds(run, nowMs) {
  const start = Date.parse(run.started_at || run.created_at);
  let end = NaN;
  if (run.finished_at) end = Date.parse(run.finished_at);
  else if (isDone(run)) end = run.last_seen_at ? Date.parse(run.last_seen_at) : NaN;
  else if (isRunning(run)) end = nowMs;
  return (end - start) / 1000;
}

/** Calls `fn` every `ms` while the page is visible; returns a stop function. */
export function every(ms, fn) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    if (stopped) return;
    if (document.visibilityState === "visible") {
      try {
        await fn();
      } catch (e) {
        // the caller shows its own errors; keep polling
      }
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  timer = setTimeout(tick, ms);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
