// Run by tests/browser.rs (`cargo test --test browser media_in_chromium`), or by hand
// against a running node with
//   CONFNODE_URL=… CONFNODE_HOST=… CONFNODE_PASSWORD=… node tests/browser/media.mjs
//
// Issue 4's Chromium checks, in two rounds: directly over UDP, then with relay=1 on
// every participant (through confnode's own TURN). In each round three people join one
// room through the reference page and
//   - every page shows two remote <video data-participant="…"> whose framesDecoded
//     keeps growing, and whose audio arrives (samples and energy growing);
//   - with relay=1, both peer connections use a relay candidate; without, neither does;
//   - (direct round) a receiver without maxHeight gets the sender's upper layers:
//     videoHeight ≥ 540 from the 1280x720 fake camera; a receiver with maxHeight=180
//     gets at most 180 lines;
//   - (direct round) one who presses "Audio only" decodes no more video but still
//     hears both voices, and sees video again when pressing it once more;
//   - one leaves and is gone from the others' roster and stage within 5 s.

import { join } from "node:path";
import { LAPTOP, assertNoProblems, config, createRoom, joined, launch, openRoom, sleep, step, waitFor, waitRoster } from "./lib.mjs";

const cfg = config();
// The node's media address is on loopback in tests; Chromium leaves loopback out of
// ICE unless told.
const browser = await launch(["--allow-loopback-in-peer-connection"]);

async function stats(p) {
  return p.page.evaluate(() => window.confnode.stats());
}

/** Inbound streams of `kind` from `from`, as { framesDecoded, totalSamplesReceived, … }. */
function inbound(s, from, kind) {
  return s.inbound.filter((i) => i.participant === from && i.kind === kind);
}

/**
 * A page opened with autojoin=1 had no click: where the browser refused to play sound
 * without one, the page offers a "Turn on sound" button, and a user clicks it.
 */
async function enableSoundIfAsked(p, mode) {
  const button = p.page.locator("#enable-sound");
  if (await button.isVisible()) {
    step(`${mode}: ${p.label} clicks "Turn on sound"`);
    await button.click();
  }
}

/** Sums `key` over the inbound streams of `kind` from `from`. */
function total(s, from, kind, key) {
  return inbound(s, from, kind).reduce((n, i) => n + (i[key] || 0), 0);
}

/** `p` presses "Audio only": over 2 s (after 1 s for what was on its way) no frame of
 * `others` is decoded, their voices still play; pressed again, frames flow again. */
async function audioOnly(p, others) {
  const button = p.page.getByRole("button", { name: "Audio only", exact: true });
  await button.click();
  await waitFor(`${p.label}: audio only`, 5_000, async () => (await p.page.evaluate(() => window.confnode.state().audioOnly)) || "off");
  await sleep(1_000);
  const before = await stats(p);
  await sleep(2_000);
  const after = await stats(p);
  for (const q of others) {
    const frames = total(after, q.id, "video", "framesDecoded") - total(before, q.id, "video", "framesDecoded");
    const samples = total(after, q.id, "audio", "totalSamplesReceived") - total(before, q.id, "audio", "totalSamplesReceived");
    if (frames > 2) throw new Error(`${p.label} (audio only): ${frames} frames from ${q.label} decoded in 2 s`);
    if (samples <= 0) throw new Error(`${p.label} (audio only): no audio samples from ${q.label} in 2 s`);
  }
  await button.click();
  const off = await stats(p);
  await waitFor(`${p.label}: video again`, 10_000, async () => {
    const s = await stats(p);
    const grown = others.map((q) => total(s, q.id, "video", "framesDecoded") - total(off, q.id, "video", "framesDecoded"));
    return grown.every((n) => n >= 10) ? true : grown;
  });
}

