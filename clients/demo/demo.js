// The demo page: get a token from the demo-only endpoint, connect with the reference client
// (palisade.js), and show everything the protocol does: joins, leaves, member counts,
// messages, and the close code and reason when the server closes the socket.
import { PalisadeClient } from "/palisade.js";

const $ = (id) => document.getElementById(id);
let client = null;
let me = null;
let leaving = false; // a close the user asked for is not a server refusal

// The server's MAX_MESSAGE_BYTES counts UTF-8 bytes of the whole frame.
const MAX_BODY_BYTES = 4000;

function log(text, kind = "") {
  const item = document.createElement("li");
  if (kind) item.className = kind;
  item.append(text); // text nodes only: message bodies are never parsed as HTML
  $("log").append(item);
  $("log").scrollTop = $("log").scrollHeight;
}

function logMessage(username, body, mine) {
  const item = document.createElement("li");
  if (mine) item.className = "mine";
  const who = document.createElement("b");
  who.textContent = `${username}: `;
  item.append(who, body);
  $("log").append(item);
  $("log").scrollTop = $("log").scrollHeight;
}

function setConnected(connected) {
  for (const id of ["message", "send", "leave"]) $(id).disabled = !connected;
  $("connect").disabled = connected;
}

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

async function connect() {
  $("banner").classList.remove("show");
  $("connect").disabled = true; // one connection at a time
  leaving = false;
  const name = $("name").value.trim();
  const room = $("room").value.trim();
  $("status").textContent = "Connecting…";
  try {
    me = await fetchToken(name);
    client = new PalisadeClient(`ws://${location.host}/`);
    client.addEventListener("join", ({ detail }) => {
      $("members").textContent = `${detail.totalUsers} in the room`;
      log(`${detail.username} joined`, "event");
    });
    client.addEventListener("leave", ({ detail }) => {
      $("members").textContent = `${detail.totalUsers} in the room`;
      log(`${detail.username} left`, "event");
    });
    client.addEventListener("message", ({ detail }) => logMessage(detail.username, detail.body, false));
    client.addEventListener("close", ({ detail }) => {
      setConnected(false);
      $("members").textContent = "";
      if (leaving) return;
      $("status").textContent = "Disconnected.";
      $("banner-text").textContent = `Closed by the server: ${detail.code} ${detail.reason || detail.meaning}`;
      $("banner").classList.add("show");
    });
    await client.connect(me.token, room);
    $("status").textContent = `Connected as ${me.name} in ${room}.`;
    setConnected(true);
    $("message").focus();
  } catch (error) {
    $("status").textContent = `Could not join: ${error.message ?? error.meaning ?? error}`;
    $("connect").disabled = false;
  }
}

$("join").addEventListener("submit", (event) => {
  event.preventDefault();
  connect();
});
$("reconnect").addEventListener("click", connect);
$("chat").addEventListener("submit", (event) => {
  event.preventDefault();
  const body = $("message").value;
  if (!body || !client) return;
  if (new TextEncoder().encode(body).length > MAX_BODY_BYTES) {
    $("status").textContent = "That message is too long for the server; shorten it.";
    return;
  }
  client.send(body);
  logMessage(me.name, body, true); // the server does not echo to the sender
  $("message").value = "";
});
$("leave").addEventListener("click", () => {
  leaving = true;
  client?.close();
  setConnected(false);
  $("status").textContent = "Left.";
});
