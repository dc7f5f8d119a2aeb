// What the SDK tests share: a real gateway process on a free loopback port, HS256 tokens
// minted with node:crypto, a TCP proxy the test can cut, a WebSocket that logs what the SDK
// sends (PALISADE_FRAME_LOG), and bounded waits. No mocks: every test talks to target/debug/palisade
// (or $PALISADE_BIN).
import { spawn } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { appendFileSync, mkdirSync } from "node:fs";
import { createServer, connect as tcpConnect } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { PalisadeClient } from "../palisade.js";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
const BINARY = process.env.PALISADE_BIN ?? join(ROOT, "target", "debug", "palisade");
export const SECRET = randomBytes(32).toString("hex");

if (typeof globalThis.WebSocket !== "function") {
  throw new Error("no global WebSocket: on Node 20 run with --experimental-websocket (npm test does)");
}

/** A port nobody listens on now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

export const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Settings that keep tests fast: generous rates, short drains, no admin listeners. */
const BASE_ENV = {
  BIND_ADDR: "127.0.0.1",
  ALLOWED_ORIGINS: "*",
  ALLOW_MISSING_ORIGIN: "true",
  METRICS_PORT: "0",
  API_PORT: "0",
  LOG_LEVEL: "warn",
  MSG_RATE_PER_SEC: "50",
  MSG_BURST: "50",
  USER_MSG_RATE_PER_SEC: "100",
  USER_MSG_BURST: "100",
  CONTROL_RATE_PER_SEC: "50",
  CONTROL_BURST: "50",
  DRAIN_DELAY_SECS: "0",
  SHUTDOWN_GRACE_SECS: "2",
  BAN_STRIKES: "1000",
  JOIN_TIMEOUT_MS: "10000",
};

/**
 * A gateway child process. `env` adds settings; the port stays the same over restart(), so a
 * client's reconnects find the same address.
 */
export class Gateway {
  constructor(env = {}) {
    this.env = env;
    this.port = undefined;
    this.child = null;
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/`;
  }

  async start() {
    this.port ??= await freePort();
    const env = { PATH: process.env.PATH, ...BASE_ENV, JWT_DECODE_SECRET: SECRET, ...this.env, PORT: String(this.port) };
    const child = spawn(BINARY, ["serve"], { env, stdio: ["ignore", "ignore", "pipe"] });
    this.child = child;
    let stderr = "";
    child.stderr.on("data", (chunk) => {
      stderr = (stderr + chunk).slice(-4000);
    });
    const exited = new Promise((resolve) => child.once("exit", resolve));
    this.exited = exited;
    await this.#ready(exited, () => stderr);
    return this;
  }

  async #ready(exited, stderr) {
    const deadline = Date.now() + 15_000;
    let gone = false;
    exited.then(() => {
      gone = true;
    });
    while (Date.now() < deadline) {
      if (gone) throw new Error(`gateway exited at start: ${stderr()}`);
      try {
        const response = await fetch(`http://127.0.0.1:${this.port}/healthz`);
        if (response.ok) return;
      } catch {
        // not listening yet
      }
      await sleep(50);
    }
    throw new Error("gateway did not start within 15 s");
  }

  /** Sends `signal` and waits for the process to exit (SIGKILL after 5 s). */
  async stop(signal = "SIGTERM") {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) return;
    child.kill(signal);
    const killer = setTimeout(() => child.kill("SIGKILL"), 5000);
    await this.exited;
    clearTimeout(killer);
  }

  async restart(signal = "SIGTERM") {
    await this.stop(signal);
    await this.start();
  }
}

/** Starts a gateway; the test's `after` should call `stop()`. */
export async function startGateway(env = {}) {
  return new Gateway(env).start();
}

const base64url = (value) => Buffer.from(value).toString("base64url");

/** An HS256 token for `sub`, expiring in `ttlSecs`. */
export function mintToken(sub, { name = sub, ttlSecs = 3600, secret = SECRET } = {}) {
  const header = base64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const now = Math.floor(Date.now() / 1000);
  const payload = base64url(JSON.stringify({ sub, name, iat: now, exp: now + ttlSecs }));
  const signature = createHmac("sha256", secret).update(`${header}.${payload}`).digest("base64url");
  return `${header}.${payload}.${signature}`;
}

