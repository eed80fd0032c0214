// One session read as the conversation: each turn's new input, the answer the agent received and
// what policy did, in order, with links to each call. Everything comes from /api/sessions/{id}.
import {
  badge,
  blockBadge,
  el,
  factList,
  formatCost,
  formatDateTime,
  formatDuration,
  formatMs,
  getJSON,
  showProblem,
} from "/static/common.js";

const TURNS_PER_PAGE = 100;
const content = document.getElementById("content");
const sessionId = decodeURIComponent(location.pathname.slice("/sessions/".length));
const apiPath = `/api/sessions/${encodeURIComponent(sessionId)}`;

const ROLE_LABELS = { user: "user", tool: "tool result", assistant: "assistant" };

function header(session) {
  const cost = session.cost_usd === null ? "" : ` · ${formatCost(session.cost_usd)} estimated`;
  const facts = [
    ["Session id", session.session_id],
    ["Agent", session.agent],
    ["User", session.user_id],
    ["Key hash", session.api_key_hash],
    ["First call", formatDateTime(session.first_call_at)],
    ["Last call", formatDateTime(session.last_call_at)],
    ["Duration", formatDuration(session.duration_ms)],
    ["Turns", `${session.turns} · ${session.blocks} blocked · ${session.modified} changed by policy`],
    ["Tokens", `${session.prompt_tokens} in · ${session.completion_tokens} out · ${session.total_tokens} total${cost}`],
  ];
  const calls = `/calls?${new URLSearchParams({ session_id: session.session_id })}`;
  return el(
    "section",
    { class: "card" },
    el(
      "div",
      { class: "heading" },
      el("h1", {}, `Session ${session.session_id}`),
      session.blocks ? badge(`${session.blocks} blocked`, "bad") : badge("no blocks", "ok"),
      el(
        "span",
        { class: "actions-bar" },
        el("a", { class: "button", id: "export-json", href: `${apiPath}/export?format=json`, download: "" }, "Export JSON"),
        el("a", { class: "button", id: "export-md", href: `${apiPath}/export?format=md`, download: "" }, "Export Markdown"),
        el("a", { href: calls }, "Its calls in the list"),
      ),
    ),
    factList(facts),
  );
}

function partBlock(part) {
  const cut = part.omitted_chars ? el("p", { class: "muted" }, `… ${part.omitted_chars} more characters (on the call's page)`) : null;
  if (part.kind === "text") return [el("div", { class: "block text" }, part.text), cut];
  const label = part.kind === "tool_call" ? `tool call ${part.name ?? ""}` : part.kind.replace("_", " ");
  return [el("div", { class: "part-label" }, label), el("pre", { class: `block json part-${part.kind}` }, part.text), cut];
}

function message(role, parts) {
  return el(
    "div",
    { class: `message role-${role.replace(/[^a-z_]/gi, "")}` },
    el("div", { class: "role" }, ROLE_LABELS[role] ?? role),
    parts.map(partBlock),
  );
}

// What policy did in the turn, where it happened.
function actions(turn) {
  const items = turn.actions.map((action) =>
    el(
      "li",
      { class: action.block ? "action block" : "action" },
      action.block ? blockBadge(action.block) : badge("allowed", "ok"),
      " ",
      el("span", { class: "muted" }, action.stage),
      action.rule && [" rule ", el("span", { class: "mono rule" }, action.rule)],
      action.reason && [": ", action.reason],
    ),
  );
  const href = `/calls/${encodeURIComponent(turn.call_id)}`;
  if (turn.request_modified) items.push(el("li", { class: "action" }, badge("request modified", "warn"), " ", el("a", { href }, "see the change")));
  if (turn.response_modified) items.push(el("li", { class: "action" }, badge("answer modified", "warn"), " the agent received the answer shown; ", el("a", { href }, "see the change")));
  return items.length ? el("ul", { class: "policy-actions", "aria-label": "Policy actions" }, items) : null;
}

function turnView(turn, number) {
  const href = `/calls/${encodeURIComponent(turn.call_id)}`;
  const tokens = turn.usage?.total_tokens;
  // In the order things happened: what the agent sent, what policy did, what the agent got.
  const parts = turn.input.map((m) => message(m.role, m.parts));
  parts.push(actions(turn));
  if (turn.output.length) parts.push(message("assistant", turn.output));
  else if (turn.outcome !== "completed") parts.push(el("p", { class: "muted" }, `No answer reached the agent (${turn.outcome}).`));
  return el(
    "article",
    { class: "turn", id: `turn-${number}`, "data-call": turn.call_id },
    el(
      "div",
      { class: "turn-head" },
      el("a", { href, class: "turn-no" }, `Turn ${number}`),
      el("span", { class: "mono" }, formatDateTime(turn.started_at)),
      el("span", { class: "mono" }, turn.model ?? turn.host),
      turn.block_kind ? blockBadge(turn.block_kind) : badge(turn.outcome),
      el("span", { class: "muted" }, formatMs(turn.duration_ms)),
      tokens !== null && tokens !== undefined && el("span", { class: "muted" }, `${tokens.toLocaleString("en-US")} tokens`),
      el("a", { href, class: "call-link" }, "call →"),
    ),
    parts.some(Boolean) ? parts : el("p", { class: "muted" }, "No messages recorded."),
  );
}

async function main() {
  const detail = await getJSON(`${apiPath}?limit=${TURNS_PER_PAGE}`);
  const session = detail.session;
  document.title = `Session ${session.session_id} · Luthien`;
  const turns = el("div", { id: "turns" }, detail.turns.map((turn, n) => turnView(turn, n + 1)));
  const more = el("button", { type: "button", class: "notice", id: "more-turns" }, "Show more turns");
  more.hidden = detail.turns.length >= session.turns;
  more.addEventListener("click", async () => {
    const shown = turns.children.length;
    try {
      const next = await getJSON(`${apiPath}?offset=${shown}&limit=${TURNS_PER_PAGE}`);
      turns.append(...next.turns.map((turn, n) => turnView(turn, shown + n + 1)));
      more.hidden = turns.children.length >= session.turns || next.turns.length === 0;
    } catch (error) {
      showProblem(content, error);
    }
  });
  content.replaceChildren(
    el("a", { href: "/sessions", class: "back" }, "← All sessions"),
    header(session),
    el("section", { class: "card" }, el("h2", {}, "Conversation"), turns, more),
  );
}

try {
  await main();
} catch (error) {
  if (error.status === 404) {
    content.replaceChildren(
      el("a", { href: "/sessions", class: "back" }, "← All sessions"),
      el("p", { class: "problem" }, `No recorded session with id ${sessionId}.`),
    );
  } else {
    showProblem(content, error);
  }
}
