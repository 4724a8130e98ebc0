// Run by tests/browser.rs (`cargo test --test browser screen_sharing_in_chromium`).
//
// Three people in one room; Alice shares her screen (Chromium's fake capture,
// auto-selected):
//   - Bob and Carol show it in a tile of its own, large (the stage "presenting"), and
//     play it (frames decoded, at least 540 lines: one sharp layer) while Alice's
//     camera keeps playing beside it;
//   - "Stop sharing" on Alice's page takes it away from theirs;
//   - shared again and ended the way the browser's own "Stop sharing" does (the track's
//     `ended` event), it goes away again and the button is back to "Share screen".

import { assertNoProblems, config, createRoom, joinAll, launch, sleep, step, waitFor } from "./lib.mjs";
import { join } from "node:path";

const cfg = config();
const browser = await launch(["--auto-select-desktop-capture-source=Entire screen"]);
const room = await createRoom(browser, cfg, null);
const people = await joinAll(browser, cfg, room, ["Alice", "Bob", "Carol"]);
const [alice, bob, carol] = people;
const viewers = [bob, carol];
await waitFor("Alice: publishing", 20_000, async () => {
  const st = await alice.page.evaluate(() => window.confnode.state());
  return st.publishing === "published" ? true : st;
});
step(`three joined ${room}`);

/** What `p` decodes of Alice: her screen and her camera, frames and height. */
async function fromAlice(p) {
  const s = await p.page.evaluate(() => window.confnode.stats());
  const of = (screen) => {
    const v = s.inbound.find((i) => i.participant === alice.id && i.kind === "video" && i.screen === screen && i.framesDecoded > 0);
    return v ? { frames: v.framesDecoded, height: v.frameHeight || 0 } : { frames: 0, height: 0 };
  };
  return { screen: of(true), camera: of(false) };
}

async function sharing() {
  await alice.page.getByRole("button", { name: "Share screen" }).click();
  await alice.page.getByRole("button", { name: "Stop sharing" }).waitFor({ timeout: 10_000 });
  for (const p of viewers) {
    await waitFor(`${p.label}: Alice's screen playing in its own large tile`, 30_000, async () => {
      const before = await fromAlice(p);
      await sleep(1_000);
      const now = await fromAlice(p);
      const tile = await p.page.locator(`#tiles.presenting .tile.screen video[data-participant="${alice.id}"][data-screen]`).count();
      const ok =
        tile === 1 &&
        now.screen.frames > before.screen.frames &&
        now.screen.height >= 540 &&
        now.camera.frames > before.camera.frames;
      return ok ? true : { tile, before, now };
    });
  }
}

async function gone(what) {
  for (const p of viewers) {
    await waitFor(`${p.label}: Alice's screen gone (${what})`, 15_000, async () => {
      const tiles = await p.page.locator(".tile.screen").count();
      const presenting = await p.page.locator("#tiles.presenting").count();
      return tiles === 0 && presenting === 0 ? true : { tiles, presenting };
    });
    const camera = (await fromAlice(p)).camera.frames;
    await sleep(1_000);
    if ((await fromAlice(p)).camera.frames <= camera) throw new Error(`${p.label}: Alice's camera stopped with her screen`);
  }
}

await sharing();
const seen = await fromAlice(bob);
step(`Bob and Carol play Alice's screen (${seen.screen.height} lines) large, her camera beside it`);
await bob.page.screenshot({ path: join(cfg.shots, "screen-laptop.png") });

await alice.page.getByRole("button", { name: "Stop sharing" }).click();
await gone("Stop sharing on her page");
step("Stop sharing on Alice's page takes it away from the others'");

await sharing();
await alice.page.evaluate((id) => {
  const video = document.querySelector(`video[data-screen][data-participant="${id}"]`);
  video.srcObject.getVideoTracks()[0].dispatchEvent(new Event("ended"));
}, alice.id);
await alice.page.getByRole("button", { name: "Share screen" }).waitFor({ timeout: 10_000 });
await gone("the browser's own Stop sharing");
step("shared again and ended by the browser's control: gone again");

for (const p of people) assertNoProblems(p.ctx);
await browser.close();
