// Types of the Palisade client SDK (palisade.js). Hand-written: keep them in step with it.

/** The subprotocol of protocol v2: "palisade.v2". */
export declare const SUBPROTOCOL: "palisade.v2";

/** What the client does after a close: `"rooms"` reconnects only when it has rooms to rejoin. */
export interface CloseCodeInfo {
  meaning: string;
  reconnect: boolean | "rooms";
}

/** Every close code the server sends (and 4000, this client's own), with what the client does. */
export declare const CLOSE_CODES: Readonly<Record<number, CloseCodeInfo>>;

/** The table entry for `code`; unknown 4xxx codes do not reconnect, other unknown codes do. */
export declare function closeCodeInfo(code: number): CloseCodeInfo;

/** The `exp` claim (Unix seconds) of a JWT, read without verifying it. */
export declare function tokenExpiry(jwt: string): number | undefined;

/** The server's GCRA rate limit mirrored on the client (a tenth slower, for safety). */
export declare class Pacer {
  constructor(perSec: number, burst: number);
  /** Books the next slot; returns the ms to wait for it (0: now). */
  book(now?: number): number;
  /** Books a slot only if one is free now. */
  tryNow(now?: number): boolean;
}

/** A delay in [0, min(maxDelayMs, initialDelayMs * 2^attempt)): full-jitter backoff. */
export declare function backoffDelay(
  attempt: number,
  initialDelayMs: number,
  maxDelayMs: number,
  random?: () => number,
): number;

/**
 * A refused request or a failure of the client. `code` is the protocol's error code
 * (`room_full`, `not_joined`, `too_many_rooms`, `direct_off`, `recipient_offline`, …) or one of
 * the client's: `timeout`, `disconnected` (the socket dropped; a reconnect follows),
 * `close_<code>` (closed for good with that close code), `not_connected`, `already_joined`,
 * `unsupported_v1`, `no_position`, `gave_up`.
 */
export declare class PalisadeError extends Error {
  constructor(code: string, message?: string, room?: string);
  readonly name: "PalisadeError";
  readonly code: string;
  /** The room of the refused request, when it had one. */
  readonly room?: string;
  /** With `close_<code>`: the close code. */
  readonly closeCode?: number;
}

/** A room's history position: its epoch and the last offset this client has. */
export interface Position {
  epoch: string;
  offset: number;
}

export type ConnectionState = "idle" | "connecting" | "open" | "reconnecting" | "closed";

export interface ClientOptions {
  /** Returns a JWT; called on every (re)connect and before the token's `exp`. */
  token: () => string | Promise<string>;
  /** A WebSocket constructor; defaults to `globalThis.WebSocket`. */
  WebSocket?: new (url: string, protocols?: string | string[]) => WebSocket;
  /** "auto" (default): offer v2, fall back to v1. "v2": v2 or nothing. "v1": never offer v2. */
  protocol?: "auto" | "v2" | "v1";
  /** First reconnect delay ceiling, ms (default 500). */
  initialDelayMs?: number;
  /** Largest reconnect delay, ms (default 30000). */
  maxDelayMs?: number;
  /** Added to the delay after a 4006 rate-limit close, ms (default 10000). */
  rateLimitedDelayMs?: number;
  /** Refresh the token this long before its `exp`, ms (default 30000). */
  refreshMarginMs?: number;
  /** How long a request waits for its answer, ms (default 10000). */
  requestTimeoutMs?: number;
  /** Reconnect attempts in a row before giving up (default Infinity). */
  maxAttempts?: number;
  /** The server's CONTROL_RATE_PER_SEC: join, userleave, members, seen and refreshes are paced to it (default 2). */
  controlRatePerSec?: number;
  /** The server's CONTROL_BURST (default 5). */
  controlBurst?: number;
  /** The server's TYPING_RATE_PER_SEC: typing notices past it are dropped (default 2). */
  typingRatePerSec?: number;
  /** The server's TYPING_BURST (default 10). */
  typingBurst?: number;
}

export interface JoinOptions {
  /** Past messages wanted on a fresh join (and on a rejoin that cannot recover). */
  history?: number;
  /** A position kept from an earlier session (`room.position`): recover what came after it. */
  since?: Position;
}

/** The acknowledgement of a join, as the room handle keeps it. */
export interface UserFrame {
  username: string;
  userId: string;
}

export interface MessageEvent extends UserFrame {
  body: string;
  /** The message's offset in the room's epoch (absent with history off). */
  offset?: number;
  /** Unix milliseconds, on past messages. */
  ts?: number;
  /** True on past messages (history and recovery). */
  history?: boolean;
}

