// The policy in force, its history, the difference between two versions, and (for an admin token,
// with the database as the source of truth) editing with validation as you type, activation and
// rollback. Everything comes from /api/policy*; ?version=V shows one stored version.
import { badge, el, factList, formatDateTime, getJSON, sendJSON, showProblem } from "/static/common.js";
import { diffBadge, diffTable } from "/static/diff.js";

const content = document.getElementById("content");
const shownVersion = new URLSearchParams(location.search).get("version");
// Validation waits for a pause in typing, so a keystroke does not build a policy each time.
const CHECK_DELAY_MS = 300;
const TEMPLATE = { policy: { class: "NoOpPolicy", config: {} } };

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
  let checked = null;
  let pending = null;
  const check = async () => {
    const typed = text.value;
    status.replaceChildren(el("span", { class: "muted" }, "Checking…"));
    activate.disabled = true;
    try {
      const answer = await sendJSON("POST", "/api/policy/check", { text: typed });
      if (typed !== text.value) return; // a later check is on its way
      checked = answer;
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
    checked = null;
    activate.disabled = true;
    status.replaceChildren(el("span", { class: "muted" }, "Checking…"));
    clearTimeout(pending);
    pending = setTimeout(check, CHECK_DELAY_MS);
  });
  activate.addEventListener("click", async () => {
    activate.disabled = true;
    try {
      const done = await sendJSON("PUT", `/api/policy?note=${encodeURIComponent(note.value)}`, checked.document);
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

async function render(message) {
  try {
    const [me, state] = await Promise.all([getJSON("/api/me"), getJSON("/api/policy")]);
    const parts = [];
    if (message) parts.push(el("div", { class: "done", role: "status" }, message));
    if (shownVersion) parts.push(await oneVersion(state, me, render));
    parts.push(inForce(state), editor(state, me, render), history(state, me, render), compare(state));
    content.replaceChildren(...parts.filter(Boolean));
  } catch (error) {
    showProblem(content, error);
  }
}

render();
