// Reconnects against a real gateway: a restart on the same port, a 1001 drain, a network drop
// through a proxy the test cuts (recovering exactly the missed messages, once, in order), token
// refresh before expiry, and no reconnect after the close codes that say retrying is useless.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import {
  Gateway,
  LoggingWebSocket,
  Proxy,
  closeAll,
  collect,
  freePort,
  makeClient,
  mintToken,
  next,
  sleep,
  until,
} from "../testing/harness.mjs";

const gateways = [];

async function gateway(env = {}) {
  const started = await new Gateway({ HISTORY_SIZE: "50", ...env }).start();
  gateways.push(started);
  return started;
}

after(async () => {
  closeAll();
  await Promise.all(gateways.map((g) => g.stop("SIGKILL")));
});

/** A WebSocket class counting the sockets the SDK opens. */
function counting() {
  const counter = { opened: 0 };
  counter.WebSocket = class extends LoggingWebSocket {
    constructor(...args) {
      super(...args);
      counter.opened += 1;
    }
  };
  return counter;
}

test("a network drop is recovered from the last offset: the missed messages arrive once, in order", { timeout: 20_000 }, async () => {
  const server = await gateway();
  const proxy = await new Proxy(server.port).start();
  try {
    const reader = makeClient(proxy.url, "reader-drop");
    const writer = makeClient(server.url, "writer-drop");
    const rooms = ["drop-a", "drop-b"];
    const seen = Object.fromEntries(rooms.map((name) => [name, collect(reader.room(name), "message")]));
    await reader.connect();
    for (const name of rooms) await reader.room(name).join({ history: 0 });
    const out = Object.fromEntries(await Promise.all(rooms.map(async (name) => [name, await writer.join(name)])));
    for (const name of rooms) await out[name].send(`${name} before`);
    await until(() => rooms.every((name) => seen[name].length === 1), 5000, "the first messages");

    const recovered = rooms.map((name) => next(reader.room(name), "recovered"));
    const closes = collect(reader, "close");
    // The network goes down: the reader cannot come back until the messages were sent.
    proxy.hold();
    proxy.cut();
    await next(reader, "reconnecting");
    for (const name of rooms) {
      await out[name].send(`${name} missed 1`);
      await out[name].send(`${name} missed 2`);
    }
    proxy.resume();
    for (const outcome of await Promise.all(recovered)) assert.equal(outcome.recovered, true, JSON.stringify(outcome));
    await next(reader, "state", (d) => d.state === "open").catch(() => {});
    for (const name of rooms) await out[name].send(`${name} after`);
    await until(() => rooms.every((name) => seen[name].length === 4), 5000, "every message");
    await sleep(200);
    for (const name of rooms) {
      assert.deepEqual(seen[name].map((m) => m.body), [`${name} before`, `${name} missed 1`, `${name} missed 2`, `${name} after`]);
      const offsets = seen[name].map((m) => m.offset);
      assert.deepEqual(offsets, [...offsets].sort((a, b) => a - b), "in order");
      assert.equal(new Set(offsets).size, offsets.length, "once each");
      assert.deepEqual(seen[name].map((m) => m.history === true), [false, true, true, false], "the missed ones recovered");
    }
    assert.equal(closes[0].code, 1006);
    assert.equal(closes[0].reconnect, true);
  } finally {
    await proxy.stop();
  }
});

test("a gateway restart on the same port: the client reconnects and rejoins, told the history is new", { timeout: 25_000 }, async () => {
  const server = await gateway();
  const client = makeClient(server.url, "restart-user");
  const room = await client.join("restart-room", { history: 0 });
  const recovered = next(room, "recovered", () => true, 15_000);
  await server.restart("SIGKILL");
  const outcome = await recovered;
  // A node on its own starts every room in a new epoch: nothing to recover, and it says so.
  assert.equal(outcome.recovered, false);
  assert.equal(outcome.epoch, room.position.epoch);
  await until(() => client.state === "open", 5000, "open again");

  const other = makeClient(server.url, "restart-other");
  const otherRoom = await other.join("restart-room");
  const got = next(room, "message");
  await otherRoom.send("after the restart");
  assert.equal((await got).body, "after the restart");
});

test("a 1001 drain (SIGTERM) is followed by a reconnect once the gateway is back", { timeout: 25_000 }, async () => {
  const server = await gateway();
  const client = makeClient(server.url, "drain-user");
  await client.join("drain-room");
  const closed = next(client, "close", () => true, 10_000);
  await server.stop("SIGTERM");
  const close = await closed;
  assert.equal(close.code, 1001);
  assert.equal(close.reconnect, true);
  assert.equal(client.state, "reconnecting");
  await server.start();
  await until(() => client.state === "open", 10_000, "open again");
  assert.deepEqual([...client.rooms.keys()], ["drain-room"]);
});

