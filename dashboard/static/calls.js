// The calls list. The filters and the order live in the page's own query string, so that a view
// can be bookmarked and the back button works; this script turns them into an /api/calls query.
import {
  badge,
  blockBadge,
  el,
  formatCost,
  formatDateTime,
  formatMs,
  formatTokens,
  getJSON,
  sessionHref,
  showProblem,
  showRange,
} from "/static/common.js";
import { shadowMark } from "/static/shadow.js";

const DEFAULT_LIMIT = 50;
// How often the page asks whether calls matching its filters were recorded since it loaded.
const POLL_MS = 3000;
// Parameters of the view that the filter form does not hold, kept when the filters change.
const VIEW_PARAMS = ["sort", "order", "limit"];
// The APIs of WireFormat (controlplane/models.py); the host beside it says whose.
const API_LABELS = {
  openai_chat: "Chat Completions",
  openai_responses: "Responses",
  anthropic_messages: "Messages",
  openai_embeddings: "Embeddings",
  openai_moderations: "Moderations",
  gemini: "Gemini",
  gemini_count_tokens: "Gemini countTokens",
};
const SESSION_CHARS = 8;
const NO_PRICE =
  "No estimate: LiteLLM's cost map has no price for this model, or the call was recorded before Luthien estimated costs";

const form = document.getElementById("filters");
const newCalls = document.getElementById("new-calls");
const pageParams = new URLSearchParams(location.search);
// How many calls matched when the list was last shown: any beyond are new.
let shownTotal = null;

function fillForm() {
  for (const [name, value] of pageParams) {
    const field = form.elements.namedItem(name);
    if (!field) continue;
    if (field.type === "checkbox") field.checked = value === "true";
    else field.value = value;
  }
}

function apiQuery() {
  const query = new URLSearchParams();
  for (const [name, value] of pageParams) {
    if (!value) continue;
    // datetime-local inputs hold the browser's local time; the API wants an ISO 8601 instant.
    query.set(name, name === "since" || name === "until" ? new Date(value).toISOString() : value);
  }
  if (!query.has("limit")) query.set("limit", DEFAULT_LIMIT);
  return query;
}

// Each sortable header links to the list sorted by it: descending first, then the other way.
function sortHeaders() {
  const sort = pageParams.get("sort") ?? "time";
  const order = pageParams.get("order") ?? "desc";
  for (const header of document.querySelectorAll("#calls th[data-sort]")) {
    const key = header.dataset.sort;
    const active = key === sort;
    const params = new URLSearchParams(pageParams);
    params.delete("offset");
    params.set("sort", key);
    params.set("order", active && order === "desc" ? "asc" : "desc");
    if (active) header.setAttribute("aria-sort", order === "asc" ? "ascending" : "descending");
    const arrow = active ? (order === "asc" ? " ▲" : " ▼") : "";
    header.replaceChildren(el("a", { href: `/calls?${params}` }, header.textContent, arrow));
  }
}

// Two lines in one cell: what matters, and beneath it, smaller, what goes with it.
function stacked(main, sub, attrs = {}) {
  return el("td", attrs, el("div", {}, main), el("div", { class: "sub" }, sub));
}

function policyBadges(call, shadow) {
  const badges = [];
  if (call.blocked) badges.push(blockBadge(call.block_kind));
  if (call.request_modified) badges.push(badge("request modified", "warn"));
  if (call.response_modified) badges.push(badge("response modified", "warn"));
  if (call.decision_count) badges.push(el("span", { class: "muted" }, `${call.decision_count} decision${call.decision_count > 1 ? "s" : ""}`));
  if (shadow && shadow.outcome !== "same") badges.push(shadowMark(shadow));
  return badges.flatMap((part) => [part, " "]);
}

// The session links to its page; the agent to the list of its calls.
function sessionLabel(sessionId) {
  if (!sessionId) return "no session";
  const short = sessionId.length > SESSION_CHARS ? `${sessionId.slice(0, SESSION_CHARS)}…` : sessionId;
  return el("a", { class: "mono session", href: sessionHref(sessionId), title: sessionId }, short);
}

