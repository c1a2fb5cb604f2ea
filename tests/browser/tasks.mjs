// The task scheduler's page in headless Chromium, watching jobs that the
// test (tests/tasks_browser.rs) submits and runs over the frame protocol.
//
//   node tests/browser/tasks.mjs http://127.0.0.1:PORT/ [SCREENSHOT_DIR]
//
// The script drives the page and asks the test for each step on the
// protocol's side by printing one line and reading the answer from stdin
// (an answer starting with "FAIL" stops the script):
//
//   SUBMIT              the test submits a job on queue "browser"; answer: its id
//   EXECUTE ID          a raw executor joins and is pushed job ID; answer: ok
//   DONE ID             the executor sends done with a result; answer: the
//                       result as JSON
//   PAGEJOB ID VALUE    the page's own form submitted job ID (echo VALUE on
//                       queue "from-page"): the test checks it with status,
//                       an executor receives and finishes it; answer: ok
//   RESTART             the test restarts the scheduler on the same ports
//                       and database; answer: restarted
//
// The page must show the job queued, then leased, then succeeded with its
// result, live (no reload); after the restart it must reconnect by itself
// and show the same jobs from the database. A second page at a phone's
// width (390x844) must not overflow horizontally. Screenshots go to
// SCREENSHOT_DIR (default target/): tasks-browser-queued.png,
// tasks-browser-succeeded.png, tasks-browser-restarted.png and
// tasks-browser-phone.png. Exits non-zero with the reason on any failure.
import { join } from "node:path";
import { createInterface } from "node:readline";
import { checkSchemes, openPage, run } from "./lib.mjs";

const url = process.argv[2];
const shots = process.argv[3] || "target";
if (!url) {
  console.error("usage: node tasks.mjs URL [SCREENSHOT_DIR]");
  process.exit(2);
}

// The test's answers, one line each, in order.
const stdin = createInterface({ input: process.stdin });
const answers = [];
let waiting = null;
let closed = false;
stdin.on("line", (line) => {
  if (waiting) { const w = waiting; waiting = null; w.resolve(line); } else answers.push(line);
});
stdin.on("close", () => {
  closed = true;
  if (waiting) waiting.reject(new Error("the test closed stdin"));
});

// Prints `line` for the test and returns its answer; throws on "FAIL ...".
async function ask(line) {
  console.log(line);
  const answer = answers.length ? answers.shift() : await new Promise((resolve, reject) => {
    if (closed) reject(new Error("the test closed stdin"));
    else waiting = { resolve, reject };
  });
  if (answer.startsWith("FAIL")) throw new Error(`the test answered ${line} with: ${answer}`);
  return answer;
}

async function online(page, timeout) {
  await page.waitForSelector('#conn[data-state="online"]', { timeout });
}

// Waits until the page shows job `id` in `state`; returns the row's cells.
async function shows(page, id, state, timeout) {
  const row = `#jobs tr[data-job="${id}"][data-state="${state}"]`;
  await page.waitForSelector(row, { timeout }).catch((e) => {
    throw new Error(`the page never showed job ${id} ${state}: ${e.message}`);
  });
  return page.$$eval(`${row} td`, (tds) => tds.map((td) => td.textContent));
}

// The queue's row of counts, by state.
async function counts(page, queue) {
  return page.$$eval(`#queues tr[data-queue="${queue}"] td[data-state]`,
    (tds) => Object.fromEntries(tds.map((td) => [td.dataset.state, Number(td.textContent)])));
}

// Waits until the queue's counts are `want` (only the states named).
async function countsAre(page, queue, want) {
  await page.waitForFunction(([queue, want]) => {
    const row = document.querySelector(`#queues tr[data-queue="${queue}"]`);
    return row && Object.entries(want).every(([s, n]) =>
      row.querySelector(`td[data-state="${s}"]`)?.textContent === String(n));
  }, [queue, want]).catch(async (e) => {
    throw new Error(`queue ${queue}: counts ${JSON.stringify(await counts(page, queue))}, ` +
      `expected ${JSON.stringify(want)}: ${e.message}`);
  });
}

// The rows as shown: id, queue, state and result, in order.
async function rows(page) {
  return page.$$eval("#jobs tbody tr", (trs) => trs.map((tr) => ({
    job: tr.dataset.job,
    queue: tr.children[1].textContent,
    state: tr.dataset.state,
    result: tr.querySelector("td.r").textContent,
  })));
}

