// Run by tests/browser.rs (`cargo test --test browser cluster_in_chromium`).
//
// Two nodes share rooms through one PostgreSQL database (CONFNODE_URL and
// CONFNODE_URL_B; the first already serves a room, so placement puts the next on the
// second). A host creates a room through the first node's page; Alice opens the room
// link on the first node, Bob the same room on the second node. Whichever node serves
// the room, the other one's page reaches it (its API redirects there): both join, see
// each other in the roster, publish, decode each other's video and hear each other;
// the host, still on the first node's page, locks the room on the node that serves
// it; no page breaks its Content-Security-Policy or reaches any host but the two nodes.

import { LAPTOP, assertNoProblems, config, hostRoom, joined, launch, openRoom, sleep, step, waitFor, waitRoster } from "./lib.mjs";
import { env } from "./lib.mjs";

const cfgA = config();
const baseB = env("CONFNODE_URL_B").replace(/\/+$/, "");
const origins = [cfgA.origin, new URL(baseB).origin];
cfgA.origins = origins;
const cfgB = { ...cfgA, base: baseB, origin: new URL(baseB).origin, origins };
// The nodes' media addresses are on loopback in tests; Chromium leaves loopback out
// of ICE unless told.
const browser = await launch(["--allow-loopback-in-peer-connection"]);

const host = await hostRoom(browser, cfgA, null);
const room = host.room;
const people = [
  await openRoom(browser, cfgA, room, "Alice", "name=Alice&autojoin=1", { viewport: LAPTOP }),
  await openRoom(browser, cfgB, room, "Bob", "name=Bob&autojoin=1", { viewport: LAPTOP }),
];
for (const p of people) p.id = await joined(p);
for (const p of people) for (const q of people) await waitRoster(p, q.label, true);
const apis = await Promise.all(people.map((p) => p.page.evaluate(() => window.confnode.state().api)));
step(`Alice (page of ${cfgA.origin}) and Bob (page of ${cfgB.origin}) joined ${room}, served by ${apis.join(" and ")}`);
if (apis[0] !== apis[1] || !origins.includes(apis[0])) throw new Error(`the two pages call different nodes: ${apis}`);
if (apis[0] !== cfgB.origin) throw new Error(`the room was placed on ${apis[0]}, not on the node with fewer rooms`);

for (const p of people) {
  await p.page.waitForFunction(() => window.confnode.state().publishing !== "starting", null, { timeout: 20_000 });
  const state = await p.page.evaluate(() => window.confnode.state());
  if (state.publishing !== "published") {
    throw new Error(`${p.label}: publishing is ${state.publishing}: ${await p.page.locator("#notices").textContent()}`);
  }
}
step("both publish");

const stats = (p) => p.page.evaluate(() => window.confnode.stats());
const inbound = (s, from, kind) => s.inbound.filter((i) => i.participant === from && i.kind === kind);
const total = (s, from, kind, key) => inbound(s, from, kind).reduce((n, i) => n + (i[key] || 0), 0);
async function enableSoundIfAsked(p) {
  const button = p.page.locator("#enable-sound");
  if (await button.isVisible()) await button.click();
}

for (const p of people) {
  const q = people.find((o) => o !== p);
  await waitFor(`${p.label}: frames and audio from ${q.label}`, 20_000, async () => {
    await enableSoundIfAsked(p);
    const s = await stats(p);
    const ok =
      inbound(s, q.id, "video").some((v) => v.framesDecoded > 0) &&
      inbound(s, q.id, "audio").some((a) => a.totalSamplesReceived > 0);
    return ok ? true : s.inbound;
  });
  const before = await stats(p);
  await sleep(2_000);
  const after = await stats(p);
  const frames = total(after, q.id, "video", "framesDecoded") - total(before, q.id, "video", "framesDecoded");
  const samples = total(after, q.id, "audio", "totalSamplesReceived") - total(before, q.id, "audio", "totalSamplesReceived");
  const energy = total(after, q.id, "audio", "totalAudioEnergy");
  if (frames < 10) throw new Error(`${p.label}: only ${frames} frames from ${q.label} decoded in 2 s`);
  if (samples <= 0) throw new Error(`${p.label}: no audio samples from ${q.label} in 2 s`);
  if (!(energy > 0)) throw new Error(`${p.label}: ${q.label}'s audio is silent: ${JSON.stringify(inbound(after, q.id, "audio"))}`);
}
step("each decodes the other's video and hears the other");

// The host's page (first node) manages the room on the node that serves it.
await host.page.getByRole("button", { name: "Lock the room" }).click();
await waitFor("the host's page shows the room locked", 10_000, async () => {
  const pressed = await host.page.locator("#lock-room").getAttribute("aria-pressed");
  return pressed === "true" ? true : { pressed, state: await host.page.locator("#manage-state").textContent() };
});
const info = await (await fetch(`${apis[0]}/api/rooms/${room}`)).json();
if (info.locked !== true) throw new Error(`the room's node does not hold it locked: ${JSON.stringify(info)}`);
step(`the host locked the room from ${cfgA.origin}'s page on ${apis[0]}`);

assertNoProblems(host.ctx, ...people.map((p) => p.ctx));
await browser.close();
step("done");