async function round(relay) {
  const mode = relay ? "relay=1" : "direct";
  const room = await createRoom(browser, cfg, null);
  const extra = relay ? "&relay=1" : "";
  const people = [
    await openRoom(browser, cfg, room, "Alice", "name=Alice&autojoin=1" + extra, { viewport: LAPTOP }),
    await openRoom(browser, cfg, room, "Bob", "name=Bob&autojoin=1" + extra, { viewport: LAPTOP }),
    await openRoom(browser, cfg, room, "Carol", "name=Carol&autojoin=1&maxHeight=180" + extra, { viewport: LAPTOP }),
  ];
  for (const p of people) p.id = await joined(p);
  for (const p of people) for (const q of people) await waitRoster(p, q.label, true);
  step(`${mode}: three joined ${room}`);

  for (const p of people) {
    await p.page.waitForFunction(() => window.confnode.state().publishing !== "starting", null, {
      timeout: 20_000,
    });
    const state = await p.page.evaluate(() => window.confnode.state());
    if (state.publishing !== "published") {
      throw new Error(`${p.label}: publishing is ${state.publishing}: ${await p.page.locator("#notices").textContent()}`);
    }
  }
  step(`${mode}: everyone publishes`);

  // Two remote videos on every page, decoding, with audio.
  for (const p of people) {
    const others = people.filter((q) => q !== p);
    await waitFor(`${p.label}: two remote videos`, 20_000, async () => {
      const ids = await p.page.$$eval("video[data-participant]", (vs) => vs.map((v) => v.dataset.participant));
      return others.every((q) => ids.includes(q.id)) && ids.length === 2 ? true : ids;
    });
    await waitFor(`${p.label}: frames and audio from both`, 20_000, async () => {
      await enableSoundIfAsked(p, mode);
      const s = await stats(p);
      const ok = others.every(
        (q) =>
          inbound(s, q.id, "video").some((v) => v.framesDecoded > 0) &&
          inbound(s, q.id, "audio").some((a) => a.totalSamplesReceived > 0)
      );
      return ok ? true : s.inbound;
    });
    await enableSoundIfAsked(p, mode);
    const before = await stats(p);
    await sleep(2_000);
    const after = await stats(p);
    for (const q of others) {
      const sum = (s, kind, key) => total(s, q.id, kind, key);
      const frames = sum(after, "video", "framesDecoded") - sum(before, "video", "framesDecoded");
      const samples = sum(after, "audio", "totalSamplesReceived") - sum(before, "audio", "totalSamplesReceived");
      const energy = sum(after, "audio", "totalAudioEnergy");
      if (frames < 10) throw new Error(`${p.label}: only ${frames} frames from ${q.label} decoded in 2 s`);
      if (samples <= 0) throw new Error(`${p.label}: no audio samples from ${q.label} in 2 s`);
      if (!(energy > 0)) {
        throw new Error(`${p.label}: ${q.label}'s audio is silent: ${JSON.stringify(inbound(after, q.id, "audio"))}`);
      }
    }
    const s = await stats(p);
    if (relay && (s.sendingVia !== "relay" || s.receivingVia !== "relay")) {
      throw new Error(`${p.label}: relay=1 but sending via ${s.sendingVia}, receiving via ${s.receivingVia}`);
    }
    // Direct means direct: with TURN over UDP at the node's media address in its ICE
    // servers, Chromium once sent everything through the relay.
    if (!relay && (s.sendingVia === "relay" || s.receivingVia === "relay" || !s.sendingVia || !s.receivingVia)) {
      throw new Error(`${p.label}: direct, but sending via ${s.sendingVia}, receiving via ${s.receivingVia}`);
    }
  }
  step(`${mode}: every page decodes two videos and hears two voices`);
  if (relay) {
    // How each peer connection reaches its relay (UDP unless UDP failed).
    const via = [];
    for (const p of people) {
      const s = await stats(p);
      via.push(`${p.label} sends over ${s.sendingRelay}, receives over ${s.receivingRelay}`);
    }
    console.log(`# ${mode}: ${via.join("; ")}`);
  }

  if (!relay) {
    // Upper simulcast layers to receivers without maxHeight; at most 180 lines to Carol.
    for (const p of people.slice(0, 2)) {
      await waitFor(`${p.label}: remote videos of at least 540 lines`, 30_000, async () => {
        const heights = await p.page.$$eval("video[data-participant]", (vs) => vs.map((v) => v.videoHeight));
        if (heights.length === 2 && heights.every((h) => h >= 540)) return true;
        const senders = await Promise.all(
          people.map((q) => stats(q).then((s) => ({ estimate: s.sendEstimate, outbound: s.outbound })))
        );
        return { heights, senders };
      });
    }
    await sleep(2_000);
    const carolHeights = await people[2].page.$$eval("video[data-participant]", (vs) => vs.map((v) => v.videoHeight));
    if (!carolHeights.every((h) => h > 0 && h <= 180)) {
      throw new Error(`Carol (maxHeight=180) receives heights ${carolHeights}`);
    }
    step(`${mode}: ≥ 540 lines without maxHeight, ≤ 180 with maxHeight=180`);
    const estimates = await Promise.all(people.map((q) => stats(q).then((s) => s.sendEstimate)));
    step(`${mode}: the publishers' uplink estimates, kbit/s: ${estimates.map((e) => Math.round(e / 1000)).join(", ")}`);
    await audioOnly(people[1], [people[0], people[2]]);
    step(`${mode}: Bob pressed "Audio only": no video, both voices; pressed again: video again`);
  }

  await people[0].page.screenshot({ path: join(cfg.shots, `media-${relay ? "relay" : "direct"}-laptop.png`) });

  const [alice, bob, carol] = people;
  const t0 = Date.now();
  await carol.page.getByRole("button", { name: "Leave", exact: true }).click();
  for (const p of [alice, bob]) {
    await waitRoster(p, "Carol", false, 5_000);
    await p.page
      .locator(`video[data-participant="${carol.id}"]`)
      .waitFor({ state: "detached", timeout: Math.max(0, 5_000 - (Date.now() - t0)) });
  }
  step(`${mode}: Carol left; gone from the others' roster and stage after ${Date.now() - t0} ms`);

  assertNoProblems(...people.map((p) => p.ctx));
  for (const p of people) await p.ctx.close();
}

try {
  await round(false);
  await round(true);
  console.log("media: all checks passed");
} finally {
  await browser.close();
}
