// Two tabs edit the sync server's shared list through the real page in
// headless Chromium.
//
//   node tests/browser/sync.mjs http://127.0.0.1:PORT/ [SCREENSHOT_DIR] [--restart]
//
// Page A (a desktop, client "page-a" by ?client=) and page B (a phone, the
// page's own per-tab id) open the list of a fresh server. Items added and
// edited in one appear in the other, a field a backend adds to the index
// over HTTP survives the pages' writes; both add an item while A is paused (its
// socket closed by the page's "Pause sync" button), and the index merges
// without asking. Then both edit the same item from the same version, made
// certain by pausing one page while the other's edit is acked: the paused
// one sends its stale write on resume and gets the conflict view. Round 1
// resolves it with "Keep theirs" (on B), round 2 with "Reapply mine" (on A),
// round 3 is an edit begun before the other page's change and saved after
// it; after each the two rendered lists must be equal. A delete follows. With --restart it then
// prints RESTART, waits for a line on stdin (the caller restarts the server
// on the same port and database meanwhile), and checks that both pages
// reconnect by themselves (a new welcome each), still show the same list,
// and that an edit made after the restart reaches the other page.
// Screenshots go to SCREENSHOT_DIR (default target/): sync-browser-a.png,
// sync-browser-b.png and sync-browser-conflict.png. Exits non-zero with the
// reason on any failure.
import { join } from "node:path";
import { WAIT, askForRestart, checkSchemes, openPage, run } from "./lib.mjs";

const url = process.argv[2];
const shots = process.argv[3] || "target";
const restart = process.argv.includes("--restart");
if (!url) {
  console.error("usage: node sync.mjs URL [SCREENSHOT_DIR] [--restart]");
  process.exit(2);
}

async function tab(name, viewport, client) {
  const at = client ? `${url}?client=${client}` : url;
  const { page, sockets } = await openPage(name, at, viewport);
  page.name = name;
  await online(page);
  checkSchemes(name, url, sockets);
  return page;
}

async function online(page, timeout = WAIT) {
  await page.waitForSelector('#status[data-state="online"]', { timeout });
}

async function welcomes(page) {
  return Number(await page.getAttribute("#status", "data-welcomes"));
}

// The list as rendered, in order.
async function items(page) {
  return page.$$eval("#items li", (els) => els.map((li) => ({
    id: li.dataset.id,
    text: li.querySelector(".text")?.textContent,
    done: li.querySelector("input.done")?.checked,
  })));
}

async function settled(page) {
  await page.waitForFunction(() => document.body.dataset.pending === "0");
}

// Waits until both pages have nothing unsettled and render the same list;
// returns it.
async function converged(a, b) {
  const deadline = Date.now() + WAIT;
  for (;;) {
    await settled(a);
    await settled(b);
    const [la, lb] = [await items(a), await items(b)];
    if (JSON.stringify(la) === JSON.stringify(lb)) return la;
    if (Date.now() > deadline) {
      throw new Error(`the pages did not converge:\n A ${JSON.stringify(la)}\n B ${JSON.stringify(lb)}`);
    }
    await a.waitForTimeout(50);
  }
}

// Waits until `page` shows an item with this text; returns its id.
async function sees(page, text) {
  const li = await page.waitForSelector(`#items li:has(.text:text-is(${JSON.stringify(text)}))`);
  return li.getAttribute("data-id");
}

async function add(page, text) {
  await page.fill("#new-text", text);
  await page.press("#new-text", "Enter");
  return sees(page, text);
}

async function edit(page, id, text) {
  await page.click(`#items li[data-id="${id}"] button.edit`);
  await page.fill(`#items li[data-id="${id}"] input.edit-text`, text);
  await page.press(`#items li[data-id="${id}"] input.edit-text`, "Enter");
  await page.waitForSelector(`#items li[data-id="${id}"] .text:text-is(${JSON.stringify(text)})`);
}

async function pause(page) {
  await page.click("#pause");
  await page.waitForSelector('#status[data-state="offline"]');
}

