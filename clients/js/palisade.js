// Palisade client SDK: an ES module with no dependencies, for browsers and Node >= 20.
// It speaks protocol v2 (docs/PROTOCOL.md, "Protocol v2: many rooms on one socket") and falls
// back to GarinChat's one-room protocol (v1) when the server does not select `palisade.v2`.
//
//   import { PalisadeClient } from "@palisade/client";
//   const chat = new PalisadeClient("wss://chat.example.com/", { token: () => fetchJwt() });
//   await chat.connect();
//   const lobby = await chat.join("lobby", { history: 20 });
//   lobby.addEventListener("message", (e) => show(e.detail.username, e.detail.body));
//   await lobby.send("hello");
//
// The client reconnects by itself (exponential backoff, full jitter) unless a close code says
// retrying is useless, refreshes its token before it expires, and rejoins every room it was in
// with `since` = the last position it saw there, so the app gets exactly what it missed, once.
// See README.md for the whole API, the close-code table and the recovery semantics.

export const SUBPROTOCOL = "palisade.v2";

/**
 * Every close code the server sends (docs/PROTOCOL.md#close-codes) and whether reconnecting
 * can help. `reconnect: "rooms"` means: only when there are rooms to rejoin at once.
 */
export const CLOSE_CODES = Object.freeze({
  1000: { meaning: "closed normally", reconnect: false },
  // Never sent by the server: this client closes with it when an answer does not come.
  4000: { meaning: "no answer from the server", reconnect: true },
  1001: { meaning: "server shutting down, reconnect", reconnect: true },
  1002: { meaning: "websocket protocol error", reconnect: false },
  1003: { meaning: "binary frames are not supported", reconnect: false },
  1005: { meaning: "closed without a code", reconnect: true },
  1006: { meaning: "connection lost", reconnect: true },
  1007: { meaning: "invalid utf-8", reconnect: false },
  1009: { meaning: "message too big", reconnect: false },
  1011: { meaning: "server error", reconnect: true },
  1012: { meaning: "service restart", reconnect: true },
  1013: { meaning: "try again later", reconnect: true },
  4001: { meaning: "auth timeout", reconnect: true },
  4002: { meaning: "auth failed", reconnect: false },
  4003: { meaning: "join timeout", reconnect: "rooms" },
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
});

/** What the client does after a close with `code`: `{meaning, reconnect}`. */
export function closeCodeInfo(code) {
  const known = CLOSE_CODES[code];
  if (known) return known;
  // An application code we do not know is a decision of the server: respect it. Anything else
  // (a proxy's 1xxx, say) is treated as a dropped connection.
  return code >= 4000 && code <= 4999
    ? { meaning: "closed by the server", reconnect: false }
    : { meaning: "connection lost", reconnect: true };
}

const DEFAULTS = Object.freeze({
  protocol: "auto",
  initialDelayMs: 500,
  maxDelayMs: 30_000,
  rateLimitedDelayMs: 10_000,
  refreshMarginMs: 30_000,
  requestTimeoutMs: 10_000,
  maxAttempts: Infinity,
  // The server's default budgets per socket (CONTROL_RATE_PER_SEC/CONTROL_BURST,
  // TYPING_RATE_PER_SEC/TYPING_BURST): past them it closes with 4006.
  controlRatePerSec: 2,
  controlBurst: 5,
  typingRatePerSec: 2,
  typingBurst: 10,
});

/** Frames that spend the server's control budget (a token refresh does too). */
const CONTROL_FRAMES = new Set(["join", "userleave", "members", "seen"]);

/**
 * The server's rate limit (GCRA) mirrored on this side, so the client never earns a 4006 by
 * itself: rejoining 16 rooms after a reconnect must not exceed a burst of 5.
 */
export class Pacer {
  constructor(perSec, burst) {
    // A tenth slower than the server allows: frames can bunch up on their way.
    this.interval = 1100 / perSec;
    this.burst = burst;
    this.arrival = 0; // the theoretical arrival time of the next frame
  }

