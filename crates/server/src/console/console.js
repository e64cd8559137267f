// concord console: the coordinator's transactions as a WAI-ARIA treegrid.
//
// Dependency-free on purpose (no build step, nothing fetched at run time):
// a flat list of visible nodes is derived from the loaded pages and the
// expand state, and only the rows inside the viewport are in the DOM
// (fixed row height), with aria-rowindex / aria-rowcount saying where
// they are. Everything comes from the public HTTP API:
//   GET /v1/transactions              pages (server-side filters, cursor)
//   GET /v1/transactions/{xid}         branches, on first expand
//   GET /v1/transactions/{xid}/timeline  votes and timings (details,
//                                       slowest branch)
// Expand state and focus are keyed by node id, so they survive refresh
// and live updates; a live update re-renders only when data changed.
// Live polling is conditional (ETag, If-None-Match): an idle coordinator
// answers 304 and nothing is parsed or merged. The operator's part (actions, audit trail) is in operator.js.

import { actionButton, initOperator, isWritable } from "/operator.js";

const ROW_PX = 28;
// The first page small (a quick first render), the next ones large (few
// round trips through a long list).
const PAGE = 200;
const NEXT_PAGE = 1000;
const LIVE_MS = 2000;
const FINAL = new Set(["committed", "aborted", "one_phase", "no_record"]);
// States with a decision still being delivered: "retry now" applies.
const RETRYABLE = new Set(["committed_waiting_for_acks"]);

const state = {
  filters: { state: "", minAgeS: "", participant: "", xid: "" },
  nodes: [], // transaction rows, newest first, as the pages came
  byXid: new Map(), // xid -> its row (with its summary as `t`)
  nextCursor: null,
  loadingPage: false,
  expanded: new Set(), // node ids
  children: new Map(), // xid -> {status, error, branches, timeline}
  focusId: null,
  visible: [], // the flattened visible nodes
  flattened: false,
  focusIndex: -1,
  token: sessionStorage.getItem("concord-token") || "",
  generation: 0, // bumped when the filters change: stale pages are dropped
};

const $ = (id) => document.getElementById(id);

// ---- the API ---------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The last answer to each conditional GET, with its ETag.
const conditional = new Map();

// GET `path` (or, with `options.method`, send `options.body` as JSON,
// with the operator token if given); the JSON answer, or an ApiError
// with the problem's detail. With `options.conditional` the last
// answer's ETag goes along, and a 304 gives that answer again, marked
// `unchanged` (live polling of an idle coordinator moves no data).
async function api(path, options = {}) {
  const headers = { Accept: "application/json" };
  if (state.token) headers.Authorization = "Bearer " + state.token;
  const init = { headers, cache: "no-store" };
  const cached = options.conditional ? conditional.get(path) : null;
  if (cached) headers["If-None-Match"] = cached.etag;
  if (options.method) {
    init.method = options.method;
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(options.body || {});
  }
  if (options.operatorToken != null) headers["X-Concord-Operator-Token"] = options.operatorToken;
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, "the coordinator cannot be reached (" + e.message + ")");
  }
  if (response.status === 401) {
    $("token-form").hidden = false;
    throw new ApiError(401, "the API needs a token: enter it above");
  }
  if (response.status === 304 && cached) return Object.assign({}, cached.body, { unchanged: true });
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    throw new ApiError(response.status, "the coordinator answered " + response.status + " without JSON");
  }
  if (!response.ok) {
    throw new ApiError(response.status, (body && (body.detail || body.title)) || "HTTP " + response.status);
  }
  const etag = response.headers.get("ETag");
  if (options.conditional && etag) {
    if (conditional.size > 64) conditional.clear();
    conditional.set(path, { etag, body });
  }
  return body;
}