export interface PresenceEvent extends UserFrame {
  totalUsers: number;
  /** Only on this client's own join acknowledgement. */
  epoch?: string;
  offset?: number;
  seen?: number;
  recovered?: boolean;
}

export interface Member {
  userId: string;
  username: string;
}

export interface MembersEvent {
  members: Member[];
  total: number;
  truncated: boolean;
}

export interface SeenEvent extends UserFrame {
  offset: number;
}

export interface NoticeEvent {
  /** "history_gap", "history_reset", "delivery_interrupted", "delivery_restored", … */
  code: string;
  epoch?: string;
  offset?: number;
}

export interface RecoveredEvent {
  /** True: every missed message follows (or came). False: some were missed for good. */
  recovered: boolean;
  epoch?: string;
  offset?: number;
  /** Set when the room refused the rejoin (the room is then left). */
  error?: PalisadeError;
}

export interface RoomEventMap {
  message: MessageEvent;
  join: PresenceEvent;
  leave: PresenceEvent;
  members: MembersEvent;
  typing: UserFrame;
  seen: SeenEvent;
  notice: NoticeEvent;
  gap: NoticeEvent;
  reset: NoticeEvent;
  recovered: RecoveredEvent;
}

export interface DirectEvent extends UserFrame {
  body: string;
}

export interface CloseEvent {
  code: number;
  reason: string;
  meaning: string;
  /** Whether a reconnect follows. */
  reconnect: boolean;
}

export interface ClientEventMap {
  state: { state: ConnectionState; code?: number; reason?: string; meaning?: string };
  open: { protocol: "v2" | "v1" };
  authed: { userId: string; username: string };
  close: CloseEvent;
  reconnecting: { attempt: number; delayMs: number; code: number };
  closed: { code: number; reason: string; meaning: string };
  direct: DirectEvent;
  error: { error: Error };
}

/** Every room event is dispatched on the client too, with the room's name. */
export type ClientRoomEventMap = { [K in keyof RoomEventMap]: RoomEventMap[K] & { room: string } };

type Listener<T> = (detail: T, event: CustomEvent<T>) => void;

export declare class Room extends EventTarget {
  private constructor();
  readonly name: string;
  /** Whether the client is in the room (or joining it). */
  readonly joined: boolean;
  /** Where this client stands in the room, once the server said. */
  readonly position: Position | null;
  /** This user's read position at the last join (to scroll to the first unread message). */
  readonly seenOffset: number | undefined;
  /** Users in the room after the last join or leave. */
  readonly totalUsers: number | undefined;
  readonly history: number | undefined;

  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof RoomEventMap>(type: K, listener: Listener<RoomEventMap[K]>): () => void;
  /** Joins; resolves with the acknowledgement. Past messages follow at once: listen first. */
  join(options?: JoinOptions): Promise<PresenceEvent & { type: "join" }>;
  /** Sends a chat message (not echoed to this client); v2 resolves on the server's `ok`. */
  send(body: string): Promise<unknown>;
  /** Says this user is typing. */
  typing(): Promise<void>;
  /** Says this user has read up to `offset` (default: the last message received). */
  seen(offset?: number): Promise<unknown>;
  /** Who is in the room. */
  members(): Promise<MembersEvent>;
  /** Leaves the room; it is not rejoined after a reconnect. */
  leave(): Promise<unknown>;
}

export declare class PalisadeClient extends EventTarget {
  constructor(url: string, options: ClientOptions);
  readonly url: string;
  readonly state: ConnectionState;
  /** The protocol of the open socket, once open. */
  readonly protocol: "v2" | "v1" | null;
  /** The authenticated user (v1: read from the token's `sub` and `name`). */
  readonly user: { userId: string; username: string } | null;
  /** The rooms the client is in (or joining), by name. */
  readonly rooms: Map<string, Room>;

  on<K extends keyof ClientEventMap>(type: K, listener: Listener<ClientEventMap[K]>): () => void;
  on<K extends keyof ClientRoomEventMap>(type: K, listener: Listener<ClientRoomEventMap[K]>): () => void;
  /** Connects and authenticates; resolves once the session is ready (rooms rejoined). */
  connect(): Promise<void>;
  /** The handle of a room, joined or not (the same handle for the same name). */
  room(name: string): Room;
  /** `client.room(name).join(options)`, resolving with the handle. */
  join(name: string, options?: JoinOptions): Promise<Room>;
  /** A direct message to a user id (v2 with DIRECT_MESSAGES on); resolves on `ok`. */
  direct(userId: string, body: string): Promise<unknown>;
  /** Closes for good: no reconnect, every room left. */
  close(code?: number, reason?: string): void;
}
