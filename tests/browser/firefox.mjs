// Run by tests/browser.rs (`cargo test --test browser firefox_with_chromium`), or by
// hand against a running node with
//   CONFNODE_URL=… CONFNODE_HOST=… CONFNODE_PASSWORD=… node tests/browser/firefox.mjs
//
// Firefox ESR (Debian's /usr/bin/firefox-esr, driven by puppeteer-core over WebDriver
// BiDi) and two Chromiums in one room, directly and with relay=1 on everyone:
//   - Firefox joins a room where both Chromiums already publish, and both their
//     videos play on its page within 3 s of its joining;
//   - both Chromiums decode Firefox's video and hear its audio;
//   - with relay=1, Firefox's peer connections use a relay candidate.

import puppeteer from "puppeteer-core";
import { assertNoProblems, config, createRoom, joined, launch, openRoom, sleep, step, waitFor, waitRoster } from "./lib.mjs";

const FIREFOX = process.env.FIREFOX || "/usr/bin/firefox-esr";
const cfg = config();
const chromium = await launch(["--allow-loopback-in-peer-connection"]);
const firefox = await puppeteer.launch({
  browser: "firefox",
  executablePath: FIREFOX,
  headless: true,
  extraPrefsFirefox: {
    // A fake camera and microphone, no permission prompt.
    "media.navigator.streams.fake": true,
    "media.navigator.permission.disabled": true,
    // The node's media address is on loopback in tests.
    "media.peerconnection.ice.loopback": true,
  },
});

const stats = (page) => page.evaluate(() => window.confnode.stats());
const framesFrom = (s, id) =>
  s.inbound.filter((i) => i.participant === id && i.kind === "video").reduce((n, i) => n + (i.framesDecoded || 0), 0);
const samplesFrom = (s, id) =>
  s.inbound.filter((i) => i.participant === id && i.kind === "audio").reduce((n, i) => n + (i.totalSamplesReceived || 0), 0);

async function published(page, label) {
  await waitFor(`${label}: publishing`, 20_000, async () => {
    const st = await page.evaluate(() => window.confnode.state());
    return st.publishing === "published" ? true : st;
  }, 100);
}

async function round(relay) {
  const mode = relay ? "relay=1" : "direct";
  const extra = relay ? "&relay=1" : "";
  const room = await createRoom(chromium, cfg, null);
  const chromes = [
    await openRoom(chromium, cfg, room, "Alice", "name=Alice&autojoin=1" + extra),
    await openRoom(chromium, cfg, room, "Bob", "name=Bob&autojoin=1" + extra),
  ];
  for (const p of chromes) {
    p.id = await joined(p);
    await published(p.page, p.label);
  }
  step(`${mode}: Alice and Bob (Chromium) publish in ${room}`);

  const page = await firefox.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(`Fiona: uncaught error: ${e.message}`));
  await page.goto(`${cfg.base}/r/${encodeURIComponent(room)}?name=Fiona&autojoin=1${extra}`);
  await page.waitForFunction(() => window.confnode && window.confnode.state().joined, { timeout: 20_000 });
  const joinedAt = Date.now();
  const fiona = await page.evaluate(() => window.confnode.state().participant);
  await waitFor("Fiona (Firefox): both remote videos playing", 20_000, async () => {
    const s = await stats(page);
    return chromes.every((q) => framesFrom(s, q.id) > 0) ? true : s.inbound;
  }, 100);
  const playing = Date.now() - joinedAt;
  step(`${mode}: Firefox plays both Chromiums' videos ${playing} ms after joining`);
  if (playing > 3_000) throw new Error(`${mode}: Firefox played the others' videos only ${playing} ms after joining`);

  await published(page, "Fiona");
  for (const p of chromes) {
    await waitRoster(p, "Fiona", true);
    await waitFor(`${p.label}: Fiona's video and audio`, 20_000, async () => {
      const s = await stats(p.page);
      return framesFrom(s, fiona) > 0 && samplesFrom(s, fiona) > 0 ? true : s.inbound;
    }, 100);
  }
  // Frames keep coming, both ways.
  const before = { fiona: await stats(page), alice: await stats(chromes[0].page) };
  await sleep(2_000);
  const after = { fiona: await stats(page), alice: await stats(chromes[0].page) };
  for (const q of chromes) {
    const n = framesFrom(after.fiona, q.id) - framesFrom(before.fiona, q.id);
    if (n < 10) throw new Error(`${mode}: Firefox decoded only ${n} frames of ${q.label} in 2 s`);
  }
  const n = framesFrom(after.alice, fiona) - framesFrom(before.alice, fiona);
  if (n < 10) throw new Error(`${mode}: Alice decoded only ${n} frames of Fiona (Firefox) in 2 s`);
  step(`${mode}: Firefox and Chromium see and hear each other`);

  if (relay) {
    const s = await stats(page);
    if (s.sendingVia !== "relay" || s.receivingVia !== "relay") {
      throw new Error(`Fiona: relay=1 but sending via ${s.sendingVia}, receiving via ${s.receivingVia}`);
    }
    step(`${mode}: Firefox sends and receives through the node's relay`);
  } else {
    // Direct means direct for the Chromiums. Firefox ESR takes its relay here: on this
    // loopback-only test network it gathers host candidates on the machine's other
    // interfaces only (none on loopback, whatever media.peerconnection.ice.loopback
    // says) and pairs none of them with the node's loopback address.
    for (const q of chromes) {
      const s = await stats(q.page);
      if (s.sendingVia === "relay" || s.receivingVia === "relay" || !s.sendingVia || !s.receivingVia) {
        throw new Error(`${q.label}: direct, but sending via ${s.sendingVia}, receiving via ${s.receivingVia}`);
      }
    }
    step(`${mode}: both Chromiums send and receive without the relay`);
  }
  if (problems.length) throw new Error(problems.join("\n"));
  assertNoProblems(...chromes.map((p) => p.ctx));
  await page.close();
  for (const p of chromes) await p.ctx.close();
}

try {
  await round(false);
  await round(true);
  console.log("firefox: all checks passed");
} finally {
  await firefox.close();
  await chromium.close();
}