function listQuery(cursor, limit) {
  const q = new URLSearchParams();
  const f = state.filters;
  if (f.state) q.set("state", f.state);
  if (f.participant) q.set("participant", f.participant);
  if (f.minAgeS !== "" && Number(f.minAgeS) > 0) q.set("min_age_ms", String(Math.round(Number(f.minAgeS) * 1000)));
  // The prefix goes to the server once it is hex (the rows loaded are
  // filtered at once while the page comes).
  const prefix = f.xid.trim().toLowerCase();
  if (/^[0-9a-f]{1,32}$/.test(prefix)) q.set("xid_prefix", prefix);
  q.set("limit", String(limit || PAGE));
  if (cursor) q.set("cursor", cursor);
  return "/v1/transactions?" + q.toString();
}

// ---- loading ---------------------------------------------------------

async function loadFirstPage() {
  const generation = ++state.generation;
  state.loadingPage = true;
  setStatus("loading…");
  try {
    const page = await api(listQuery(null));
    if (generation !== state.generation) return;
    state.nodes = [];
    state.byXid.clear();
    addPage(page);
    setStatus("");
  } catch (e) {
    if (generation === state.generation) setStatus(e.message, true);
  } finally {
    if (generation === state.generation) state.loadingPage = false;
    render();
  }
}

async function loadNextPage() {
  if (state.loadingPage || !state.nextCursor) return;
  const generation = state.generation;
  state.loadingPage = true;
  try {
    const page = await api(listQuery(state.nextCursor, NEXT_PAGE));
    if (generation !== state.generation) return;
    addPage(page);
  } catch (e) {
    setStatus(e.message, true);
  } finally {
    if (generation === state.generation) state.loadingPage = false;
    render();
  }
}

// The row of a transaction, made once and reused: with 100,000 of them a
// re-render must not allocate (or look up) 100,000 of anything.
function upsert(t) {
  let node = state.byXid.get(t.xid);
  const fresh = !node;
  if (fresh) {
    node = { id: "t:" + t.xid, kind: "txn", xid: t.xid, level: 1, parent: null, expandable: true, setsize: 0, posinset: 0, t };
    state.byXid.set(t.xid, node);
  }
  node.t = t;
  // Ages grow by themselves: shown as the age read plus the time since.
  node.seenAt = Date.now();
  return fresh ? node : null;
}

function addPage(page) {
  for (const t of page.transactions || []) {
    const fresh = upsert(t);
    if (fresh) state.nodes.push(fresh);
  }
  state.nextCursor = page.next_cursor || null;
}

// Children of one transaction: its branches, and its timeline for the
// votes' timings. `quiet` keeps what is shown while reloading (live).
async function loadChildren(xid, quiet) {
  const started = performance.now();
  const known = state.children.get(xid);
  if (!quiet || !known) state.children.set(xid, { status: "loading" });
  render();
  try {
    const [txn, timeline] = await Promise.all([
      api("/v1/transactions/" + xid),
      api("/v1/transactions/" + xid + "/timeline").catch(() => null),
    ]);
    state.children.set(xid, { status: "loaded", txn, timeline });
    if (!quiet) {
      render();
      metrics.expandMs.push(performance.now() - started);
    }
  } catch (e) {
    if (!quiet || !known || known.status !== "loaded") {
      state.children.set(xid, { status: "error", error: e.message });
    }
  }
  render();
}

// ---- the tree --------------------------------------------------------

// Vote times per participant from a timeline: the offset of the vote it
// sent (a received entry from that peer that names a vote).
function voteTimes(timeline) {
  const times = new Map();
  if (!timeline) return times;
  for (const e of timeline.entries || []) {
    if (e.event === "received" && e.peer && /vote|ready|abort/i.test(e.message || e.detail || "")) {
      if (!times.has(e.peer)) times.set(e.peer, e.offset_ms);
    }
  }
  return times;
}

function slowest(times) {
  let best = null;
  for (const [peer, ms] of times) if (!best || ms > best[1]) best = [peer, ms];
  return best;
}

function fmtMs(ms) {
  if (ms == null) return "";
  if (ms < 1000) return ms.toFixed(ms < 10 ? 1 : 0) + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  return Math.round(ms / 60000) + " min";
}

