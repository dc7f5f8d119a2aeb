// The demo page: a token from the demo-only endpoint, then the SDK (palisade.js) on protocol v2:
// several rooms in tabs with unread counts, the current room's members, typing, read receipts
// ("seen by"), and the connection's state as the SDK reconnects.
import { PalisadeClient } from "/palisade.js";

const $ = (id) => document.getElementById(id);
const MAX_BODY_BYTES = 4000; // the server's MAX_MESSAGE_BYTES counts the whole frame's bytes
const TYPING_EVERY_MS = 1500; // the server relays one typing frame per user per room per 2 s
const SEEN_EVERY_MS = 1000; // read positions spend the control budget: about once a second

let client = null;
let me = null; // {token, userId, name}
let current = null; // the name of the room in the open tab
const views = new Map(); // room name → its tab, panel and state

async function fetchToken(name) {
  const response = await fetch("/demo/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ name }),
  });
  const reply = await response.json();
  if (!response.ok) throw new Error(reply.error ?? `HTTP ${response.status}`);
  return reply;
}

function setStatus(text, state) {
  $("status").textContent = text;
  $("status").dataset.state = state;
}

function enable(connected) {
  for (const id of ["room", "join"]) $(id).disabled = !connected;
  const inRoom = connected && current !== null;
  for (const id of ["message", "send", "leave"]) $(id).disabled = !inRoom;
}

// ---- connection ------------------------------------------------------------------------

async function connect() {
  $("reconnect").hidden = true;
  $("connect").disabled = true;
  setStatus("Connecting…", "connecting");
  try {
    // A demo token names a fresh guest each time, and lives a day: mint one, use it for every
    // reconnect (a refresh must name the same user).
    me ??= await fetchToken($("name").value.trim());
    client = new PalisadeClient(`ws://${location.host}/`, { token: async () => me.token, rateLimitedDelayMs: 2000 });
    client.on("state", showState);
    client.on("direct", (d) => log(current, `${d.username} (direct): ${d.body}`, "event"));
    await client.connect();
    await openRoom($("room").value.trim());
  } catch (error) {
    setStatus(`Could not connect: ${error.message}`, "closed");
    $("connect").disabled = false;
  }
}

function showState({ state, code, reason, meaning }) {
  const why = code ? ` (${code} ${reason || meaning || ""})` : "";
  if (state === "open") setStatus(`Connected as ${me.name} (protocol ${client.protocol}).`, state);
  if (state === "reconnecting") setStatus(`Reconnecting…${why}`, state);
  if (state === "closed") {
    setStatus(`Disconnected${why}.`, state);
    $("reconnect").hidden = false;
    for (const name of [...views.keys()]) removeRoom(name);
  }
  enable(state === "open");
}

// ---- rooms and tabs --------------------------------------------------------------------

async function openRoom(name) {
  if (views.has(name)) return select(name);
  const view = createView(name);
  try {
    await view.room.join({ history: 20 });
  } catch (error) {
    removeRoom(name);
    const why = error.code === "unsupported_v1" ? "this server speaks v1: one room at a time" : error.code ?? error.message;
    setStatus(`Could not join ${name}: ${why}`, client.state);
    return undefined;
  }
  select(name);
  fetchMembers(view);
  return undefined;
}

/** A tab and a panel for a room, wired to its events (before the join: history follows it). */
function createView(name) {
  const tab = document.createElement("button");
  tab.type = "button";
  tab.setAttribute("role", "tab");
  tab.dataset.room = name;
  const badge = document.createElement("span");
  badge.className = "unread";
  tab.append(name, badge);
  tab.addEventListener("click", () => select(name));
  $("tabs").append(tab);

  const panel = $("room-view").content.firstElementChild.cloneNode(true);
  panel.dataset.room = name;
  panel.hidden = true;
  $("rooms").append(panel);

  const view = {
    room: client.room(name),
    tab,
    badge,
    panel,
    unread: 0,
    members: new Map(), // userId → username, kept from join and leave events
    readers: new Map(), // userId → {username, offset}: the "seen by" line
    lastSeenSent: -1,
    lastTypingSent: 0,
    typingTimer: null,
    seenTimer: null,
  };
  views.set(name, view);
  wire(view);
  return view;
}

function wire(view) {
  const { room } = view;
  room.on("message", (m) => {
    logMessage(room.name, m.username, m.body, false);
    if (room.name === current && document.visibilityState !== "hidden") markSeen(view);
    else setUnread(view, view.unread + 1);
    renderSeenBy(view);
  });
  room.on("join", (d) => {
    log(room.name, `${d.username} joined`, "event");
    view.members.set(d.userId, d.username);
    renderMembers(view);
  });
  room.on("leave", (d) => {
    log(room.name, `${d.username} left`, "event");
    view.members.delete(d.userId);
    view.readers.delete(d.userId);
    renderMembers(view);
    renderSeenBy(view);
  });
  room.on("typing", (d) => showTyping(view, d.username));
  room.on("seen", (d) => {
    if (d.userId === client.user?.userId) return; // this user's own position, from any tab
    view.readers.set(d.userId, { username: d.username, offset: d.offset });
    renderSeenBy(view);
  });
  room.on("notice", (d) => log(room.name, `notice: ${d.code}`, "event"));
  room.on("recovered", (d) => {
    if (d.error) log(room.name, `Could not rejoin: ${d.error.code}`, "event");
    else log(room.name, d.recovered ? "Reconnected: nothing missed." : "Reconnected: some messages may be missing.", "event");
    if (!d.error) fetchMembers(view); // who came and went meanwhile
  });
}

