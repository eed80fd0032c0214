// Live activity: one row per call, updated in place as its events arrive (the latest ones from
// /api/activity/recent, then new ones from the SSE stream).
import { badge, compactJSON, el, formatTime, getJSON, showProblem } from "/static/common.js";

// The values of ActivityType (controlplane/models.py); the browser tests check that they match.
const TYPES = [
  "request_received",
  "request_policy",
  "upstream_sent",
  "first_byte",
  "stream_chunks",
  "stream_policy",
  "response_policy",
  "completed",
  "blocked",
  "error",
  "passthrough",
];
const TERMINAL = new Set(["completed", "blocked", "error"]);
const MAX_CALLS = 500;
const RECONNECT_MS = 5000;

const form = document.getElementById("filters");
const rows = document.querySelector("#events tbody");
const connection = document.getElementById("connection");
const pause = document.getElementById("pause");
const calls = new Map(); // call id → { events, row }
let lastId = null;
let paused = false;
let waiting = []; // events that arrived while paused, in order

for (const type of TYPES) form.elements.namedItem("type").append(el("option", { value: type }, type));

function currentFilters() {
  const value = (name) => form.elements.namedItem(name).value.trim().toLowerCase();
  return { host: value("host"), model: value("model"), type: value("type"), outcome: value("outcome") };
}

// The server's ActivityFilter, applied to a call: its host and model, any of its events' types,
// and the type of its last event once it has ended.
function matches(call, filters) {
  const first = call.events[0];
  const contains = (field, wanted) => !wanted || (field ?? "").toLowerCase().includes(wanted);
  return (
    contains(first.host, filters.host) &&
    contains(call.events.find((e) => e.model)?.model, filters.model) &&
    (!filters.type || call.events.some((e) => e.type === filters.type)) &&
    (!filters.outcome || outcomeOf(call) === filters.outcome)
  );
}

function outcomeOf(call) {
  const last = call.events.at(-1);
  return TERMINAL.has(last.type) ? last.type : null;
}

function pairs(data) {
  return Object.entries(data ?? {})
    .filter(([, value]) => value !== null && value !== undefined)
    .map(([key, value]) => `${key}=${compactJSON(value)}`);
}

// What a reader wants first: why a call was blocked or failed, else its latest words.
function headline(call) {
  const last = call.events.at(-1);
  const data = last.data ?? {};
  if (last.type === "blocked" || last.type === "error") {
    // The reason may be on the verdict before the last event (a request policy's, say).
    const reason = call.events.findLast((e) => e.data?.reason)?.data.reason;
    const kind = data.block_kind ? `${data.block_kind}: ` : "";
    return `${kind}${reason ?? data.error ?? pairs(data).join("  ")}`;
  }
  const text = pairs(data).join("  ");
  return text.length > 160 ? `${text.slice(0, 159)}…` : text;
}

function progress(call) {
  const counts = new Map();
  for (const event of call.events) counts.set(event.type, (counts.get(event.type) ?? 0) + 1);
  return [...counts].map(([type, n]) => (n > 1 ? `${type} ×${n}` : type)).join(" → ");
}

function eventList(call) {
  return el(
    "ol",
    { class: "call-events" },
    call.events.map((event) =>
      el("li", {}, el("span", { class: "mono" }, formatTime(event.timestamp)), " ", badge(event.type), " ",
        el("span", { class: "mono wrap" }, pairs(event.data).join("  "))),
    ),
  );
}

