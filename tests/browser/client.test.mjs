// The reference client module (clients/js/palisade.js) in a real browser against
// `palisade demo`: history on join, recovery after a reconnect, members, typing, read positions.
// Run by .ci/browser (PALISADE_BIN names the binary).
import { test } from "node:test";
import assert from "node:assert/strict";
import { launch, startDemo } from "./harness.mjs";

test("the client module uses history, recovery, members, typing and seen", async () => {
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
      const next = (client, type, where = () => true) =>
        new Promise((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error(`no ${type}`)), 5000);
          const listener = (e) => {
            if (!where(e.detail)) return;
            clearTimeout(timer);
            client.removeEventListener(type, listener);
            resolve(e.detail);
          };
          client.addEventListener(type, listener);
        });
      // One message a second per socket (the default rate): each sender says one thing.
      const say = async (name, body) => {
        const sender = new PalisadeClient(url);
        await sender.connect(await mint(name), "history");
        sender.send(body);
        await new Promise((r) => setTimeout(r, 100));
        sender.close();
      };
      const out = {};

      await say("Sender One", "first");
      await say("Sender Two", "second");
      const reader = new PalisadeClient(url);
      const past = [];
      reader.addEventListener("message", (e) => past.push(e.detail));
      const ack = await reader.connect(await mint("Reader"), "history", { history: 10 });
      await new Promise((r) => setTimeout(r, 200));
      out.ack = ack;
      out.past = past.map((m) => [m.body, m.offset, m.history === true]);
      out.position = { ...reader.position };

      // Away: a message is missed; back with `since`, exactly it arrives.
      const position = reader.position;
      reader.close();
      await say("Sender Three", "missed");
      const back = new PalisadeClient(url);
      const recovered = [];
      back.addEventListener("message", (e) => recovered.push(e.detail));
      const backAck = await back.connect(await mint("Reader"), "history", { since: position });
      await new Promise((r) => setTimeout(r, 200));
      out.recovered = backAck.recovered;
      out.missed = recovered.map((m) => m.body);
      out.backPosition = { ...back.position };

      // Members, typing and read positions between two sockets with the extensions.
      const other = new PalisadeClient(url);
      await other.connect(await mint("Other"), "history", { history: 0 });
      const list = await back.members();
      out.members = list.members.map((m) => m.username).sort();
      const typing = next(other, "typing");
      back.typing();
      out.typing = (await typing).username;
      const seen = next(other, "seen");
      back.seen();
      out.seen = (await seen).offset;
      other.close();
      back.close();
      return out;
    });
    assert.equal(result.ack.offset, 2, JSON.stringify(result.ack));
    assert.equal(typeof result.ack.epoch, "string");
    assert.deepEqual(result.past, [["first", 1, true], ["second", 2, true]]);
    assert.deepEqual(result.position, { epoch: result.ack.epoch, offset: 2 });
    assert.equal(result.recovered, true);
    assert.deepEqual(result.missed, ["missed"]);
    assert.deepEqual(result.backPosition, { epoch: result.ack.epoch, offset: 3 });
    assert.deepEqual(result.members, ["Other", "Reader"]);
    assert.equal(result.typing, "Reader");
    assert.equal(result.seen, 3);
  } finally {
    await browser.close();
    demo.child.kill("SIGTERM");
  }
});
