// Shadow mode: a second policy that observes live calls and changes nothing. The policy page's
// Shadow card (set, clear, promote, counts since set), and the mark a call gets for what the
// shadow would have done (the calls list and the call page). Data from /api/policy/shadow and
// the "shadow" of /api/calls and /api/calls/{id}.
import { badge, el, factList, formatDateTime, sendJSON } from "/static/common.js";
import { diffBadge, diffTable } from "/static/diff.js";

const OUTCOME_LABELS = {
  would_block: "would have blocked",
  would_modify: "would have changed",
  same: "same",
  skipped: "skipped: busy",
};
// The rule a block is counted under when its policy names none (controlplane/dry_run.py).
const UNNAMED_RULE = "(no rule id)";
const OUTCOME_KINDS = { would_block: "bad", would_modify: "warn", same: "muted", skipped: "muted" };

// "shadow: would have blocked (rule no-rm)": what the calls list and the call page show.
export function shadowMark(mark) {
  const named = [...new Set(mark.rules)].filter((rule) => rule !== UNNAMED_RULE);
  const rules = named.length ? ` (rule ${named.join(", ")})` : "";
  return el(
    "span",
    { class: `badge shadow ${OUTCOME_KINDS[mark.outcome]}`, title: `shadow version ${mark.shadow_version}`, "data-shadow": mark.outcome },
    `shadow: ${OUTCOME_LABELS[mark.outcome]}${rules}`,
  );
}

// The call page's section: the mark, the replay's decisions and what it would have changed.
export function shadowSection(shadow) {
  if (!shadow) return null;
  const parts = [el("p", {}, shadowMark(shadow), " ", el("span", { class: "muted" }, `version ${shadow.shadow_version}`))];
  parts.push(...shadow.notes.map((note) => el("p", { class: "muted" }, note)));
  const changed = [
    ["output_text", "Output text", "Client's answer", "Under the shadow"],
    ["tool_calls", "Tool calls", "Provider's calls", "Under the shadow"],
    ["request", "Request body", "Client sent", "Under the shadow"],
  ].filter(([key]) => shadow.diffs?.[key].changed);
  parts.push(
    ...changed.map(([key, title, left, right]) =>
      el("div", { class: "diff-part", "data-diff": `shadow-${key}` }, el("h3", {}, title, " ", diffBadge(shadow.diffs[key])), diffTable(shadow.diffs[key], left, right)),
    ),
  );
  return el("section", { class: "card", id: "shadow" }, el("h2", {}, "Shadow policy"), ...parts);
}

function countsText(counts) {
  const n = (key) => counts[key] ?? 0;
  const text = `${n("would_block")} would have blocked, ${n("would_modify")} would have changed, ${n("same")} the same`;
  return counts.skipped ? `${text}; ${counts.skipped} skipped (the shadow was busy)` : text;
}

function changeButton(label, send, reload, done) {
  const button = el("button", { type: "button", class: "action" }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await send();
      await reload(done);
    } catch (error) {
      button.disabled = false;
      button.after(el("span", { class: "problem inline", role: "alert" }, error.message));
    }
  });
  return button;
}

// ``edited()``: the editor's document when it is a valid policy, else null.
export function shadowCard(shadowState, policyState, me, reload, edited) {
  const current = shadowState.shadow?.version;
  const admin = me.role === "admin";
  const parts = [
    el("p", { class: "muted" }, "A second policy that runs beside the one in force, on live calls, and changes nothing: each call shows what it would have done."),
  ];
  if (current) {
    const setting = shadowState.shadow.setting;
    parts.push(
      el("div", { class: "heading" }, el("h1", {}, current.document?.policy?.class ?? "unknown class"), badge("observing", "info")),
      factList([
        ["Version", el("a", { href: `/policy?version=${encodeURIComponent(current.version)}` }, current.version)],
        ["Set", formatDateTime(setting.set_at)],
        ["By", setting.set_by],
        ["Note", setting.note],
        ["Since set", el("span", { class: "shadow-counts" }, countsText(shadowState.counts))],
      ]),
    );
    if (admin) {
      parts.push(
        el(
          "div",
          { class: "filters" },
          policyState.source === "database" &&
            changeButton("Promote", () => sendJSON("POST", "/api/policy/shadow/promote", { note: "promoted from the dashboard" }), reload, `Version ${current.version} is now in force; no shadow runs.`),
          changeButton("Clear", () => sendJSON("DELETE", "/api/policy/shadow"), reload, "No shadow runs now."),
        ),
      );
    }
  } else {
    parts.push(el("p", { class: "muted", id: "no-shadow" }, "No shadow policy runs."));
  }
  if (admin) parts.push(setControls(policyState, reload, edited));
  return el("section", { class: "card", id: "shadow" }, el("h2", {}, "Shadow policy"), ...parts);
}

function setControls(policyState, reload, edited) {
  const versions = [...new Set(policyState.history.map((entry) => entry.version))];
  const candidate = el(
    "select",
    { name: "shadow-candidate" },
    policyState.source === "database" && el("option", { value: "" }, "the document being edited"),
    versions.map((version) => el("option", { value: version }, version)),
  );
  const set = changeButton(
    "Set as shadow",
    async () => {
      if (candidate.value) return sendJSON("POST", "/api/policy/shadow", { version: candidate.value });
      const document = edited();
      if (!document) throw new Error("The document being edited is not a valid policy yet: see its problems above.");
      return sendJSON("PUT", "/api/policy/shadow", document);
    },
    reload,
    "The shadow policy is set: calls from now on show what it would have done.",
  );
  return el("div", { class: "filters" }, el("label", {}, "Shadow", candidate), set);
}