function draw(call) {
  const first = call.events[0];
  const last = call.events.at(-1);
  const open = call.row?.querySelector("details")?.open ?? false;
  const row = el(
    "tr",
    { "data-call": first.call_id },
    el("td", { class: "mono nowrap", title: first.timestamp }, formatTime(first.timestamp)),
    el("td", { class: "mono" }, el("a", { href: `/calls/${encodeURIComponent(first.call_id)}` }, first.call_id.slice(0, 12))),
    el("td", {}, first.host ?? "—"),
    el("td", { class: "mono" }, call.events.find((e) => e.model)?.model ?? "—"),
    el("td", {}, badge(outcomeOf(call) ?? last.type, outcomeOf(call) ? undefined : "info")),
    el(
      "td",
      { class: "summary" },
      el("details", { open }, el("summary", {}, el("span", { class: "mono wrap" }, headline(call))),
        el("p", { class: "muted" }, progress(call)), eventList(call)),
    ),
  );
  if (call.row) call.row.replaceWith(row);
  else rows.prepend(row);
  call.row = row;
}

function add(published) {
  lastId = published.id;
  const event = published.event;
  let call = calls.get(event.call_id);
  if (!call) {
    call = { events: [], row: null };
    calls.set(event.call_id, call);
  }
  call.events.push(event);
  draw(call);
  while (calls.size > MAX_CALLS) {
    const [oldest, dropped] = calls.entries().next().value;
    dropped.row.remove();
    calls.delete(oldest);
  }
}

function render() {
  const filters = currentFilters();
  let shown = 0;
  for (const call of calls.values()) {
    call.row.hidden = !matches(call, filters);
    if (!call.row.hidden) shown += 1;
  }
  const total = calls.size;
  document.getElementById("count").textContent = total
    ? `${shown} of ${total} calls${total >= MAX_CALLS ? " (latest kept)" : ""}`
    : "";
  const empty = document.getElementById("empty");
  empty.hidden = shown > 0;
  empty.textContent = total
    ? `No call matches these filters (${total} hidden).`
    : "Waiting for activity… Calls appear here as agents make them through Luthien.";
}

function receive(published) {
  if (paused) {
    waiting.push(published);
    pause.textContent = `Resume (${waiting.length} new event${waiting.length === 1 ? "" : "s"})`;
    return;
  }
  add(published);
  render();
}

pause.addEventListener("click", () => {
  paused = !paused;
  pause.setAttribute("aria-pressed", String(paused));
  if (!paused) {
    for (const published of waiting) add(published);
    waiting = [];
    render();
  }
  pause.textContent = paused ? "Resume" : "Pause";
});

function setConnection(state, text, detail = "") {
  connection.dataset.state = state;
  connection.textContent = text;
  connection.title = detail;
}

// What the server says of its bus (BusReach): whose events these are, and whether it reads them.
function showReach(reach) {
  if (!reach.reachable) setConnection("down", "Bus unreachable", reach.detail);
  else if (reach.shared) setConnection("live", "Live", reach.detail);
  else setConnection("live", "Live · this process", reach.detail);
}

function connect() {
  const url = new URL("/api/activity/stream", location.origin);
  if (lastId) url.searchParams.set("after", lastId);
  const source = new EventSource(url);
  source.onopen = () => setConnection("connecting", "Connected");
  source.addEventListener("status", (message) => showReach(JSON.parse(message.data)));
  source.addEventListener("activity", (message) => {
    receive({ id: message.lastEventId, event: JSON.parse(message.data) });
  });
  source.onerror = () => {
    if (source.readyState !== EventSource.CLOSED) {
      setConnection("reconnecting", "Reconnecting…"); // the browser retries by itself
      return;
    }
    // Closed for good (e.g. an error status): start again from the last event seen.
    setConnection("down", "Disconnected");
    setTimeout(connect, RECONNECT_MS);
  };
}

form.addEventListener("input", render);
form.addEventListener("submit", (event) => event.preventDefault());

try {
  for (const published of await getJSON("/api/activity/recent?limit=1000")) add(published);
} catch (error) {
  if (error.status !== 503) {
    setConnection("down", "Disconnected");
    showProblem(document.getElementById("content"), error);
    throw error;
  }
  // The bus is down: the stream says so, and follows it once it is back.
  setConnection("down", "Bus unreachable", error.message);
}
// None yet: follow from the bus's start, so an event published before the stream opens is not lost.
lastId ??= "0";
render();
connect();