function select(name) {
  current = name;
  for (const [room, view] of views) {
    view.tab.setAttribute("aria-selected", String(room === name));
    view.panel.hidden = room !== name;
  }
  const view = views.get(name);
  if (view) {
    setUnread(view, 0);
    markSeen(view);
  }
  enable(client?.state === "open");
}

function removeRoom(name) {
  const view = views.get(name);
  if (!view) return;
  for (const timer of [view.typingTimer, view.seenTimer]) clearTimeout(timer);
  view.tab.remove();
  view.panel.remove();
  views.delete(name);
  if (current === name) {
    current = null;
    const [other] = views.keys();
    if (other) select(other);
  }
  enable(client?.state === "open");
}

function setUnread(view, count) {
  view.unread = count;
  view.badge.textContent = count > 0 ? String(count) : "";
}

// ---- members, typing, read receipts ----------------------------------------------------

/**
 * The member list: asked for once per join (and after a rejoin), then kept from join and leave
 * events. Every request spends the control budget (CONTROL_RATE_PER_SEC, 2/s by default), so
 * the page never asks on every event.
 */
async function fetchMembers(view) {
  try {
    const { members, total, truncated } = await view.room.members();
    view.members = new Map(members.map((m) => [m.userId, m.username]));
    view.truncatedTotal = truncated ? total : undefined;
    renderMembers(view);
  } catch {
    // Disconnected meanwhile: the rejoin asks again.
  }
}

function renderMembers(view) {
  const names = [...view.members].map(([userId, username]) => (userId === client.user?.userId ? `${username} (you)` : username));
  const list = view.panel.querySelector(".members");
  list.replaceChildren(...names.sort().map(item));
  if (view.truncatedTotal) list.append(item(`… ${view.truncatedTotal} in all`));
}

function showTyping(view, username) {
  const line = view.panel.querySelector(".typing");
  line.textContent = `${username} is typing…`;
  clearTimeout(view.typingTimer);
  view.typingTimer = setTimeout(() => (line.textContent = ""), 3000);
}

/** Tells the room this page has read up to its last message, at most once a second. */
function markSeen(view) {
  if (view.seenTimer) return;
  view.seenTimer = setTimeout(() => {
    view.seenTimer = null;
    const offset = view.room.position?.offset;
    // Only a rise counts, and the acknowledgement said where this user had read up to.
    const read = Math.max(view.lastSeenSent, view.room.seenOffset ?? 0);
    if (offset === undefined || offset <= read || !view.room.joined) return;
    view.lastSeenSent = offset;
    view.room.seen(offset).catch(() => {});
  }, view.lastSeenSent < 0 ? 0 : SEEN_EVERY_MS);
}

/** "Seen by": the others whose read position reaches the newest message this page knows of. */
function renderSeenBy(view) {
  const offsets = [view.room.position?.offset ?? 0, ...[...view.readers.values()].map((r) => r.offset)];
  const newest = Math.max(...offsets);
  const names = [...view.readers.values()].filter((r) => r.offset >= newest).map((r) => r.username);
  view.panel.querySelector(".seen-by").textContent = names.length ? `Seen by ${names.join(", ")}` : "";
}

// ---- the log ---------------------------------------------------------------------------

function item(text) {
  const li = document.createElement("li");
  li.textContent = text;
  return li;
}

function log(room, text, kind = "") {
  const view = views.get(room);
  if (!view) return;
  const li = item(text); // text nodes only: bodies are never parsed as HTML
  if (kind) li.className = kind;
  append(view, li);
}

function logMessage(room, username, body, mine) {
  const view = views.get(room);
  if (!view) return;
  const li = document.createElement("li");
  if (mine) li.className = "mine";
  const who = document.createElement("b");
  who.textContent = `${username}: `;
  li.append(who, body);
  append(view, li);
}

function append(view, li) {
  const logList = view.panel.querySelector(".log");
  logList.append(li);
  logList.scrollTop = logList.scrollHeight;
}

// ---- the forms -------------------------------------------------------------------------

$("login").addEventListener("submit", (event) => {
  event.preventDefault();
  connect();
});
$("reconnect").addEventListener("click", connect);
$("add-room").addEventListener("submit", (event) => {
  event.preventDefault();
  openRoom($("room").value.trim());
});
$("message").addEventListener("input", () => {
  const view = views.get(current);
  if (!view || Date.now() - view.lastTypingSent < TYPING_EVERY_MS) return;
  view.lastTypingSent = Date.now();
  view.room.typing().catch(() => {});
});
$("chat").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = $("message").value;
  const view = views.get(current);
  if (!body || !view) return;
  if (new TextEncoder().encode(body).length > MAX_BODY_BYTES) {
    setStatus("That message is too long for the server; shorten it.", client.state);
    return;
  }
  $("message").value = "";
  logMessage(view.room.name, me.name, body, true); // the server does not echo to the sender
  try {
    await view.room.send(body);
  } catch (error) {
    log(view.room.name, `Not sent: ${error.code ?? error.message}`, "event");
  }
});
$("leave").addEventListener("click", async () => {
  const view = views.get(current);
  if (!view) return;
  removeRoom(view.room.name);
  await view.room.leave().catch(() => {});
});
document.addEventListener("visibilitychange", () => {
  const view = views.get(current);
  if (view && document.visibilityState === "visible") markSeen(view);
});
