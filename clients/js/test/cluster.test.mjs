// Two gateway nodes sharing Redis (127.0.0.1:6379, a key prefix of this run's own): a reader
// on node B, through a proxy, loses B; the proxy then leads to node A, where the rejoin with
// `since` recovers exactly the messages sent meanwhile, because offsets live in Redis.
import { after, test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { Gateway, Proxy, closeAll, collect, makeClient, next, sleep, until } from "../testing/harness.mjs";

const nodes = [];
let proxy;

after(async () => {
  closeAll();
  await proxy?.stop();
  await Promise.all(nodes.map((node) => node.stop("SIGKILL")));
});

test("recovery across the loss of one of two nodes sharing Redis", { timeout: 30_000 }, async () => {
  const env = {
    REDIS_URL: process.env.REDIS_URL ?? "redis://127.0.0.1:6379",
    REDIS_PREFIX: `sdk-test-${randomBytes(6).toString("hex")}:`,
    HISTORY_SIZE: "50",
  };
  const nodeA = await new Gateway(env).start();
  const nodeB = await new Gateway(env).start();
  nodes.push(nodeA, nodeB);
  proxy = await new Proxy(nodeB.port).start();

  const reader = makeClient(proxy.url, "reader-cluster");
  const writer = makeClient(nodeA.url, "writer-cluster");
  const room = reader.room("cluster-room");
  const messages = collect(room, "message");
  await room.join({ history: 0 });
  const out = await writer.join("cluster-room");
  // The reader on B sees the writer on A: the nodes share the room through Redis.
  const before = next(room, "message", (d) => d.body === "before", 5000);
  await out.send("before");
  await before;
  const epoch = room.position.epoch;

  const recovered = next(room, "recovered", () => true, 20_000);
  proxy.target = nodeA.port; // where the reconnect will lead, once the messages were sent
  proxy.hold();
  await nodeB.stop("SIGKILL");
  await next(reader, "reconnecting");
  await out.send("missed 1");
  await out.send("missed 2");
  proxy.resume();
  const outcome = await recovered;
  assert.equal(outcome.recovered, true, JSON.stringify(outcome));
  assert.equal(outcome.epoch, epoch, "the room's epoch outlives a node");

  await out.send("after");
  await until(() => messages.length >= 4, 5000, "every message");
  await sleep(200);
  assert.deepEqual(messages.map((m) => m.body), ["before", "missed 1", "missed 2", "after"]);
  const offsets = messages.map((m) => m.offset);
  assert.deepEqual(offsets, [offsets[0], offsets[0] + 1, offsets[0] + 2, offsets[0] + 3]);
  assert.deepEqual(messages.map((m) => m.history === true), [false, true, true, false], "the missed ones recovered");
});