  /** Books the next slot and returns how long to wait for it (0: send now). */
  book(now = Date.now()) {
    const arrival = Math.max(this.arrival, now);
    const wait = Math.max(0, arrival - (this.burst - 1) * this.interval - now);
    this.arrival = arrival + this.interval;
    return wait;
  }

  /** Whether a frame may go now; books the slot only if so. */
  tryNow(now = Date.now()) {
    const arrival = Math.max(this.arrival, now);
    if (arrival - (this.burst - 1) * this.interval > now) return false;
    this.arrival = arrival + this.interval;
    return true;
  }
}

/** An Error with the protocol's error `code` (and the request's `room`, when it had one). */
export class PalisadeError extends Error {
  constructor(code, message = code, room = undefined) {
    super(message);
    this.name = "PalisadeError";
    this.code = code;
    if (room !== undefined) this.room = room;
  }
}

/** Reads the `exp` claim (seconds) of a JWT without verifying it, or `undefined`. */
export function tokenExpiry(jwt) {
  return decodeJwtPayload(jwt)?.exp;
}

function decodeJwtPayload(jwt) {
  const part = typeof jwt === "string" ? jwt.split(".")[1] : undefined;
  if (!part) return undefined;
  try {
    const base64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const binary = atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4));
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    return JSON.parse(new TextDecoder().decode(bytes));
  } catch {
    return undefined;
  }
}

/** A delay in [0, min(max, initial * 2^attempt)): exponential backoff with full jitter. */
export function backoffDelay(attempt, initialDelayMs, maxDelayMs, random = Math.random) {
  const ceiling = Math.min(maxDelayMs, initialDelayMs * 2 ** Math.min(attempt, 30));
  return Math.floor(random() * ceiling);
}

function emit(target, type, detail) {
  target.dispatchEvent(new CustomEvent(type, { detail }));
}

/** `on(type, listener)` returning a function that removes the listener. */
function subscribe(target, type, listener) {
  const wrapped = (event) => listener(event.detail, event);
  target.addEventListener(type, wrapped);
  return () => target.removeEventListener(type, wrapped);
}

/**
 * One room, joined or not. Events (CustomEvent, data in `detail`): "message", "join",
 * "leave", "members", "typing", "seen", "notice", "gap", "reset", "recovered". The client
 * dispatches each of them too, with `room` (the name) in `detail`.
 */
export class Room extends EventTarget {
  #client;
  /** Accept past messages after a join that did not recover: they are older than `position`. */
  #backfill = false;

  constructor(client, name) {
    super();
    this.#client = client;
    /** The room's name. */
    this.name = name;
    /** Whether the client is in the room (or joining it); false after `leave()`. */
    this.joined = false;
    /** Where this client stands in the room, `{epoch, offset}`, once the server said. */
    this.position = null;
    /** This user's read position at the last join (the acknowledgement's `seen`). */
    this.seenOffset = undefined;
    /** Users in the room after the last join or leave. */
    this.totalUsers = undefined;
    /** The `history` asked for at join (rejoins ask for it again when they cannot recover). */
    this.history = undefined;
  }

  on(type, listener) {
    return subscribe(this, type, listener);
  }

  /**
   * Joins the room; resolves with the acknowledgement once the server sent it. Past messages
   * follow it at once: listen on this handle (or on the client) before joining to see them.
   * With `since` (a position kept from an earlier session) the join recovers from there: the
   * acknowledgement's `recovered` says whether it could.
   */
  join({ history, since } = {}) {
    this.history = history;
    // A position the app kept (across a page load, say): recover from it.
    if (since) this.position = { epoch: since.epoch, offset: since.offset };
    return this.#client._join(this, false);
  }

  /** Sends a chat message (not echoed to this client). v2: resolves on the server's `ok`. */
  send(body) {
    return this.#client._request({ type: "message", room: this.name, body });
  }

