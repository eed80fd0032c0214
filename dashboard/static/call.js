// One call: its facts, the conversation, the policy decisions, what policy changed, what a shadow
// policy would have done, both sides raw, headers and debug events. Everything comes from
// /api/calls/{id}, diffs included.
import {
  badge,
  blockBadge,
  compactJSON,
  el,
  factList,
  formatCost,
  formatDateTime,
  formatMs,
  getJSON,
  sessionHref,
  showProblem,
} from "/static/common.js";
import { diffBadge, diffTable } from "/static/diff.js";
import { shadowSection } from "/static/shadow.js";

const content = document.getElementById("content");
const callId = decodeURIComponent(location.pathname.slice("/calls/".length));

function section(title, ...body) {
  return el("section", { class: "card" }, el("h2", {}, title), ...body);
}

function table(headings, rows) {
  return el(
    "table",
    { class: "grid" },
    el("thead", {}, el("tr", {}, headings.map((heading) => el("th", {}, heading)))),
    el("tbody", {}, rows),
  );
}

// The call's neighbours in its session: the agent's previous and next turns.
function sessionNav(position) {
  if (!position) return [];
  const step = (id, label, rel) =>
    id ? el("a", { href: `/calls/${encodeURIComponent(id)}`, rel, id: `${rel}-turn` }, label) : el("span", { class: "muted" }, label);
  return [
    el(
      "nav",
      { class: "session-nav", "aria-label": "Turns of this session" },
      step(position.previous, "← Previous turn", "prev"),
      el("a", { href: sessionHref(position.session_id), id: "session-link" }, `Turn ${position.turn} of ${position.turns} in its session`),
      step(position.next, "Next turn →", "next"),
    ),
  ];
}

function header(call, costUsd) {
  const usage = call.usage;
  const facts = [
    ["Call id", call.call_id],
    ["Started", formatDateTime(call.started_at)],
    ["Host", call.host],
    ["Endpoint", `${call.method} ${call.path}`],
    ["Wire format", call.wire_format],
    ["Streaming", call.stream ? "yes" : "no"],
    ["Agent", call.agent],
    ["User agent", call.user_agent],
    ["User", call.user_id],
    ["Session", call.session_id && el("a", { href: sessionHref(call.session_id) }, call.session_id)],
    ["Key hash", call.api_key_hash && el("a", { href: `/calls?${new URLSearchParams({ api_key_hash: call.api_key_hash })}` }, call.api_key_hash)],
    ["HTTP status", call.status],
    [
      "Policy version",
      call.policy_version &&
        el("a", { href: `/policy?version=${encodeURIComponent(call.policy_version)}` }, call.policy_version),
    ],
    ["Time to first byte", formatMs(call.ttfb_ms)],
    ["Duration", formatMs(call.duration_ms)],
    [
      "Tokens",
      usage && `${usage.prompt_tokens ?? "?"} in · ${usage.completion_tokens ?? "?"} out · ${usage.total_tokens ?? "?"} total`,
    ],
    ["Cost", costUsd !== null ? `${formatCost(costUsd)} estimated` : usage && "unknown (no list price for this model)"],
    ["Error", call.error],
  ];
  return el(
    "section",
    { class: "card" },
    el(
      "div",
      { class: "heading" },
      el("h1", {}, call.model ?? `${call.method} ${call.path}`),
      badge(call.outcome),
      call.block_kind && blockBadge(call.block_kind),
      call.request_modified && badge("request modified", "warn"),
      call.response_modified && badge("response modified", "warn"),
      call.unpoliced &&
        badge(
          call.outcome === "passthrough" ? "unpoliced: not in the endpoint table" : "unpoliced: control plane unreachable",
          "warn",
        ),
    ),
    factList(facts),
  );
}

// Request bodies come in three shapes (Chat Completions, Messages, Responses); each block of a
// message is shown as its text when it has one, else as JSON (tool use, images, ...).
function blocksOf(content) {
  if (typeof content === "string") return [{ text: content }];
  if (Array.isArray(content)) {
    return content.map((block) =>
      typeof block === "string" ? { text: block } : typeof block?.text === "string" ? { text: block.text } : { json: block },
    );
  }
  return [{ json: content }];
}

function messagesOf(request) {
  if (!request || typeof request !== "object") return [];
  const messages = [];
  const system = request.system ?? request.instructions;
  if (system) messages.push({ role: "system", blocks: blocksOf(system) });
  const input = typeof request.input === "string" ? [{ role: "user", content: request.input }] : request.input;
  for (const message of request.messages ?? input ?? []) {
    messages.push({ role: message.role ?? message.type ?? "item", blocks: blocksOf(message.content ?? message) });
  }
  return messages;
}

function message(role, blocks, note) {
  return el(
    "div",
    { class: `message role-${role.replace(/[^a-z_]/gi, "")}` },
    el("div", { class: "role" }, role, note && el("span", { class: "muted" }, ` · ${note}`)),
    blocks.map((block) =>
      "json" in block
        ? el("pre", { class: "block json" }, JSON.stringify(block.json, null, 2))
        : el("div", { class: "block text" }, block.text),
    ),
  );
}

