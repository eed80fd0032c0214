// Shared helpers for the dashboard pages.
//
// Prompts, model output, hosts and model names are untrusted: every piece of the page is built
// with createElement and text nodes, never by parsing HTML.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

export class NotLoggedIn extends Error {}

async function requestJSON(url, init) {
  const response = await fetch(url, { ...init, headers: { Accept: "application/json", ...init.headers } });
  if (response.status === 401) throw new NotLoggedIn("Not logged in");
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const error = new Error(body?.error ?? `${response.status} ${response.statusText}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

export function getJSON(url) {
  return requestJSON(url, {});
}

// A request that changes something (or asks the server to check something): a JSON body.
export function sendJSON(method, url, body) {
  return requestJSON(url, { method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

// A message in place of the page's content, e.g. when the API cannot be reached.
export function showProblem(container, error) {
  const message =
    error instanceof NotLoggedIn
      ? "Your session has no valid dashboard token. Open the login link printed by `luthien up` " +
        "(or set LUTHIEN_DASHBOARD_TOKEN and open /login?token=…)."
      : `Could not load data: ${error.message}`;
  container.replaceChildren(el("div", { class: "problem", role: "alert" }, message));
}

const pad = (n, width = 2) => String(n).padStart(width, "0");

export function formatTime(iso) {
  const d = new Date(iso);
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

export function formatDateTime(iso) {
  const d = new Date(iso);
  const date = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
  return `${date} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function formatMs(ms) {
  if (ms === null || ms === undefined) return "—";
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(2)} s`;
}

// A span that may last minutes or hours (a session), to the second.
export function formatDuration(ms) {
  if (ms < 60_000) return formatMs(ms);
  const seconds = Math.round(ms / 1000);
  const [h, m, s] = [Math.floor(seconds / 3600), Math.floor((seconds % 3600) / 60), seconds % 60];
  return h ? `${h} h ${m} min` : `${m} min ${s} s`;
}

export function formatTokens(usage) {
  if (!usage || usage.total_tokens === null || usage.total_tokens === undefined) return "—";
  return usage.total_tokens.toLocaleString("en-US");
}

// US dollars: cents are too coarse for one call, which often costs a fraction of a cent.
export function formatCost(usd) {
  return `$${usd.toFixed(usd >= 1 ? 2 : 4)}`;
}

const BADGE_KINDS = {
  completed: "ok",
  blocked: "bad",
  error: "bad",
  provider_error: "warn",
  passthrough: "muted",
};

// A small coloured label for an outcome or an activity type.
export function badge(text, kind = BADGE_KINDS[text] ?? "muted") {
  return el("span", { class: `badge ${kind}` }, text);
}

// What a block stopped (BlockKind in controlplane/recording/records.py).
const BLOCK_LABELS = {
  request_blocked: "request blocked",
  response_blocked: "response blocked",
  tool_call_removed: "tool call removed",
  stream_ended: "stream ended",
};

export function blockBadge(kind) {
  return badge(BLOCK_LABELS[kind] ?? "blocked", "bad");
}

export function compactJSON(value) {
  return typeof value === "string" ? value : JSON.stringify(value);
}

export function sessionHref(sessionId) {
  return `/sessions/${encodeURIComponent(sessionId)}`;
}

// A list's range ("1–50 of 230 calls") and its Newer and Older links, which keep the page's
// other parameters.
export function showRange(page, shown, noun, path, params) {
  const link = (offset) => {
    const linked = new URLSearchParams(params);
    linked.set("offset", offset);
    return `${path}?${linked}`;
  };
  const first = page.total ? page.offset + 1 : 0;
  const last = page.offset + shown;
  document.getElementById("range").textContent = `${first}–${last} of ${page.total} ${noun}`;
  const newer = document.getElementById("newer");
  const older = document.getElementById("older");
  newer.hidden = page.offset === 0;
  newer.href = link(Math.max(0, page.offset - page.limit));
  older.hidden = last >= page.total;
  older.href = link(last);
}

// Named facts, those without a value left out.
export function factList(facts) {
  const known = facts.filter(([, value]) => value !== null && value !== undefined && value !== "");
  return el("dl", { class: "facts" }, known.map(([name, value]) => el("div", {}, el("dt", {}, name), el("dd", {}, value))));
}
