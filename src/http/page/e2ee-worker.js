/*
 * confnode reference page: end-to-end encryption of media frames (a dedicated worker
 * for RTCRtpScriptTransform, in Chrome and Firefox alike).
 *
 * Each encoded frame is encrypted with AES-GCM (WebCrypto) under the key from the
 * room link's fragment, which no server ever sees. What the node needs stays in the
 * clear, as Jitsi does: a VP8 frame's payload header (10 bytes of a keyframe: its
 * type and size; 3 of another), an Opus frame's first (TOC) byte. The clear bytes are
 * authenticated as additional data. A frame on the wire:
 *
 *   clear header | ciphertext and 16-byte tag | 12-byte IV | 1 byte: FORMAT
 *
 * A frame that does not decrypt is dropped (never handed to the decoder), and the page
 * is told once a second per sender, so that it can say "wrong key".
 */
"use strict";

const FORMAT = 1;
const IV_BYTES = 12;
const TAG_BYTES = 16;

/** The room's key (a CryptoKey), or null before the page sends it. */
let key = null;
/** Per sender (participant id): when the page was last told of a failure, and whether
 * its last frame decrypted. */
const told = new Map();

self.onmessage = (ev) => {
  if (ev.data && ev.data.key) key = ev.data.key;
};

self.onrtctransform = (ev) => {
  const t = ev.transformer;
  const { operation, participant } = t.options || {};
  const transform = new TransformStream({
    transform: operation === "encrypt" ? encrypt : (frame, out) => decrypt(frame, out, participant),
  });
  t.readable.pipeThrough(transform).pipeTo(t.writable).catch(() => {});
};

/** How many leading bytes of `frame` stay in the clear. */
function clearBytes(frame) {
  // Audio frames have no type.
  if (!("type" in frame)) return 1;
  return frame.type === "key" ? 10 : 3;
}

async function encrypt(frame, out) {
  if (!key) return; // no key yet: send nothing rather than the clear frame
  const data = new Uint8Array(frame.data);
  const n = Math.min(clearBytes(frame), data.length);
  const iv = crypto.getRandomValues(new Uint8Array(IV_BYTES));
  const header = data.subarray(0, n);
  const sealed = new Uint8Array(
    await crypto.subtle.encrypt({ name: "AES-GCM", iv, additionalData: header }, key, data.subarray(n))
  );
  const result = new Uint8Array(n + sealed.length + IV_BYTES + 1);
  result.set(header, 0);
  result.set(sealed, n);
  result.set(iv, n + sealed.length);
  result[result.length - 1] = FORMAT;
  frame.data = result.buffer;
  out.enqueue(frame);
}

async function decrypt(frame, out, participant) {
  const data = new Uint8Array(frame.data);
  const n = clearBytes(frame);
  const ok = key && data.length >= n + TAG_BYTES + IV_BYTES + 1 && data[data.length - 1] === FORMAT;
  if (ok) {
    const ivAt = data.length - 1 - IV_BYTES;
    try {
      const plain = await crypto.subtle.decrypt(
        { name: "AES-GCM", iv: data.subarray(ivAt, ivAt + IV_BYTES), additionalData: data.subarray(0, n) },
        key,
        data.subarray(n, ivAt)
      );
      const result = new Uint8Array(n + plain.byteLength);
      result.set(data.subarray(0, n), 0);
      result.set(new Uint8Array(plain), n);
      frame.data = result.buffer;
      out.enqueue(frame);
      report(participant, true);
      return;
    } catch (_) {
      /* another key, or damaged */
    }
  }
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
