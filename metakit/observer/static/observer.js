// The metakit observer's page: one WebSocket to the observer, which sends a
// sample of the node shown once a second. The page sends its view (node,
// sort, filter, row cap, selected process); sorting, filtering and the row
// cap are done by the server. Everything shown is set as text (never as
// HTML), so a process's name or inspect value cannot inject markup.
//
// The first frame after a connect or a view is whole ({sample}); the next
// ones are deltas ({delta}, the format is in observer.py): the row tables
// touch only the rows that changed, left or moved. A delta that does not
// add up to what the page has (it should not happen) makes the page send
// its view again, which the observer answers with a whole frame.
"use strict";

const $ = (selector) => document.querySelector(selector);

const state = {
  view: { node: null, sort: "mailbox", desc: true, filter: "", limit: 200, selected: null },
  actionsAllowed: false, // what the observer said in its hello: no controls otherwise
  socket: null,
  retry: 500,
  synced: false, // a whole frame came on this socket and the deltas since added up
  parts: {}, // the last tree, details, actions, nodes and observed (a delta may omit them)
  counts: { total: 0, matched: 0 },
  frames: { whole: 0, delta: 0, resyncs: 0 }, // what came, for a look from the console
};

// -- the stream ---------------------------------------------------------------------

function connect() {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}/stream${location.search}`);
  state.socket = socket;
  state.synced = false;
  socket.addEventListener("open", () => {
    state.retry = 500;
    setStatus("live", "live");
    if (state.view.node !== null) sendView();
  });
  socket.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    if (message.hello) onHello(message.hello);
    else if (message.sample) onSample(message.sample);
    else if (message.delta) onDelta(message.delta);
    else if (message.error) showError(message.error);
  });
  socket.addEventListener("close", () => {
    setStatus("offline", "disconnected, retrying…");
    setTimeout(connect, state.retry);
    state.retry = Math.min(state.retry * 2, 10000);
  });
}

function sendView() {
  const socket = state.socket;
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ view: state.view }));
  }
}

function setStatus(kind, text) {
  const status = $("#status");
  status.className = `status ${kind}`;
  status.textContent = text;
}

function showError(text) {
  const box = $("#error");
  box.textContent = text;
  box.hidden = !text;
}

function onHello(hello) {
  state.actionsAllowed = Boolean(hello.actions);
  if (state.view.node === null) state.view.node = hello.node;
  state.view.limit = Math.min(state.view.limit, hello.max_rows);
}

// -- rendering ----------------------------------------------------------------------

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function row(cells) {
  const tr = document.createElement("tr");
  for (const cell of cells) tr.append(cell instanceof Node ? cell : el("td", cell));
  return tr;
}

function num(value, className) {
  return el("td", value === null || value === undefined ? "–" : value, `num ${className || ""}`);
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i ? n.toFixed(1) : Math.round(n)} ${units[i]}`;
}

