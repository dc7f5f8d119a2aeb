// End to end in a real browser: `palisade demo`, two Chromium pages in one room, messages both
// ways, joins and leaves, the member count, and a rate-limited page showing the close reason.
// Screenshots go to target/browser/. Run by .ci/browser (PALISADE_BIN names the binary).
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { SHOTS, launch, startDemo } from "./harness.mjs";

async function joinAs(page, url, name) {
  await page.goto(url);
  await page.fill("#name", name);
  await page.fill("#room", "lobby");
  await page.click("#connect");
  await page.waitForSelector(`#status:has-text("Connected as ${name}")`);
}

async function say(page, text) {
  await page.fill("#message", text);
  await page.press("#message", "Enter");
}

const logOf = (page) => page.locator("#log");

test("two pages chat, see joins and leaves, and a rate-limited page sees why", async () => {
  mkdirSync(SHOTS, { recursive: true });
  const demo = await startDemo();
  const browser = await launch();
  try {
    const ada = await browser.newPage({ viewport: { width: 760, height: 640 } });
    const brian = await browser.newPage({ viewport: { width: 760, height: 640 } });

    await joinAs(ada, demo.url, "Ada");
    await assertText(ada, "#members", "1 in the room");
    await joinAs(brian, demo.url, "Brian");
    await assertText(ada, "#log", "Brian joined");
    await assertText(ada, "#members", "2 in the room");
    await assertText(brian, "#members", "2 in the room");

    await say(ada, "Hello from Ada <b>not bold</b>");
    await assertText(brian, "#log", "Ada: Hello from Ada <b>not bold</b>");
    assert.equal(await brian.locator("#log b:has-text('not bold')").count(), 0, "bodies are text, not HTML");
    await brian.waitForTimeout(1100); // the default rate is one message a second
    await say(brian, "Hi Ada!");
    await assertText(ada, "#log", "Brian: Hi Ada!");
    await ada.screenshot({ path: join(SHOTS, "demo.png") });

    await brian.click("#leave");
    await assertText(ada, "#log", "Brian left");
    await assertText(ada, "#members", "1 in the room");

    // Two messages back to back: the server closes Ada's socket with 4006.
    await ada.waitForTimeout(1100);
    await say(ada, "one");
    await say(ada, "two");
    await assertText(ada, "#banner", "4006 rate limited");
    assert.ok(await ada.locator("#reconnect").isVisible());
    await ada.screenshot({ path: join(SHOTS, "rate-limited.png") });

    // Reconnect works.
    await ada.click("#reconnect");
    await ada.waitForSelector('#status:has-text("Connected as Ada")');
  } finally {
    await browser.close();
    demo.child.kill("SIGTERM");
  }
});

async function assertText(page, selector, text) {
  await page.locator(selector).filter({ hasText: text }).first().waitFor({ timeout: 5000 });
}