/**
 * The WebSocket the SDK is given. With PALISADE_FRAME_LOG=<dir>, every frame the SDK sends is
 * appended to <dir>/sdk-<pid>.jsonl as {"from":"client","protocol":"v2"|"v1","frame":…}, for
 * the protocol check. The SDK itself never logs frames.
 */
export class LoggingWebSocket extends WebSocket {
  send(data) {
    const dir = process.env.PALISADE_FRAME_LOG;
    if (dir) {
      mkdirSync(dir, { recursive: true });
      const line = JSON.stringify({
        from: "client",
        protocol: this.protocol === "palisade.v2" ? "v2" : "v1",
        frame: JSON.parse(data),
      });
      appendFileSync(join(dir, `sdk-${process.pid}.jsonl`), `${line}\n`);
    }
    super.send(data);
  }
}

/** Every client a test makes, closed by `closeAll()`. */
const clients = new Set();

/** A client for `sub` against `url`, fast reconnects, tokens from this harness. */
export function makeClient(url, sub, options = {}) {
  const client = new PalisadeClient(url, {
    token: async () => mintToken(sub),
    WebSocket: LoggingWebSocket,
    initialDelayMs: 50,
    maxDelayMs: 300,
    requestTimeoutMs: 4000,
    ...options,
  });
  clients.add(client);
  return client;
}

export function closeAll() {
  for (const client of clients) client.close();
  clients.clear();
}

/** Resolves with the `detail` of the next `type` event matching `where`, or fails after `ms`. */
export function next(target, type, where = () => true, ms = 5000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      target.removeEventListener(type, listener);
      reject(new Error(`no "${type}" event within ${ms} ms`));
    }, ms);
    function listener(event) {
      if (!where(event.detail)) return;
      clearTimeout(timer);
      target.removeEventListener(type, listener);
      resolve(event.detail);
    }
    target.addEventListener(type, listener);
  });
}

/** Collects the `detail` of every `type` event on `target`. */
export function collect(target, type) {
  const seen = [];
  target.addEventListener(type, (event) => seen.push(event.detail));
  return seen;
}

/** Waits until `predicate()` holds, or fails after `ms`. */
export async function until(predicate, ms = 5000, what = "condition") {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

/**
 * A TCP proxy on a free port to `target` (a port). `cut()` destroys every connection through
 * it without a close frame (a network drop); `stripSubprotocol` removes the client's
 * Sec-WebSocket-Protocol header, so the server speaks v1 to an SDK that offered v2.
 */
export class Proxy {
  constructor(target, { stripSubprotocol = false } = {}) {
    this.target = target;
    this.stripSubprotocol = stripSubprotocol;
    this.sockets = new Set();
    this.holding = false;
    this.server = createServer((client) => this.#pipe(client));
  }

  async start() {
    this.port ??= await freePort();
    await new Promise((resolve) => this.server.listen(this.port, "127.0.0.1", resolve));
    return this;
  }

  get url() {
    return `ws://127.0.0.1:${this.port}/`;
  }

  /** Refuses new connections (closing them at once) until `resume()`: the network is down. */
  hold() {
    this.holding = true;
  }

  resume() {
    this.holding = false;
  }

  #pipe(client) {
    if (this.holding) {
      client.destroy();
      return;
    }
    const upstream = tcpConnect(this.target, "127.0.0.1");
    for (const socket of [client, upstream]) {
      this.sockets.add(socket);
      socket.on("error", () => {});
      socket.on("close", () => {
        this.sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    let head = !this.stripSubprotocol;
    client.on("data", (chunk) => {
      if (!head) {
        // The request head arrives in the first chunk from a loopback client.
        head = true;
        chunk = Buffer.from(chunk.toString("latin1").replace(/\r\nSec-WebSocket-Protocol:[^\r]*/i, ""), "latin1");
      }
      upstream.write(chunk);
    });
    upstream.pipe(client);
  }

  /** Destroys every connection through the proxy: the client sees a drop (1006). */
  cut() {
    for (const socket of this.sockets) socket.destroy();
  }

  async stop() {
    this.cut();
    await new Promise((resolve) => this.server.close(resolve));
  }
}
