// What the browser tests share: a free port, `palisade demo` as a child process, Chromium.
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const BINARY = process.env.PALISADE_BIN ?? join(ROOT, "target", "debug", "palisade");
const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
export const SHOTS = join(ROOT, "target", "browser");

function freePort() {
  return new Promise((resolve) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Starts `palisade demo` and resolves once it prints its URL. */
export async function startDemo() {
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

/** Headless Chromium, as the tests run it. */
export function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
}
