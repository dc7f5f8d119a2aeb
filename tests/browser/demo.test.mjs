// End to end in a real browser: `palisade demo`, two Chromium pages on the v2 demo: rooms in
// tabs, an unread count rising in a background tab, the member list, typing, "seen by", and a
// rate-limited page reconnecting by itself. Screenshots go to target/browser/. Run by
// .ci/browser (PALISADE_BIN names the binary).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { SHOTS, launch, startDemo } from "./harness.mjs";

async function connectAs(page, url, name) {
  await page.goto(url);
  await page.fill("#name", name);
  await page.click("#connect");
  await page.waitForSelector(`#status:has-text("Connected as ${name}")`);
  await page.waitForSelector('#tabs button[data-room="lobby"][aria-selected="true"]');
}

async function joinRoom(page, room) {
  await page.fill("#room", room);
  await page.click("#join");
  await page.waitForSelector(`#tabs button[data-room="${room}"][aria-selected="true"]`);
}

async function say(page, text) {
  await page.fill("#message", text);
  await page.press("#message", "Enter");
}

const panel = (room) => `.room[data-room="${room}"]`;
const badge = (room) => `#tabs button[data-room="${room}"] .unread`;

test("two pages chat in tabs, with unread counts, members, typing, seen by, and a reconnect", async () => {
  mkdirSync(SHOTS, { recursive: true });
  const demo = await startDemo();
  const browser = await launch();
  try {
    const ada = await browser.newPage({ viewport: { width: 900, height: 700 } });
    const brian = await browser.newPage({ viewport: { width: 900, height: 700 } });

    await connectAs(ada, demo.url, "Ada");
    await assertText(ada, `${panel("lobby")} .members`, "Ada (you)");
    await connectAs(brian, demo.url, "Brian");
    await assertText(ada, `${panel("lobby")} .log`, "Brian joined");
    await assertText(ada, `${panel("lobby")} .members`, "Brian");
    await assertText(brian, `${panel("lobby")} .members`, "Ada");

    await say(ada, "Hello from Ada <b>not bold</b>");
    await assertText(brian, `${panel("lobby")} .log`, "Ada: Hello from Ada <b>not bold</b>");
    assert.equal(await brian.locator(".log b:has-text('not bold')").count(), 0, "bodies are text, not HTML");
    // Brian has read it: Ada's page says so.
    await assertText(ada, `${panel("lobby")} .seen-by`, "Seen by Brian");
    assert.equal(await ada.locator(`${panel("lobby")} .seen-by`).textContent(), "Seen by Brian", "not by Ada herself");

    // Typing shows on the other page.
    await brian.fill("#message", "typing…");
    await assertText(ada, `${panel("lobby")} .typing`, "Brian is typing");
    await brian.fill("#message", "");

    // Brian opens a second room; the lobby tab, now in the background, counts what he misses.
    await joinRoom(brian, "side");
    assert.equal(await brian.locator(badge("lobby")).textContent(), "");
    await ada.waitForTimeout(1100); // the default rate is one message a second
    await say(ada, "one for the background");
    await assertText(brian, badge("lobby"), "1");
    await ada.waitForTimeout(1100);
    await say(ada, "two for the background");
    await assertText(brian, badge("lobby"), "2");
    await brian.screenshot({ path: join(SHOTS, "demo-tabs.png") });
    await brian.click('#tabs button[data-room="lobby"]');
    assert.equal(await brian.locator(badge("lobby")).textContent(), "");
    assert.ok(await brian.locator(panel("lobby")).isVisible());
    assert.ok(await brian.locator(panel("side")).isHidden(), "one room shown at a time");
    await assertText(brian, `${panel("lobby")} .log`, "Ada: two for the background");

    // Both in "side" too: messages stay in their room.
    await joinRoom(ada, "side");
    await assertText(brian, `${panel("side")} .log`, "Ada joined");
    await ada.waitForTimeout(1100);
    await say(ada, "in the side room");
    await assertText(brian, badge("side"), "1");
    assert.equal(await brian.locator(`${panel("lobby")} .log:has-text("in the side room")`).count(), 0);
    await ada.screenshot({ path: join(SHOTS, "demo.png") });

    // Brian leaves the lobby: Ada sees it, and the lobby's members shrink.
    await ada.click('#tabs button[data-room="lobby"]');
    await brian.click("#leave");
    await assertText(ada, `${panel("lobby")} .log`, "Brian left");
    await ada.locator(`${panel("lobby")} .members li`, { hasText: "Brian" }).waitFor({ state: "detached", timeout: 5000 });

    // Nothing so far cost a connection: the page keeps within the server's control budget.
    assert.equal(await brian.locator(".log li", { hasText: "Reconnected" }).count(), 0, "Brian's page never reconnected");
    assert.equal(await ada.locator(".log li", { hasText: "Reconnected" }).count(), 0, "Ada's page never reconnected");

    // Two messages back to back: the server closes Ada's socket with 4006; the page shows
    // why, reconnects by itself and rejoins both rooms.
    await ada.waitForTimeout(1100);
    await say(ada, "one");
    await say(ada, "two");
    await assertText(ada, "#status", "4006 rate limited");
    await ada.screenshot({ path: join(SHOTS, "rate-limited.png") });
    await ada.waitForSelector('#status:has-text("Connected as Ada")', { timeout: 15_000 });
    await assertText(ada, `${panel("lobby")} .log`, "Reconnected");
    assert.equal(await ada.locator("#tabs button").count(), 2);
  } finally {
    await browser.close();
    demo.child.kill("SIGTERM");
  }
});

/** Waits for `text` in `selector`; a background tab's panel is hidden, so attached is enough. */
async function assertText(page, selector, text) {
  await page.locator(selector).filter({ hasText: text }).first().waitFor({ state: "attached", timeout: 5000 });
}
