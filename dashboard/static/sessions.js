// The sessions list: one row per session, the one with the latest call first. The filters live
// in the page's query string, as on the calls list; the agent and key options come with the page.
import {
  badge,
  el,
  formatCost,
  formatDateTime,
  formatDuration,
  getJSON,
  sessionHref,
  showProblem,
  showRange,
} from "/static/common.js";

const DEFAULT_LIMIT = 50;
const SHORT_CHARS = 8;

const form = document.getElementById("filters");
const pageParams = new URLSearchParams(location.search);

function short(text) {
  return text.length > SHORT_CHARS ? `${text.slice(0, SHORT_CHARS)}…` : text;
}

function apiQuery() {
  const query = new URLSearchParams();
  for (const [name, value] of pageParams) if (value) query.set(name, value);
  if (!query.has("limit")) query.set("limit", DEFAULT_LIMIT);
  return query;
}

// The agent and key selects list every value with sessions, and show the one in force.
function fillOptions(name, facets, label) {
  const select = form.elements.namedItem(name);
  const wanted = pageParams.get(name) ?? "";
  const options = facets
    .filter((facet) => facet.value !== null && facet.value !== "")
    .map((facet) => el("option", { value: facet.value }, `${label(facet.value)} (${facet.sessions})`));
  if (wanted && !facets.some((facet) => facet.value === wanted)) options.push(el("option", { value: wanted }, label(wanted)));
  select.replaceChildren(el("option", { value: "" }, "any"), ...options);
  select.value = wanted;
}

function stacked(main, sub, attrs = {}) {
  return el("td", attrs, el("div", {}, main), el("div", { class: "sub" }, sub));
}

function row(session) {
  const href = sessionHref(session.session_id);
  const [date, time] = formatDateTime(session.last_call_at).split(" ");
  const key = session.api_key_hash;
  return el(
    "tr",
    {},
    stacked(el("a", { href }, time), date, { class: "nowrap" }),
    stacked(session.agent ?? "—", key ? el("span", { class: "mono", title: key }, short(key)) : "no key", { class: "nowrap" }),
    el("td", { class: "nowrap" }, el("a", { href, class: "mono session", title: session.session_id }, short(session.session_id))),
    el("td", { class: "nowrap" }, formatDateTime(session.first_call_at)),
    el("td", { class: "num nowrap" }, formatDuration(session.duration_ms)),
    el("td", { class: "num" }, session.turns),
    el("td", { class: "num" }, session.blocks ? badge(String(session.blocks), "bad") : "0"),
    el("td", { class: "num" }, session.total_tokens.toLocaleString("en-US")),
    el("td", { class: "num nowrap" }, session.cost_usd === null ? "—" : formatCost(session.cost_usd)),
    el("td", { class: "preview" }, el("a", { href, title: session.preview }, session.preview || "(no prompt)")),
  );
}

function show(page) {
  fillOptions("agent", page.agents, (value) => value);
  fillOptions("api_key_hash", page.api_key_hashes, short);
  form.elements.namedItem("blocked").value = pageParams.get("blocked") ?? "";
  document.querySelector("#sessions tbody").replaceChildren(...page.sessions.map(row));
  document.getElementById("empty").hidden = page.sessions.length > 0;
  showRange(page, page.sessions.length, "sessions", "/sessions", pageParams);
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const params = new URLSearchParams();
  for (const [name, value] of new FormData(form)) if (value) params.set(name, value);
  if (pageParams.has("limit")) params.set("limit", pageParams.get("limit"));
  location.search = params.toString();
});

try {
  show(await getJSON(`/api/sessions?${apiQuery()}`));
} catch (error) {
  showProblem(document.getElementById("problem"), error);
}
