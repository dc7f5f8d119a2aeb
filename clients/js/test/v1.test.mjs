// The v1 fallback: a server that does not select palisade.v2 (spoken to through a proxy that
// strips the subprotocol offer, or with `protocol: "v1"` forced) gets GarinChat's frames, one
// room at a time, and the SDK says plainly what v1 cannot do.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { Proxy, closeAll, collect, makeClient, next, sleep, startGateway } from "../testing/harness.mjs";

let gateway;
let stripping;

before(async () => {
  gateway = await startGateway({ HISTORY_SIZE: "50" });
  stripping = await new Proxy(gateway.port, { stripSubprotocol: true }).start();
});

after(async () => {
  closeAll();
  await stripping?.stop();
  await gateway?.stop();
});

test("an SDK offering v2 falls back to v1 when the server does not select it", { timeout: 15_000 }, async () => {
  const ann = makeClient(stripping.url, "ann-v1a");
  const bob = makeClient(stripping.url, "bob-v1a");
  await ann.connect();
  assert.equal(ann.protocol, "v1");
  const annRoom = await ann.join("fallback", { history: 5 });
  await bob.connect();
  const bobRoom = bob.room("fallback");
  const joined = next(annRoom, "join", (d) => d.userId === "bob-v1a");
  await bobRoom.join();
  assert.equal((await joined).totalUsers, 2);
  assert.equal(annRoom.totalUsers, 2);

  const got = next(bobRoom, "message");
  await annRoom.send("hello over v1");
  const message = await got;
  assert.equal(message.body, "hello over v1");
  assert.equal(message.userId, "ann-v1a");
  assert.equal(typeof message.offset, "number", "the join turned the room extensions on");

  const list = await bobRoom.members();
  assert.deepEqual(list.members.map((m) => m.userId).sort(), ["ann-v1a", "bob-v1a"]);

  // What v1 cannot do is refused by the SDK, not sent.
  await assert.rejects(ann.join("second"), { code: "unsupported_v1" });
  await assert.rejects(ann.direct("bob-v1a", "psst"), { code: "unsupported_v1" });
  assert.equal(ann.state, "open", "the refusals did not cost the connection");

  const left = next(bobRoom, "leave", (d) => d.userId === "ann-v1a");
  await annRoom.leave();
  assert.equal((await left).totalUsers, 1);
});

test("protocol: \"v1\" offers no subprotocol, and a v1 reconnect recovers from its position", { timeout: 15_000 }, async () => {
  const proxy = await new Proxy(gateway.port).start();
  try {
    const reader = makeClient(proxy.url, "reader-v1", { protocol: "v1" });
    const writer = makeClient(gateway.url, "writer-v1", { protocol: "v1" });
    const room = reader.room("v1-recovery");
    const messages = collect(room, "message");
    await room.join({ history: 0 });
    assert.equal(reader.protocol, "v1");
    const writerRoom = await writer.join("v1-recovery");
    const one = next(room, "message", (d) => d.body === "one");
    await writerRoom.send("one");
    await one;

    const recovered = next(room, "recovered");
    proxy.hold();
    proxy.cut();
    await next(reader, "reconnecting");
    await writerRoom.send("two");
    await writerRoom.send("three");
    proxy.resume();
    const outcome = await recovered;
    assert.equal(outcome.recovered, true, JSON.stringify(outcome));
    await sleep(200);
    assert.deepEqual(messages.map((m) => m.body), ["one", "two", "three"]);
    assert.deepEqual(messages.map((m) => m.offset), [1, 2, 3]);
  } finally {
    await proxy.stop();
  }
});