// The visible nodes, in order: each transaction, and below the expanded
// ones their branches (a tree's branches below their parent).
function flatten() {
  const prefix = state.filters.xid.trim().toLowerCase();
  const tops = prefix ? state.nodes.filter((n) => n.xid.startsWith(prefix)) : state.nodes;
  const n = tops.length;
  for (let i = 0; i < n; i++) {
    tops[i].setsize = n;
    tops[i].posinset = i + 1;
  }
  if (state.expanded.size === 0) return tops === state.nodes ? tops.slice() : tops;
  const out = [];
  for (let i = 0; i < n; i++) {
    const node = tops[i];
    const { id, xid } = node;
    out.push(node);
    if (!state.expanded.has(id)) continue;
    const kids = state.children.get(xid);
    if (!kids || kids.status === "loading") {
      out.push({ id: id + ":loading", kind: "loading", xid, level: 2, setsize: 1, posinset: 1, parent: id });
    } else if (kids.status === "error") {
      out.push({ id: id + ":error", kind: "error", xid, level: 2, setsize: 1, posinset: 1, parent: id, error: kids.error });
    } else {
      const branches = kids.txn.branches || [];
      const times = voteTimes(kids.timeline);
      const under = (parent) => branches.filter((b) => (b.parent || null) === parent);
      const walk = (parentName, parentId, level) => {
        const list = under(parentName);
        list.forEach((b, j) => {
          const bid = "b:" + xid + ":" + b.participant;
          const expandable = under(b.participant).length > 0;
          out.push({ id: bid, kind: "branch", xid, level, setsize: list.length, posinset: j + 1, parent: parentId, expandable, b, ms: times.get(b.participant), txn: kids.txn });
          if (expandable && state.expanded.has(bid)) walk(b.participant, bid, level + 1);
        });
      };
      walk(null, id, 2);
    }
  }
  return out;
}

// The focused node's index in the visible list (cached: a linear search
// over 100,000 rows on every key press is what this avoids).
function focusIndex() {
  const cached = state.visible[state.focusIndex];
  if (cached && cached.id === state.focusId) return state.focusIndex;
  state.focusIndex = state.visible.findIndex((n) => n.id === state.focusId);
  return state.focusIndex;
}

function cellsOf(node) {
  // One cell across the row: a message, with the retry button in reach.
  if (node.kind === "loading") return [["loading", "loading branches…"]];
  if (node.kind === "error") return [["error", "could not load: " + node.error]];
  if (node.kind === "txn") {
    const t = node.t;
    const loaded = state.children.get(node.xid);
    const kids = loaded && loaded.status === "loaded" ? loaded : null;
    const slow = kids ? slowest(voteTimes(kids.timeline)) : null;
    const stateText = t.state.replace(/_/g, " ") + (t.needs_attention ? " · needs attention" : "");
    return [
      ["mono", node.xid],
      t.shape || "",
      ["s-" + t.state + (t.needs_attention ? " attention" : ""), stateText],
      t.age_ms == null ? "" : fmtMs(t.age_ms + (Date.now() - node.seenAt)),
      t.participants.join(", "),
      slow ? slow[0] + " (" + fmtMs(slow[1]) + ")" : "",
    ];
  }
  const b = node.b;
  const attention = b.state === "needs_attention" || (b.delivery && b.delivery.needs_attention);
  return [
    ["", b.participant],
    "branch",
    ["s-" + b.state + (attention ? " attention" : ""), b.state.replace(/_/g, " ") + (b.delivery ? " · COMMIT attempt " + b.delivery.attempts : "")],
    "",
    b.addr || "",
    node.ms != null ? "voted at " + fmtMs(node.ms) : "",
  ];
}

// ---- rendering -------------------------------------------------------

// What the last render drew, to skip identical ones, and where focus was
// (kept when its row disappears, e.g. a collapse or a filter).
let lastSignature = "";
let focusIndexHint = 0;

// What the page measures of itself (read by the browser tests): when the
// first rows were drawn (ms since navigation) and how long each expand
// took from the request to its rows drawn.
const metrics = { firstRowsMs: null, expandMs: [] };

