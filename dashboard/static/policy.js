// The policy in force, the shadow policy, its history, the difference between two versions, and
// (for an admin token, with the database as the source of truth) editing with validation as you
// type, activation and rollback. Everything comes from /api/policy*; ?version=V shows one stored version.
import { badge, blockBadge, el, factList, formatDateTime, getJSON, sendJSON, showProblem } from "/static/common.js";
import { diffBadge, diffTable } from "/static/diff.js";
import { shadowCard } from "/static/shadow.js";

const content = document.getElementById("content");
const shownVersion = new URLSearchParams(location.search).get("version");
// Validation waits for a pause in typing, so a keystroke does not build a policy each time.
const CHECK_DELAY_MS = 300;
const TEMPLATE = { policy: { class: "NoOpPolicy", config: {} } };
// The editor's last check of what is typed (null while a new one waits): what Activate sends, and
// what the dry run needs before it replays the document being edited.
let editorCheck = null;

function section(title, attrs, ...body) {
  return el("section", { class: "card", ...attrs }, el("h2", {}, title), ...body);
}

function documentBlock(document) {
  return el("pre", { class: "block json policy-document" }, JSON.stringify(document, null, 2));
}

const className = (document) => document?.policy?.class ?? "unknown class";
const versionLink = (version) => el("a", { href: `/policy?version=${encodeURIComponent(version)}` }, version);

function inForce(state) {
  const active = state.active;
  const source =
    state.source === "file"
      ? badge("source: policy file", "info")
      : badge("source: database", "info");
  if (!active) {
    return section(
      "Policy in force",
      { id: "in-force" },
      el("div", { class: "heading" }, el("h1", {}, "NoOpPolicy"), source),
      el("p", { class: "muted" }, "No version has been activated yet: calls pass unchanged."),
    );
  }
  const { activation, version } = active;
  return section(
    "Policy in force",
    { id: "in-force" },
    el("div", { class: "heading" }, el("h1", {}, className(version.document)), source),
    factList([
      ["Version", versionLink(activation.version)],
      ["Activated", formatDateTime(activation.activated_at)],
      ["By", activation.activated_by],
      ["Through", activation.source],
      ["Note", activation.note],
    ]),
    el("h3", {}, "Configuration"),
    documentBlock(version.document),
  );
}

function canChange(state, me) {
  return state.source === "database" && me.role === "admin";
}

function activateButton(version, label, onDone) {
  const button = el("button", { type: "button", class: "action", "data-activate": version }, label);
  button.addEventListener("click", async () => {
    button.disabled = true;
    try {
      await sendJSON("POST", "/api/policy/activations", { version, note: `${label} from the dashboard` });
      await onDone(`Version ${version} is now in force.`);
    } catch (error) {
      button.disabled = false;
      button.after(el("span", { class: "problem inline", role: "alert" }, error.message));
    }
  });
  return button;
}

function history(state, me, reload) {
  const activeVersion = state.active?.activation.version;
  const rows = state.history.map((entry) =>
    el(
      "tr",
      { "data-seq": entry.seq, class: entry.version === shownVersion ? "selected" : null },
      el("td", { class: "num" }, entry.seq),
      el("td", { class: "mono" }, versionLink(entry.version)),
      el("td", { class: "nowrap" }, formatDateTime(entry.activated_at)),
      el("td", {}, entry.activated_by),
      el("td", {}, entry.source),
      el("td", { class: "wrap" }, entry.note),
      el(
        "td",
        {},
        entry.seq === state.history[0]?.seq
          ? badge("in force", "ok")
          : canChange(state, me) && entry.version !== activeVersion && activateButton(entry.version, "Roll back", reload),
      ),
    ),
  );
  const table = el(
    "table",
    { class: "grid" },
    el("thead", {}, el("tr", {}, ["#", "Version", "Activated", "By", "Through", "Note", ""].map((h) => el("th", {}, h)))),
    el("tbody", {}, rows),
  );
  return section("History", { id: "history" }, rows.length ? table : el("p", { class: "muted" }, "No activations yet."));
}

