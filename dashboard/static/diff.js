// A side-by-side diff as the API gives it (dashboard/diff.py): changed words marked, long lines
// folded, long unchanged stretches skipped. The call page's changes and the policy page's.
import { badge, el } from "/static/common.js";

// A run of a long line longer than this, changed or not, shows only its two ends until opened.
const FOLD_ENDS = 160;
const FOLD_MIN = 2 * FOLD_ENDS + 80;

function runs(parts, folded) {
  return parts.map((part) => {
    const text = part.text;
    const shown =
      folded && text.length > FOLD_MIN
        ? [
            text.slice(0, FOLD_ENDS),
            el("button", { type: "button", class: "unfold" }, `… ${text.length - 2 * FOLD_ENDS} more characters …`),
            text.slice(-FOLD_ENDS),
          ]
        : [text];
    return part.changed ? el("mark", {}, shown) : shown;
  });
}

// A line of a diff: its changed words marked (when the API compared them), long runs folded.
function codeCell(side, text, parts) {
  const cell = el("td", { class: `code ${side}` });
  if (text === null) return cell;
  const all = parts ?? [{ text, changed: false }];
  cell.append(...runs(all, true).flat());
  cell.addEventListener("click", (event) => {
    if (event.target.closest("button.unfold")) cell.replaceChildren(...runs(all, false).flat());
  });
  return cell;
}

export function diffTable(diff, leftLabel, rightLabel) {
  if (diff.only) {
    const missing = diff.only === "left" ? rightLabel : leftLabel;
    return el("p", { class: "muted" }, `${missing}: nothing. The Raw section below shows the other side.`);
  }
  if (!diff.changed) return el("p", { class: "muted" }, "No changes");
  const rows = diff.rows.map((row) =>
    row.op === "skip"
      ? el("tr", { class: "skip" }, el("td", { colspan: 4 }, `⋯ ${row.count} unchanged lines`))
      : el(
          "tr",
          { class: `op-${row.op}` },
          el("td", { class: "no" }, row.left_no ?? ""),
          codeCell("left", row.left, row.left_parts),
          el("td", { class: "no" }, row.right_no ?? ""),
          codeCell("right", row.right, row.right_parts),
        ),
  );
  return el(
    "table",
    { class: "diff" },
    el("colgroup", {}, el("col", { class: "no" }), el("col"), el("col", { class: "no" }), el("col")),
    el("thead", {}, el("tr", {}, el("th", { colspan: 2 }, leftLabel), el("th", { colspan: 2 }, rightLabel))),
    el("tbody", {}, rows),
  );
}

export function diffBadge(diff) {
  if (diff.only) return badge("one side only");
  return diff.changed ? badge("changed", "warn") : badge("no changes");
}