// `changed` false: only the scroll position moved, so the flattened list
// (100,000 nodes, say) is reused; everything else re-derives it.
function render(changed = true) {
  if (changed || !state.flattened) {
    state.visible = flatten();
    state.flattened = true;
  }
  const grid = $("grid");
  const viewport = $("viewport");
  const rows = $("rows");
  const total = state.visible.length;
  // Header row + rows; unknown (-1) while more pages exist.
  grid.setAttribute("aria-rowcount", state.nextCursor ? "-1" : String(total + 1));
  $("spacer").style.height = total * ROW_PX + "px";
  if (!state.focusId || focusIndex() < 0) {
    state.focusId = total ? state.visible[Math.min(focusIndexHint, total - 1)].id : null;
  }
  const first = Math.max(0, Math.floor(viewport.scrollTop / ROW_PX) - 5);
  const count = Math.ceil(viewport.clientHeight / ROW_PX) + 10;
  const last = Math.min(total, first + count);
  const focused = focusIndex();
  const signature = JSON.stringify([first, last, state.focusId, state.visible.slice(first, last).map((n) => [n.id, cellsOf(n), state.expanded.has(n.id)])]);
  if (signature === lastSignature) return; // nothing changed: no flicker
  lastSignature = signature;
  const hadFocus = grid.contains(document.activeElement);
  const fragment = document.createDocumentFragment();
  const indexes = new Set();
  for (let i = first; i < last; i++) indexes.add(i);
  // Keep the focused row in the DOM even when scrolled away, so that
  // keyboard focus is never lost.
  if (focused >= 0) indexes.add(focused);
  for (const i of [...indexes].sort((a, b) => a - b)) fragment.appendChild(rowElement(state.visible[i], i));
  rows.replaceChildren(fragment);
  if (hadFocus) focusRow(false);
  if (metrics.firstRowsMs === null && total > 0) metrics.firstRowsMs = performance.now();
}

function rowElement(node, index) {
  const row = document.createElement("div");
  row.setAttribute("role", "row");
  row.id = "row-" + index;
  row.dataset.id = node.id;
  row.setAttribute("aria-level", String(node.level));
  row.setAttribute("aria-setsize", String(node.setsize));
  row.setAttribute("aria-posinset", String(node.posinset));
  row.setAttribute("aria-rowindex", String(index + 2));
  if (node.expandable) row.setAttribute("aria-expanded", state.expanded.has(node.id) ? "true" : "false");
  const focused = node.id === state.focusId;
  row.tabIndex = focused ? 0 : -1;
  row.setAttribute("aria-selected", focused ? "true" : "false");
  row.style.top = index * ROW_PX + "px";
  const cells = cellsOf(node);
  cells.forEach((cell, c) => {
    const span = document.createElement("span");
    span.setAttribute("role", "gridcell");
    const [cls, text] = Array.isArray(cell) ? cell : ["", cell];
    if (cls) span.className = cls;
    if (cells.length === 1) {
      span.setAttribute("aria-colspan", "6");
      span.classList.add("wide");
    }
    if (c === 0) {
      span.style.paddingLeft = (node.level - 1) * 1.25 + "rem";
      const toggle = document.createElement("span");
      toggle.className = "toggle";
      toggle.setAttribute("aria-hidden", "true");
      toggle.textContent = node.expandable ? (state.expanded.has(node.id) ? "▾" : "▸") : "";
      span.appendChild(toggle);
      span.appendChild(document.createTextNode(text));
      if (node.kind === "error") {
        const retry = document.createElement("button");
        retry.type = "button";
        retry.className = "retry";
        retry.textContent = "Retry";
        retry.addEventListener("click", (e) => {
          e.stopPropagation();
          loadChildren(node.xid, false);
        });
        span.appendChild(document.createTextNode(" "));
        span.appendChild(retry);
      }
    } else {
      span.textContent = text;
    }
    row.appendChild(span);
  });
  row.addEventListener("click", () => {
    state.focusId = node.id;
    if (node.expandable) toggle(node);
    else render();
    focusRow(true);
  });
  row.addEventListener("dblclick", () => openDetails(node));
  return row;
}