function versionSelect(name, versions, selected) {
  return el(
    "select",
    { name },
    versions.map((version) => el("option", { value: version, selected: version === selected }, version)),
  );
}

function compare(state) {
  const versions = [...new Set(state.history.map((entry) => entry.version))];
  if (versions.length < 2) return null;
  const before = versionSelect("before", versions, versions[1]);
  const after = versionSelect("after", versions, versions[0]);
  const result = el("div", { class: "diff-part", "data-diff": "policy" });
  const show = async () => {
    try {
      const diff = await getJSON(
        `/api/policy/diff?before=${encodeURIComponent(before.value)}&after=${encodeURIComponent(after.value)}`,
      );
      result.replaceChildren(el("h3", {}, "Changes ", diffBadge(diff)), diffTable(diff, before.value, after.value));
    } catch (error) {
      showProblem(result, error);
    }
  };
  before.addEventListener("change", show);
  after.addEventListener("change", show);
  show();
  return section(
    "Compare versions",
    { id: "compare" },
    el("div", { class: "filters" }, el("label", {}, "Before", before), el("label", {}, "After", after)),
    result,
  );
}

async function oneVersion(state, me, reload) {
  let stored;
  try {
    stored = await getJSON(`/api/policy/versions/${encodeURIComponent(shownVersion)}`);
  } catch (error) {
    if (error.status !== 404) throw error;
    return el("p", { class: "problem", id: "version" }, `No stored policy version ${shownVersion}.`);
  }
  const activeVersion = state.active?.activation.version;
  const isActive = stored.version === activeVersion;
  const parts = [
    el(
      "div",
      { class: "heading" },
      el("h1", {}, className(stored.document)),
      isActive ? badge("in force", "ok") : badge("not in force"),
      !isActive && canChange(state, me) && activateButton(stored.version, "Activate", reload),
    ),
    factList([
      ["Version", stored.version],
      ["Stored", formatDateTime(stored.created_at)],
      ["By", stored.created_by],
      ["Note", stored.note],
    ]),
    el("h3", {}, "Configuration"),
    documentBlock(stored.document),
  ];
  if (!isActive && activeVersion) {
    const diff = await getJSON(
      `/api/policy/diff?before=${encodeURIComponent(stored.version)}&after=${encodeURIComponent(activeVersion)}`,
    );
    parts.push(
      el("div", { class: "diff-part", "data-diff": "against-active" }, el("h3", {}, "Against the version in force ", diffBadge(diff)), diffTable(diff, stored.version, `${activeVersion} (in force)`)),
    );
  }
  return section(`Version ${stored.version}`, { id: "version" }, ...parts);
}

function problemsList(problems) {
  return el("ul", { class: "problems" }, problems.map((problem) => el("li", {}, problem)));
}

