// The page's side of the chat protocol (see the docstring of examples/chat/__main__.py).
// Plain JavaScript, no build step. User text only ever goes through textContent.
"use strict";

const $ = (id) => document.getElementById(id);
const RETRY_MIN = 250; // ms before the first reconnection attempt; doubled each time
const RETRY_MAX = 5000;

let socket = null; // the current WebSocket, or null
let me = null; // {room, nick} while the user wants to be in a room
let inRoom = false; // the room view is showing
let joined = false; // the current socket has joined
let retries = 0;
let farewell = ""; // why the server is closing the current socket on purpose: no reconnecting then
let lastTs = 0; // the newest message shown: after a reconnect, only newer history is added
const members = new Set();

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const ws = new WebSocket(`${scheme}://${location.host}/ws`);
  socket = ws;
  joined = false;
  farewell = "";
  ws.onopen = () => ws.send(JSON.stringify({ type: "join", room: me.room, nick: me.nick }));
  ws.onmessage = (event) => receive(JSON.parse(event.data));
  ws.onclose = (event) => closed(ws, event);
}

function receive(msg) {
  switch (msg.type) {
    case "joined":
      if (inRoom) notice("reconnected", "good");
      joined = true;
      retries = 0;
      showRoom(msg.room, msg.nick, msg.node);
      setStatus("");
      members.clear();
      msg.members.forEach((nick) => members.add(nick));
      renderMembers();
      msg.history.filter((m) => m.ts > lastTs).forEach(addMessage);
      break;
    case "message":
      addMessage(msg);
      break;
    case "join":
      members.add(msg.nick);
      renderMembers();
      notice(`${msg.nick} joined`);
      break;
    case "leave":
      members.delete(msg.nick);
      renderMembers();
      notice(`${msg.nick} left`);
      break;
    case "closing":
      farewell = msg.text;
      break;
    case "error":
      if (joined) {
        notice(msg.text, "error");
      } else if (inRoom && socket && retries < 8) {
        // Rejoining after a lost connection: our old seat may still be held
        // (its server is gone, and the room has not heard yet), or the room
        // restarting. Try again, as after any lost connection.
        socket.close(1000);
      } else {
        leave(msg.text); // the join was refused: back to the form, saying why
      }
      break;
  }
}

function closed(ws, event) {
  if (ws !== socket) return; // an old socket, already replaced
  socket = null;
  joined = false;
  if (!me) return; // the user left
  if (farewell) {
    leave(farewell); // back to the form, saying why
    return;
  }
  if (!inRoom) {
    leave(`cannot connect to the server (code ${event.code})`);
    return;
  }
  if (retries === 0) notice(`connection lost (code ${event.code}) — reconnecting…`, "error");
  const delay = Math.min(RETRY_MAX, RETRY_MIN * 2 ** retries) * (0.5 + Math.random() / 2);
  retries += 1;
  setStatus(`reconnecting… (attempt ${retries})`);
  setTimeout(() => me && !socket && connect(), delay);
}

function leave(error = "") {
  me = null;
  inRoom = false;
  lastTs = 0;
  if (socket) socket.close(1000);
  socket = null;
  $("messages").replaceChildren();
  $("room-view").hidden = true;
  $("join-view").hidden = false;
  $("join-error").textContent = error;
  $("nick").focus();
}

function showRoom(room, nick, node) {
  inRoom = true;
  $("room-title").textContent = `#${room}`;
  $("me").textContent = `as ${nick}`;
  $("node").textContent = node ? `on ${node}` : "";
  $("join-view").hidden = true;
  $("room-view").hidden = false;
  $("text").focus();
}

function setStatus(text) {
  $("status").textContent = text;
}

function renderMembers() {
  const items = [...members].sort().map((nick) => {
    const li = document.createElement("li");
    li.textContent = nick;
    if (me && nick === me.nick) li.className = "me";
    return li;
  });
  $("members").replaceChildren(...items);
  $("member-count").textContent = `(${members.size})`;
}

function addMessage(msg) {
  lastTs = Math.max(lastTs, msg.ts);
  const time = new Date(msg.ts * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  append("message" + (me && msg.nick === me.nick ? " mine" : ""), [
    ["time", time],
    ["nick", msg.nick],
    ["text", msg.text],
  ]);
}

function notice(text, kind = "") {
  append(`notice ${kind}`, [["text", text]]);
}

function append(className, parts) {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const li = document.createElement("li");
  li.className = className;
  for (const [name, text] of parts) {
    const span = document.createElement("span");
    span.className = name;
    span.textContent = text;
    li.append(span);
  }
  list.append(li);
  if (atBottom) list.scrollTop = list.scrollHeight;
}

$("join-form").addEventListener("submit", (event) => {
  event.preventDefault();
  if (socket) return; // already joining
  $("join-error").textContent = "";
  me = { room: $("room").value.trim(), nick: $("nick").value.trim() };
  connect();
});

$("say-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("text").value;
  if (!text.trim()) return;
  if (!joined) {
    notice("not connected: wait a moment and try again", "error");
    return;
  }
  socket.send(JSON.stringify({ type: "say", text }));
  $("text").value = "";
});

$("leave").addEventListener("click", () => leave());
