// Live activity: the latest events from /api/activity/recent, then new ones from the SSE stream.
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
const MAX_ROWS = 500;
const RECONNECT_MS = 5000;

const form = document.getElementById("filters");
const rows = document.querySelector("#events tbody");
const connection = document.getElementById("connection");
const eventOf = new WeakMap(); // row → its event, for re-filtering
let lastId = null;

for (const type of TYPES) form.elements.namedItem("type").append(el("option", { value: type }, type));

function currentFilters() {
  const value = (name) => form.elements.namedItem(name).value.trim().toLowerCase();
  return { host: value("host"), model: value("model"), type: value("type"), outcome: value("outcome") };
}

// The same rules as the server's ActivityFilter.
function matches(event, filters) {
  const contains = (field, wanted) => !wanted || (field ?? "").toLowerCase().includes(wanted);
  return (
    contains(event.host, filters.host) &&
    contains(event.model, filters.model) &&
    (!filters.type || event.type === filters.type) &&
    (!filters.outcome || event.type === filters.outcome)
  );
}

function summary(data) {
  const text = Object.entries(data ?? {})
    .filter(([, value]) => value !== null && value !== undefined)
    .map(([key, value]) => `${key}=${compactJSON(value)}`)
    .join("  ");
  return text.length > 200 ? `${text.slice(0, 199)}…` : text;
}

function render() {
  const filters = currentFilters();
  let shown = 0;
  for (const row of rows.rows) {
    row.hidden = !matches(eventOf.get(row), filters);
    if (!row.hidden) shown += 1;
  }
  const total = rows.rows.length;
  document.getElementById("count").textContent = total
    ? `${shown} of ${total} events${total >= MAX_ROWS ? " (latest kept)" : ""}`
    : "";
  document.getElementById("empty").hidden = shown > 0;
}

function add(published) {
  lastId = published.id;
  const event = published.event;
  const row = el(
    "tr",
    {},
    el("td", { class: "mono nowrap", title: event.timestamp }, formatTime(event.timestamp)),
    el("td", { class: "mono" }, el("a", { href: `/calls/${encodeURIComponent(event.call_id)}` }, event.call_id.slice(0, 12))),
    el("td", {}, event.host ?? "—"),
    el("td", { class: "mono" }, event.model ?? "—"),
    el("td", {}, badge(event.type)),
    el("td", { class: "mono summary" }, summary(event.data)),
  );
  eventOf.set(row, event);
  rows.prepend(row);
  while (rows.rows.length > MAX_ROWS) rows.lastElementChild.remove();
}

function setConnection(state, text) {
  connection.dataset.state = state;
  connection.textContent = text;
}

function connect() {
  const url = new URL("/api/activity/stream", location.origin);
  if (lastId) url.searchParams.set("after", lastId);
  const source = new EventSource(url);
  source.onopen = () => setConnection("live", "Live");
  source.addEventListener("activity", (message) => {
    add({ id: message.lastEventId, event: JSON.parse(message.data) });
    render();
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
  for (const published of await getJSON("/api/activity/recent?limit=200")) add(published);
  // None yet: follow from the bus's start, so an event published before the stream opens is not lost.
  lastId ??= "0";
  render();
  connect();
} catch (error) {
  setConnection("down", "Disconnected");
  showProblem(document.getElementById("content"), error);
}