  /** Tells the room this user is typing (the server relays about one every 2 s). */
  typing() {
    return this.#client._request({ type: "typing", room: this.name }, { answer: false });
  }

  /** Tells the room this user has read up to `offset` (default: the last message seen). */
  seen(offset = this.position?.offset) {
    if (offset === undefined) return Promise.reject(new PalisadeError("no_position", "no offset seen yet", this.name));
    // With the epoch, a position sent just before a history reset is ignored, not an error.
    const frame = { type: "seen", room: this.name, offset };
    if (this.position?.epoch) frame.epoch = this.position.epoch;
    return this.#client._request(frame);
  }

  /** Who is in the room: resolves with `{members, total, truncated}`. */
  async members() {
    const answer = await this.#client._request({ type: "members", room: this.name }, { answer: "members" });
    return { members: answer.members, total: answer.total, truncated: answer.truncated };
  }

  /** Leaves the room: the client will not rejoin it after a reconnect. */
  leave() {
    this.joined = false;
    return this.#client._request({ type: "userleave", room: this.name });
  }

  /** The join frame: `since` where the room was left off, and `history` as asked. */
  _joinFrame() {
    const frame = { type: "join", room: this.name };
    if (this.history !== undefined) frame.history = this.history;
    if (this.position?.epoch) frame.since = { epoch: this.position.epoch, offset: this.position.offset };
    // v1 turns the room extensions (offsets, typing, seen) on only for a join with either.
    if (frame.history === undefined && !frame.since) frame.history = 0;
    return frame;
  }

  /**
   * The server acknowledged a join. Runs synchronously, before any frame that follows it, so
   * the past messages behind it are judged against the new position.
   */
  _acknowledged(ack, rejoin) {
    const asked = this.position?.epoch !== undefined;
    const recovered = asked && ack.recovered === true;
    if (typeof ack.seen === "number") this.seenOffset = ack.seen;
    // Recovered: the position stands and the missed messages follow it. Otherwise start again
    // from where the room stands; the past messages that follow (if history was asked) are
    // older than that and delivered as they come.
    this.#backfill = !recovered;
    if (typeof ack.epoch === "string" && !recovered) this.position = { epoch: ack.epoch, offset: ack.offset };
    this._dispatch(ack);
    if (rejoin) {
      this.#emit("recovered", { recovered, epoch: this.position?.epoch, offset: this.position?.offset });
    }
  }

  /** The rejoin after a reconnect was refused (room_full, room_not_allowed, …). */
  _lost(error) {
    this.joined = false;
    this.#emit("recovered", { recovered: false, error, epoch: this.position?.epoch, offset: this.position?.offset });
  }

  /** A frame for this room from the server. */
  _dispatch(frame) {
    switch (frame.type) {
      case "message":
        return this.#message(frame);
      case "join":
        if (typeof frame.totalUsers === "number") this.totalUsers = frame.totalUsers;
        return this.#emit("join", strip(frame));
      case "userleave":
        if (typeof frame.totalUsers === "number") this.totalUsers = frame.totalUsers;
        return this.#emit("leave", strip(frame));
      case "members":
      case "typing":
      case "seen":
        return this.#emit(frame.type, strip(frame));
      case "notice":
        return this.#notice(frame);
      default:
        return undefined; // types this client does not know are ignored, as the protocol allows
    }
  }

  #message(frame) {
    if (typeof frame.offset !== "number") {
      // Not numbered (history off, or a node without Redis): nothing to de-duplicate by.
      this.#backfill = false;
      return this.#emit("message", strip(frame));
    }
    if (frame.history === true && this.#backfill) return this.#emit("message", strip(frame));
    this.#backfill = false;
    // At or below the position it was delivered already (before a reconnect, say).
    if (this.position && frame.offset <= this.position.offset) return undefined;
    this.position = { epoch: this.position?.epoch, offset: frame.offset };
    return this.#emit("message", strip(frame));
  }

