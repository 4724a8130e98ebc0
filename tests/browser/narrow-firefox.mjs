// Run by tests/browser.rs (`cargo test --test browser narrow_link_in_firefox`), which
// makes a network namespace joined to the node by a veth pair whose node side sends
// at most 250 kbit/s (tc tbf, a 200 ms queue), and starts the node on that link's
// address.
//
// Alice joins in a Chromium on the node's side, Fiona in Firefox ESR inside the
// namespace: everything the node sends Fiona crosses the narrow link, which carries
// Alice's lowest layer and voice (about 140-200 kbit/s) but not her middle one.
//   - From Firefox's transport-cc feedback the node finds the link's limit: Alice's
//     video settles on its lowest layer (≤ 180 lines) for Fiona and keeps playing
//     (frames decoded in every second of 10 s: Firefox reports no freeze durations);
//   - Alice, uncapped, gets Fiona's video (Firefox's simulcast) at ≥ 540 lines;
//   - the cap is lifted (CONFNODE_LIFT): Fiona is back on ≥ 540 lines within 15 s.
//
// Environment besides lib.mjs's: FIREFOX_NARROW (Firefox in the namespace, a wrapper
// that also relays its WebDriver BiDi port, FIREFOX_PORT, to this loopback),
// CONFNODE_LIFT (the shell command that lifts the cap).

import { execSync } from "node:child_process";
import puppeteer from "puppeteer-core";
import { assertNoProblems, config, createRoom, env, joined, launch, openRoom, sleep, step, waitFor, waitRoster } from "./lib.mjs";

const cfg = config();
const host = new URL(cfg.base).hostname;
// The page is served from the link's address, not localhost: both browsers give such
// an origin the camera only when told it is secure.
const wide = await launch([`--unsafely-treat-insecure-origin-as-secure=${cfg.origin}`]);
const firefox = await puppeteer.launch({
  browser: "firefox",
  executablePath: env("FIREFOX_NARROW"),
  headless: true,
  // The wrapper relays this port from the namespace's loopback to this one's.
  debuggingPort: Number(env("FIREFOX_PORT")),
  extraPrefsFirefox: {
    "media.navigator.streams.fake": true,
    "media.navigator.permission.disabled": true,
    "dom.securecontext.allowlist": host,
  },
});

/** The video a page decodes from `id`: frames decoded, height. */
async function video(page, id) {
  const s = await page.evaluate(() => window.confnode.stats());
  const v = s.inbound.find((i) => i.participant === id && i.kind === "video" && i.framesDecoded > 0);
  return v ? { frames: v.framesDecoded, height: v.frameHeight || 0 } : { frames: 0, height: 0 };
}

const room = await createRoom(wide, cfg, null);
const alice = await openRoom(wide, cfg, room, "Alice", "name=Alice&autojoin=1");
alice.id = await joined(alice);
const fiona = await firefox.newPage();
const problems = [];
fiona.on("pageerror", (e) => problems.push(`Fiona: uncaught error: ${e.message}`));
await fiona.goto(`${cfg.base}/r/${encodeURIComponent(room)}?name=Fiona&autojoin=1`);
await fiona.waitForFunction(() => window.confnode && window.confnode.state().joined, { timeout: 30_000 });
const fionaId = await fiona.evaluate(() => window.confnode.state().participant);
await waitRoster(alice, "Fiona", true);
step(`Alice (Chromium) and Fiona (Firefox, behind 250 kbit/s) joined ${room}`);

await waitFor("Fiona: Alice's video playing on its lowest layer", 45_000, async () => {
  const before = await video(fiona, alice.id);
  await sleep(2_000);
  const now = await video(fiona, alice.id);
  return now.frames - before.frames >= 20 && now.height > 0 && now.height <= 180 ? true : { before, now };
});
step("Fiona gets Alice's lowest layer");

// No second without a new frame over 10 s.
let last = await video(fiona, alice.id);
const first = last;
for (let i = 0; i < 10; i++) {
  await sleep(1_000);
  const v = await video(fiona, alice.id);
  if (v.frames <= last.frames) throw new Error(`Fiona's video of Alice stood still for a second (${JSON.stringify(v)})`);
  if (v.height > 180) throw new Error(`Fiona got ${v.height} lines behind 250 kbit/s`);
  last = v;
}
step(`Fiona over 10 s: ${last.frames - first.frames} frames of Alice's video at ${last.height} lines, none a second late`);

await waitFor("Alice: Fiona's video (Firefox's simulcast) at ≥ 540 lines", 30_000, async () => {
  const v = await video(alice.page, fionaId);
  return v.height >= 540 ? true : v;
});
step("Alice gets Fiona's top layer");

execSync(env("CONFNODE_LIFT"));
const lifted = Date.now();
await waitFor("Fiona: Alice's video back at ≥ 540 lines", 15_000, async () => {
  const v = await video(fiona, alice.id);
  return v.height >= 540 ? true : v;
});
step(`the cap lifted: Fiona back at ≥ 540 lines after ${((Date.now() - lifted) / 1000).toFixed(1)} s`);

assertNoProblems(alice.ctx);
if (problems.length) throw new Error(problems.join("\n"));
await firefox.close();
await wide.close();