function focusRow(scroll) {
  const index = focusIndex();
  if (index < 0) return;
  focusIndexHint = index;
  const viewport = $("viewport");
  if (scroll) {
    const top = index * ROW_PX;
    if (top < viewport.scrollTop) viewport.scrollTop = top;
    else if (top + ROW_PX > viewport.scrollTop + viewport.clientHeight) viewport.scrollTop = top + ROW_PX - viewport.clientHeight;
    render(false);
  }
  const el = $("rows").querySelector('[data-id="' + CSS.escape(state.focusId) + '"]');
  if (el && document.activeElement !== el) el.focus({ preventScroll: true });
}

function setStatus(text, bad) {
  const status = $("status");
  status.textContent = text;
  status.className = bad ? "error" : "";
}

// ---- actions ---------------------------------------------------------

function expand(node) {
  if (!node.expandable || state.expanded.has(node.id)) return;
  state.expanded.add(node.id);
  if (node.kind === "txn" && !state.children.has(node.xid)) loadChildren(node.xid, false);
  else render();
}

function collapse(node) {
  state.expanded.delete(node.id);
  render();
}

function toggle(node) {
  if (state.expanded.has(node.id)) collapse(node);
  else expand(node);
}

function move(to) {
  const total = state.visible.length;
  if (!total) return;
  const index = Math.max(0, Math.min(total - 1, to));
  state.focusId = state.visible[index].id;
  state.focusIndex = index;
  focusRow(true);
  if (index >= total - 20) loadNextPage();
}

function onKey(event) {
  const index = focusIndex();
  if (index < 0) return;
  const node = state.visible[index];
  const page = Math.max(1, Math.floor($("viewport").clientHeight / ROW_PX) - 1);
  switch (event.key) {
    case "ArrowDown": move(index + 1); break;
    case "ArrowUp": move(index - 1); break;
    case "Home": move(0); break;
    case "End": move(state.visible.length - 1); break;
    case "PageDown": move(index + page); break;
    case "PageUp": move(index - page); break;
    case "ArrowRight":
      if (node.expandable && !state.expanded.has(node.id)) expand(node);
      else if (node.expandable) move(index + 1);
      break;
    case "ArrowLeft":
      if (node.expandable && state.expanded.has(node.id)) collapse(node);
      else if (node.parent) {
        state.focusId = node.parent;
        focusRow(true);
      }
      break;
    case "Enter": openDetails(node); break;
    default: return;
  }
  event.preventDefault();
}

