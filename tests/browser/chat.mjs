// Run by tests/browser.rs (`cargo test --test browser chat_in_chromium`).
//
// Three people in one room, each typing into the chat and sending with Enter:
//   - everyone's chat shows all the messages, in one and the same order, each under
//     its sender ("You" for one's own), markup as text;
//   - Bob raises his hand from the keyboard (Tab to the button, Space): everyone's
//     roster and his tile show it, a screen reader hears it, and he lowers it again;
//   - a flood gets "Too many messages" on the page, not an error;
//   - every control of the call has an accessible name.
// tests/browser.rs then checks that no message text is in the node's log or files.

import { join } from "node:path";
import { assertNoProblems, config, createRoom, joinAll, launch, sleep, step, waitFor } from "./lib.mjs";

const cfg = config();
const browser = await launch();
const room = await createRoom(browser, cfg, null);
const people = await joinAll(browser, cfg, room, ["Alice", "Bob", "Carol"]);
const [alice, bob, carol] = people;
step(`three joined ${room}`);

async function say(p, text) {
  const box = p.page.getByLabel("Message to everyone");
  await box.fill(text);
  await box.press("Enter");
}

// Interleaved: each says two things, some at once.
const sent = [
  [alice, "Xylophone one: hello"],
  [bob, "Xylophone two: hi Alice"],
  [carol, "Xylophone three: <img src=x onerror=alert(1)> is text"],
  [alice, "Xylophone four:\nsecond line"],
];
for (const [p, text] of sent) await say(p, text);
await Promise.all([say(bob, "Xylophone five"), say(carol, "Xylophone six")]);
const chats = async () => Promise.all(people.map((p) => p.page.evaluate(() => window.confnode.chat())));
await waitFor("every chat shows six messages", 10_000, async () => {
  const all = await chats();
  return all.every((c) => c.length === 6) ? true : all.map((c) => c.length);
});
const all = await chats();
const order = JSON.stringify(all[0]);
for (const [i, c] of all.entries()) {
  if (JSON.stringify(c) !== order) throw new Error(`${people[i].label}'s chat is in another order:\n${JSON.stringify(c)}\nnot\n${order}`);
}
const texts = all[0].map((m) => m.text);
for (const [i, [p, text]] of sent.entries()) {
  if (texts[i] !== text) throw new Error(`message ${i + 1} reads ${JSON.stringify(texts[i])}, not ${JSON.stringify(text)}`);
  if (all[0][i].participant !== p.id) throw new Error(`message ${i + 1} is not shown as ${p.label}'s`);
}
for (const p of people) {
  if ((await p.page.locator("#chat-log img").count()) !== 0) throw new Error(`${p.label}: markup in a message became an element`);
}
const mine = await alice.page.locator("#chat-log li .chat-from").first().textContent();
const theirs = await bob.page.locator("#chat-log li .chat-from").first().textContent();
if (mine !== "You" || theirs !== "Alice") throw new Error(`senders shown as ${mine} (own) and ${theirs} (Alice's)`);
step("all three see the six messages in one order, under their senders, markup as text");

// Bob raises his hand with the keyboard only.
await bob.page.getByLabel("Message to everyone").focus();
const hand = bob.page.locator("#toggle-hand");
for (let i = 0; i < 30 && !(await hand.evaluate((b) => b === document.activeElement)); i++) {
  await bob.page.keyboard.press("Shift+Tab");
}
if (!(await hand.evaluate((b) => b === document.activeElement))) throw new Error("Bob could not reach Raise hand with Tab");
await bob.page.keyboard.press("Space");
for (const p of people) {
  await waitFor(`${p.label}: Bob's hand raised`, 10_000, async () => {
    const st = await p.page.evaluate(() => window.confnode.state());
    const marked = await p.page.locator(`#roster li[data-member="${bob.id}"] .hand`).count();
    return st.hands.includes(bob.id) && marked === 1 ? true : { hands: st.hands, marked };
  });
}
const onTile = await alice.page.locator(`.tile[data-member="${bob.id}"] .hand`).count();
if (onTile !== 1) throw new Error("Alice: no raised hand on Bob's tile");
await waitFor("Alice: the raised hand announced", 5_000, async () => {
  const said = await alice.page.locator("#announce").textContent();
  return said === "Bob raised a hand." ? true : said;
});
if ((await hand.getAttribute("aria-pressed")) !== "true") throw new Error("Bob's Raise hand button is not pressed");
await bob.page.keyboard.press("Space");
await waitFor("Carol: Bob's hand lowered", 10_000, async () => {
  const st = await carol.page.evaluate(() => window.confnode.state());
  return st.hands.length === 0 ? true : st.hands;
});
step("Bob raised his hand with the keyboard: rosters, his tile and the announcement show it; lowered again");

// A flood: the page says to wait, nothing breaks.
// (Ten per ten seconds of the clock: a window may turn during the flood, so it goes
// on until held back.)
const held = carol.page.getByText("Too many messages at once; wait a few seconds.");
for (let i = 0; i < 25 && !(await held.isVisible()); i++) {
  await say(carol, `Xylophone flood ${i}`);
  await sleep(50);
}
await held.waitFor({ timeout: 5_000 });
step("a flood is held back with a message on the page");
await alice.page.screenshot({ path: join(cfg.shots, "chat-laptop.png") });

// Every control has a name a screen reader can say.
for (const p of people) {
  const unnamed = await p.page.$$eval("#call button, #call textarea, #call input", (els) =>
    els
      .filter((e) => !e.hidden && e.offsetParent !== null)
      .filter((e) => {
        const label = e.labels && e.labels.length ? e.labels[0].textContent : "";
        return !(e.getAttribute("aria-label") || label || e.textContent).trim();
      })
      .map((e) => e.outerHTML.slice(0, 80))
  );
  if (unnamed.length) throw new Error(`${p.label}: controls without a name: ${unnamed.join(", ")}`);
}
step("every control of the call has an accessible name");

for (const p of people) assertNoProblems(p.ctx);
await sleep(200);
await browser.close();
