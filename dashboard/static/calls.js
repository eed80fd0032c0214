// The calls list. The filters live in the page's own query string, so that a filtered view can
// be bookmarked and the back button works; this script turns them into an /api/calls query.
import { badge, blockBadge, el, formatDateTime, formatMs, formatTokens, getJSON, showProblem } from "/static/common.js";

const DEFAULT_LIMIT = 50;
const form = document.getElementById("filters");
const pageParams = new URLSearchParams(location.search);

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

function pageLink(offset) {
  const params = new URLSearchParams(pageParams);
  params.set("offset", offset);
  return `/calls?${params}`;
}

function policyCell(call) {
  const cell = el("td", { class: "nowrap" });
  if (call.blocked) cell.append(blockBadge(call.block_kind), " ");
  if (call.request_modified) cell.append(badge("request modified", "warn"), " ");
  if (call.response_modified) cell.append(badge("response modified", "warn"), " ");
  if (call.decision_count) cell.append(el("span", { class: "muted" }, `${call.decision_count} decision${call.decision_count > 1 ? "s" : ""}`));
  return cell;
}

function row(call) {
  const href = `/calls/${encodeURIComponent(call.call_id)}`;
  return el(
    "tr",
    {},
    el("td", { class: "nowrap" }, el("a", { href }, formatDateTime(call.started_at))),
    el("td", { class: "mono nowrap" }, call.model ?? "—"),
    el("td", { class: "nowrap" }, call.host),
    el("td", { class: "nowrap" }, call.agent ?? "—"),
    el("td", { class: "nowrap" }, el("span", { class: "mono" }, call.status ?? "—"), " ", badge(call.outcome)),
    policyCell(call),
    el("td", { class: "num nowrap" }, formatMs(call.duration_ms)),
    el("td", { class: "num" }, formatTokens(call.usage)),
    el("td", { class: "preview" }, el("a", { href, title: call.preview }, call.preview || `${call.method} ${call.path}`)),
  );
}

function show(page) {
  document.querySelector("#calls tbody").replaceChildren(...page.calls.map(row));
  document.getElementById("empty").hidden = page.calls.length > 0;
  const first = page.total ? page.offset + 1 : 0;
  const last = page.offset + page.calls.length;
  document.getElementById("range").textContent = `${first}–${last} of ${page.total} calls`;
  const newer = document.getElementById("newer");
  const older = document.getElementById("older");
  newer.hidden = page.offset === 0;
  newer.href = pageLink(Math.max(0, page.offset - page.limit));
  older.hidden = last >= page.total;
  older.href = pageLink(last);
}

// Leave empty fields out of the page's URL, and start again from the first page.
form.addEventListener("submit", (event) => {
  event.preventDefault();
  const params = new URLSearchParams();
  for (const [name, value] of new FormData(form)) if (value) params.set(name, value);
  if (pageParams.has("limit")) params.set("limit", pageParams.get("limit"));
  location.search = params.toString();
});

fillForm();
try {
  show(await getJSON(`/api/calls?${apiQuery()}`));
} catch (error) {
  showProblem(document.getElementById("problem"), error);
}
