// Run by tests/browser.rs (`cargo test --test browser privacy_in_chromium`): the
// privacy terms through the reference page. A host logs in on "/" and creates a room;
// two people with distinctive display names (one of them an e-mail address) join,
// publish, and decode each other's video for a few seconds, then leave. The Rust side
// then reads every file the node wrote and its output for those names. Prints the
// room id as `room=<id>` for it.

import { LAPTOP, assertNoProblems, config, createRoom, joined, launch, openRoom, sleep, step, waitRoster } from "./lib.mjs";

const NAMES = ["Zebulon Quintavalle-Okonkwo", "jane.doe@example.org"];
const cfg = config();
const browser = await launch(["--allow-loopback-in-peer-connection"]);
try {
  const room = await createRoom(browser, cfg, null);
  console.log(`room=${room}`);
  const people = [];
  for (const name of NAMES) {
    const p = await openRoom(browser, cfg, room, name, "name=" + encodeURIComponent(name) + "&autojoin=1", {
      viewport: LAPTOP,
    });
    p.id = await joined(p);
    people.push(p);
  }
  for (const p of people) for (const q of people) await waitRoster(p, q.label, true);
  step("both joined and see each other's names in the roster");
  for (const p of people) {
    const other = people.find((q) => q !== p);
    const deadline = Date.now() + 30_000;
    for (;;) {
      const s = await p.page.evaluate(() => window.confnode.stats());
      const frames = s.inbound
        .filter((i) => i.participant === other.id && i.kind === "video")
        .reduce((n, i) => n + (i.framesDecoded || 0), 0);
      if (frames > 30) break;
      if (Date.now() > deadline) throw new Error(`${p.label}: no video from ${other.label} within 30 s`);
      await sleep(250);
    }
  }
  step("each decodes the other's video");
  await sleep(3_000);
  for (const p of people) {
    await p.page.getByRole("button", { name: "Leave", exact: true }).click();
  }
  await sleep(1_000);
  assertNoProblems(...people.map((p) => p.ctx));
  step("both left");
} finally {
  await browser.close();
}