async function resume(page) {
  const before = await welcomes(page);
  await page.click("#pause");
  await page.waitForFunction((n) => Number(document.querySelector("#status").dataset.welcomes) > n, before);
}

async function noConflict(page) {
  if (await page.isVisible("#conflict")) throw new Error(`[${page.name}] shows a conflict view`);
}

// The conflict view of `page`: its item, theirs and mine as shown.
async function conflictView(page) {
  await page.waitForSelector("#conflict:not([hidden])").catch((e) => {
    throw new Error(`[${page.name}] no conflict view: ${e.message}`);
  });
  return {
    key: await page.getAttribute("#conflict", "data-key"),
    theirs: await page.textContent("#conflict-theirs"),
    mine: await page.textContent("#conflict-mine"),
  };
}

// `writer` edits item `id` to `theirs` while `loser` is paused and edits it
// to `mine` from the version both had; when `loser` resumes, its write is
// stale and it must show the conflict view.
async function clash(writer, loser, id, theirs, mine) {
  await pause(loser);
  await edit(writer, id, theirs);
  await settled(writer);
  await edit(loser, id, mine);
  await resume(loser);
  const view = await conflictView(loser);
  if (view.key !== `todo/${id}` || !view.theirs.includes(theirs) || !view.mine.includes(mine)) {
    throw new Error(`[${loser.name}] conflict view ${JSON.stringify(view)}, expected ${theirs} against ${mine}`);
  }
  await noConflict(writer);
}