test("the token is refreshed before it expires: the socket outlives it without 4013", { timeout: 25_000 }, async () => {
  const server = await gateway({ JWT_LEEWAY_SECS: "0" });
  let issued = 0;
  const token = async () => {
    issued += 1;
    return mintToken("refresher", { ttlSecs: 3 });
  };
  const refreshed = makeClient(server.url, "refresher", { token, refreshMarginMs: 1500 });
  const closes = collect(refreshed, "close");
  const authed = collect(refreshed, "authed");
  await refreshed.join("refresh-room");

  // The same short tokens without a refresh: the server ends the session with 4013, and the
  // client reconnects at once with a fresh token.
  const lapsing = makeClient(server.url, "lapser", {
    token: async () => mintToken("lapser", { ttlSecs: 2 }),
    refreshMarginMs: -1e9,
  });
  await lapsing.join("refresh-room");
  const expired = next(lapsing, "close", () => true, 10_000);

  assert.equal((await expired).code, 4013);
  await until(() => lapsing.state === "open", 5000, "the lapsed client open again");
  await sleep(6000 - 2000);
  assert.deepEqual(closes, [], "no close while refreshing");
  assert.ok(issued >= 3, `tokens issued: ${issued}`);
  // The last refresh may be between the provider and the server's answer: wait for it.
  await until(() => authed.length === issued, 3000, "every token accepted");
  assert.deepEqual(closes, []);
});

test("no reconnect after 4002 (a token the gateway refuses)", { timeout: 15_000 }, async () => {
  const server = await gateway();
  const counter = counting();
  let asked = 0;
  const client = makeClient(server.url, "bad-token", {
    WebSocket: counter.WebSocket,
    token: async () => {
      asked += 1;
      return mintToken("bad-token", { secret: "not the gateway's secret" });
    },
  });
  const reconnecting = collect(client, "reconnecting");
  await assert.rejects(client.join("nowhere"), { code: "close_4002" });
  const sockets = counter.opened;
  await sleep(500);
  assert.equal(client.state, "closed");
  assert.equal(counter.opened, sockets, "no socket after the close");
  assert.equal(asked, 1, "the token provider was not asked again");
  assert.deepEqual(reconnecting, []);
});

test("no reconnect after 4009 (banned through the server API)", { timeout: 15_000 }, async () => {
  const apiPort = await freePort();
  const key = randomBytes(32).toString("hex");
  const server = await gateway({ API_PORT: String(apiPort), API_KEYS: key });
  const counter = counting();
  const client = makeClient(server.url, "to-ban", { WebSocket: counter.WebSocket });
  const reconnecting = collect(client, "reconnecting");
  await client.join("ban-room");
  const closed = next(client, "closed");
  const response = await fetch(`http://127.0.0.1:${apiPort}/api/v1/bans`, {
    method: "POST",
    headers: { authorization: `Bearer ${key}`, "content-type": "application/json" },
    body: JSON.stringify({ user: "to-ban", durationSecs: 60 }),
  });
  assert.equal(response.status, 201, await response.text());
  assert.equal((await closed).code, 4009);
  const sockets = counter.opened;
  await sleep(500);
  assert.equal(client.state, "closed");
  assert.equal(counter.opened, sockets, "no socket after the close");
  assert.equal(client.rooms.size, 0);
  assert.deepEqual(reconnecting, []);
});

test("a message delivered twice (a faulty intermediary) reaches the app once, by its offset", { timeout: 15_000 }, async () => {
  const server = await gateway();
  // Every frame from the server is handed to the SDK twice.
  class Doubling extends LoggingWebSocket {
    addEventListener(type, listener, options) {
      if (type !== "message") return super.addEventListener(type, listener, options);
      return super.addEventListener(type, (event) => {
        listener(event);
        listener(event);
      }, options);
    }
  }
  const reader = makeClient(server.url, "reader-twice", { WebSocket: Doubling });
  const writer = makeClient(server.url, "writer-twice");
  const room = reader.room("twice");
  const messages = collect(room, "message");
  await room.join({ history: 0 });
  const out = await writer.join("twice");
  for (const body of ["a", "b", "c"]) await out.send(body);
  await until(() => messages.length >= 3, 5000, "three messages");
  await sleep(200);
  assert.deepEqual(messages.map((m) => m.body), ["a", "b", "c"]);
});

test("joins and rejoins of many rooms keep within the server's control budget (no 4006)", { timeout: 30_000 }, async () => {
  const server = await gateway({ CONTROL_RATE_PER_SEC: "2", CONTROL_BURST: "5" });
  const proxy = await new Proxy(server.port).start();
  const names = ["many-1", "many-2", "many-3", "many-4", "many-5", "many-6", "many-7", "many-8"];
  try {
    const client = makeClient(proxy.url, "many-rooms");
    const closes = collect(client, "close");
    await Promise.all(names.map((name) => client.join(name)));
    assert.deepEqual([...client.rooms.keys()].sort(), names);

    const recovered = names.map((name) => next(client.room(name), "recovered", () => true, 15_000));
    proxy.cut();
    // Every room rejoined (recovered or not: a room left empty may start a new epoch).
    for (const outcome of await Promise.all(recovered)) assert.equal(outcome.error, undefined);
    await until(() => client.state === "open", 5000, "open again");
    assert.deepEqual(closes.map((c) => c.code), [1006], "only the drop, never a 4006");

    // The same joins without the pacing (a budget the server does not have) cost the socket.
    const reckless = makeClient(server.url, "reckless", { controlRatePerSec: 1000, controlBurst: 1000, maxAttempts: 0 });
    const closed = next(reckless, "close");
    await Promise.allSettled(names.map((name) => reckless.join(name)));
    assert.equal((await closed).code, 4006);
  } finally {
    await proxy.stop();
  }
});