function outputBlocks(output) {
  const blocks = [];
  if (output.reasoning) blocks.push({ json: { reasoning: output.reasoning } });
  if (output.text) blocks.push({ text: output.text });
  for (const call of output.tool_calls) blocks.push({ json: { tool_call: call.name, arguments: call.arguments } });
  return blocks;
}

function conversation(call) {
  const items = messagesOf(call.original_request).map((m) => message(m.role, m.blocks));
  if (call.final_output) {
    const note = call.response_modified ? "final output, changed by policy" : "final output";
    items.push(message("assistant", outputBlocks(call.final_output), note));
  } else if (call.outcome !== "completed") {
    items.push(el("p", { class: "muted" }, `No answer reached the client (${call.outcome}).`));
  }
  return section("Conversation", items.length ? items : el("p", { class: "muted" }, "No messages recorded."));
}

function decisions(call) {
  if (!call.decisions.length) return section("Policy decisions", el("p", { class: "muted" }, "No policy decisions recorded."));
  const rows = call.decisions.map((decision) =>
    el(
      "tr",
      {},
      el("td", {}, decision.stage),
      el("td", {}, decision.block ? blockBadge(decision.block) : badge("allowed", "ok")),
      el("td", { class: "mono" }, decision.metadata.rule_id ?? "—"),
      el("td", {}, decision.reason ?? "—"),
      el("td", { class: "mono" }, Object.keys(decision.metadata).length ? compactJSON(decision.metadata) : ""),
    ),
  );
  return section("Policy decisions", table(["Stage", "Verdict", "Rule", "Reason", "Details"], rows));
}

function diffs(call, diffs) {
  // What the agent was told and asked to run comes first; the wire-level detail after.
  const parts = [
    ["output_text", "Output text", "Provider's answer", "Client's answer"],
    ["tool_calls", "Tool calls", "Provider's calls", "Client's calls"],
    ["response", call.stream ? "Response events" : "Response body", "Provider sent", "Client received"],
    ["request", "Request body", "Client sent", "Sent to provider"],
  ];
  return section(
    "Changes by policy",
    parts.map(([key, title, left, right]) =>
      el(
        "div",
        { class: "diff-part", "data-diff": key },
        el("h3", {}, title, " ", diffBadge(diffs[key])),
        diffTable(diffs[key], left, right),
      ),
    ),
  );
}


// A body as recorded: JSON pretty-printed, text (a body that was not JSON) as it is, a stream
// one event per line.
function rawText(body, events) {
  if (events) return events.map(([name, data]) => (name === null ? data : `${name}: ${data}`)).join("\n");
  if (body === null || body === undefined) return null;
  return typeof body === "string" ? body : JSON.stringify(body, null, 2);
}

function rawSide(key, title, text) {
  return el(
    "div",
    { class: "raw-side", "data-raw": key },
    el("h3", {}, title),
    text === null ? el("p", { class: "muted" }, "Nothing recorded.") : el("pre", { class: "block json" }, text),
  );
}

// Both sides of the call as they were, whether or not policy changed them: a provider's error
// body, an error event in a stream, the events before a stream was cut.
function raw(call) {
  const response = call.stream ? "events" : "body";
  return section(
    "Raw",
    el(
      "div",
      { class: "raw" },
      rawSide("original_request", "Request the client sent", rawText(call.original_request)),
      rawSide("final_request", "Request sent to the provider", rawText(call.final_request)),
      rawSide("original_response", `Response ${response} the provider sent`, rawText(call.original_response, call.original_events)),
      rawSide("final_response", `Response ${response} the client received`, rawText(call.final_response, call.final_events)),
    ),
  );
}

function headers(call) {
  const rows = call.request_headers.map(([name, value]) =>
    el("tr", {}, el("td", { class: "mono nowrap" }, name), el("td", { class: "mono" }, value)),
  );
  return section("Request headers", rows.length ? table(["Name", "Value"], rows) : el("p", { class: "muted" }, "None recorded."));
}

function debugEvents(events) {
  const rows = events.map((event) =>
    el(
      "tr",
      {},
      el("td", { class: "mono nowrap" }, formatDateTime(event.at)),
      el("td", { class: "mono" }, event.type),
      el("td", {}, el("pre", { class: "block json" }, JSON.stringify(event.payload, null, 2))),
    ),
  );
  return section("Debug events", rows.length ? table(["Time", "Type", "Payload"], rows) : el("p", { class: "muted" }, "None."));
}

try {
  const detail = await getJSON(`/api/calls/${encodeURIComponent(callId)}`);
  const call = detail.call;
  document.title = `${call.model ?? call.path} · Luthien`;
  content.replaceChildren(
    el("a", { href: "/calls", class: "back" }, "← All calls"),
    ...sessionNav(detail.session),
    header(call, detail.cost_usd),
    conversation(call),
    decisions(call),
    diffs(call, detail.diffs),
    ...[shadowSection(detail.shadow)].filter(Boolean),
    raw(call),
    headers(call),
    debugEvents(detail.debug_events),
  );
} catch (error) {
  if (error.status === 404) {
    content.replaceChildren(
      el("a", { href: "/calls", class: "back" }, "← All calls"),
      el("p", { class: "problem" }, `No recorded call with id ${callId}. Calls are recorded when they finish.`),
    );
  } else {
    showProblem(content, error);
  }
}
