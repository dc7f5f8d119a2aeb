// End to end in a real browser: `palisade demo`, two Chromium pages in one room, messages both
// ways, joins and leaves, the member count, and a rate-limited page showing the close reason.
// Screenshots go to target/browser/. Run by .ci/browser (PALISADE_BIN names the binary).
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const BINARY = process.env.PALISADE_BIN ?? join(ROOT, "target", "debug", "palisade");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const SHOTS = join(ROOT, "target", "browser");

function freePort() {
  return new Promise((resolve) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Starts `palisade demo` and resolves once it prints its URL. */
async function startDemo() {
  const port = await freePort();
  const child = spawn(BINARY, ["demo"], {
    env: { PATH: process.env.PATH, PORT: String(port), LOG_LEVEL: "warn" },
    stdio: ["ignore", "pipe", "inherit"],
  });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("demo did not start")), 15000);
    child.stdout.on("data", (chunk) => {
      if (chunk.toString().includes("Palisade demo on")) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on("exit", (code) => reject(new Error(`demo exited with ${code}`)));
  });
  child.stdout.resume(); // keep draining, so the gateway never writes into a full pipe
  return { child, url: `http://127.0.0.1:${port}/` };
}

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
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
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
