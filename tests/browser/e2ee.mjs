// Run by tests/browser.rs (`cargo test --test browser e2ee_in_chromium_and_firefox`).
//
// End-to-end encryption through the reference page, the key only in the link's
// fragment (#k=...):
//   - Alice and Bob (Chromium) and Fiona (Firefox ESR) with the same key decode each
//     other's video and hear each other;
//   - Dave's page skips decryption (e2ee=off): media from Alice reaches him but he
//     decodes none of her frames — the node forwards ciphertext;
//   - Eve's link has another key: her page says it cannot decrypt Alice, and decodes
//     nothing of her.

import { randomBytes } from "node:crypto";
import puppeteer from "puppeteer-core";
import { assertNoProblems, config, createRoom, joined, launch, openRoom, sleep, step, waitFor, waitRoster } from "./lib.mjs";

const cfg = config();
const key = randomBytes(32).toString("base64url");
const other = randomBytes(32).toString("base64url");
const chromium = await launch(["--allow-loopback-in-peer-connection"]);
const room = await createRoom(chromium, cfg, null);

const stats = (page) => page.evaluate(() => window.confnode.stats());
const state = (page) => page.evaluate(() => window.confnode.state());
const of = (s, id, kind, field) =>
  s.inbound.filter((i) => i.participant === id && i.kind === kind).reduce((n, i) => n + (i[field] || 0), 0);

const alice = await openRoom(chromium, cfg, room, "Alice", `name=Alice&autojoin=1#k=${key}`);
const bob = await openRoom(chromium, cfg, room, "Bob", `name=Bob&autojoin=1#k=${key}`);
for (const p of [alice, bob]) p.id = await joined(p);

const firefox = await puppeteer.launch({
  browser: "firefox",
  executablePath: process.env.FIREFOX || "/usr/bin/firefox-esr",
  headless: true,
  extraPrefsFirefox: {
    "media.navigator.streams.fake": true,
    "media.navigator.permission.disabled": true,
    "media.peerconnection.ice.loopback": true,
  },
});
const fPage = await firefox.newPage();
const problems = [];
fPage.on("pageerror", (e) => problems.push(`Fiona: uncaught error: ${e.message}`));
await fPage.goto(`${cfg.base}/r/${encodeURIComponent(room)}?name=Fiona&autojoin=1#k=${key}`);
await fPage.waitForFunction(() => window.confnode && window.confnode.state().joined, { timeout: 20_000 });
const fiona = { label: "Fiona", page: fPage, id: await fPage.evaluate(() => window.confnode.state().participant) };
const keyed = [alice, bob, fiona];
for (const p of keyed) {
  const st = await state(p.page);
  if (!st.e2ee) throw new Error(`${p.label}: the page does not encrypt (${JSON.stringify(st)})`);
}
step(`Alice, Bob (Chromium) and Fiona (Firefox) in ${room} with one key`);

for (const p of keyed) {
  await waitFor(`${p.label}: the others' video decoded and their audio heard`, 30_000, async () => {
    const s1 = await stats(p.page);
    await sleep(1_000);
    const s2 = await stats(p.page);
    const others = keyed.filter((q) => q !== p);
    const moving = others.map((q) => ({
      who: q.label,
      frames: of(s2, q.id, "video", "framesDecoded") - of(s1, q.id, "video", "framesDecoded"),
      samples: of(s2, q.id, "audio", "totalSamplesReceived") - of(s1, q.id, "audio", "totalSamplesReceived"),
      energy: of(s2, q.id, "audio", "totalAudioEnergy"),
    }));
    if (moving.every((m) => m.frames > 5 && m.samples > 0 && m.energy > 0)) return true;
    // What the encryption worker passed and dropped, to say where a silent stream stops.
    const st = await state(p.page);
    const audio = s2.inbound.filter((i) => i.kind === "audio");
    return { moving, soundBlocked: st.soundBlocked, undecryptable: st.undecryptable, frames: st.e2eeFrames, audio };
  });
  const st = await state(p.page);
  if (st.undecryptable.length) throw new Error(`${p.label}: cannot decrypt ${st.undecryptable}`);
}
step("all three decode each other's video and hear each other's voice through the encryption");
await fPage.close();
await firefox.close();

const dave = await openRoom(chromium, cfg, room, "Dave", `name=Dave&autojoin=1&e2ee=off#k=${key}`);
const eve = await openRoom(chromium, cfg, room, "Eve", `name=Eve&autojoin=1#k=${other}`);
for (const p of [dave, eve]) p.id = await joined(p);
for (const p of [dave, eve]) await waitRoster(p, "Alice", true);

await waitFor("Eve: Alice's tile says her frames do not decrypt", 20_000, async () => {
  const st = await state(eve.page);
  const label = await eve.page.locator(`.tile.wrong-key[data-member="${alice.id}"] .key-state`).count();
  return st.undecryptable.includes(alice.id) && label === 1 ? true : { st, label };
});
step("Eve, with another key, sees 'Cannot decrypt' on Alice's tile");

// Media from Alice reaches Dave and Eve; neither decodes a frame of it.
await waitFor("Dave and Eve: Alice's video arriving", 20_000, async () => {
  const got = [];
  for (const p of [dave, eve]) got.push(of(await stats(p.page), alice.id, "video", "bytesReceived"));
  return got.every((b) => b > 50_000) ? true : got;
});
await sleep(3_000);
for (const p of [dave, eve]) {
  const s = await stats(p.page);
  const bytes = of(s, alice.id, "video", "bytesReceived");
  const frames = of(s, alice.id, "video", "framesDecoded");
  if (frames > 0) throw new Error(`${p.label} decoded ${frames} frames of Alice's encrypted video`);
  step(`${p.label}: ${bytes} bytes of Alice's video received, 0 frames decoded`);
}
// Bob, with the key, still decodes Alice.
const b1 = of(await stats(bob.page), alice.id, "video", "framesDecoded");
await sleep(1_000);
if (of(await stats(bob.page), alice.id, "video", "framesDecoded") <= b1) throw new Error("Bob stopped decoding Alice");

for (const p of [alice, bob, dave, eve]) assertNoProblems(p.ctx);
if (problems.length) throw new Error(problems.join("\n"));
await chromium.close();
