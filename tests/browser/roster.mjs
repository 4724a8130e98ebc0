// The reference page in headless Chromium, without media assertions (run by
// tests/browser.rs): a host logs in on "/" and creates a room; Alice (laptop viewport)
// and Bob (phone viewport) join with ?name=…&autojoin=1, Carol (phone, dark scheme)
// with the form, and each sees the others in the roster; Bob leaves and is gone from
// the others' rosters within 5 s. Screenshots of both
// room views go to CONFNODE_SCREENSHOTS (or a temp folder).
//
// While the node's publish answers 503 the page must say so and keep the roster
// working; once the SFU is wired, publishing must not fail. The media checks
// (frames decoded, simulcast layers) are in media.mjs.

import { join } from "node:path";
import { LAPTOP, PHONE, assertNoProblems, config, hostRoom, joined, launch, openRoom, step, waitRoster } from "./lib.mjs";

const cfg = config();
const browser = await launch();
try {
  const host = await hostRoom(browser, cfg, "host-laptop.png");
  const room = host.room;
  step(`host logged in on / and created room ${room}; link copied`);

  const alice = await openRoom(browser, cfg, room, "Alice", "name=Alice&autojoin=1", { viewport: LAPTOP });
  const bob = await openRoom(browser, cfg, room, "Bob", "name=Bob&autojoin=1&maxHeight=360", {
    viewport: PHONE,
    isMobile: true,
    hasTouch: true,
    deviceScaleFactor: 2,
  });
  const aliceId = await joined(alice);
  const bobId = await joined(bob);
  step(`Alice (${aliceId}) and Bob (${bobId}) joined with autojoin=1`);

  // Carol (phone, dark scheme) types her name and clicks Join.
  const carol = await openRoom(browser, cfg, room, "Carol", "", {
    viewport: PHONE,
    isMobile: true,
    hasTouch: true,
    deviceScaleFactor: 2,
    colorScheme: "dark",
  });
  await carol.page.getByText("2 people are here.").waitFor({ timeout: 10_000 });
  await carol.page.screenshot({ path: join(cfg.shots, "join-phone-dark.png") });
  await carol.page.getByLabel("Your name").fill("Carol");
  await carol.page.getByRole("button", { name: "Join", exact: true }).click();
  const carolId = await joined(carol);
  step(`Carol (${carolId}) joined with the form`);

  await waitRoster(alice, "Bob", true);
  await waitRoster(bob, "Alice", true);
  await waitRoster(alice, "Alice", true);
  await waitRoster(bob, "Bob", true);
  for (const p of [alice, bob]) await waitRoster(p, "Carol", true);
  for (const name of ["Alice", "Bob", "Carol"]) await waitRoster(carol, name, true);
  step("each roster shows everyone");

  // Everyone else has a tile with their name; one's own tile is the camera preview.
  for (const [p, other, otherId] of [
    [alice, "Bob", bobId],
    [bob, "Alice", aliceId],
  ]) {
    const caption = p.page.locator(`figure[data-member="${otherId}"] figcaption`);
    await caption.waitFor({ timeout: 10_000 });
    if ((await caption.textContent()) !== other) throw new Error(`${p.label}: ${other}'s tile is not named`);
  }
  step("each stage has a tile named after the other");

  // Publishing settles: published once the SFU answers, "media server not available
  // yet" (shown inline) while publish answers 503; never a failure.
  for (const p of [alice, bob, carol]) {
    await p.page.waitForFunction(() => window.confnode.state().publishing !== "starting", null, {
      timeout: 20_000,
    });
    const state = await p.page.evaluate(() => window.confnode.state());
    if (state.publishing === "unavailable") {
      const text = await p.page.locator('#notices [data-notice="media"]').textContent();
      if (!/media server not available yet/i.test(text)) throw new Error(`${p.label}: notice says ${text}`);
    } else if (state.publishing !== "published") {
      const notices = await p.page.locator("#notices").textContent();
      throw new Error(`${p.label}: publishing is ${state.publishing}: ${notices}`);
    }
    if (await p.page.locator('#notices [data-notice="prefs"]').count()) {
      throw new Error(`${p.label}: ${await p.page.locator("#notices").textContent()}`);
    }
    const size = await p.page.evaluate(() => {
      const v = document.getElementById("self-video");
      return `${v.videoWidth}x${v.videoHeight}`;
    });
    step(`${p.label}: camera preview ${size}, publishing ${state.publishing}`);
  }

  // Let the preview show a frame, then take the pictures.
  await alice.page.waitForTimeout(500);
  await alice.page.screenshot({ path: join(cfg.shots, "room-laptop.png") });
  await bob.page.screenshot({ path: join(cfg.shots, "room-phone.png"), fullPage: true });
  await bob.page.setViewportSize(LAPTOP);
  await alice.page.setViewportSize(PHONE);
  await alice.page.waitForTimeout(300);
  await bob.page.screenshot({ path: join(cfg.shots, "room-laptop-bob.png") });
  await alice.page.screenshot({ path: join(cfg.shots, "room-phone-alice.png"), fullPage: true });
  await bob.page.setViewportSize(PHONE);
  await carol.page.screenshot({ path: join(cfg.shots, "room-phone-dark.png"), fullPage: true });
  step(`screenshots in ${cfg.shots}`);

  // Mute buttons toggle the local tracks.
  await alice.page.getByRole("button", { name: "Mute", exact: true }).click();
  const muted = await alice.page.evaluate(() => {
    const v = document.getElementById("self-video");
    const t = v.srcObject && v.srcObject.getAudioTracks()[0];
    return t ? !t.enabled : null;
  });
  if (muted !== true) throw new Error(`Alice: Mute did not disable the microphone (${muted})`);
  if ((await alice.page.getByRole("button", { name: "Mute", exact: true }).getAttribute("aria-pressed")) !== "true") {
    throw new Error("Alice: the Mute button is not shown pressed");
  }
  step("the Mute button disables the microphone track");

  const left = Date.now();
  await bob.page.getByRole("button", { name: "Leave", exact: true }).click();
  await waitRoster(alice, "Bob", false, 5_000);
  await waitRoster(carol, "Bob", false, 5_000);
  await alice.page.locator(`figure[data-member="${bobId}"]`).waitFor({ state: "detached", timeout: 5_000 });
  await bob.page.getByRole("heading", { name: "You left the meeting" }).waitFor({ timeout: 5_000 });
  step(`Bob left; gone from Alice's roster and stage after ${Date.now() - left} ms`);
  await bob.page.screenshot({ path: join(cfg.shots, "left-phone.png") });

  // The host's page lists who is in the room; it removes Carol, and locks the room.
  const manage = host.page.locator("#manage-people");
  await manage.getByText("Carol", { exact: true }).waitFor({ timeout: 10_000 });
  await manage.getByText("Bob", { exact: true }).waitFor({ state: "detached", timeout: 10_000 });
  await host.page.getByRole("button", { name: "Remove Carol" }).click();
  await carol.page.getByText("You are no longer in this room.").waitFor({ timeout: 5_000 });
  await waitRoster(alice, "Carol", false, 5_000);
  await manage.getByText("Carol", { exact: true }).waitFor({ state: "detached", timeout: 5_000 });
  step("the host removed Carol from its page; she and Alice see it");
  await host.page.getByRole("button", { name: "Lock the room" }).click();
  await host.page.getByRole("button", { name: "Unlock the room" }).waitFor({ timeout: 5_000 });
  const dave = await openRoom(browser, cfg, room, "Dave", "name=Dave&autojoin=1", { viewport: LAPTOP });
  await dave.page.locator("#join-error").getByText(/locked/).waitFor({ timeout: 10_000 });
  await host.page.getByRole("button", { name: "Unlock the room" }).click();
  await host.page.getByRole("button", { name: "Lock the room" }).waitFor({ timeout: 5_000 });
  await dave.page.getByRole("button", { name: "Join", exact: true }).click();
  await joined(dave);
  await waitRoster(alice, "Dave", true);
  step("locked, the room refused Dave; unlocked, he joined");

  assertNoProblems(alice.ctx, bob.ctx, carol.ctx, host.ctx);
  step("no page errors, no CSP violations, no request to another host");
  console.log("roster: all checks passed");
} finally {
  await browser.close();
}