function duration(seconds) {
  const s = Math.floor(seconds);
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function nameLink(id, pid, name) {
  const link = el("button", name || "(no name)", name ? "link" : "link unnamed");
  link.type = "button";
  link.dataset.id = id;
  link.addEventListener("click", () => select(id));
  return link;
}

function onSample(sample) {
  if (sample.error) { state.synced = false; showError(sample.error); return; }
  showError("");
  state.synced = true;
  state.frames.whole += 1;
  state.parts = {
    nodes: sample.nodes || [], observed: sample.observed || [], tree: sample.tree,
    details: sample.details, actions: sample.actions,
  };
  renderNodes(state.parts.nodes, state.parts.observed);
  renderStats(sample.stats);
  state.counts = { total: sample.processes.total, matched: sample.processes.matched };
  tables.processes.whole(sample.processes.rows);
  renderProcessCount();
  renderTree(sample.tree);
  tables.metas.whole(sample.metas.rows);
  renderMetaCount(sample.metas.total);
  tables.events.whole(sample.events);
  renderDetails(sample.details, Boolean(sample.actions) && state.actionsAllowed);
}

function onDelta(delta) {
  if (!state.synced) return; // a whole frame is on its way
  showError("");
  state.frames.delta += 1;
  const parts = state.parts;
  for (const key of ["nodes", "observed", "tree", "details", "actions"]) {
    if (key in delta) parts[key] = delta[key];
  }
  renderNodes(parts.nodes || [], parts.observed || []);
  renderStats(delta.stats);
  for (const name of ["processes", "metas", "events"]) {
    if (name in delta && !tables[name].apply(delta[name])) { resync(); return; }
  }
  if (delta.processes) {
    for (const key of ["total", "matched"]) {
      if (key in delta.processes) state.counts[key] = delta.processes[key];
    }
    renderProcessCount();
  }
  if (delta.metas && "total" in delta.metas) renderMetaCount(delta.metas.total);
  if ("tree" in delta) renderTree(parts.tree);
  if ("details" in delta || "actions" in delta) {
    renderDetails(parts.details, Boolean(parts.actions) && state.actionsAllowed);
  }
}

function resync() {
  state.synced = false;
  state.frames.resyncs += 1;
  sendView(); // answered with a whole frame
}

// A table whose rows are keyed by their first cell: it keeps each row and its
// <tr>, so a delta replaces the rows that changed, removes the ones that left
// and, only when the order changed, moves rows (the ones out of place).
class Keyed {
  constructor(selector, build) {
    this.selector = selector;
    this.build = build; // row -> <tr>
    this.rows = new Map(); // key -> row
    this.trs = new Map(); // key -> <tr>
    this.order = [];
  }

  get tbody() { return $(this.selector); }

  whole(rows) {
    this.rows = new Map(rows.map((r) => [r[0], r]));
    this.trs = new Map(rows.map((r) => [r[0], this.build(r)]));
    this.order = [...this.rows.keys()];
    this.tbody.replaceChildren(...this.order.map((key) => this.trs.get(key)));
  }

  // Apply a delta; false if it does not add up (the page then asks for a whole frame).
  apply(delta) {
    const gone = delta.gone || [];
    for (const key of gone) {
      const tr = this.trs.get(key);
      if (tr) tr.remove();
      this.trs.delete(key);
      this.rows.delete(key);
    }
    if (gone.length) this.order = this.order.filter((key) => this.rows.has(key));
    for (const r of delta.changed || []) {
      const tr = this.build(r);
      const old = this.trs.get(r[0]);
      if (old) old.replaceWith(tr);
      this.rows.set(r[0], r);
      this.trs.set(r[0], tr);
    }
    if (delta.order) {
      const keys = new Set(delta.order);
      if (keys.size !== delta.order.length) return false;
      this.order = delta.order;
    }
    if (this.order.length !== this.rows.size || !this.order.every((key) => this.rows.has(key))) {
      return false;
    }
    if (delta.order) {
      const tbody = this.tbody;
      let at = tbody.firstChild;
      for (const key of this.order) {
        const tr = this.trs.get(key);
        if (tr === at) at = at.nextSibling;
        else tbody.insertBefore(tr, at); // a new row, or one that moved
      }
    }
    return true;
  }
}

function renderNodes(nodes, observed) {
  const select = $("#node-select");
  const key = nodes.join("\n") + "|" + observed.join("\n");
  if (select.dataset.key !== key) {
    select.dataset.key = key;
    select.replaceChildren(...nodes.map((name) => {
      const option = el("option", observed.includes(name) ? name : `${name} (no observer)`);
      option.value = name;
      option.disabled = !observed.includes(name);
      return option;
    }));
  }
  select.value = state.view.node;
}

function renderStats(s) {
  $("#s-uptime").textContent = duration(s.uptime);
  $("#s-loop").textContent = s.loop;
  $("#s-lag").textContent = `${s.lag_ms.toFixed(2)} ms`;
  $("#s-rss").textContent = s.rss_kib === null ? "–" : bytes(s.rss_kib * 1024);
  $("#s-fds").textContent = s.fds === null ? "–" : s.fds;
  $("#s-rate").textContent = s.messages_s;
  $("#s-procs").textContent = s.processes;
  $("#s-metas").textContent = s.metas;
  $("#s-sample").textContent = `${s.sample_ms.toFixed(1)} ms`;
  document.title = `${s.name} · metakit observer`;
}

function processRow([id, pid, name, cls, st, depth, bound, rin, rout]) {
  const mailbox = num(`${depth}/${bound || "∞"}`, "mailbox");
  if (depth > 0 && (depth >= 100 || (bound && depth >= bound * 0.8))) mailbox.classList.add("hot");
  const nameCell = el("td", null, "name");
  nameCell.append(nameLink(id, pid, name));
  const tr = row([el("td", pid, "pid"), nameCell, el("td", cls), el("td", st, `state ${st}`),
    mailbox, num(rin), num(rout)]);
  tr.dataset.id = id;
  if (id === state.view.selected) tr.classList.add("selected");
  return tr;
}

function renderProcessCount() {
  const shown = tables.processes.rows.size;
  const { total, matched } = state.counts;
  $("#proc-count").textContent = matched === total
    ? `${shown} of ${total}` : `${shown} of ${matched} matching (${total} in all)`;
  for (const th of document.querySelectorAll("#processes th")) {
    th.classList.toggle("sorted", th.dataset.sort === state.view.sort);
    th.classList.toggle("desc", th.dataset.sort === state.view.sort && state.view.desc);
  }
}

function renderTree(tree) {
  const box = $("#tree");
  if (!tree.length) { box.replaceChildren(el("p", "no supervisors", "muted")); return; }
  const build = (items) => {
    const ul = el("ul");
    for (const item of items) {
      const li = el("li");
      li.append(nameLink(item.id, item.pid, item.name));
      li.append(el("span", ` ${item.behavior}`, "muted"));
      if (item.children) {
        li.classList.add("sup");
        li.append(el("span", `${item.strategy} · ${item.restarts} restarts`, "badge"));
        const kids = build(item.children);
        if (item.more) kids.append(el("li", `… ${item.more} more`, "muted"));
        li.append(kids);
      } else {
        li.append(el("span", ` ${item.state}`, `state ${item.state}`));
      }
      ul.append(li);
    }
    return ul;
  };
  box.replaceChildren(build(tree));
}

function metaRow(m) {
  return row([
    el("td", m[1], "pid"), el("td", m[2]), el("td", m[3], "pid"), el("td", m[4]),
    num(`${m[5]}/${m[6] || "∞"}`), num(bytes(m[7])), num(bytes(m[8])), num(m[9]), num(m[10]),
    num(bytes(m[11]), "bytes-in"), num(bytes(m[12]), "bytes-out"),
    num(m[13]), num(m[14]), num(m[15]), el("td", m[16], "extra"),
  ]);
}

function renderMetaCount(total) {
  $("#meta-count").textContent = `${tables.metas.rows.size} of ${total}, the busiest first`;
}

function eventRow(e) {
  return row([
    el("td", e[0]), el("td", e[1], "pid"), num(e[2]), el("td", e[3]), el("td", e[4] ? "yes" : "no"),
    num(e[5]),
  ]);
}

const tables = {
  processes: new Keyed("#processes tbody", processRow),
  metas: new Keyed("#metas tbody", metaRow),
  events: new Keyed("#events tbody", eventRow),
};

function kv(tbody, entries, perRow = 1) {
  const rows = [];
  for (let i = 0; i < entries.length; i += perRow) {
    rows.push(row(entries.slice(i, i + perRow).flatMap(([k, v]) => [el("th", k), el("td", v)])));
  }
  tbody.replaceChildren(...rows);
}

function renderDetails(details, actions) {
  const panel = $("#details");
  if (!details) { panel.hidden = true; return; }
  panel.hidden = false;
  if (details.gone) {
    $("#details-title").textContent = "Process ended";
    kv($("#details-info tbody"), [["id", details.id]]);
    kv($("#details-inspect tbody"), []);
    $("#actions").replaceChildren();
    return;
  }
  $("#details-title").textContent = details.name || details.pid;
  const list = (v) => (v.length ? v.join(", ") : "–");
  kv($("#details-info tbody"), [
    ["pid", details.pid], ["name", details.name || "–"], ["class", details.behavior],
    ["state", details.state], ["parent", details.parent],
    ["mailbox", `${details.mailbox}/${details.mailbox_size || "∞"}`],
    ["messages in", details.messages_in], ["messages out", details.messages_out],
    ["handlers", details.handlers], ["trap_exit", details.trap_exit ? "yes" : "no"],
    ["links", list(details.links)], ["monitors", details.monitors],
    ["metas", list(details.metas)], ["events", list(details.events)],
  ], 2);
  kv($("#details-inspect tbody"), Object.entries(details.inspect));
  renderActions(details, actions);
}

// -- actions (only built when the observer allows them) ------------------------------

function renderActions(details, actions) {
  const box = $("#actions");
  if (!actions) { box.replaceChildren(); return; }
  if (box.dataset.id === details.id && box.childElementCount) return; // keep what is typed
  box.dataset.id = details.id;
  const value = el("input");
  value.placeholder = 'a JSON value, e.g. "ping"';
  value.id = "action-value";
  const reason = el("input");
  reason.placeholder = "exit reason";
  reason.value = "normal";
  reason.id = "action-reason";
  const button = (label, run) => {
    const b = el("button", label, "action");
    b.type = "button";
    b.addEventListener("click", run);
    return b;
  };
  const result = el("p", "", "muted");
  result.id = "action-result";
  const send = button("Send", () => {
    let parsed;
    try { parsed = JSON.parse(value.value); } catch (e) { result.textContent = `not JSON: ${e.message}`; return; }
    act({ action: "send", value: parsed }, result);
  });
  const exit = button("Exit", () => act({ action: "exit", reason: reason.value }, result));
  const kill = button("Kill", () => act({ action: "kill" }, result));
  kill.classList.add("danger");
  box.replaceChildren(el("h3", "Actions"), value, send, reason, exit, kill, result);
}

async function act(body, result) {
  const request = { ...body, node: state.view.node, target: state.view.selected };
  try {
    const response = await fetch(`/api/action${location.search}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(request),
      credentials: "same-origin",
    });
    const answer = await response.json();
    result.textContent = answer.message || answer.error || response.statusText;
  } catch (e) {
    result.textContent = String(e);
  }
}

// -- the controls -------------------------------------------------------------------

function select(id) {
  state.view.selected = id;
  $("#actions").replaceChildren();
  sendView();
}

function setup() {
  $("#details-close").addEventListener("click", () => { state.view.selected = null; sendView(); $("#details").hidden = true; });
  $("#node-select").addEventListener("change", (event) => {
    state.view.node = event.target.value;
    state.view.selected = null;
    sendView();
  });
  $("#limit").addEventListener("change", (event) => {
    state.view.limit = Number(event.target.value);
    sendView();
  });
  let typing = null;
  $("#filter").addEventListener("input", (event) => {
    clearTimeout(typing);
    typing = setTimeout(() => { state.view.filter = event.target.value; sendView(); }, 200);
  });
  for (const th of document.querySelectorAll("#processes th[data-sort]")) {
    th.addEventListener("click", () => {
      const key = th.dataset.sort;
      if (state.view.sort === key) state.view.desc = !state.view.desc;
      else { state.view.sort = key; state.view.desc = !["pid", "name", "class", "state"].includes(key); }
      sendView();
    });
  }
  connect();
}

setup();
