// Palisade chat client: a small ES module with no dependencies, wrapping the protocol in
// docs/PROTOCOL.md. It is the reference for client authors and what the demo page uses.
//
//   import { PalisadeClient } from "./palisade.js";
//   const chat = new PalisadeClient("ws://localhost:8080/");
//   chat.addEventListener("message", (e) => console.log(e.detail.username, e.detail.body));
//   chat.addEventListener("close", (e) => console.log(e.detail.code, e.detail.meaning));
//   await chat.connect(token, "lobby");
//   chat.send("hello");
//
// Events (CustomEvent, data in `detail`): "open", "join" {username, userId, totalUsers},
// "leave" {username, userId, totalUsers}, "message" {body, username, userId},
// "close" {code, reason, meaning, reconnect}.

/** Every close code the server sends (docs/PROTOCOL.md), and what a client should do. */
export const CLOSE_CODES = {
  1001: { meaning: "server shutting down, reconnect", reconnect: true },
  1002: { meaning: "websocket protocol error", reconnect: false },
  1003: { meaning: "binary frames are not supported", reconnect: false },
  1007: { meaning: "invalid utf-8", reconnect: false },
  1009: { meaning: "message too big", reconnect: false },
  4001: { meaning: "auth timeout", reconnect: true },
  4002: { meaning: "auth failed", reconnect: false },
  4003: { meaning: "join timeout", reconnect: true },
  4004: { meaning: "protocol violation", reconnect: false },
  4005: { meaning: "invalid username or room", reconnect: false },
  4006: { meaning: "rate limited", reconnect: true },
  4007: { meaning: "slow consumer", reconnect: true },
  4008: { meaning: "too many sessions for this user", reconnect: false },
  4009: { meaning: "banned", reconnect: false },
  4010: { meaning: "ping timeout", reconnect: true },
  4011: { meaning: "idle timeout", reconnect: true },
  4012: { meaning: "room full", reconnect: false },
  4013: { meaning: "token expired", reconnect: true },
  4014: { meaning: "room not allowed", reconnect: false },
};

export class PalisadeClient extends EventTarget {
  /** @param {string} url the gateway, e.g. "wss://chat.example.com/" */
  constructor(url) {
    super();
    this.url = url;
    this.socket = null;
    this.room = null;
  }

  /**
   * Opens the socket, authenticates and joins `room`. Resolves once the server acknowledges
   * the join (its own `join` frame), rejects if the socket closes first.
   */
  connect(token, room) {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(this.url);
      this.socket = socket;
      let joined = false;
      socket.addEventListener("open", () => {
        // The first frame must be auth, within the server's AUTH_TIMEOUT_MS.
        socket.send(JSON.stringify({ type: "auth", body: token }));
        socket.send(JSON.stringify({ type: "join", room }));
        this.room = room;
        this.#emit("open", {});
      });
      socket.addEventListener("message", (event) => {
        const frame = JSON.parse(event.data);
        if (frame.type === "join" && !joined) {
          joined = true;
          resolve(frame);
        }
        this.#dispatchFrame(frame);
      });
      socket.addEventListener("close", (event) => {
        const known = CLOSE_CODES[event.code] ?? {
          meaning: event.code === 1006 ? "connection lost" : "closed",
          reconnect: event.code === 1006,
        };
        const detail = { code: event.code, reason: event.reason, ...known };
        this.#emit("close", detail);
        if (!joined) reject(detail);
      });
    });
  }

  /** Sends a chat message to the room (not echoed back to this client). */
  send(body) {
    this.#send({ type: "message", body });
  }

  /** Leaves the room; the socket stays open, and `join` may follow within JOIN_TIMEOUT_MS. */
  leave() {
    this.#send({ type: "userleave" });
    this.room = null;
  }

  /** Joins another room after `leave()`. */
  join(room) {
    this.#send({ type: "join", room });
    this.room = room;
  }

  /** Extends the session with a fresh token for the same user (before the old one expires). */
  refresh(token) {
    this.#send({ type: "auth", body: token });
  }

  /** Closes the socket normally. */
  close() {
    this.socket?.close(1000, "bye");
  }

  #send(frame) {
    if (this.socket?.readyState !== WebSocket.OPEN) throw new Error("not connected");
    this.socket.send(JSON.stringify(frame));
  }

  #dispatchFrame(frame) {
    switch (frame.type) {
      case "join":
        this.#emit("join", frame);
        break;
      case "userleave":
        this.#emit("leave", frame);
        break;
      case "message":
        this.#emit("message", frame);
        break;
      case "notice":
        // {"type":"notice","body":"delivery_interrupted"|"delivery_restored"}: other nodes
        // are out of reach (messages may be missed), or back.
        this.#emit("notice", { code: frame.body });
        break;
      default:
        // Frame types this client does not know are ignored, as the protocol allows.
        break;
    }
  }

  #emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }
}
