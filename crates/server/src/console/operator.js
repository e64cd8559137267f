// concord console: the operator's part (SPEC §8). Branches in doubt at
// the participants whose decision is overdue (including those of a
// coordinator that is gone), the actions "retry now" and "decide one
// branch by hand" (a heuristic commit or abort), each behind a dialog
// that explains the risk and asks for the operator token, who, why and
// the xid typed out; and the audit trail. The coordinator checks and
// records everything: this page only asks, and shows what it said.
// Without --operator-token-file the coordinator is read-only and no
// action is offered.

const IN_DOUBT_MS = 10000;

let deps = null; // { api, $, table, fmtMs }
let writable = false;
let pending = null; // the action the dialog is about

export function initOperator(d) {
  deps = d;
  const { $ } = deps;
  $("op-confirm-xid").addEventListener("input", checkConfirm);
  $("op-form").addEventListener("submit", (e) => {
    e.preventDefault();
    submit();
  });
  $("op-cancel").addEventListener("click", () => $("op-dialog").close());
  $("indoubt-refresh").addEventListener("click", loadInDoubt);
  $("op-token").value = sessionStorage.getItem("concord-operator-token") || "";
  $("op-who").value = localStorage.getItem("concord-operator") || "";
  loadAudit();
  loadInDoubt();
  setInterval(loadInDoubt, IN_DOUBT_MS);
}

export function isWritable() {
  return writable;
}

const RISK = {
  retry: "Sends the decision again now to every branch that has not acknowledged it, instead of " +
    "at its next retry. It cannot change an outcome.",
  commit: "A heuristic COMMIT applies this branch's changes without its coordinator's decision. " +
    "If the transaction was (or will be) aborted, its branches disagree: this one applied, the " +
    "others not, and the data must be mended by hand. concord records the decision, never tells " +
    "other participants, and reports a contrary decision if one arrives. Use it only when the " +
    "branch's coordinator is gone for good, and you know the transaction committed.",
  abort: "A heuristic ABORT undoes this branch's changes without its coordinator's decision. If " +
    "the transaction was (or will be) committed, its branches disagree: the others applied, this " +
    "one not, and the data must be mended by hand. concord records the decision, never tells " +
    "other participants, and reports a contrary decision if one arrives. Use it only when the " +
    "branch's coordinator is gone for good (its log lost) or cannot come back in time.",
};

// A button that opens the dialog for `action` ({kind, xid, participant?}).
export function actionButton(label, action) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = label;
  b.className = "op";
  b.addEventListener("click", () => openDialog(action));
  return b;
}

function openDialog(action) {
  const { $ } = deps;
  pending = action;
  const title = action.kind === "retry"
    ? "Retry now: " + action.xid
    : "Heuristic " + action.kind + " of " + action.participant + "'s branch of " + action.xid;
  $("op-title").textContent = title;
  $("op-risk").textContent = RISK[action.kind];
  $("op-xid").textContent = action.xid;
  $("op-confirm-xid").value = "";
  $("op-reason").value = "";
  $("op-result").textContent = "";
  $("op-result").className = "";
  checkConfirm();
  $("op-dialog").showModal();
  ($("op-token").value ? ($("op-who").value ? $("op-reason") : $("op-who")) : $("op-token")).focus();
}

// The confirm button works only once the xid is typed out in full.
function checkConfirm() {
  const { $ } = deps;
  const typed = $("op-confirm-xid").value.trim().toLowerCase();
  $("op-submit").disabled = !pending || typed !== pending.xid;
}

async function submit() {
  const { $ } = deps;
  const action = pending;
  if (!action) return;
  const token = $("op-token").value.trim();
  const operator = $("op-who").value.trim();
  sessionStorage.setItem("concord-operator-token", token);
  localStorage.setItem("concord-operator", operator);
  const body = { confirm: $("op-confirm-xid").value.trim(), operator, reason: $("op-reason").value.trim() };
  let path = "/v1/transactions/" + action.xid + "/retry";
  if (action.kind !== "retry") {
    path = "/v1/transactions/" + action.xid + "/branches/" + encodeURIComponent(action.participant) + "/heuristic";
    body.decision = action.kind;
  }
  $("op-submit").disabled = true;
  $("op-result").textContent = "asking the coordinator…";
  $("op-result").className = "";
  try {
    const entry = await deps.api(path, { method: "POST", body, operatorToken: token });
    $("op-result").textContent = "Done (audit entry #" + entry.seq + "): " + entry.result;
    $("op-result").className = "ok";
  } catch (e) {
    $("op-result").textContent = "Refused: " + e.message;
    $("op-result").className = "error";
    checkConfirm();
  }
  await loadAudit();
  loadInDoubt();
}

// ---- the audit trail ---------------------------------------------------

export async function loadAudit() {
  const { $, table } = deps;
  let trail;
  try {
    trail = await deps.api("/v1/audit");
  } catch (e) {
    return;
  }
  writable = !!trail.writable;
  $("audit-mode").textContent = writable
    ? "Operator actions are allowed with the operator token."
    : "Read-only: this coordinator was started without --operator-token-file.";
  const entries = trail.entries || [];
  $("audit-count").textContent = String(entries.length);
  const rows = entries.slice().reverse().map((e) => [
    "#" + e.seq, e.at, e.operator, e.action.replace(/_/g, " ") + (e.participant ? " (" + e.participant + ")" : ""),
    e.xid, e.reason, e.ok == null ? "unfinished" : e.ok ? "done" : "not done", e.result || "",
  ]);
  $("audit-body").replaceChildren(table(["#", "when", "who", "action", "xid", "why", "result", "what it did"], rows));
}

// ---- branches in doubt at the participants -----------------------------

async function loadInDoubt() {
  const { $ } = deps;
  let participants;
  try {
    participants = await deps.api("/v1/participants");
  } catch (e) {
    return;
  }
  const rows = [];
  const errors = [];
  await Promise.all((participants || []).map(async (p) => {
    try {
      const answer = await deps.api("/v1/participants/" + encodeURIComponent(p.participant) + "/in-doubt");
      for (const b of answer.branches || []) if (b.overdue) rows.push({ participant: answer.participant, b });
    } catch (e) {
      if (e.status !== 404) errors.push(p.participant + ": " + e.message);
    }
  }));
  rows.sort((x, y) => (x.b.xid + x.participant).localeCompare(y.b.xid + y.participant));
  const list = $("indoubt-list");
  const signature = JSON.stringify([rows, errors, writable]);
  if (list.dataset.signature === signature) return;
  list.dataset.signature = signature;
  const fragment = document.createDocumentFragment();
  for (const { participant, b } of rows) {
    const li = document.createElement("li");
    li.dataset.xid = b.xid;
    li.dataset.participant = participant;
    const held = b.held_ms == null ? "" : ", locks held " + deps.fmtMs(b.held_ms);
    li.textContent = b.xid + " at " + participant + " (coordinator " + b.coordinator + held + "): " + b.why;
    if (writable) {
      li.appendChild(actionButton("Heuristic abort…", { kind: "abort", xid: b.xid, participant }));
      li.appendChild(actionButton("Heuristic commit…", { kind: "commit", xid: b.xid, participant }));
    }
    fragment.appendChild(li);
  }
  for (const e of errors) {
    const li = document.createElement("li");
    li.className = "error";
    li.textContent = "could not ask " + e;
    fragment.appendChild(li);
  }
  list.replaceChildren(fragment);
  $("indoubt").hidden = rows.length === 0 && errors.length === 0;
}
