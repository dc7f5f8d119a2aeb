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
// Rooms that remember (docs/PROTOCOL.md#rooms-that-remember): pass `{ history: 20 }` to get
// the last 20 messages on join, or `{ since: chat.position }` after a reconnect to get exactly
// what was missed (the acknowledgement says `recovered`). `chat.position` follows the room's
// epoch and the last offset seen; `members()`, `typing()` and `seen()` use the extensions.
//
// Events (CustomEvent, data in `detail`): "open", "join" {username, userId, totalUsers},
// "leave" {username, userId, totalUsers}, "message" {body, username, userId, offset?, history?,
// ts?}, "members" {members, total, truncated}, "typing" {username, userId}, "seen" {username,
// userId, offset}, "notice" {code, epoch?, offset?}, "close" {code, reason, meaning, reconnect}.

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
  4015: { meaning: "disconnected by the server", reconnect: false },
  4016: { meaning: "token revoked", reconnect: false },
};

export class PalisadeClient extends EventTarget {
  /** @param {string} url the gateway, e.g. "wss://chat.example.com/" */
  constructor(url) {
    super();
    this.url = url;
    this.socket = null;
    this.room = null;
    /** The room's epoch and the last offset seen, once known: `{ epoch, offset }`. */
    this.position = null;
  }

  /**
   * Opens the socket, authenticates and joins `room`. Resolves with the server's
   * acknowledgement (its own `join` frame: with `history` or `since`, also the room's `epoch`
   * and `offset`, the user's `seen`, and whether `since` was `recovered`); rejects if the socket
   * closes first.
   *
   * @param {{ history?: number, since?: { epoch: string, offset: number } }} [options]
   */
  connect(token, room, options = {}) {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(this.url);
      this.socket = socket;
      let joined = false;
      socket.addEventListener("open", () => {
        // The first frame must be auth, within the server's AUTH_TIMEOUT_MS.
        socket.send(JSON.stringify({ type: "auth", body: token }));
        socket.send(JSON.stringify(this.#joinFrame(room, options)));
        this.room = room;
        this.#emit("open", {});
      });
      socket.addEventListener("message", (event) => {
        const frame = JSON.parse(event.data);
        if (frame.type === "join" && !joined) {
          joined = true;
          this.#acknowledged(frame);
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

  /** Joins another room after `leave()` (options as for `connect`). */
  join(room, options = {}) {
    this.#send(this.#joinFrame(room, options));
    this.room = room;
    this.position = null;
  }

  /** Asks who is in the room; resolves with the next "members" answer. */
  members() {
    const answer = new Promise((resolve) =>
      this.addEventListener("members", (e) => resolve(e.detail), { once: true }),
    );
    this.#send({ type: "members" });
    return answer;
  }

  /** Tells the room this user is typing (the server relays at most one per couple of seconds). */
  typing() {
    this.#send({ type: "typing" });
  }

  /** Tells the room this user has read up to `offset` (default: the last message seen). */
  seen(offset = this.position?.offset) {
    if (offset === undefined) throw new Error("no offset seen yet");
    // With the epoch, a position sent just before a history reset is ignored, not an error.
    this.#send({ type: "seen", offset, epoch: this.position?.epoch });
  }

  /** Extends the session with a fresh token for the same user (before the old one expires). */
  refresh(token) {
    this.#send({ type: "auth", body: token });
  }

  /** Closes the socket normally. */
  close() {
    this.socket?.close(1000, "bye");
  }

  #joinFrame(room, { history, since } = {}) {
    const frame = { type: "join", room };
    if (history !== undefined) frame.history = history;
    if (since) frame.since = { epoch: since.epoch, offset: since.offset };
    return frame;
  }

  #acknowledged(ack) {
    if (typeof ack.epoch === "string") this.position = { epoch: ack.epoch, offset: ack.offset };
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
        if (typeof frame.offset === "number" && this.position) {
          this.position = { epoch: this.position.epoch, offset: frame.offset };
        }
        this.#emit("message", frame);
        break;
      case "members":
      case "typing":
      case "seen":
        this.#emit(frame.type, frame);
        break;
      case "notice":
        // "delivery_interrupted"/"delivery_restored": other nodes are out of reach (messages
        // may be missed), or back. "history_gap"/"history_reset" {epoch, offset}: messages
        // were lost for good, or the room's history was; this is where the room now stands.
        if (typeof frame.epoch === "string") {
          this.position = { epoch: frame.epoch, offset: frame.offset };
        }
        this.#emit("notice", { code: frame.body, epoch: frame.epoch, offset: frame.offset });
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