  #notice(frame) {
    const detail = { code: frame.body, epoch: frame.epoch, offset: frame.offset };
    // history_gap / history_reset: this is where the room now stands.
    if (typeof frame.epoch === "string") this.position = { epoch: frame.epoch, offset: frame.offset };
    this.#emit("notice", detail);
    if (frame.body === "history_gap") this.#emit("gap", detail);
    if (frame.body === "history_reset") this.#emit("reset", detail);
  }

  #emit(type, detail) {
    emit(this, type, detail);
    emit(this.#client, type, { ...detail, room: this.name });
  }
}

/** A server frame as the app sees it: without the routing fields. */
function strip(frame) {
  const { type, id, room, ...detail } = frame;
  return detail;
}

/**
 * A connection to a Palisade gateway. Events (CustomEvent, data in `detail`): "state"
 * {state, code?, reason?}, "open" {protocol}, "authed" {userId, username}, "close" {code,
 * reason, meaning, reconnect}, "reconnecting" {attempt, delayMs, code}, "closed" {code,
 * reason, meaning}, "direct" {body, username, userId}, "error" {error}; and every room event,
 * with `room` in `detail`.
 */
export class PalisadeClient extends EventTarget {
  #options;
  #WebSocket;
  #socket = null;
  #rooms = new Map(); // every Room handle, by name; `joined` says which to rejoin
  #pending = new Map(); // v2 requests by id
  #v1Queue = []; // v1 answers carry no id: their askers wait in order
  #nextId = 1;
  #attempt = 0;
  #wanted = false; // the app wants a connection: connect() called, close() not
  #ready = null; // {promise, resolve, reject} while a connection is under way
  #retryTimer = null;
  #refreshTimer = null;
  #offerV1Next = false; // the v2 offer just failed its handshake: try once without it
  #controlPacer = null; // per socket, as the server's budgets are
  #typingPacer = null;
  #authedOnSocket = false; // the first auth is free; refreshes spend the control budget

  /**
   * @param {string} url the gateway, e.g. "wss://chat.example.com/"
   * @param {object} options see README.md; `token` (async () => JWT) is required
   */
  constructor(url, options = {}) {
    super();
    if (typeof options.token !== "function") throw new TypeError("options.token must be a function returning a JWT");
    this.url = url;
    this.#options = { ...DEFAULTS, ...options };
    this.#WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (typeof this.#WebSocket !== "function") throw new TypeError("no WebSocket: pass options.WebSocket");
    /** "idle", "connecting", "open", "reconnecting" or "closed". */
    this.state = "idle";
    /** "v2" or "v1" once a socket is open. */
    this.protocol = null;
    /** `{userId, username}` once authenticated (v1: read from the token). */
    this.user = null;
    this.#watchNetwork();
  }

  on(type, listener) {
    return subscribe(this, type, listener);
  }

