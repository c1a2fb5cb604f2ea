// What the browser tests share (chat.mjs, sync.mjs): headless Chromium with
// a fresh profile per person, the checks every page gets, the wait for the
// caller's go-ahead on stdin, and a main() that cleans up and sets the exit
// status.
import { chromium } from "playwright-core";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

/** How long one wait in a page may take, ms. */
export const WAIT = 15000;
const ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
];

const profiles = [];
const contexts = [];

// Opens `url` in a browser of its own for `name` (a fresh profile, so no
// storage is shared with the others). Page errors and console errors are
// printed with the name; `sockets` collects the URL of every WebSocket the
// page opens.
export async function openPage(name, url, viewport) {
  const dir = mkdtempSync(join(tmpdir(), `foreman-browser-${name}-`));
  profiles.push(dir);
  const context = await chromium.launchPersistentContext(dir, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ARGS,
    viewport,
    ignoreHTTPSErrors: true,  // the TLS tests serve a certificate made for them
  });
  contexts.push(context);
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(WAIT);
  await page.emulateMedia({ reducedMotion: "reduce" });  // no animation in screenshots
  page.on("pageerror", (e) => console.error(`[${name}] page error: ${e.message}`));
  page.on("console", (m) => { if (m.type() === "error") console.error(`[${name}] console: ${m.text()}`); });
  const sockets = [];
  page.on("websocket", (ws) => sockets.push(ws.url()));
  await page.goto(url);
  return { page, sockets };
}

// An https:// page must talk over wss://, an http:// one over ws://.
export function checkSchemes(name, url, sockets) {
  const scheme = url.startsWith("https:") ? "wss:" : "ws:";
  if (!sockets.length || !sockets.every((u) => u.startsWith(scheme))) {
    throw new Error(`[${name}] expected ${scheme} sockets, saw ${JSON.stringify(sockets)}`);
  }
}

// Prints RESTART and waits for a line on stdin: the caller restarts the
// server on the same port meanwhile.
export async function askForRestart() {
  console.log("RESTART");
  const lines = createInterface({ input: process.stdin });
  await new Promise((resolve) => lines.once("line", resolve));
  lines.close();
}

// Runs `body(shots)` with the screenshot directory made, closes every
// browser and removes every profile, and exits 0 on success, 1 (with the
// reason) on any failure.
export async function run(title, shots, body) {
  let failed = false;
  try {
    mkdirSync(shots, { recursive: true });
    await body(shots);
    console.log(`${title}: passed`);
  } catch (e) {
    failed = true;
    console.error(`${title}: FAILED: ${e.stack || e}`);
  } finally {
    for (const c of contexts) await c.close().catch(() => {});
    for (const d of profiles) rmSync(d, { recursive: true, force: true });
  }
  process.exit(failed ? 1 : 0);
}
