/*
 * confnode reference page: end-to-end encryption of media frames (a dedicated worker
 * for RTCRtpScriptTransform, in Chrome and Firefox alike).
 *
 * Each encoded frame is encrypted with AES-GCM (WebCrypto) under the key from the
 * room link's fragment, which no server ever sees. What the node and the browsers'
 * packet readers need goes before it in the clear, as Jitsi does: a copy of a VP8
 * frame's payload header (10 bytes of a keyframe: its type and size; 3 of another), of
 * an Opus frame's first (TOC) byte. The clear header is authenticated as additional
 * data. A frame on the wire:
 *
 *   clear header | whole frame encrypted, and 16-byte tag | 12-byte IV | 1 byte: FORMAT
 *
 * In a VP8 header's copy the first partition's size is set past the frame's end, so
 * that a decoder without the key refuses every frame rather than now and then showing
 * one of ciphertext as a picture (which a random first partition can pass for).
 *
 * A frame that does not decrypt is dropped (never handed to the decoder), and the page
 * is told once a second per sender, so that it can say "wrong key".
 */
"use strict";

const FORMAT = 2;
const IV_BYTES = 12;
const TAG_BYTES = 16;

/** The room's key (a CryptoKey), or null before the page sends it. */
let key = null;
/** Per sender (participant id): when the page was last told of a failure, and whether
 * its last frame decrypted. */
const told = new Map();
/** Frames seen, passed on and dropped per "operation kind sender" (the sender is
 * "self" when encrypting), sent to the page with each change at most twice a second:
 * what it shows when asked why a stream is silent. */
const counts = new Map();
let countsDue = false;

function counter(label) {
  let c = counts.get(label);
  if (!c) counts.set(label, (c = { transforms: 0, frames: 0, passed: 0, dropped: 0 }));
  return c;
}

/** Counts one frame of a stream on its counter `c` (from `counter`). */
function count(c, passed) {
  c.frames++;
  if (passed) c.passed++;
  else c.dropped++;
  if (!countsDue) {
    countsDue = true;
    setTimeout(() => {
      countsDue = false;
      self.postMessage({ counts: Object.fromEntries(counts) });
    }, 500);
  }
}

self.onmessage = (ev) => {
  if (ev.data && ev.data.key) key = ev.data.key;
};

self.onrtctransform = (ev) => {
  const t = ev.transformer;
  const { operation, participant, kind } = t.options || {};
  const label = `${operation} ${kind} ${participant || "self"}`;
  // Looked up once per stream, not per frame.
  const c = counter(label);
  c.transforms++;
  const transform = new TransformStream({
    transform:
      operation === "encrypt"
        ? (frame, out) => encrypt(frame, out, kind, c)
        : (frame, out) => decrypt(frame, out, kind, participant, c),
  });
  t.readable
    .pipeThrough(transform)
    .pipeTo(t.writable)
    .catch((e) => self.postMessage({ failed: `${label}: ${e && e.message}` }));
};

/** How many leading bytes of a frame stay in the clear: the page says which kind of
 * track a transform serves. */
function clearBytes(frame, kind) {
  if (kind === "audio") return 1;
  return frame.type === "key" ? 10 : 3;
}

/** The clear copy of a frame's first bytes; in VP8's, the frame tag's 19-bit size of
 * the first partition (RFC 6386 §9.1: all but the tag's lowest 5 bits) at its largest. */
function clearHeader(data, n, kind) {
  const header = data.slice(0, n);
  if (kind === "video" && n >= 3) {
    header[0] |= 0xe0;
    header[1] = 0xff;
    header[2] = 0xff;
  }
  return header;
}

async function encrypt(frame, out, kind, c) {
  if (!key) return count(c, false); // no key yet: send nothing rather than the clear frame
  const data = new Uint8Array(frame.data);
  const n = Math.min(clearBytes(frame, kind), data.length);
  const iv = crypto.getRandomValues(new Uint8Array(IV_BYTES));
  const header = clearHeader(data, n, kind);
  const sealed = new Uint8Array(
    await crypto.subtle.encrypt({ name: "AES-GCM", iv, additionalData: header }, key, data)
  );
  const result = new Uint8Array(n + sealed.length + IV_BYTES + 1);
  result.set(header, 0);
  result.set(sealed, n);
  result.set(iv, n + sealed.length);
  result[result.length - 1] = FORMAT;
  frame.data = result.buffer;
  out.enqueue(frame);
  count(c, true);
}

async function decrypt(frame, out, kind, participant, c) {
  const data = new Uint8Array(frame.data);
  const n = clearBytes(frame, kind);
  const ok = key && data.length >= n + TAG_BYTES + IV_BYTES + 1 && data[data.length - 1] === FORMAT;
  if (ok) {
    const ivAt = data.length - 1 - IV_BYTES;
    try {
      const plain = await crypto.subtle.decrypt(
        { name: "AES-GCM", iv: data.subarray(ivAt, ivAt + IV_BYTES), additionalData: data.subarray(0, n) },
        key,
        data.subarray(n, ivAt)
      );
      frame.data = plain;
      out.enqueue(frame);
      count(c, true);
      report(participant, true);
      return;
    } catch (_) {
      /* another key, or damaged */
    }
  }
  count(c, false);
  report(participant, false);
}

/** Tells the page when a sender's frames start or stop decrypting (failures at most
 * once a second). */
function report(participant, decrypted) {
  const last = told.get(participant) || { at: 0, decrypted: null };
  const now = Date.now();
  if (decrypted) {
    if (last.decrypted !== true) self.postMessage({ participant, decrypted: true });
    told.set(participant, { at: last.at, decrypted: true });
  } else if (last.decrypted !== false || now - last.at > 1000) {
    self.postMessage({ participant, decrypted: false });
    told.set(participant, { at: now, decrypted: false });
  }
}