function editor(state, me, reload) {
  if (state.source === "file") {
    return section(
      "Change the policy",
      { id: "edit" },
      el("p", { class: "muted" }, "The policy file is the source of truth: change the file, and every control plane takes it within a second. Changes here are refused."),
    );
  }
  if (me.role !== "admin") {
    return section(
      "Change the policy",
      { id: "edit" },
      el("p", { class: "muted" }, `The token “${me.name}” may read only: changing the policy needs an admin token.`),
    );
  }
  const text = el("textarea", { name: "document", rows: 16, spellcheck: "false", "aria-label": "Policy document (YAML or JSON)" });
  text.value = JSON.stringify(state.active?.version.document ?? TEMPLATE, null, 2);
  const note = el("input", { name: "note", placeholder: "what changes, and why", "aria-label": "Note" });
  const status = el("div", { class: "check", role: "status" });
  const activate = el("button", { type: "button", class: "action", disabled: true }, "Activate");
  let pending = null;
  const check = async () => {
    const typed = text.value;
    status.replaceChildren(el("span", { class: "muted" }, "Checking…"));
    activate.disabled = true;
    try {
      const answer = await sendJSON("POST", "/api/policy/check", { text: typed });
      if (typed !== text.value) return; // a later check is on its way
      editorCheck = answer;
      if (!answer.valid) {
        status.replaceChildren(badge("invalid", "bad"), problemsList(answer.problems));
      } else if (answer.version === state.active?.activation.version) {
        status.replaceChildren(badge("valid", "ok"), ` the version in force (${answer.version}): nothing to activate`);
      } else {
        status.replaceChildren(badge("valid", "ok"), ` would be version ${answer.version}`);
        activate.disabled = false;
      }
    } catch (error) {
      status.replaceChildren(el("span", { class: "problem inline", role: "alert" }, error.message));
    }
  };
  text.addEventListener("input", () => {
    // What was checked is no longer what is typed: nothing to activate until the next check.
    editorCheck = null;
    activate.disabled = true;
    status.replaceChildren(el("span", { class: "muted" }, "Checking…"));
    clearTimeout(pending);
    pending = setTimeout(check, CHECK_DELAY_MS);
  });
  activate.addEventListener("click", async () => {
    activate.disabled = true;
    try {
      const done = await sendJSON("PUT", `/api/policy?note=${encodeURIComponent(note.value)}`, editorCheck.document);
      await reload(`Version ${done.version} is now in force.`);
    } catch (error) {
      status.replaceChildren(el("span", { class: "problem inline", role: "alert" }, error.message));
    }
  });
  check();
  return section(
    "Change the policy",
    { id: "edit" },
    el("p", { class: "muted" }, "YAML or JSON, as in a policy file. It is checked as you type, as activation checks it: every problem, where it is."),
    text,
    status,
    el("div", { class: "filters" }, el("label", { class: "search" }, "Note", note), activate),
  );
}

const SINCE = [
  ["last hour", 1],
  ["last 24 hours", 24],
  ["last 7 days", 24 * 7],
  ["all recorded", null],
];

function outcomeBadges(outcome, blockKind, modified) {
  if (blockKind) return blockBadge(blockKind);
  if (outcome === "blocked") return badge("blocked");
  return modified ? badge("modified", "warn") : badge(outcome);
}

function dryRunResult(answer) {
  const s = answer.summary;
  const rules = Object.entries(s.by_rule);
  const parts = [
    el(
      "p",
      { class: "dry-summary" },
      `${s.calls} calls replayed in ${s.seconds} s: ${s.affected} affected (${s.blocked} blocked, ${s.modified} modified)`,
      s.judge_skipped ? `; the judge skipped ${s.judge_skipped} tool calls (${s.judge === "cache" ? "not in its cache" : "skipped"})` : "",
      ".",
    ),
  ];
  if (rules.length) {
    parts.push(
      el(
        "table",
        { class: "grid by-rule" },
        el("thead", {}, el("tr", {}, el("th", {}, "Rule"), el("th", { class: "num" }, "Calls"))),
        el("tbody", {}, rules.map(([rule, count]) => el("tr", {}, el("td", { class: "mono" }, rule), el("td", { class: "num" }, count)))),
      ),
    );
  }
  const rows = answer.affected.flatMap((call) => {
    const changed = [
      ["output_text", "Output text", "Provider's answer", "Client's answer"],
      ["tool_calls", "Tool calls", "Provider's calls", "Client's calls"],
      ["request", "Request body", "Client sent", "Sent to provider"],
    ].filter(([key]) => call.diffs[key].changed);
    return [
      el(
        "tr",
        { "data-call": call.call_id },
        el("td", { class: "nowrap" }, formatDateTime(call.started_at)),
        el("td", { class: "mono" }, el("a", { href: `/calls/${encodeURIComponent(call.call_id)}` }, call.call_id.slice(0, 12))),
        el("td", { class: "mono" }, call.model ?? "—"),
        el("td", {}, outcomeBadges(call.recorded_outcome, call.recorded_block_kind, false)),
        el("td", {}, outcomeBadges(call.outcome, call.block_kind, call.request_modified || call.response_modified)),
        el("td", { class: "mono" }, call.rules.join(", ")),
        el(
          "td",
          {},
          changed.length > 0 &&
            el(
              "details",
              {},
              el("summary", {}, "changes"),
              changed.map(([key, title, left, right]) =>
                el("div", { class: "diff-part", "data-diff": key }, el("h3", {}, title), diffTable(call.diffs[key], left, right)),
              ),
            ),
          call.notes.map((note) => el("div", { class: "sub" }, note)),
        ),
      ),
    ];
  });
  parts.push(
    rows.length
      ? el(
          "table",
          { class: "grid affected" },
          el("thead", {}, el("tr", {}, ["Time", "Call", "Model", "Recorded", "Would be", "Rules", ""].map((h) => el("th", {}, h)))),
          el("tbody", {}, rows),
        )
      : el("p", { class: "muted" }, "The candidate would have changed none of these calls."),
  );
  return parts;
}

