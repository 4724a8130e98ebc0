// Shared helpers of the browser tests: headless Chromium (Debian's /usr/bin/chromium)
// driven by playwright-core against a confnode that the caller started.
//
// Environment (set by tests/browser.rs):
//   CONFNODE_URL          the node's HTTP base, e.g. http://127.0.0.1:8080
//   CONFNODE_HOST         a host account name ([[http.hosts]])
//   CONFNODE_PASSWORD     its password
//   CONFNODE_SCREENSHOTS  folder for screenshots (default: a fresh temp folder)
//   CHROMIUM              the browser binary (default /usr/bin/chromium)

import { mkdtempSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

export const LAPTOP = { width: 1280, height: 800 };
export const PHONE = { width: 390, height: 844 };

export function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (tests/browser.rs sets it)`);
  return value;
}

export function config() {
  const base = env("CONFNODE_URL").replace(/\/+$/, "");
  let shots = process.env.CONFNODE_SCREENSHOTS;
  if (shots) mkdirSync(shots, { recursive: true });
  else shots = mkdtempSync(join(tmpdir(), "confnode-shots-"));
  return {
    base,
    origin: new URL(base).origin,
    host: env("CONFNODE_HOST"),
    password: env("CONFNODE_PASSWORD"),
    shots,
  };
}

/** Headless Chromium with a fake camera (a 1280x720 test pattern) and microphone (a
 * beep), permissions granted; `extra` arguments are appended. `executablePath` may be
 * a wrapper that starts Chromium elsewhere (in a network namespace, say): playwright
 * talks to it over a pipe. */
export async function launch(extra = [], executablePath = process.env.CHROMIUM || "/usr/bin/chromium") {
  return chromium.launch({
    executablePath,
    args: [
      "--use-fake-device-for-media-stream",
      "--use-fake-ui-for-media-stream",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      "--no-first-run",
      ...extra,
    ],
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` every `everyMs` until it returns true; fails after `limitMs` with what
 * it returned last. */
export async function waitFor(what, limitMs, check, everyMs = 250) {
  const deadline = Date.now() + limitMs;
  let last;
  for (;;) {
    last = await check();
    if (last === true) return;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${limitMs} ms (${JSON.stringify(last)})`);
    await sleep(everyMs);
  }
}

export function step(text) {
  console.log(`ok - ${text}`);
}

/**
 * A browser context that fails the test on page errors, on Content-Security-Policy
 * violations and on any request to another origin than the node's (or, with
 * `cfg.origins`, than those nodes').
 */
export async function context(browser, cfg, label, options = {}) {
  const ctx = await browser.newContext({
    viewport: LAPTOP,
    colorScheme: "light",
    ...options,
  });
  ctx.problems = [];
  ctx.on("request", (req) => {
    const url = req.url();
    if (url.startsWith("data:") || url.startsWith("blob:")) return;
    // `cfg.origins`: the nodes a page may reach (several nodes on one shared store).
    const allowed = cfg.origins || [cfg.origin];
    if (!allowed.includes(new URL(url).origin)) ctx.problems.push(`${label}: request to another host: ${url}`);
  });
  ctx.on("page", (page) => watch(page, ctx, label));
  return ctx;
}

function watch(page, ctx, label) {
  page.on("pageerror", (e) => ctx.problems.push(`${label}: uncaught error: ${e.message}`));
  page.on("console", (msg) => {
    const text = msg.text();
    if (msg.type() === "error" && /Content Security Policy|Refused to/i.test(text)) {
      ctx.problems.push(`${label}: ${text}`);
    }
  });
}

export function assertNoProblems(...contexts) {
  const problems = contexts.flatMap((c) => c.problems);
  if (problems.length) throw new Error("problems in the page:\n  " + problems.join("\n  "));
}

/** Logs in on "/" as the host and creates a room; returns its id. */
export async function createRoom(browser, cfg, screenshot) {
  const { room, ctx } = await hostRoom(browser, cfg, screenshot);
  await ctx.close();
  return room;
}

/** Like createRoom, but the host's page stays open: `{ room, ctx, page, label }`. */
export async function hostRoom(browser, cfg, screenshot) {
  const ctx = await context(browser, cfg, "host");
  await ctx.grantPermissions(["clipboard-read", "clipboard-write"], { origin: cfg.origin });
  const page = await ctx.newPage();
  await page.goto(cfg.base + "/");
  if (screenshot) await page.screenshot({ path: join(cfg.shots, "login-" + screenshot) });
  await page.getByLabel("Host name").fill(cfg.host);
  await page.getByLabel("Password", { exact: true }).fill(cfg.password);
  await page.getByRole("button", { name: "Create room" }).click();
  await page.locator("#created").waitFor({ state: "visible", timeout: 15_000 });
  const room = await page.locator("#created").getAttribute("data-room");
  const link = await page.getByLabel("Room link").inputValue();
  // End-to-end encrypted by default: the key follows "#k=".
  const [where, fragment] = link.split("#");
  if (!room || !where.endsWith("/r/" + room)) throw new Error(`room link ${link} does not name room ${room}`);
  if (!/^k=[A-Za-z0-9_-]{43}$/.test(fragment || "")) throw new Error(`room link ${link} carries no key`);
  await page.getByRole("button", { name: "Copy link" }).click();
  await page.getByText("Link copied.").waitFor({ timeout: 5_000 });
  const copied = await page.evaluate(() => navigator.clipboard.readText());
  if (copied !== link) throw new Error(`copied ${JSON.stringify(copied)}, not the link ${link}`);
  if (screenshot) await page.screenshot({ path: join(cfg.shots, screenshot), fullPage: true });
  assertNoProblems(ctx);
  return { room, ctx, page, label: "host", link };
}

/** Opens the room view with `query` (e.g. "name=Alice&autojoin=1") in a fresh context. */
export async function openRoom(browser, cfg, room, label, query, options = {}) {
  const ctx = await context(browser, cfg, label, options);
  const page = await ctx.newPage();
  await page.goto(`${cfg.base}/r/${encodeURIComponent(room)}?${query}`);
  return { ctx, page, label };
}

/** Each of `names` opens `room` (autojoin) in a fresh context of `browser` and joins;
 * returns them, with their participant ids, once every roster shows everyone. */
export async function joinAll(browser, cfg, room, names) {
  const people = [];
  for (const name of names) {
    const p = await openRoom(browser, cfg, room, name, `name=${name}&autojoin=1`);
    p.id = await joined(p);
    people.push(p);
  }
  for (const p of people) for (const q of people) await waitRoster(p, q.label, true);
  return people;
}

/** Waits until the page has joined; returns its participant id. */
export async function joined(p) {
  await p.page.waitForFunction(() => window.confnode && window.confnode.state().joined, null, {
    timeout: 15_000,
  });
  return p.page.evaluate(() => window.confnode.state().participant);
}

/** The display names in the page's roster ("(you)" left out). */
export function rosterNames(p) {
  return p.page.$$eval("#roster li .member-name", (els) => els.map((e) => e.textContent));
}

/** Waits until the roster has `name` in it (present = true) or not (present = false). */
export async function waitRoster(p, name, present, timeout = 15_000) {
  try {
    await p.page.waitForFunction(
      ([n, want]) =>
        [...document.querySelectorAll("#roster li .member-name")].some((e) => e.textContent === n) === want,
      [name, present],
      { timeout, polling: 100 }
    );
  } catch (_) {
    const names = await rosterNames(p);
    throw new Error(
      `${p.label}: ${name} ${present ? "never appeared in" : "did not leave"} the roster within ` +
        `${timeout} ms (roster: ${JSON.stringify(names)})`
    );
  }
}
