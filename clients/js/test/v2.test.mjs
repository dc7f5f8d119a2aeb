// Protocol v2 against a real gateway: many rooms on one socket, requests answered by id,
// error frames that leave the socket open, direct messages, typing and read positions.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { closeAll, collect, makeClient, mintToken, next, sleep, startGateway } from "../testing/harness.mjs";

let gateway;

before(async () => {
  gateway = await startGateway({ MAX_ROOMS_PER_SOCKET: "2", DIRECT_MESSAGES: "all", HISTORY_SIZE: "50" });
});

after(async () => {
  closeAll();
  await gateway?.stop();
});

test("two clients share two rooms on one socket each; leaving one leaves the other be", { timeout: 15_000 }, async () => {
  const ann = makeClient(gateway.url, "ann-multi", { token: async () => mintToken("ann-multi", { name: "Ann" }) });
  const bob = makeClient(gateway.url, "bob-multi");
  await ann.connect();
  assert.equal(ann.protocol, "v2");
  assert.deepEqual(ann.user, { userId: "ann-multi", username: "Ann" });
  const annRed = await ann.join("red");
  const annBlue = await ann.join("blue");
  assert.equal(typeof annRed.position.epoch, "string", "the acknowledgement carries the room's position");

  const bobRed = bob.room("red");
  const bobBlue = bob.room("blue");
  const redMessages = collect(bobRed, "message");
  const blueMessages = collect(bobBlue, "message");
  const everywhere = collect(bob, "message");
  const bobJoinedRed = next(annRed, "join", (d) => d.userId === "bob-multi");
  await bobRed.join();
  await bobBlue.join();
  assert.equal((await bobJoinedRed).totalUsers, 2);
  assert.deepEqual([...bob.rooms.keys()].sort(), ["blue", "red"]);

  const toBlue = next(bobBlue, "message", (d) => d.body === "to blue");
  await annRed.send("to red");
  await annBlue.send("to blue");
  await toBlue;
  assert.deepEqual(redMessages.map((m) => [m.body, m.username, m.userId]), [["to red", "Ann", "ann-multi"]]);
  assert.deepEqual(blueMessages.map((m) => m.body), ["to blue"]);
  assert.deepEqual(everywhere.map((m) => [m.room, m.body]), [["red", "to red"], ["blue", "to blue"]]);
  assert.equal(typeof redMessages[0].offset, "number");

  const list = await bobBlue.members();
  assert.deepEqual(list.members.map((m) => m.userId), ["ann-multi", "bob-multi"]);
  assert.equal(list.total, 2);
  assert.equal(list.truncated, false);

  const left = next(annRed, "leave", (d) => d.userId === "bob-multi");
  await bobRed.leave();
  assert.equal((await left).totalUsers, 1);
  assert.deepEqual([...bob.rooms.keys()], ["blue"]);
  const stillHere = next(bobBlue, "message", (d) => d.body === "still here");
  await annBlue.send("still here");
  await stillHere;
  await annRed.send("not for bob");
  await sleep(150);
  assert.equal(redMessages.length, 1, "a left room delivers nothing");
});

test("typing and read positions travel per room", { timeout: 15_000 }, async () => {
  const ann = makeClient(gateway.url, "ann-typing");
  const bob = makeClient(gateway.url, "bob-typing");
  const annRoom = await ann.join("typing-room");
  const bobRoom = await bob.join("typing-room");
  const typing = next(annRoom, "typing");
  await bobRoom.typing();
  assert.equal((await typing).userId, "bob-typing");

  const readMe = next(bobRoom, "message", (d) => d.body === "read me");
  await annRoom.send("read me");
  await readMe;
  const seen = next(annRoom, "seen");
  await bobRoom.seen();
  const detail = await seen;
  assert.equal(detail.userId, "bob-typing");
  assert.equal(detail.offset, bobRoom.position.offset);

  // The read position is kept: the next join's acknowledgement carries it.
  await bobRoom.leave();
  const again = await bob.join("typing-room");
  assert.equal(again.seenOffset, detail.offset);
});

test("refusals are error frames with codes, and the socket stays open in its rooms", { timeout: 15_000 }, async () => {
  const ann = makeClient(gateway.url, "ann-errors");
  const bob = makeClient(gateway.url, "bob-errors");
  await assert.rejects(ann.join("x!"), { code: "invalid_name", room: "x!" });
  const one = await ann.join("err-one");
  await ann.join("err-two");
  await assert.rejects(ann.join("err-three"), (error) => {
    assert.equal(error.code, "too_many_rooms");
    assert.equal(error.room, "err-three");
    return true;
  });
  assert.equal(ann.state, "open");
  assert.deepEqual([...ann.rooms.keys()].sort(), ["err-one", "err-two"]);

  // A room frame for a room this socket is not in: not_joined, from the server.
  const stranger = ann.room("err-elsewhere");
  await assert.rejects(stranger.members(), { code: "not_joined" });
  await assert.rejects(stranger.send("hello?"), { code: "not_joined" });

  const bobOne = await bob.join("err-one");
  const got = next(bobOne, "message");
  await one.send("after the errors");
  assert.equal((await got).body, "after the errors");
});

test("direct messages reach every v2 session of the user, and an offline one is refused", { timeout: 15_000 }, async () => {
  const ann = makeClient(gateway.url, "ann-direct", { token: async () => mintToken("ann-direct", { name: "Ann" }) });
  const bob = makeClient(gateway.url, "bob-direct");
  const bobAgain = makeClient(gateway.url, "bob-direct");
  await Promise.all([ann.connect(), bob.connect(), bobAgain.connect()]);
  const first = next(bob, "direct");
  const second = next(bobAgain, "direct");
  const annGot = collect(ann, "direct");
  await ann.direct("bob-direct", "psst");
  for (const detail of [await first, await second]) {
    assert.deepEqual(detail, { body: "psst", username: "Ann", userId: "ann-direct" });
  }
  await sleep(100);
  assert.equal(annGot.length, 0, "never back to the sender");
  await assert.rejects(ann.direct("nobody-home", "hello"), { code: "recipient_offline" });
});

test("DIRECT_MESSAGES=off refuses direct messages with direct_off", { timeout: 15_000 }, async () => {
  const off = await startGateway({});
  try {
    const ann = makeClient(off.url, "ann-off");
    await ann.connect();
    await assert.rejects(ann.direct("bob", "hi"), { code: "direct_off" });
    assert.equal(ann.state, "open");
  } finally {
    await off.stop();
  }
});