function agentLabel(agent) {
  if (!agent) return "—";
  return el("a", { class: "agent", href: `/calls?${new URLSearchParams({ agent })}`, title: `Calls of ${agent}` }, agent);
}

// No estimate is shown as such: "unknown" for tokens at a price LiteLLM's map does not know.
function costCell(call) {
  if (call.cost_usd !== null) return el("td", { class: "num nowrap" }, formatCost(call.cost_usd));
  const counted = call.usage && (call.usage.prompt_tokens !== null || call.usage.completion_tokens !== null);
  if (!counted) return el("td", { class: "num" }, "—");
  return el("td", { class: "num muted", title: NO_PRICE }, "unknown");
}

function row(call, shadow) {
  const href = `/calls/${encodeURIComponent(call.call_id)}`;
  const [date, time] = formatDateTime(call.started_at).split(" ");
  return el(
    "tr",
    {},
    stacked(el("a", { href }, time), date, { class: "nowrap" }),
    stacked(el("span", { class: "mono" }, call.model ?? "—"), call.host, { class: "nowrap" }),
    stacked(
      el("span", { title: call.wire_format ?? "not parsed" }, API_LABELS[call.wire_format] ?? "—"),
      call.stream ? "stream" : "whole",
      { class: "nowrap" },
    ),
    stacked(agentLabel(call.agent), sessionLabel(call.session_id), { class: "nowrap" }),
    stacked([el("span", { class: "mono" }, call.status ?? "—"), " ", badge(call.outcome)], policyBadges(call, shadow)),
    el("td", { class: "num nowrap" }, formatMs(call.duration_ms)),
    el("td", { class: "num nowrap" }, formatMs(call.ttfb_ms)),
    el("td", { class: "num" }, formatTokens(call.usage)),
    costCell(call),
    el("td", { class: "preview" }, el("a", { href, title: call.preview }, call.preview || `${call.method} ${call.path}`)),
  );
}

function totalsText({ total_tokens, cost_usd, unpriced_calls }) {
  const parts = [`${total_tokens.toLocaleString("en-US")} tokens`];
  if (cost_usd !== null) parts.push(`${formatCost(cost_usd)} estimated`);
  if (unpriced_calls) parts.push(`${unpriced_calls} call${unpriced_calls > 1 ? "s" : ""} without a price`);
  return `In all: ${parts.join(" · ")}`;
}

function show(page) {
  document.querySelector("#calls tbody").replaceChildren(...page.calls.map((call) => row(call, page.shadow[call.call_id])));
  document.getElementById("empty").hidden = page.calls.length > 0;
  showRange(page, page.calls.length, "calls", "/calls", pageParams);
  document.getElementById("totals").textContent = page.total ? totalsText(page.totals) : "";
}

async function load() {
  try {
    const page = await getJSON(`/api/calls?${apiQuery()}`);
    document.getElementById("problem").replaceChildren();
    show(page);
    shownTotal = page.total;
    newCalls.hidden = true;
  } catch (error) {
    showProblem(document.getElementById("problem"), error);
  }
}

// New calls are announced rather than slipped into the list under the reader's eyes.
async function checkForNewCalls() {
  if (shownTotal === null || document.hidden) return;
  const query = apiQuery();
  query.set("limit", 1);
  query.delete("offset");
  let total;
  try {
    ({ total } = await getJSON(`/api/calls?${query}`));
  } catch {
    return; // the dashboard may be restarting: the next poll asks again
  }
  const count = total - shownTotal;
  newCalls.hidden = count <= 0;
  newCalls.textContent = `${count} new call${count === 1 ? "" : "s"}: show`;
}

// Leave empty fields out of the page's URL, and start again from the first page.
form.addEventListener("submit", (event) => {
  event.preventDefault();
  const params = new URLSearchParams();
  for (const [name, value] of new FormData(form)) if (value) params.set(name, value);
  for (const name of VIEW_PARAMS) if (pageParams.has(name)) params.set(name, pageParams.get(name));
  location.search = params.toString();
});
newCalls.addEventListener("click", load);

fillForm();
sortHeaders();
await load();
setInterval(checkForNewCalls, POLL_MS);