async function expandAll() {
  const tops = state.visible.filter((n) => n.kind === "txn");
  for (const n of tops) state.expanded.add(n.id);
  render();
  // A few loads at a time, not hundreds at once.
  const todo = tops.filter((n) => !state.children.has(n.xid));
  const worker = async () => {
    while (todo.length) await loadChildren(todo.shift().xid, false);
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  // Branches with children of their own (trees) open too.
  for (const n of flatten()) if (n.expandable) state.expanded.add(n.id);
  render();
}

function collapseAll() {
  state.expanded.clear();
  render();
}

async function openDetails(node) {
  if (node.kind === "loading" || node.kind === "error") return;
  const xid = node.xid;
  const section = $("details");
  section.hidden = false;
  $("details-title").textContent = (node.kind === "branch" ? node.b.participant + " in " : "") + xid;
  const body = $("details-body");
  body.textContent = "loading…";
  try {
    const [txn, timeline, peers] = await Promise.all([
      api("/v1/transactions/" + xid),
      api("/v1/transactions/" + xid + "/timeline").catch((e) => ({ error: e.message })),
      api("/v1/participants").catch(() => []),
    ]);
    body.replaceChildren(detailsOf(txn, timeline, peers, node.kind === "branch" ? node.b.participant : null));
  } catch (e) {
    body.textContent = "could not load: " + e.message;
  }
}

function table(head, rows) {
  const t = document.createElement("table");
  const tr = document.createElement("tr");
  for (const h of head) {
    const th = document.createElement("th");
    th.textContent = h;
    tr.appendChild(th);
  }
  t.appendChild(tr);
  for (const r of rows) {
    const row = document.createElement("tr");
    for (const v of r) {
      const td = document.createElement("td");
      td.textContent = v == null ? "" : String(v);
      row.appendChild(td);
    }
    t.appendChild(row);
  }
  return t;
}

function detailsOf(txn, timeline, peers, participant) {
  const div = document.createElement("div");
  const p = document.createElement("p");
  p.textContent = txn.state.replace(/_/g, " ") + " — " + txn.detail + (txn.layout ? " — " + txn.layout : "");
  div.appendChild(p);
  if (isWritable() && RETRYABLE.has(txn.state)) {
    div.appendChild(actionButton("Retry now…", { kind: "retry", xid: txn.xid }));
  }
  const branches = (txn.branches || []).filter((b) => !participant || b.participant === participant);
  div.appendChild(table(["branch", "address", "state", "voted READY", "acknowledged", "COMMIT attempts", "pending", "last error"],
    branches.map((b) => [b.participant, b.addr, b.state, b.voted_ready, b.acked, b.delivery && b.delivery.attempts, b.delivery && fmtMs(b.delivery.pending_ms), b.delivery && b.delivery.last_error])));
  // The timeouts in force now, per branch and phase, and the latency
  // estimate behind each (what a transaction begun now would get; the
  // timeline below shows the ones this transaction met, if any fired).
  const names = new Set(branches.map((b) => b.participant));
  const estimates = [];
  for (const peer of peers || []) {
    if (!names.has(peer.participant)) continue;
    for (const e of peer.phases || []) {
      const us = (v) => (v == null ? "" : fmtMs(v / 1000));
      estimates.push([peer.participant, e.phase, e.timeout_ms + " ms", e.basis, us(e.srtt_us), us(e.rttvar_us), us(e.p99_us), e.samples]);
    }
  }
  if (estimates.length) {
    const h = document.createElement("h3");
    h.textContent = "Timeouts in force now, and the latency behind them";
    div.appendChild(h);
    div.appendChild(table(["branch", "phase", "timeout now", "basis", "srtt", "rttvar", "p99", "samples"], estimates));
  }
  if (timeline && timeline.entries) {
    const entries = timeline.entries.filter((e) => !participant || !e.peer || e.peer === participant);
    div.appendChild(table(["at", "+ms", "event", "peer", "message", "attempt", "detail"],
      entries.map((e) => [e.at, e.offset_ms.toFixed(2), e.event, e.peer, e.message, e.attempt, e.detail])));
  } else if (timeline && timeline.error) {
    const q = document.createElement("p");
    q.textContent = "timeline: " + timeline.error;
    div.appendChild(q);
  }
  return div;
}

// ---- needs attention ---------------------------------------------------

// Shown first, above the tree: every transaction the coordinator flags
// (a decision it has not been able to deliver for longer than
// --attention-after), with each flagged branch's attempts, pending time
// and last error.
const ATTENTION_MAX = 20;
// Whether the list was drawn, and for which mode (actions or read-only).
let attentionRead = null;

async function loadAttention() {
  let flagged;
  try {
    const page = await api("/v1/transactions?state=needs_attention&limit=" + ATTENTION_MAX, { conditional: true });
    // Nothing happened at the coordinator since: the branches' attempts
    // and errors are as last read.
    if (page.unchanged && attentionRead === isWritable()) return;
    attentionRead = isWritable();
    flagged = page.transactions || [];
  } catch (e) {
    return; // the status line already says why the API fails
  }
  const items = [];
  for (const t of flagged) {
    let branches = [];
    try {
      const txn = await api("/v1/transactions/" + t.xid);
      branches = (txn.branches || []).filter((b) => b.state === "needs_attention" || (b.delivery && b.delivery.needs_attention));
    } catch (e) {
      // Listed but gone since: it was delivered.
    }
    items.push({ t, branches });
  }
  const list = $("attention-list");
  const signature = JSON.stringify([items, isWritable()]);
  if (list.dataset.signature === signature) return;
  list.dataset.signature = signature;
  const fragment = document.createDocumentFragment();
  for (const { t, branches } of items) {
    const li = document.createElement("li");
    const what = branches.length
      ? branches.map((b) => {
          const d = b.delivery || {};
          const decision = /commit/.test(t.state) ? "COMMIT" : "the decision";
          return b.participant + ": " + decision + " not delivered after " + (d.attempts || 0) + " attempts over " + fmtMs(d.pending_ms) + (d.last_error ? " (last error: " + d.last_error + ")" : "");
        }).join("; ")
      : (t.reason || "flagged");
    li.textContent = t.xid + " — " + what;
    li.dataset.xid = t.xid;
    const show = document.createElement("button");
    show.type = "button";
    show.textContent = "Details";
    show.addEventListener("click", () => openDetails({ kind: "txn", xid: t.xid }));
    li.appendChild(show);
    if (isWritable()) li.appendChild(actionButton("Retry now…", { kind: "retry", xid: t.xid }));
    fragment.appendChild(li);
  }
  list.replaceChildren(fragment);
  $("attention").hidden = items.length === 0;
}

// ---- live ------------------------------------------------------------

// Re-read what is loaded (the first pages, and the expanded transactions
// that are not finished) and merge by xid: expand state and focus stay.
async function refresh() {
  if (!$("live").checked || state.loadingPage) return;
  const generation = state.generation;
  try {
    const limit = Math.min(1000, Math.max(PAGE, state.nodes.length));
    const page = await api(listQuery(null, limit), { conditional: true });
    if (generation !== state.generation) return;
    const fresh = [];
    for (const t of page.unchanged ? [] : page.transactions || []) {
      const node = upsert(t);
      if (node) fresh.push(node);
    }
    if (fresh.length) state.nodes = fresh.concat(state.nodes);
    if (state.nodes.length <= limit) state.nextCursor = page.next_cursor || null;
    setStatus("");
  } catch (e) {
    setStatus(e.message, true);
  }
  for (const id of state.expanded) {
    if (!id.startsWith("t:")) continue;
    const xid = id.slice(2);
    const t = state.byXid.has(xid) ? state.byXid.get(xid).t : null;
    const kids = state.children.get(xid);
    if (t && kids && kids.status === "loaded" && !(FINAL.has(t.state) && FINAL.has(kids.txn.state))) await loadChildren(xid, true);
  }
  render();
  await loadAttention();
}

// ---- start -----------------------------------------------------------

function readFilters() {
  state.filters = {
    state: $("f-state").value,
    minAgeS: $("f-age").value,
    participant: $("f-participant").value.trim(),
    xid: $("f-xid").value,
  };
}

function start() {
  const params = new URLSearchParams(location.search);
  for (const [key, id] of [["state", "f-state"], ["participant", "f-participant"], ["xid", "f-xid"], ["older_than_s", "f-age"]]) {
    if (params.has(key)) $(id).value = params.get(key);
  }
  readFilters();
  for (const id of ["f-state", "f-age", "f-participant"]) {
    $(id).addEventListener("change", () => {
      readFilters();
      loadFirstPage();
    });
  }
  // Typing filters what is loaded at once, then (after a pause) asks the
  // server for every transaction with that prefix.
  let typing = null;
  $("f-xid").addEventListener("input", () => {
    readFilters();
    render();
    clearTimeout(typing);
    typing = setTimeout(loadFirstPage, 250);
  });
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  $("expand-all").addEventListener("click", expandAll);
  $("collapse-all").addEventListener("click", collapseAll);
  $("details-close").addEventListener("click", () => ($("details").hidden = true));
  $("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem("concord-token", state.token);
    $("token-form").hidden = true;
    loadFirstPage();
  });
  $("grid").addEventListener("keydown", onKey);
  $("grid").addEventListener("focus", () => focusRow(false));
  $("viewport").addEventListener("scroll", () => {
    render(false);
    const viewport = $("viewport");
    if (viewport.scrollTop + viewport.clientHeight > viewport.scrollHeight - 20 * ROW_PX) loadNextPage();
  });
  loadFirstPage();
  initOperator({ api, $, table, fmtMs });
  loadAttention();
  setInterval(refresh, LIVE_MS);
}

// For the browser tests: the state, read-only in spirit.
window.concordConsole = { state, render, metrics, loadNextPage };

start();