async function main(shots) {
  const a = await tab("a", { width: 1000, height: 720 }, "page-a");
  const b = await tab("b", { width: 390, height: 760 });
  if ((await a.textContent("#me")) !== "you are page-a") throw new Error("?client= was not used");
  if (!/^you are tab-[a-z0-9]+$/.test(await b.textContent("#me"))) throw new Error("no per-tab client id");
  if ((await items(a)).length !== 0) throw new Error("a fresh server's list is not empty");

  // Adds and edits travel both ways.
  const milk = await add(a, "buy milk");
  await sees(b, "buy milk");
  const call = await add(b, "call mom");
  await sees(a, "call mom");
  await edit(b, milk, "buy oat milk");
  await sees(a, "buy oat milk");
  await a.check(`#items li[data-id="${call}"] input.done`);
  await b.waitForSelector(`#items li[data-id="${call}"] input.done:checked`);
  // The keyboard keeps its place: a change from the other page, and a
  // toggle with the space bar, leave the focus where it was.
  await a.focus(`#items li[data-id="${call}"] input.done`);
  await edit(b, milk, "buy milk, oat");
  await sees(a, "buy milk, oat");
  await a.keyboard.press("Space");
  await b.waitForSelector(`#items li[data-id="${call}"] input.done:not(:checked)`);
  await settled(a);
  const focus = await a.evaluate(() => [document.activeElement.className, document.activeElement.closest("li")?.dataset.id]);
  if (focus[0] !== "done" || focus[1] !== call) throw new Error(`focus moved to ${JSON.stringify(focus)}`);
  await a.check(`#items li[data-id="${call}"] input.done`);
  await b.waitForSelector(`#items li[data-id="${call}"] input.done:checked`);
  await edit(b, milk, "buy oat milk");
  await sees(a, "buy oat milk");
  // User text is text, never markup.
  const markup = `<b>bold</b> & "quotes"`;
  await add(a, markup);
  await sees(b, markup);
  if (await b.$("#items b")) throw new Error("item text was rendered as HTML");
  let list = await converged(a, b);
  if (list.map((i) => i.text).join("|") !== ["buy oat milk", "call mom", markup].join("|")) {
    throw new Error(`unexpected list ${JSON.stringify(list)}`);
  }

  // A backend adds a field to the index over HTTP; the pages' next index
  // write keeps it (they only own `items`).
  const doc = new URL("doc/todo:index", url);
  const got = await fetch(doc);
  const patched = await fetch(doc, {
    method: "PATCH",
    headers: { "Content-Type": "application/merge-patch+json", "If-Match": got.headers.get("etag") },
    body: JSON.stringify({ title: "groceries" }),
  });
  if (patched.status !== 200) throw new Error(`PATCH /doc/todo:index: ${patched.status} ${await patched.text()}`);
  await add(b, "added after the patch");
  await sees(a, "added after the patch");
  await converged(a, b);
  const index = await (await fetch(doc)).json();
  if (index.value.title !== "groceries") throw new Error(`the index lost its title: ${JSON.stringify(index)}`);
  await a.click(`#items li[data-id="${await sees(a, "added after the patch")}"] button.delete`);
  await b.waitForSelector(`#items li:has(.text:text-is("added after the patch"))`, { state: "detached" });

  // Both add while A is offline: A's index write is stale when it resumes
  // and is merged on the server's value without asking anyone.
  await pause(a);
  await add(a, "added offline by a");
  await add(b, "added by b");
  await settled(b);
  await resume(a);
  list = await converged(a, b);
  const texts = list.map((i) => i.text);
  if (!texts.includes("added offline by a") || !texts.includes("added by b") || texts.length !== 5) {
    throw new Error(`index merge lost an item: ${JSON.stringify(texts)}`);
  }
  await noConflict(a);
  await noConflict(b);

  // Round 1: B's edit loses, B keeps theirs.
  await clash(a, b, milk, "milk: a's round 1", "milk: b's round 1");
  await b.screenshot({ path: join(shots, "sync-browser-conflict.png") });
  await b.click("#keep-theirs");
  await b.waitForSelector("#conflict[hidden]", { state: "attached" });
  list = await converged(a, b);
  if (list.find((i) => i.id === milk)?.text !== "milk: a's round 1") throw new Error("keep theirs did not keep theirs");

  // Round 2: A's edit loses, A reapplies its own on top.
  await clash(b, a, milk, "milk: b's round 2", "milk: a's round 2");
  await a.click("#reapply-mine");
  await a.waitForSelector("#conflict[hidden]", { state: "attached" });
  list = await converged(a, b);
  if (list.find((i) => i.id === milk)?.text !== "milk: a's round 2") throw new Error("reapply mine did not win");

  // An edit begun before the other page's change and saved after it is a
  // conflict too, not a silent overwrite.
  await b.click(`#items li[data-id="${milk}"] button.edit`);
  await edit(a, milk, "milk: a's while b types");
  await b.waitForSelector(`#items li[data-id="${milk}"][data-text="milk: a's while b types"]`);
  await b.fill(`#items li[data-id="${milk}"] input.edit-text`, "milk: b typed this");
  await b.press(`#items li[data-id="${milk}"] input.edit-text`, "Enter");
  const view = await conflictView(b);
  if (!view.theirs.includes("milk: a's while b types") || !view.mine.includes("milk: b typed this")) {
    throw new Error(`[b] conflict view ${JSON.stringify(view)}`);
  }
  await b.click("#reapply-mine");
  list = await converged(a, b);
  if (list.find((i) => i.id === milk)?.text !== "milk: b typed this") throw new Error("reapply mine did not win");

  // A delete reaches the other page.
  await a.click(`#items li[data-id="${call}"] button.delete`);
  await b.waitForSelector(`#items li[data-id="${call}"]`, { state: "detached" });
  list = await converged(a, b);

  if (restart) {
    const before = [await welcomes(a), await welcomes(b)];
    await askForRestart();
    // Both pages lose their socket, back off, reconnect and resubscribe.
    for (const [page, n] of [[a, before[0]], [b, before[1]]]) {
      await page.waitForFunction((n) => Number(document.querySelector("#status").dataset.welcomes) > n,
        n, { timeout: 30000 });
      await online(page);
    }
    const after = await converged(a, b);
    if (JSON.stringify(after) !== JSON.stringify(list)) {
      throw new Error(`the list changed across the restart:\n ${JSON.stringify(list)}\n ${JSON.stringify(after)}`);
    }
    await edit(b, milk, "milk after the restart");
    await sees(a, "milk after the restart");
    await converged(a, b);
  }

  await a.screenshot({ path: join(shots, "sync-browser-a.png") });
  await b.screenshot({ path: join(shots, "sync-browser-b.png") });
}

await run("sync browser test", shots, main);