  /** The rooms this client is in (or joining), by name. */
  get rooms() {
    return new Map([...this.#rooms].filter(([, room]) => room.joined));
  }

  /** The handle of a room, joined or not (the same handle for the same name). */
  room(name) {
    let room = this.#rooms.get(name);
    if (!room) {
      room = new Room(this, name);
      this.#rooms.set(name, room);
    }
    return room;
  }

  /** Opens the socket and authenticates; resolves once the session is ready (rooms rejoined). */
  connect() {
    if (this.state === "open") return Promise.resolve();
    if (!this.#ready) this.#ready = deferred();
    if (!this.#wanted) {
      this.#wanted = true;
      this.#attempt = 0;
      this.#open();
    }
    return this.#ready.promise;
  }

  /** Joins a room and resolves with its handle (`client.room(name).join(options)`). */
  async join(name, options = {}) {
    const room = this.room(name);
    await room.join(options);
    return room;
  }

  /** Sends a direct message to a user id (v2, DIRECT_MESSAGES on); resolves on `ok`. */
  direct(userId, body) {
    return this._request({ type: "direct", to: userId, body });
  }

  /** Closes the socket for good: no reconnect, every room left. */
  close(code = 1000, reason = "bye") {
    this.#wanted = false;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#refreshTimer);
    for (const room of this.#rooms.values()) room.joined = false;
    const socket = this.#socket;
    if (socket && socket.readyState <= 1) socket.close(code, reason);
    else this.#closed({ code, reason, meaning: "closed by the app" });
  }

  // ---- connecting ------------------------------------------------------------------------

  /** Opens a socket, with a fresh token (or `token`, when asking again without v2). */
  async #open(token = undefined) {
    this.#setState(this.#attempt === 0 ? "connecting" : "reconnecting");
    try {
      token ??= await this.#options.token();
    } catch (error) {
      emit(this, "error", { error });
      return this.#retry(1006, "token provider failed");
    }
    if (!this.#wanted) return undefined;
    const offerV2 = this.#options.protocol === "v2" || (this.#options.protocol === "auto" && !this.#offerV1Next);
    this.#offerV1Next = false;
    const socket = new this.#WebSocket(this.url, offerV2 ? [SUBPROTOCOL] : []);
    this.#socket = socket;
    this.#controlPacer = new Pacer(this.#options.controlRatePerSec, this.#options.controlBurst);
    this.#typingPacer = new Pacer(this.#options.typingRatePerSec, this.#options.typingBurst);
    this.#authedOnSocket = false;
    let opened = false;
    let ended = false;
    const end = (code, reason) => {
      if (ended) return undefined;
      ended = true;
      if (!opened && offerV2 && this.#options.protocol === "auto" && socket === this.#socket && this.#wanted) {
        // Browsers and Node fail a handshake whose answer selects no subprotocol, which is how
        // a server without v2 answers an offer: ask again at once without it (v1). The next
        // reconnect offers v2 again, in case the server was upgraded meanwhile.
        this.#offerV1Next = true;
        this.#socket = null;
        return this.#open(token);
      }
      return this.#onClose(socket, code, reason);
    };
    socket.addEventListener("open", () => {
      opened = true;
      this.#onOpen(socket, token);
    });
    socket.addEventListener("message", (event) => this.#onFrame(socket, event.data));
    socket.addEventListener("close", (event) => end(event.code, event.reason));
    // Some WebSockets (Node 20's) report a failed handshake with "error" and no "close": an
    // error is a drop unless a close follows soon.
    socket.addEventListener("error", () => setTimeout(() => end(1006, ""), opened ? 1000 : 0));
    return undefined;
  }

  async #onOpen(socket, token) {
    this.protocol = socket.protocol === SUBPROTOCOL ? "v2" : "v1";
    emit(this, "open", { protocol: this.protocol });
    try {
      if (this.protocol === "v1" && this.#options.protocol === "v2") {
        throw new PalisadeError("unsupported_v1", "the server did not select palisade.v2");
      }
      await this.#authenticate(token);
      await this.#rejoinAll();
    } catch (error) {
      if (socket !== this.#socket) return;
      if (error.code === "timeout") return socket.close(4000, "no answer");
      if (error.code === "unsupported_v1") {
        emit(this, "error", { error });
        return this.close(1000, "v2 needed");
      }
      return undefined; // the socket is closing (a refused token): its close event decides
    }
    if (socket !== this.#socket) return;
    this.#attempt = 0;
    this.#setState("open");
    this.#ready?.resolve();
    this.#ready = null;
  }

  /** Sends `auth` (v2 awaits `authed`) and schedules the next refresh. */
  async #authenticate(token) {
    if (this.protocol === "v2") {
      const authed = await this._request({ type: "auth", body: token }, { answer: "authed" });
      this.user = { userId: authed.userId, username: authed.username };
    } else {
      await this._request({ type: "auth", body: token }, { answer: "none" }); // v1 answers nothing
      const claims = decodeJwtPayload(token) ?? {};
      this.user = { userId: claims.sub, username: claims.name ?? claims.sub };
    }
    this.#authedOnSocket = true;
    emit(this, "authed", { ...this.user });
    this.#scheduleRefresh(token);
  }

  /** After a reconnect: every room again, from where it was left off. */
  async #rejoinAll() {
    const rooms = [...this.#rooms.values()].filter((room) => room.joined);
    if (this.protocol === "v1" && rooms.length > 1) {
      throw new PalisadeError("unsupported_v1", "the server fell back to v1, which has one room");
    }
    await Promise.all(rooms.map((room) => this._join(room, true).catch((error) => {
      if (error.code === "disconnected" || error.code === "timeout") throw error;
      room._lost(error); // the room refuses us now; the other rooms stay
      emit(this, "error", { error });
    })));
  }

  /** Sends a room's join frame; the acknowledgement is applied before any frame after it. */
  async _join(room, rejoin) {
    if (!rejoin) {
      if (room.joined) throw new PalisadeError("already_joined", `already in ${room.name}`, room.name);
      await this.connect();
      // Checked after connect(): the protocol is known only then, and a join may have raced.
      if (room.joined) throw new PalisadeError("already_joined", `already in ${room.name}`, room.name);
      if (this.protocol === "v1" && this.rooms.size > 0) {
        throw new PalisadeError("unsupported_v1", "protocol v1 has one room at a time: leave first", room.name);
      }
      room.joined = true;
    }
    const onAnswer = (ack) => room._acknowledged(ack, rejoin);
    try {
      return await this._request(room._joinFrame(), { answer: "join", room: room.name, onAnswer });
    } catch (error) {
      if (!rejoin) room.joined = false;
      throw error;
    }
  }

  #onClose(socket, code, reason) {
    if (socket !== this.#socket) return undefined;
    this.#socket = null;
    clearTimeout(this.#refreshTimer);
    const info = closeCodeInfo(code);
    const hasRooms = this.rooms.size > 0;
    const reconnect = this.#wanted && (info.reconnect === "rooms" ? hasRooms : info.reconnect);
    // Requests in flight fail: for now when a reconnect follows, for good (with the code) if not.
    this.#failPending(reconnect
      ? new PalisadeError("disconnected", `socket closed (${code})`)
      : closedError(code, reason, info.meaning));
    emit(this, "close", { code, reason, meaning: info.meaning, reconnect });
    if (reconnect) return this.#retry(code, reason);
    return this.#closed({ code, reason, meaning: info.meaning });
  }

  #closed(detail) {
    this.#wanted = false;
    for (const room of this.#rooms.values()) room.joined = false;
    this.#ready?.reject(closedError(detail.code, detail.reason, detail.meaning));
    this.#ready = null;
    this.#setState("closed", detail);
  }

  /** Schedules the next attempt: longer after a rate limit, at once after an expiry. */
  #retry(code, reason) {
    if (!this.#wanted) return this.#closed({ code, reason, meaning: closeCodeInfo(code).meaning });
    const options = this.#options;
    if (this.#attempt >= options.maxAttempts) return this.#closed({ code, reason, meaning: "gave up reconnecting" });
    if (!this.#ready) this.#ready = deferred();
    let delayMs = backoffDelay(this.#attempt, options.initialDelayMs, options.maxDelayMs);
    if (code === 4006) delayMs += options.rateLimitedDelayMs;
    if (code === 4013) delayMs = 0; // a fresh token from the provider is all it takes
    this.#attempt += 1;
    this.#setState("reconnecting", { code, reason });
    emit(this, "reconnecting", { attempt: this.#attempt, delayMs, code });
    // While the browser knows it is offline, knocking is pointless: "online" resumes at once.
    if (isOffline()) return undefined;
    this.#retryTimer = setTimeout(() => this.#open(), delayMs);
    return undefined;
  }

  #watchNetwork() {
    if (typeof globalThis.addEventListener !== "function" || typeof globalThis.navigator?.onLine !== "boolean") return;
    globalThis.addEventListener("online", () => {
      if (!this.#wanted || this.state !== "reconnecting" || this.#socket) return;
      clearTimeout(this.#retryTimer);
      this.#open();
    });
  }

  // ---- token refresh ---------------------------------------------------------------------

  /** Refreshes `refreshMarginMs` before `exp`, but never with less than half its life gone. */
  #scheduleRefresh(token) {
    clearTimeout(this.#refreshTimer);
    const exp = tokenExpiry(token);
    if (typeof exp !== "number") return;
    const left = exp * 1000 - Date.now();
    const delay = Math.max(left - this.#options.refreshMarginMs, left / 2, 1000);
    this.#refreshTimer = setTimeout(() => this.#refresh(), delay);
  }

  async #refresh() {
    try {
      await this.#authenticate(await this.#options.token());
    } catch (error) {
      if (error.code === "disconnected" || error.code === "not_connected") return; // the close decides
      // A provider that failed: try again shortly (the server closes with 4013 at expiry).
      emit(this, "error", { error });
      this.#refreshTimer = setTimeout(() => this.#refresh(), 2000);
    }
  }

  // ---- frames ----------------------------------------------------------------------------

  /**
   * Sends a frame and waits for its answer. v2: the frame carries an id, the answer with that
   * id resolves it, an `error` with it rejects. v1 has no ids: `answer` names the frame type
   * that answers (askers wait in order); frames v1 does not answer resolve once sent.
   * Internal; the tests use it for frames the API would not send.
   */
  async _request(frame, options = {}) {
    const socket = this.#socket;
    if (frame.type === "typing") {
      // A late typing notice is worthless: past the budget it is dropped, not delayed.
      if (socket && !this.#typingPacer.tryNow()) return undefined;
    } else if (socket && (CONTROL_FRAMES.has(frame.type) || (frame.type === "auth" && this.#authedOnSocket))) {
      const wait = this.#controlPacer.book();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      if (this.#socket !== socket) throw new PalisadeError("disconnected", "the socket closed while the frame waited");
    }
    return this.#send(frame, options);
  }

  #send(frame, { answer = "ok", room = frame.room, onAnswer } = {}) {
    if (this.protocol === "v1") return this.#requestV1(frame, answer, onAnswer);
    if (answer === false) return attempt(() => this.#sendFrame(frame)); // typing: no answer
    const id = `r${this.#nextId++}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new PalisadeError("timeout", `no answer to ${frame.type}`, room));
      }, this.#options.requestTimeoutMs);
      this.#pending.set(id, { resolve, reject, timer, onAnswer, type: frame.type, room });
      try {
        this.#sendFrame({ ...frame, id });
      } catch (error) {
        clearTimeout(timer);
        this.#pending.delete(id);
        reject(error);
      }
    });
  }

  #requestV1(frame, answer, onAnswer) {
    if (frame.type === "direct") return Promise.reject(new PalisadeError("unsupported_v1", "protocol v1 has no direct messages"));
    const sent = attempt(() => this.#sendFrame(v1Frame(frame)));
    if (answer !== "join" && answer !== "members") return sent;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#v1Queue = this.#v1Queue.filter((waiter) => waiter.timer !== timer);
        reject(new PalisadeError("timeout", `no answer to ${frame.type}`));
      }, this.#options.requestTimeoutMs);
      this.#v1Queue.push({ type: answer, resolve, reject, timer, onAnswer });
      sent.catch((error) => {
        this.#v1Queue = this.#v1Queue.filter((waiter) => waiter.timer !== timer);
        clearTimeout(timer);
        reject(error);
      });
    });
  }

  #sendFrame(frame) {
    if (this.#socket?.readyState !== 1) throw new PalisadeError("not_connected", "not connected");
    this.#socket.send(JSON.stringify(frame));
  }

  #onFrame(socket, data) {
    if (socket !== this.#socket || typeof data !== "string") return undefined;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return undefined; // the server sends JSON objects only
    }
    if (frame === null || typeof frame !== "object") return undefined;
    if (this.protocol === "v1") return this.#onFrameV1(frame);
    if (typeof frame.id === "string" && this.#settle(this.#pending.get(frame.id), frame)) {
      this.#pending.delete(frame.id);
      return undefined;
    }
    return this.#route(frame);
  }

  /** Settles `request` with its answer `frame`; false when there is no such request. */
  #settle(request, frame) {
    if (!request) return false;
    clearTimeout(request.timer);
    if (frame.type === "error") {
      // A refused request spends the control budget, unless it was a control frame (already
      // booked when sent): the server charges each request once.
      if (!CONTROL_FRAMES.has(request.type) && request.type !== "auth") this.#controlPacer?.book();
      // The request's own room: the server does not echo a room name that breaks its rules.
      const room = frame.room ?? request.room;
      request.reject(new PalisadeError(frame.code, `${request.type ?? frame.type} refused: ${frame.code}`, room));
      return true;
    }
    request.onAnswer?.(frame);
    request.resolve(frame);
    return true;
  }

  #route(frame) {
    switch (frame.type) {
      case "direct":
        return emit(this, "direct", { body: frame.body, username: frame.username, userId: frame.userId });
      case "error":
        this.#controlPacer?.book();
        return emit(this, "error", { error: new PalisadeError(frame.code, frame.code, frame.room) });
      case "authed":
      case "ok":
        return undefined;
      default: {
        const room = typeof frame.room === "string" ? this.#rooms.get(frame.room) : undefined;
        return room?.joined ? room._dispatch(frame) : undefined;
      }
    }
  }

  #onFrameV1(frame) {
    const waiter = this.#v1Queue[0];
    if (waiter?.type === frame.type) {
      this.#v1Queue.shift();
      this.#settle(waiter, frame);
      return undefined;
    }
    // v1 frames name no room: they belong to the one room there is.
    const [room] = this.rooms.values();
    return room?._dispatch(frame);
  }

  #failPending(error) {
    for (const request of this.#pending.values()) {
      clearTimeout(request.timer);
      request.reject(error);
    }
    this.#pending.clear();
    for (const waiter of this.#v1Queue.splice(0)) {
      clearTimeout(waiter.timer);
      waiter.reject(error);
    }
  }

  #setState(state, detail = {}) {
    if (this.state === state && state !== "reconnecting") return;
    this.state = state;
    emit(this, "state", { state, ...detail });
    if (state === "closed") emit(this, "closed", detail);
  }
}

/** The v1 (GarinChat) form of a frame: no `id`, and `room` only on `join`. */
function v1Frame(frame) {
  const { room, id, ...rest } = frame;
  return frame.type === "join" ? { ...rest, room } : rest;
}

/** The error of what failed because the socket closed for good: code `close_<code>`. */
function closedError(code, reason, meaning) {
  const error = new PalisadeError(`close_${code}`, `closed: ${code} ${reason || meaning}`);
  error.closeCode = code;
  return error;
}

/** `fn()` as a promise: resolved, or rejected with what it threw. */
function attempt(fn) {
  try {
    fn();
    return Promise.resolve();
  } catch (error) {
    return Promise.reject(error);
  }
}

function isOffline() {
  return globalThis.navigator?.onLine === false && typeof globalThis.addEventListener === "function";
}

function deferred() {
  let resolve;
  let reject;
  const promise = new Promise((res, rej) => {
    resolve = res;
    reject = rej;
  });
  promise.catch(() => {}); // a connect() nobody awaits must not become an unhandled rejection
  return { promise, resolve, reject };
}
