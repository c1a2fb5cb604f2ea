// Two people chat through the real page in headless Chromium.
//
//   node tests/browser/chat.mjs http://127.0.0.1:PORT/ [SCREENSHOT_DIR] [--restart]
//
// Each person gets a browser of their own (a fresh profile each). Both log in,
// join one room, exchange messages both ways, then alice sends bob a direct
// message and bob answers it; each must see the other's messages with sender
// and time. With --restart it then prints RESTART, waits for a line on stdin
// (the caller restarts the server on the same port meanwhile), and checks that
// both pages reconnect by themselves and chat again. Screenshots go to
// SCREENSHOT_DIR (default target/). Exits non-zero with the reason on any
// failure.
import { join } from "node:path";
import { askForRestart, checkSchemes, openPage, run } from "./lib.mjs";

const url = process.argv[2];
const shots = process.argv[3] || "target";
const restart = process.argv.includes("--restart");
if (!url) {
  console.error("usage: node chat.mjs URL [SCREENSHOT_DIR]");
  process.exit(2);
}

async function person(name, viewport) {
  const { page, sockets } = await openPage(name, url, viewport);
  await page.fill("#name", name);
  await page.click("#login-btn");
  await page.waitForSelector("#status.online");
  await page.waitForFunction((n) => document.querySelector("#me").textContent === n, name);
  checkSchemes(name, url, sockets);
  return page;
}

async function joinRoom(page, room) {
  if (await page.isVisible("#menu")) await page.click("#menu");  // phone layout
  await page.fill("#room-input", room);
  await page.click("#join-btn");
  await page.waitForSelector(`#rooms li.current[data-conv="#${room}"]`);
}

async function say(page, text) {
  await page.fill("#text", text);
  await page.press("#text", "Enter");
}

// Waits until the shown conversation has a message with this text from this
// sender, showing a time.
async function sees(page, from, text) {
  await page.waitForFunction(
    ([from, text]) => [...document.querySelectorAll("#messages .msg")].some((m) =>
      m.querySelector(".from")?.textContent === from &&
      m.querySelector(".text")?.textContent === text &&
      /\d/.test(m.querySelector("time")?.textContent || "")),
    [from, text],
  );
}

async function main() {
  const alice = await person("alice", { width: 1100, height: 700 });
  const bob = await person("bob", { width: 390, height: 760 });  // a phone

  await joinRoom(alice, "general");
  await joinRoom(bob, "general");
  // alice learns that bob is here.
  await alice.waitForFunction(() => document.querySelector("#conv-users").textContent.includes("bob"));

  await say(alice, "hello from alice");
  await sees(bob, "alice", "hello from alice");
  await sees(alice, "alice", "hello from alice");
  await say(bob, "hi alice, bob here");
  await sees(alice, "bob", "hi alice, bob here");

  // A direct message: alice picks bob from the online list.
  await alice.waitForSelector('#online li[data-user="bob"]');
  await alice.click('#online li[data-user="bob"]');
  await alice.waitForSelector('#dms li.current[data-conv="@bob"]');
  await say(alice, "psst, just for you");
  await sees(alice, "alice", "psst, just for you");
  // bob is notified in his list of conversations (the menu on a phone).
  await bob.click("#menu");
  await bob.waitForSelector('#dms li[data-conv="@alice"] .badge');
  await bob.click('#dms li[data-conv="@alice"]');
  await sees(bob, "alice", "psst, just for you");
  await say(bob, "got it");
  await sees(alice, "bob", "got it");
  // The room did not get the direct messages.
  await bob.click("#menu");
  await bob.click('#rooms li[data-conv="#general"]');
  const leaked = await bob.$$eval("#messages .msg .text", (els) => els.some((e) => e.textContent === "got it"));
  if (leaked) throw new Error("a direct message showed up in the room");

  // Errors are shown to the person, and a refused room name leaves the
  // conversation on screen.
  await alice.fill("#room-input", "no spaces allowed");
  await alice.click("#join-btn");
  await alice.waitForFunction(() => [...document.querySelectorAll("#errors .error")]
    .some((e) => e.textContent.startsWith("bad name")));
  await alice.waitForFunction(() => document.querySelector("#conv-title").textContent === "@ bob");
  if (await alice.isDisabled("#text")) throw new Error("the composer was disabled by a refused join");
  // A refused message is not lost: it goes back into the box (the server
  // allows 200 characters here).
  const long = "x".repeat(201);
  await say(alice, long);
  await alice.waitForFunction(() => [...document.querySelectorAll("#errors .error")]
    .some((e) => e.textContent.startsWith("too long")));
  await alice.waitForFunction((t) => document.querySelector("#text").value === t, long);
  await alice.fill("#text", "");

  // History on join, and "Load older" (the server sends 5 with joined).
  await joinRoom(alice, "archive");
  for (let i = 1; i <= 8; i++) {
    await say(alice, `archived ${i}`);
    await sees(alice, "alice", `archived ${i}`);
  }
  await joinRoom(bob, "archive");
  await sees(bob, "alice", "archived 8");
  await sees(bob, "alice", "archived 4");
  if (await bob.$$eval("#messages .msg", (els) => els.length) !== 5) throw new Error("joined should bring 5");
  await bob.click("#older");
  await sees(bob, "alice", "archived 1");
  const order = await bob.$$eval("#messages .msg .text", (els) => els.map((e) => e.textContent));
  if (order.join("|") !== [1, 2, 3, 4, 5, 6, 7, 8].map((i) => `archived ${i}`).join("|")) {
    throw new Error(`history out of order: ${order}`);
  }
  await bob.click("#menu");
  await bob.click('#rooms li[data-conv="#general"]');

  if (restart) {
    await askForRestart();
    // Both pages notice, back off, reconnect, log in and rejoin on their own.
    await alice.waitForSelector("#status.online", { timeout: 30000 });
    await bob.waitForSelector("#status.online", { timeout: 30000 });
    await alice.click('#rooms li[data-conv="#general"]');
    await alice.waitForFunction(() => document.querySelector("#conv-users").textContent.includes("bob"));
    await say(alice, "still here after the restart");
    await sees(bob, "alice", "still here after the restart");
    await sees(bob, "alice", "hello from alice");
  }

  await alice.screenshot({ path: join(shots, "chat-browser-alice.png") });
  await bob.screenshot({ path: join(shots, "chat-browser-bob.png") });
}

await run("chat browser test", shots, main);