// Nothing is wider than the window: no horizontal scrolling of the page,
// and no section or table needs one of its own.
async function noOverflow(page, name) {
  const wide = await page.evaluate(() => {
    const width = document.documentElement.clientWidth;
    const out = [];
    if (document.documentElement.scrollWidth > width) {
      out.push(`the page is ${document.documentElement.scrollWidth}px wide in ${width}px`);
    }
    for (const el of document.querySelectorAll("header, main, section, table, form, #answer")) {
      const r = el.getBoundingClientRect();
      if (r.right > width + 0.5 || el.scrollWidth > el.clientWidth + 1) {
        out.push(`${el.tagName.toLowerCase()}${el.id ? "#" + el.id : ""}: right ${r.right}, ` +
          `scrollWidth ${el.scrollWidth} > clientWidth ${el.clientWidth}`);
      }
    }
    return out;
  });
  if (wide.length) throw new Error(`[${name}] overflows horizontally:\n ${wide.join("\n ")}`);
}

async function main(shots) {
  const { page, sockets } = await openPage("desk", url, { width: 1000, height: 760 });
  await online(page);
  checkSchemes("desk", url, sockets);
  if ((await page.textContent("#conn")) !== "live") throw new Error("online, but #conn does not say live");

  // A job submitted by the test shows up queued...
  const id = await ask("SUBMIT");
  await shows(page, id, "queued");
  await countsAre(page, "browser", { queued: 1, leased: 0, succeeded: 0 });
  await page.screenshot({ path: join(shots, "tasks-browser-queued.png") });

  // ...leased once an executor has it...
  if ((await ask(`EXECUTE ${id}`)) !== "ok") throw new Error("no executor got the job");
  await shows(page, id, "leased");
  await countsAre(page, "browser", { queued: 0, leased: 1, succeeded: 0 });

  // ...and succeeded, with its result, once it sends done.
  const result = await ask(`DONE ${id}`);
  const cells = await shows(page, id, "succeeded");
  if (!cells.includes(result)) throw new Error(`job ${id}: row ${JSON.stringify(cells)} lacks the result ${result}`);
  await countsAre(page, "browser", { queued: 0, leased: 0, succeeded: 1 });
  await page.screenshot({ path: join(shots, "tasks-browser-succeeded.png") });

  // The page's own form submits a built-in job; the scheduler has it.
  const value = `from the page ${Date.now()}`;
  await page.selectOption("#kind", "echo");
  await page.fill("#args", JSON.stringify({ value }));
  await page.fill("#queue", "from-page");
  await page.fill("#priority", "7");
  await page.click("#submit button[type=submit]");
  await page.waitForSelector("#answer[data-job]");
  const mine = await page.getAttribute("#answer", "data-job");
  if (!(await page.textContent("#answer")).includes(`accepted: job ${mine}`)) {
    throw new Error(`the answer line says ${await page.textContent("#answer")}`);
  }
  await shows(page, mine, "queued");
  if ((await ask(`PAGEJOB ${mine} ${value}`)) !== "ok") throw new Error("the test did not see the page's job");
  const echoed = await shows(page, mine, "succeeded");
  if (!echoed.includes(JSON.stringify({ value }))) throw new Error(`job ${mine}: row ${JSON.stringify(echoed)}`);

  // A restart on the same ports: the page goes offline, reconnects by
  // itself and shows the same jobs again, read back from the database.
  const before = await rows(page);
  const connects = Number(await page.getAttribute("#conn", "data-connects"));
  await ask("RESTART");
  await page.waitForFunction((n) => {
    const c = document.querySelector("#conn");
    return c.dataset.state === "online" && Number(c.dataset.connects) > n && Number(c.dataset.snapshots) > 0;
  }, connects, { timeout: 30000 }).catch((e) => {
    throw new Error(`no reconnect with a snapshot after the restart: ${e.message}`);
  });
  const after = await rows(page);
  if (JSON.stringify(after) !== JSON.stringify(before)) {
    throw new Error(`the jobs changed across the restart:\n ${JSON.stringify(before)}\n ${JSON.stringify(after)}`);
  }
  await countsAre(page, "browser", { queued: 0, leased: 0, succeeded: 1 });
  await countsAre(page, "from-page", { queued: 0, leased: 0, succeeded: 1 });
  await page.screenshot({ path: join(shots, "tasks-browser-restarted.png") });

  // A phone: everything fits the width.
  const phone = await openPage("phone", url, { width: 390, height: 844 });
  await online(phone.page);
  await shows(phone.page, id, "succeeded");
  await noOverflow(phone.page, "phone");
  await phone.page.screenshot({ path: join(shots, "tasks-browser-phone.png"), fullPage: true });
  await noOverflow(page, "desk");
}

await run("tasks browser test", shots, async (dir) => {
  try {
    await main(dir);
  } finally {
    stdin.close();
  }
});
