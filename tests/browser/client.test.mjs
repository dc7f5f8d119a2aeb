// The SDK (clients/js/palisade.js) in a real browser against `palisade demo`, on protocol v2:
// two rooms on one socket, history on join, recovery from a kept position, members, typing and
// read positions. Run by .ci/browser (PALISADE_BIN names the binary).
import { test } from "node:test";
import assert from "node:assert/strict";
import { launch, startDemo } from "./harness.mjs";

test("the SDK joins two rooms on one socket, with history, recovery, members, typing and seen", async () => {
  const demo = await startDemo();
  const browser = await launch();
  try {
    const page = await browser.newPage();
    await page.goto(demo.url);
    const result = await page.evaluate(async () => {
      const { PalisadeClient } = await import("/palisade.js");
      const mint = async (name) => {
        const response = await fetch("/demo/token", {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ name }),
        });
        return (await response.json()).token;
      };
      const url = location.origin.replace("http", "ws") + "/";
      const client = async (name) => {
        const token = await mint(name);
        const made = new PalisadeClient(url, { token: async () => token });
        await made.connect();
        return made;
      };
      const next = (target, type, where = () => true) =>
        new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`no ${type}`)), 5000);
          const off = target.on(type, (detail) => {
            if (!where(detail)) return;
            clearTimeout(timer);
            off();
            resolve(detail);
          });
        });
      const until = async (predicate) => {
        for (let i = 0; i < 100 && !predicate(); i++) await new Promise((r) => setTimeout(r, 20));
      };
      // One message a second per socket (the default rate): each sender says one thing.
      const say = async (name, room, body) => {
        const sender = await client(name);
        await (await sender.join(room)).send(body);
        sender.close();
      };
      const out = {};

      await say("Sender One", "history", "first");
      await say("Sender Two", "history", "second");
      const reader = await client("Reader");
      out.protocol = reader.protocol;
      const room = reader.room("history");
      const past = [];
      room.on("message", (m) => past.push(m));
      const ack = await room.join({ history: 10 });
      await until(() => past.length >= 2); // past messages follow the acknowledgement
      out.ack = { offset: ack.offset, epoch: ack.epoch };
      out.past = past.map((m) => [m.body, m.offset, m.history === true]);
      out.position = { ...room.position };

      // Away: a message is missed; back with the kept position, exactly it arrives.
      const kept = room.position;
      reader.close();
      await say("Sender Three", "history", "missed");
      const back = await client("Reader");
      const again = back.room("history");
      const recovered = [];
      again.on("message", (m) => recovered.push(m.body));
      const backAck = await again.join({ since: kept });
      await until(() => recovered.length >= 1);
      out.recovered = backAck.recovered;
      out.missed = [...recovered];
      out.backPosition = { ...again.position };

      // A second room on the same socket; frames stay in their rooms.
      const side = await back.join("side");
      const other = await client("Other");
      const otherHistory = await other.join("history");
      const otherSide = await other.join("side");
      const inSide = next(side, "message");
      const inHistory = next(again, "message");
      await otherSide.send("to side");
      await new Promise((r) => setTimeout(r, 1100));
      await otherHistory.send("to history");
      out.routed = [(await inSide).body, (await inHistory).body];

      const list = await again.members();
      out.members = list.members.map((m) => m.username).sort();
      const typing = next(otherHistory, "typing");
      await again.typing();
      out.typing = (await typing).username;
      const seen = next(otherHistory, "seen");
      await again.seen();
      out.seen = (await seen).offset;
      out.lastOffset = again.position.offset;
      other.close();
      back.close();
      return out;
    });
    assert.equal(result.protocol, "v2");
    assert.equal(result.ack.offset, 2, JSON.stringify(result.ack));
    assert.equal(typeof result.ack.epoch, "string");
    assert.deepEqual(result.past, [["first", 1, true], ["second", 2, true]]);
    assert.deepEqual(result.position, { epoch: result.ack.epoch, offset: 2 });
    assert.equal(result.recovered, true);
    assert.deepEqual(result.missed, ["missed"]);
    assert.deepEqual(result.backPosition, { epoch: result.ack.epoch, offset: 3 });
    assert.deepEqual(result.routed, ["to side", "to history"]);
    assert.deepEqual(result.members, ["Other", "Reader"]);
    assert.equal(result.typing, "Reader");
    assert.equal(result.seen, result.lastOffset);
    assert.equal(result.seen, 4);
  } finally {
    await browser.close();
    demo.child.kill("SIGTERM");
  }
});