function dryRun(state, me) {
  if (me.role !== "admin") return null;
  const editing = state.source === "database";
  const versions = [...new Set(state.history.map((entry) => entry.version))];
  const activeVersion = state.active?.activation.version;
  const candidate = el(
    "select",
    { name: "candidate" },
    editing && el("option", { value: "" }, "the document being edited"),
    versions.map((version) => el("option", { value: version }, version === activeVersion ? `${version} (in force)` : version)),
  );
  const since = el("select", { name: "since" }, SINCE.map(([label, hours]) => el("option", { value: hours ?? "" }, label)));
  since.value = "24";
  const host = el("input", { name: "host", placeholder: "any host" });
  const model = el("input", { name: "model", placeholder: "any model" });
  const limit = el("input", { name: "limit", type: "number", min: 1, max: 5000, value: 500, class: "narrow" });
  const judge = el(
    "select",
    { name: "judge" },
    el("option", { value: "cache" }, "judge from its cache"),
    el("option", { value: "skip" }, "judge skipped"),
  );
  const run = el("button", { type: "button", class: "action" }, "Run");
  const result = el("div", { class: "dry-result", "aria-live": "polite" });
  run.addEventListener("click", async () => {
    run.disabled = true;
    result.replaceChildren(el("p", { class: "muted" }, "Replaying…"));
    const ask = { limit: Number(limit.value), judge: judge.value, host: host.value || null, model: model.value || null };
    if (since.value) ask.since = new Date(Date.now() - Number(since.value) * 3600 * 1000).toISOString();
    if (candidate.value) {
      ask.version = candidate.value;
    } else if (editorCheck?.valid) {
      ask.text = document.querySelector("textarea[name=document]").value;
    } else {
      result.replaceChildren(
        el("p", { class: "problem", role: "alert" }, "The document being edited is not a valid policy yet: see its problems above."),
      );
      run.disabled = false;
      return;
    }
    try {
      result.replaceChildren(...dryRunResult(await sendJSON("POST", "/api/policy/dry-run", ask)));
    } catch (error) {
      result.replaceChildren(el("p", { class: "problem", role: "alert" }, error.message));
    } finally {
      run.disabled = false;
    }
  });
  return section(
    "Dry run",
    { id: "dry-run" },
    el("p", { class: "muted" }, "Replays recorded calls under a candidate policy, offline: no provider is contacted, nothing is changed or recorded. An LLM judge answers from its cache, or is skipped."),
    el(
      "div",
      { class: "filters" },
      el("label", {}, "Candidate", candidate),
      el("label", {}, "Calls", since),
      el("label", {}, "Host", host),
      el("label", {}, "Model", model),
      el("label", {}, "At most", limit),
      judge,
      run,
    ),
    result,
  );
}

async function render(message) {
  try {
    const [me, state, shadow] = await Promise.all([getJSON("/api/me"), getJSON("/api/policy"), getJSON("/api/policy/shadow")]);
    const parts = [];
    if (message) parts.push(el("div", { class: "done", role: "status" }, message));
    if (shownVersion) parts.push(await oneVersion(state, me, render));
    const edited = () => (editorCheck?.valid ? editorCheck.document : null);
    parts.push(
      inForce(state),
      shadowCard(shadow, state, me, render, edited),
      editor(state, me, render),
      dryRun(state, me),
      history(state, me, render),
      compare(state),
    );
    content.replaceChildren(...parts.filter(Boolean));
  } catch (error) {
    showProblem(content, error);
  }
}

render();
