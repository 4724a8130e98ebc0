/* confnode reference page: plain JavaScript, no build step, nothing from other hosts.
 *
 * "/"        host view: log in (Basic, or a pasted JWT), create a room, copy its link.
 * "/r/{id}"  room view: join with a display name, publish camera and microphone on a
 *            sending RTCPeerConnection (WHIP-like POST .../publish; video as three
 *            simulcast layers q/h/f), receive everyone else on a second RTCPeerConnection
 *            that answers the server's `offer` events (POST .../subscribe).
 *
 * Query parameters on /r/{id} for automated browsers: name=, autojoin=1, maxHeight=,
 * audioOnly=1, relay=1. Every remote video is a <video data-participant="{participant
 * id}">.
 *
 * Display names only ever go into textContent (never into HTML), and nothing here
 * stores them.
 */
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);

  /** Simulcast layers of the camera, lowest first (rids as the SFU expects them). */
  const SIMULCAST = [
    { rid: "q", scaleResolutionDownBy: 4 },
    { rid: "h", scaleResolutionDownBy: 2 },
    { rid: "f", scaleResolutionDownBy: 1 },
  ];
  const CAMERA = {
    width: { ideal: 1280 },
    height: { ideal: 720 },
    frameRate: { ideal: 30 },
  };
  /** Longest wait for ICE candidates before an SDP is sent (the SFU is ICE-lite and
   * learns the browser's address from its checks, so candidates are a bonus). */
  const GATHER_WAIT_MS = 1500;
  const HUES = 8;

  // ---- small helpers ----

  function show(el, visible) {
    el.hidden = !visible;
  }

  function setText(el, text) {
    el.textContent = text;
  }

  /** base64 of a string's UTF-8 bytes (btoa alone takes Latin-1 only). */
  function base64Utf8(text) {
    let binary = "";
    for (const byte of new TextEncoder().encode(text)) {
      binary += String.fromCharCode(byte);
    }
    return btoa(binary);
  }

  /** Bytes as unpadded base64url. */
  function base64url(bytes) {
    let binary = "";
    for (const b of bytes) binary += String.fromCharCode(b);
    return btoa(binary).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  /** The 32-byte key of a room link's fragment (`#k=...`), or null. */
  function linkKey() {
    const m = /^#(?:.*&)?k=([A-Za-z0-9_-]{43})(?:&|$)/.exec(location.hash);
    if (!m) return null;
    const binary = atob(m[1].replace(/-/g, "+").replace(/_/g, "/") + "=");
    return Uint8Array.from(binary, (ch) => ch.charCodeAt(0));
  }

  function initials(name) {
    const words = (name || "").trim().split(/\s+/).filter(Boolean);
    if (words.length === 0) return "?";
    const first = Array.from(words[0])[0] || "";
    const last = words.length > 1 ? Array.from(words[words.length - 1])[0] || "" : "";
    return (first + last).toUpperCase();
  }

  /** A stable colour class for a participant id. */
  function hueClass(id) {
    let h = 0;
    for (const c of id) h = (h * 31 + c.codePointAt(0)) >>> 0;
    return "hue-" + (h % HUES);
  }

  /** fetch() on this node's API: no cookies (so no browser login prompt on a 401). */
  function api(method, path, { auth, json, sdp } = {}) {
    const headers = {};
    let body;
    if (auth) headers.Authorization = auth;
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(json);
    } else if (sdp !== undefined) {
      headers["Content-Type"] = "application/sdp";
      body = sdp;
    }
    return fetch(path, { method, headers, body, credentials: "omit", cache: "no-store" });
  }

  /** The `error` of an error answer, or a fallback naming the status. */
  async function errorOf(res) {
    try {
      const j = await res.json();
      if (j && typeof j.error === "string") return j.error;
    } catch (_) {
      /* not JSON */
    }
    return "the server answered " + res.status;
  }

  async function copyText(text, input) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (_) {
      // No clipboard API (not a secure context, or refused): select and copy.
      if (input) {
        input.focus();
        input.select();
        try {
          return document.execCommand("copy");
        } catch (_) {
          return false;
        }
      }
      return false;
    }
  }

  function iceGathered(pc, limitMs) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        pc.removeEventListener("icegatheringstatechange", check);
        resolve();
      };
      const check = () => {
        if (pc.iceGatheringState === "complete") done();
      };
      const timer = setTimeout(done, limitMs);
      pc.addEventListener("icegatheringstatechange", check);
    });
  }

  // ---- host view ----

  function hostView() {
    show($("host-view"), true);
    const form = $("login-form");
    const error = $("login-error");
    const button = $("create-room");
    let auth = null;

    function fail(message) {
      setText(error, message);
      show(error, true);
    }

    async function create(withAuth) {
      show(error, false);
      button.disabled = true;
      $("create-another").disabled = true;
      setText(button, "Creating…");
      try {
        const res = await api("POST", "/api/rooms", { auth: withAuth });
        if (res.status === 201) {
          auth = withAuth;
          created(await res.json());
          return;
        }
        const why = await errorOf(res);
        show(form.parentElement, true);
        show($("created"), false);
        if (res.status === 401) {
          fail("Not logged in: " + why + ". Check the host name and password, or the token.");
        } else {
          fail("Could not create a room: " + why + ".");
        }
      } catch (e) {
        fail("Could not reach the node: " + e.message);
      } finally {
        button.disabled = false;
        $("create-another").disabled = false;
        setText(button, "Create room");
      }
    }

    // The room just made: who is in it (to remove someone) and its lock, refreshed
    // while this view shows it.
    let managed = null;
    let refresh = null;
    // The origin of the node that serves the managed room: with several nodes the
    // room's look-up is redirected there, and the host's calls go there directly (a
    // browser drops Authorization on a redirect to another origin).
    let managedApi = "";

    async function loadRoom() {
      if (!managed) return;
      const room = managed;
      try {
        const res = await api("GET", "/api/rooms/" + encodeURIComponent(room));
        if (room !== managed) return;
        if (res.ok) managedApi = new URL(res.url).origin;
        if (!res.ok) {
          setText($("manage-state"), "Could not look up the room: " + (await errorOf(res)) + ".");
          return;
        }
        showRoom(await res.json());
      } catch (e) {
        setText($("manage-state"), "Could not reach the node: " + e.message);
      }
    }

    function showRoom(info) {
      const people = Array.isArray(info.participants) ? info.participants : [];
      setText($("manage-state"), people.length === 0 ? "Nobody is here yet." : "");
      const items = people.map((m) => {
        const li = document.createElement("li");
        li.dataset.member = m.participant;
        const label = document.createElement("span");
        label.className = "member-name";
        setText(label, m.display_name || "");
        const remove = document.createElement("button");
        remove.type = "button";
        setText(remove, "Remove");
        remove.setAttribute("aria-label", "Remove " + (m.display_name || "this person"));
        remove.addEventListener("click", () => removePerson(m.participant, remove));
        li.append(label, " ", remove);
        return li;
      });
      $("manage-people").replaceChildren(...items);
      const lock = $("lock-room");
      lock.setAttribute("aria-pressed", info.locked ? "true" : "false");
      setText(lock, info.locked ? "Unlock the room" : "Lock the room");
    }

    async function removePerson(participant, button) {
      button.disabled = true;
      const path =
        "/api/rooms/" + encodeURIComponent(managed) + "/participants/" + encodeURIComponent(participant);
      try {
        const res = await api("DELETE", managedApi + path, { auth });
        if (!res.ok && res.status !== 404) {
          setText($("manage-state"), "Could not remove them: " + (await errorOf(res)) + ".");
        }
      } catch (e) {
        setText($("manage-state"), "Could not reach the node: " + e.message);
      }
      await loadRoom();
    }

    $("lock-room").addEventListener("click", async () => {
      const lock = $("lock-room");
      const locked = lock.getAttribute("aria-pressed") !== "true";
      lock.disabled = true;
      try {
        const res = await api("PATCH", managedApi + "/api/rooms/" + encodeURIComponent(managed), {
          auth,
          json: { locked },
        });
        if (!res.ok) setText($("manage-state"), "Could not change the lock: " + (await errorOf(res)) + ".");
      } catch (e) {
        setText($("manage-state"), "Could not reach the node: " + e.message);
      } finally {
        lock.disabled = false;
      }
      await loadRoom();
    });

    function manage(room) {
      managed = room;
      managedApi = "";
      $("manage-people").replaceChildren();
      setText($("manage-state"), "");
      if (refresh) clearInterval(refresh);
      refresh = setInterval(loadRoom, 3000);
      loadRoom();
    }

    function created(room) {
      manage(room.room);
      // A fresh end-to-end key per room, only in the link's fragment.
      const key = base64url(crypto.getRandomValues(new Uint8Array(32)));
      const showLink = () => {
        const fragment = $("e2ee-link").checked ? "#k=" + key : "";
        $("room-link").value = room.url + fragment;
        $("open-room").href = "/r/" + encodeURIComponent(room.room) + fragment;
      };
      $("e2ee-link").onchange = showLink;
      showLink();
      $("created").dataset.room = room.room;
      const expires = new Date(room.expires_at);
      setText(
        $("room-expiry"),
        isNaN(expires) ? "" : "If nobody uses it, the link expires on " + expires.toLocaleString() + "."
      );
      setText($("copy-status"), "");
      show(form.parentElement, false);
      show($("created"), true);
      $("created-title").tabIndex = -1;
      $("created-title").focus();
    }

    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const token = $("host-token").value.trim().replace(/^bearer\s+/i, "");
      if (token) {
        create("Bearer " + token);
        return;
      }
      const name = $("host-name").value.trim();
      const password = $("host-password").value;
      if (!name || !password) {
        fail("Enter the host name and password, or paste a host token.");
        (name ? $("host-password") : $("host-name")).focus();
        return;
      }
      create("Basic " + base64Utf8(name + ":" + password));
    });

    $("copy-room-link").addEventListener("click", async () => {
      const ok = await copyText($("room-link").value, $("room-link"));
      setText($("copy-status"), ok ? "Link copied." : "Copy the link from the field above.");
    });

    $("create-another").addEventListener("click", () => {
      if (auth) create(auth);
    });

    $("host-name").focus();
  }

  // ---- room view ----

  /** Everything about the current call; replaced on every join. */
  let call = null;

  function roomView(room) {
    show($("room-view"), true);
    const params = new URLSearchParams(location.search);
    const options = {
      room,
      relay: params.get("relay") === "1",
      maxHeight: Number.parseInt(params.get("maxHeight") || "", 10),
      audioOnly: params.get("audioOnly") === "1",
      // End to end encrypted when the link carries a key; `e2ee=off` skips it (for
      // tests: the node's view of the media).
      key: params.get("e2ee") === "off" ? null : linkKey(),
    };
    const nameField = $("display-name");
    if (params.has("name")) nameField.value = params.get("name");

    $("join-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      join(options);
    });
    $("rejoin").addEventListener("click", () => {
      show($("left-panel"), false);
      show($("join-panel"), true);
      join(options);
    });
    $("leave").addEventListener("click", () => leave("Your camera and microphone are off, and the others no longer see you."));
    $("toggle-mic").addEventListener("click", toggleMic);
    $("toggle-cam").addEventListener("click", toggleCam);
    $("toggle-audio-only").addEventListener("click", () => {
      if (call && call.active) setAudioOnly(call, !call.audioOnly);
    });
    $("enable-sound").addEventListener("click", enableSound);
    $("toggle-screen").addEventListener("click", () => {
      if (!call || !call.active) return;
      if (call.screen) stopScreen(call);
      else shareScreen(call);
    });
    $("toggle-hand").addEventListener("click", () => {
      if (call && call.active) raiseHand(call, !call.hands.has(call.participant));
    });
    $("chat-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      if (call && call.active) sendChat(call);
    });
    $("chat-input").addEventListener("keydown", (ev) => {
      // Enter sends; Shift+Enter is a new line; not while an input method composes.
      if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        $("chat-form").requestSubmit();
      }
    });
    $("copy-link").addEventListener("click", async () => {
      const link = location.origin + "/r/" + encodeURIComponent(room) + (options.key ? location.hash : "");
      const ok = await copyText(link, null);
      notice("copy", ok ? "Room link copied." : "Copy this link: " + link, "info", 4000);
    });
    window.addEventListener("pagehide", () => {
      // Tell the room at once (the node would drop us a minute after the stream ends).
      if (call && call.active) {
        fetch(call.base, {
          method: "DELETE",
          headers: { Authorization: "Bearer " + call.token },
          credentials: "omit",
          keepalive: true,
        }).catch(() => {});
      }
    });

    checkRoom(room).then((exists) => {
      if (exists && params.get("autojoin") === "1" && nameField.value.trim()) join(options);
      else nameField.focus();
    });
  }

  async function checkRoom(room) {
    const state = $("room-state");
    try {
      const res = await api("GET", "/api/rooms/" + encodeURIComponent(room));
      if (res.ok) {
        const info = await res.json();
        const n = Array.isArray(info.participants) ? info.participants.length : 0;
        setText(state, n === 0 ? "Nobody is here yet." : n === 1 ? "1 person is here." : n + " people are here.");
        return true;
      }
      if (res.status === 404) {
        setText(state, "This room does not exist, or its link has expired.");
        $("join-button").disabled = true;
        return false;
      }
      setText(state, "Could not look up the room: " + (await errorOf(res)) + ".");
      return true;
    } catch (e) {
      setText(state, "Could not reach the node: " + e.message);
      return true;
    }
  }

  async function join(options) {
    const nameField = $("display-name");
    const error = $("join-error");
    const button = $("join-button");
    const name = nameField.value.trim();
    show(error, false);
    if (!name) {
      setText(error, "Enter your name to join.");
      show(error, true);
      nameField.focus();
      return;
    }
    button.disabled = true;
    setText(button, "Joining…");
    let joined;
    try {
      const res = await api("POST", "/api/rooms/" + encodeURIComponent(options.room) + "/participants", {
        json: { display_name: name },
      });
      if (res.status !== 201) {
        const why = await errorOf(res);
        setText(error, res.status === 409 ? "The room is full." : "Could not join: " + why + ".");
        show(error, true);
        return;
      }
      joined = await res.json();
      // With several nodes the join was redirected to the room's node: every call of
      // the participant goes there directly (see managedApi).
      joined.api = new URL(res.url).origin;
    } catch (e) {
      setText(error, "Could not reach the node: " + e.message);
      show(error, true);
      return;
    } finally {
      button.disabled = false;
      setText(button, "Join");
    }

    call = {
      active: true,
      room: options.room,
      relay: options.relay,
      participant: joined.participant,
      token: joined.token,
      // With relay=1 the lists that add TURN over UDP (`relay_ice_servers` of the join
      // answer: with TURN over UDP at the node's media address, Chromium swallows the
      // node's answers to direct checks).
      iceServers: iceServersOf(joined, options.relay),
      base:
        joined.api +
        "/api/rooms/" +
        encodeURIComponent(options.room) +
        "/participants/" +
        encodeURIComponent(joined.participant),
      name,
      events: null,
      members: new Map(),
      tiles: new Map(),
      trackOwner: new Map(),
      local: null,
      sendPc: null,
      speaker: null,
      // Videos the node paused for this receiver's bandwidth (participant ids).
      pausedVideos: new Set(),
      // This participant asked for no video (the "Audio only" button, audioOnly=1).
      audioOnly: false,
      // Participants with a raised hand (ids).
      hands: new Set(),
      // This participant's shared screen: { track, transceiver } while sharing.
      screen: null,
      // Shared screens shown: participant id → tile.
      screens: new Map(),
      // Re-offers of the sending connection, one after the other.
      renegotiating: Promise.resolve(),
      // End-to-end encryption: the worker that seals and opens frames, or null.
      e2ee: null,
      // Senders whose frames do not decrypt with this link's key (ids).
      undecryptable: new Set(),
      recvPc: null,
      recvQueue: Promise.resolve(),
      publishing: "starting",
    };
    const c = call;
    show($("join-panel"), false);
    show($("left-panel"), false);
    show($("call"), true);
    if (options.key) await startE2ee(c, options.key);
    $("chat-log").replaceChildren();
    show($("chat-empty"), true);
    show($("chat-error"), false);
    $("toggle-hand").setAttribute("aria-pressed", "false");
    selfTile(c);
    openEvents(c);
    if (Number.isFinite(options.maxHeight) && options.maxHeight > 0) {
      preferences(c, { max_height: options.maxHeight }, "the video height limit");
    }
    showAudioOnly(c, false);
    if (options.audioOnly) setAudioOnly(c, true);
    startMedia(c);
  }

  function auth(c) {
    return "Bearer " + c.token;
  }

  /** Sends `body` as this participant's preferences; false (and a notice naming
   * `what`) when the node refused them. */
  async function preferences(c, body, what) {
    try {
      const res = await api("PUT", c.base + "/preferences", { auth: auth(c), json: body });
      if (res.ok) return true;
      notice("prefs", "Could not set " + what + ": " + (await errorOf(res)) + ".", "warn");
    } catch (_) {
      /* the event stream reports a lost node */
    }
    return false;
  }

  /** "Audio only": the node sends this participant no video (and again when off). */
  async function setAudioOnly(c, on) {
    showAudioOnly(c, on);
    const ok = await preferences(c, { audio_only: on }, on ? "audio only" : "video again");
    if (!ok && call === c) showAudioOnly(c, !on);
  }

  function showAudioOnly(c, on) {
    c.audioOnly = on;
    $("toggle-audio-only").setAttribute("aria-pressed", String(on));
    $("tiles").classList.toggle("audio-only", on);
  }

  // ---- notices ----

  const noticeTimers = new Map();

  /** Shows (or replaces) the notice `key`; `level` is info, warn or error. */
  function notice(key, text, level, hideAfterMs) {
    const box = $("notices");
    let el = box.querySelector('[data-notice="' + key + '"]');
    if (!el) {
      el = document.createElement("p");
      el.dataset.notice = key;
      box.append(el);
    }
    el.className = "notice notice-" + (level || "info");
    setText(el, text);
    clearTimeout(noticeTimers.get(key));
    if (hideAfterMs) noticeTimers.set(key, setTimeout(() => clearNotice(key), hideAfterMs));
  }

  function clearNotice(key) {
    const el = $("notices").querySelector('[data-notice="' + key + '"]');
    if (el) el.remove();
  }

  // ---- roster and event stream ----

  function openEvents(c) {
    const es = new EventSource(c.base + "/events?token=" + encodeURIComponent(c.token));
    c.events = es;
    const data = (ev) => {
      try {
        return JSON.parse(ev.data);
      } catch (_) {
        return null;
      }
    };
    es.addEventListener("open", () => clearNotice("connection"));
    es.addEventListener("roster", (ev) => {
      const d = data(ev);
      if (d && Array.isArray(d.participants)) setRoster(c, d.participants);
    });
    es.addEventListener("joined", (ev) => {
      const d = data(ev);
      if (d && d.participant) {
        c.members.set(d.participant, d.display_name || "");
        renderRoster(c);
        if (d.participant !== c.participant) announce(d.display_name + " joined.");
      }
    });
    es.addEventListener("left", (ev) => {
      const d = data(ev);
      if (!d || !d.participant) return;
      if (d.participant === c.participant) {
        leave("You are no longer in this room.", true);
        return;
      }
      const name = c.members.get(d.participant);
      c.members.delete(d.participant);
      c.hands.delete(d.participant);
      renderRoster(c);
      if (name !== undefined) announce(name + " left.");
    });
    es.addEventListener("speaker", (ev) => {
      const d = data(ev);
      if (d && typeof d.participant === "string") {
        c.speaker = d.participant;
        markSpeaker(c);
      }
    });
    es.addEventListener("video_paused", (ev) => {
      const d = data(ev);
      if (!d || typeof d.participant !== "string" || typeof d.paused !== "boolean") return;
      if (d.paused) c.pausedVideos.add(d.participant);
      else c.pausedVideos.delete(d.participant);
      markPaused(c);
    });
    es.addEventListener("chat", (ev) => {
      const d = data(ev);
      if (d && typeof d.participant === "string" && typeof d.text === "string") showChat(c, d.participant, d.text);
    });
    es.addEventListener("hand", (ev) => {
      const d = data(ev);
      if (!d || typeof d.participant !== "string" || typeof d.raised !== "boolean") return;
      if (d.raised === c.hands.has(d.participant)) return;
      if (d.raised) c.hands.add(d.participant);
      else c.hands.delete(d.participant);
      renderRoster(c);
      const who = d.participant === c.participant ? "You" : c.members.get(d.participant) || "Someone";
      announce(who + (d.raised ? " raised a hand." : " lowered a hand."));
    });
    es.addEventListener("room_closed", () => leave("The room was closed.", true));
    es.addEventListener("offer", (ev) => {
      const d = data(ev);
      if (d && typeof d.sdp === "string") receiveOffer(c, d.sdp);
    });
    es.addEventListener("error", () => {
      if (!c.active) return;
      if (es.readyState === EventSource.CLOSED) {
        // The node refused the stream: we are out of the room, or it is gone.
        leave("You are no longer in this room (the connection to it was lost).", true);
      } else {
        notice("connection", "Connection to the room lost; reconnecting…", "warn");
      }
    });
  }

  function setRoster(c, participants) {
    c.members = new Map();
    c.hands = new Set();
    for (const m of participants) {
      if (m && typeof m.participant === "string") {
        c.members.set(m.participant, m.display_name || "");
        if (m.hand_raised === true) c.hands.add(m.participant);
      }
    }
    renderRoster(c);
  }

  /** Tells screen readers what changed (the roster and hands; chat has its own live
   * list). */
  function announce(text) {
    const el = $("announce");
    // Replaced, not appended: a live region reads what is new.
    setText(el, "");
    setTimeout(() => setText(el, text), 50);
  }

  // ---- chat and raised hands ----

  /** Sends what the chat box holds; the message shows when the node hands it back
   * (everyone sees the same order). */
  async function sendChat(c) {
    const input = $("chat-input");
    const error = $("chat-error");
    const text = input.value.trim();
    show(error, false);
    if (!text) return;
    try {
      const res = await api("POST", c.base + "/chat", { auth: auth(c), json: { text } });
      if (res.ok) {
        if (input.value.trim() === text) input.value = "";
        return;
      }
      setText(
        error,
        res.status === 429 ? "Too many messages at once; wait a few seconds." : "Not sent: " + (await errorOf(res)) + ".",
      );
    } catch (e) {
      setText(error, "Not sent: the node cannot be reached.");
    }
    show(error, true);
  }

  /** Appends one message to the chat, as text (never as markup). */
  function showChat(c, participant, text) {
    const log = $("chat-log");
    const li = document.createElement("li");
    li.dataset.member = participant;
    const from = document.createElement("span");
    from.className = "chat-from";
    const name = participant === c.participant ? "You" : c.members.get(participant);
    setText(from, name === undefined ? "Someone who left" : name);
    const body = document.createElement("span");
    body.className = "chat-text";
    setText(body, text);
    li.append(from, body);
    const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
    log.append(li);
    show($("chat-empty"), false);
    if (atEnd) log.scrollTop = log.scrollHeight;
  }

  async function raiseHand(c, raised) {
    const button = $("toggle-hand");
    button.setAttribute("aria-pressed", String(raised));
    try {
      const res = await api("PUT", c.base + "/hand", { auth: auth(c), json: { raised } });
      if (res.ok) return;
      notice("hand", "Could not " + (raised ? "raise" : "lower") + " your hand: " + (await errorOf(res)) + ".", "warn");
    } catch (_) {
      /* the event stream reports a lost node */
    }
    if (call === c) button.setAttribute("aria-pressed", String(c.hands.has(c.participant)));
  }

  /** The list of people and the stage's tiles, from `c.members`. */
  function renderRoster(c) {
    if (!c.active) return;
    const list = $("roster");
    const items = [];
    for (const [id, name] of c.members) {
      const li = document.createElement("li");
      li.dataset.member = id;
      const dot = document.createElement("span");
      dot.className = "avatar small " + hueClass(id);
      dot.setAttribute("aria-hidden", "true");
      setText(dot, initials(name));
      const label = document.createElement("span");
      label.className = "member-name";
      setText(label, name);
      li.append(dot, label);
      if (id === c.participant) {
        const you = document.createElement("span");
        you.className = "you";
        setText(you, "(you)");
        li.append(" ", you);
      }
      if (c.hands.has(id)) li.append(handMark());
      items.push(li);
    }
    list.replaceChildren(...items);
    setText($("people-count"), String(c.members.size));

    // A tile for everyone else; their video appears in it once media arrives.
    for (const [id, name] of c.members) {
      if (id !== c.participant) ensureTile(c, id).name(name);
    }
    for (const [id, tile] of c.tiles) {
      const mark = tile.figure.querySelector(".hand");
      if (c.hands.has(id) && !mark) tile.figure.append(handMark());
      else if (!c.hands.has(id) && mark) mark.remove();
    }
    $("toggle-hand").setAttribute("aria-pressed", String(c.hands.has(c.participant)));
    for (const id of [...c.tiles.keys()]) {
      if (id !== c.participant && !c.members.has(id)) removeTile(c, id);
    }
    for (const id of [...c.screens.keys()]) {
      if (id !== c.participant && !c.members.has(id)) hideScreen(c, id);
    }
    layout(c);
    markSpeaker(c);
  }

  /** A raised hand's mark: a picture, and words for screen readers. */
  function handMark() {
    const mark = document.createElement("span");
    mark.className = "hand";
    const picture = document.createElement("span");
    picture.setAttribute("aria-hidden", "true");
    setText(picture, "\u270B");
    const words = document.createElement("span");
    words.className = "sr-only";
    setText(words, "hand raised");
    mark.append(picture, words);
    return mark;
  }

  /** Says so on the tiles whose video the node paused for lack of bandwidth. */
  function markPaused(c) {
    for (const [id, tile] of c.tiles) tile.figure.classList.toggle("paused", c.pausedVideos.has(id));
  }

  /** Highlights the active speaker's tile and roster entry. */
  function markSpeaker(c) {
    for (const [id, tile] of c.tiles) tile.figure.classList.toggle("speaking", id === c.speaker);
    for (const li of $("roster").children) li.classList.toggle("speaking", li.dataset.member === c.speaker);
  }

  // ---- tiles ----

  function makeTile(id, hue) {
    const figure = $("tile-template").content.firstElementChild.cloneNode(true);
    figure.dataset.member = id;
    const avatar = figure.querySelector(".avatar");
    avatar.classList.add(hue);
    const caption = figure.querySelector(".name");
    return {
      figure,
      video: null,
      stream: null,
      name(text) {
        setText(caption, text);
        setText(avatar, initials(text));
      },
    };
  }

  function selfTile(c) {
    const tile = makeTile(c.participant, hueClass(c.participant));
    tile.figure.classList.add("self", "video-off");
    tile.name(c.name);
    const you = document.createElement("span");
    you.className = "you";
    setText(you, " (you)");
    tile.figure.querySelector(".name").append(you);
    const video = document.createElement("video");
    video.id = "self-video";
    video.muted = true;
    video.autoplay = true;
    video.playsInline = true;
    video.setAttribute("aria-label", "Your camera");
    tile.figure.querySelector(".media").prepend(video);
    tile.video = video;
    c.tiles.set(c.participant, tile);
    $("tiles").replaceChildren(tile.figure);
    layout(c);
  }

  function ensureTile(c, id) {
    let tile = c.tiles.get(id);
    if (!tile) {
      tile = makeTile(id, hueClass(id));
      tile.figure.classList.add("video-off");
      tile.name(c.members.get(id) || "");
      c.tiles.set(id, tile);
      $("tiles").append(tile.figure);
      layout(c);
    }
    return tile;
  }

  function removeTile(c, id) {
    const tile = c.tiles.get(id);
    if (!tile) return;
    if (tile.video) tile.video.srcObject = null;
    tile.figure.remove();
    c.tiles.delete(id);
    layout(c);
  }

  function layout(c) {
    $("tiles").dataset.count = String(c.tiles.size);
  }

  // ---- local media and publishing ----

  /** The join answer's RTCIceServer list for the policy this page uses. */
  function iceServersOf(joined, relay) {
    const list = relay && Array.isArray(joined.relay_ice_servers) ? joined.relay_ice_servers : joined.ice_servers;
    return Array.isArray(list) ? list : [];
  }

  function pcConfig(c) {
    return {
      iceServers: c.iceServers,
      iceTransportPolicy: c.relay ? "relay" : "all",
      bundlePolicy: "max-bundle",
      rtcpMuxPolicy: "require",
    };
  }

  async function startMedia(c) {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      notice(
        "media",
        "This browser offers no camera or microphone here (it needs HTTPS). You can still see and hear the others.",
        "warn"
      );
      c.publishing = "no-devices";
      return;
    }
    let stream = null;
    let reason = null;
    for (const constraints of [
      { audio: true, video: CAMERA },
      { audio: false, video: CAMERA },
      { audio: true, video: false },
    ]) {
      try {
        stream = await navigator.mediaDevices.getUserMedia(constraints);
        break;
      } catch (e) {
        reason = reason || e;
        if (e && e.name === "NotAllowedError") break;
      }
    }
    if (!c.active) {
      if (stream) stream.getTracks().forEach((t) => t.stop());
      return;
    }
    if (!stream) {
      const why = reason && reason.name === "NotAllowedError" ? "access was not allowed" : "none was found";
      notice(
        "media",
        "Camera and microphone are off: " + why + ". You can still see and hear the others.",
        "warn"
      );
      c.publishing = "no-devices";
      return;
    }
    c.local = stream;
    // Browsers let a page that captures play sound without a click: the others'
    // sound, refused while the camera was still opening, may play now.
    if (soundBlocked) enableSound();
    const self = c.tiles.get(c.participant);
    const video = stream.getVideoTracks()[0];
    const audio = stream.getAudioTracks()[0];
    if (self) {
      self.video.srcObject = stream;
      self.figure.classList.toggle("video-off", !video);
      self.video.play().catch(() => {});
    }
    $("toggle-mic").disabled = !audio;
    $("toggle-cam").disabled = !video;
    if (video && "contentHint" in video) video.contentHint = "motion";
    await publish(c, audio, video);
  }

  async function publish(c, audio, video) {
    const pc = new RTCPeerConnection(pcConfig(c));
    c.sendPc = pc;
    if (audio) seal(c, pc.addTransceiver(audio, { direction: "sendonly", streams: [c.local] }));
    if (video) {
      const t = pc.addTransceiver(video, {
        direction: "sendonly",
        streams: [c.local],
        sendEncodings: SIMULCAST.map((e) => ({ ...e })),
      });
      seal(c, t);
    }
    pc.addEventListener("connectionstatechange", () => {
      if (!c.active || c.sendPc !== pc) return;
      if (pc.connectionState === "failed") {
        notice("media", "Sending your camera and microphone failed: no connection to the media server.", "error");
      } else if (pc.connectionState === "connected") {
        clearNotice("media");
      }
    });
    try {
      await pc.setLocalDescription(await pc.createOffer());
      await iceGathered(pc, GATHER_WAIT_MS);
      if (!c.active) return;
      const res = await api("POST", c.base + "/publish", { auth: auth(c), sdp: pc.localDescription.sdp });
      if (!c.active) return;
      if (res.status === 201) {
        await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
        c.publishing = "published";
        $("toggle-screen").disabled = !(navigator.mediaDevices && navigator.mediaDevices.getDisplayMedia);
        return;
      }
      pc.close();
      c.sendPc = null;
      if (res.status === 503) {
        c.publishing = "unavailable";
        notice(
          "media",
          "Media server not available yet: the others cannot see or hear you for now. The list of people still works.",
          "warn"
        );
      } else {
        c.publishing = "failed";
        notice("media", "Could not send your camera and microphone: " + (await errorOf(res)) + ".", "error");
      }
    } catch (e) {
      if (!c.active) return;
      pc.close();
      c.sendPc = null;
      c.publishing = "failed";
      notice("media", "Could not send your camera and microphone: " + e.message, "error");
    }
  }

  // ---- end-to-end encryption ----

  /** Starts the frame worker with the link's key. Without the browser API the call
   * goes on unencrypted, and the page says so. */
  async function startE2ee(c, raw) {
    if (!window.RTCRtpScriptTransform || !window.crypto || !crypto.subtle) {
      notice(
        "e2ee",
        "This browser cannot encrypt end to end: the others cannot see or hear you, and you them. Ask the host for a link without encryption.",
        "error"
      );
      return;
    }
    const key = await crypto.subtle.importKey("raw", raw, "AES-GCM", false, ["encrypt", "decrypt"]);
    const worker = new Worker("/e2ee-worker.js");
    worker.postMessage({ key });
    worker.addEventListener("message", (ev) => {
      const d = ev.data;
      if (!d || call !== c) return;
      if (d.counts) c.e2ee.counts = d.counts;
      if (d.failed) notice("e2ee", "Encryption stopped on a stream: " + d.failed, "warn", 6000);
      if (typeof d.participant !== "string") return;
      if (d.decrypted) c.undecryptable.delete(d.participant);
      else c.undecryptable.add(d.participant);
      markUndecryptable(c);
    });
    c.e2ee = { worker, counts: {} };
  }

  /** Encrypts what a transceiver sends. */
  function seal(c, transceiver) {
    if (!c.e2ee) return;
    const kind = transceiver.receiver.track.kind;
    transceiver.sender.transform = new RTCRtpScriptTransform(c.e2ee.worker, { operation: "encrypt", kind });
  }

  /** Decrypts what a receiver gets from `participant`. */
  function unseal(c, receiver, participant) {
    if (!c.e2ee) return;
    try {
      const kind = receiver.track.kind;
      receiver.transform = new RTCRtpScriptTransform(c.e2ee.worker, { operation: "decrypt", participant, kind });
    } catch (e) {
      notice("e2ee", "Could not decrypt a stream: " + e.message, "warn", 6000);
    }
  }

  /** Says so on the tiles of senders whose frames do not decrypt: another key. */
  function markUndecryptable(c) {
    for (const [id, tile] of [...c.tiles, ...c.screens]) {
      const wrong = c.undecryptable.has(id);
      tile.figure.classList.toggle("wrong-key", wrong);
      let label = tile.figure.querySelector(".key-state");
      if (wrong && !label) {
        label = document.createElement("p");
        label.className = "key-state";
        setText(label, "Cannot decrypt: this link's key differs from theirs");
        tile.figure.append(label);
      } else if (!wrong && label) {
        label.remove();
      }
    }
  }

  // ---- screen sharing ----

  /** Shares a screen or window as a second video of the sending connection: one
   * layer, kept sharp ("detail"), re-offered to the node with its mid named. */
  async function shareScreen(c) {
    const button = $("toggle-screen");
    let stream;
    try {
      stream = await navigator.mediaDevices.getDisplayMedia({ video: { frameRate: { ideal: 15 } }, audio: false });
    } catch (e) {
      if (e && e.name !== "NotAllowedError") notice("screen", "Could not share the screen: " + e.message, "warn", 6000);
      return;
    }
    const track = stream.getVideoTracks()[0];
    if (!track || !c.active || !c.sendPc || c.screen) {
      stream.getTracks().forEach((t) => t.stop());
      return;
    }
    if ("contentHint" in track) track.contentHint = "detail";
    const transceiver = c.sendPc.addTransceiver(track, {
      direction: "sendonly",
      streams: [stream],
      sendEncodings: [{ maxBitrate: 2_500_000 }],
    });
    seal(c, transceiver);
    c.screen = { track, transceiver };
    // The browser's own "Stop sharing" ends the track.
    track.addEventListener("ended", () => stopScreen(c));
    button.setAttribute("aria-pressed", "true");
    setText(button.querySelector(".label"), "Stop sharing");
    showScreen(c, c.participant, track);
    if (!(await renegotiate(c))) stopScreen(c);
  }

  async function stopScreen(c) {
    const shared = c.screen;
    if (!shared) return;
    c.screen = null;
    shared.track.stop();
    const button = $("toggle-screen");
    button.setAttribute("aria-pressed", "false");
    setText(button.querySelector(".label"), "Share screen");
    hideScreen(c, c.participant);
    if (c.active && c.sendPc && c.sendPc.signalingState !== "closed") {
      shared.transceiver.stop();
      await renegotiate(c);
    }
  }

  /** Re-offers the sending connection to the node (`PUT .../publish`); false when it
   * did not take it. */
  function renegotiate(c) {
    const run = async () => {
      const pc = c.sendPc;
      if (!c.active || !pc || pc.signalingState === "closed") return false;
      try {
        await pc.setLocalDescription(await pc.createOffer());
        const mid = c.screen && c.screen.transceiver.mid;
        const query = mid ? "?screen=" + encodeURIComponent(mid) : "";
        const res = await api("PUT", c.base + "/publish" + query, { auth: auth(c), sdp: pc.localDescription.sdp });
        if (res.status === 200) {
          await pc.setRemoteDescription({ type: "answer", sdp: await res.text() });
          return true;
        }
        notice("screen", "The node did not take the change: " + (await errorOf(res)) + ".", "warn", 6000);
        await pc.setLocalDescription({ type: "rollback" });
      } catch (e) {
        notice("screen", "Could not change what you send: " + e.message, "warn", 6000);
      }
      return false;
    };
    c.renegotiating = c.renegotiating.then(run, run);
    return c.renegotiating;
  }

  /** A shared screen's tile (the participant's own too): large, the cameras as a
   * strip. */
  function showScreen(c, id, track) {
    let tile = c.screens.get(id);
    if (!tile) {
      tile = makeTile(id, hueClass(id));
      tile.figure.classList.add("screen");
      const video = document.createElement("video");
      video.dataset.participant = id;
      video.dataset.screen = "1";
      video.autoplay = true;
      video.playsInline = true;
      video.muted = true;
      tile.figure.querySelector(".media").prepend(video);
      tile.video = video;
      c.screens.set(id, tile);
      $("tiles").append(tile.figure);
    }
    tile.track = track;
    const name = id === c.participant ? "Your screen" : (c.members.get(id) || "Someone") + "'s screen";
    tile.name(name);
    tile.video.srcObject = new MediaStream([track]);
    play(tile.video);
    layoutScreens(c);
  }

  function hideScreen(c, id, track) {
    const tile = c.screens.get(id);
    if (!tile || (track && tile.track !== track)) return;
    tile.video.srcObject = null;
    tile.figure.remove();
    c.screens.delete(id);
    layoutScreens(c);
  }

  function layoutScreens(c) {
    $("tiles").classList.toggle("presenting", c.screens.size > 0);
  }

  /** A remote screen track: its own tile, out of the participant's camera stream (a
   * video element plays one video track of a stream). */
  function remoteScreen(c, id, stream, track) {
    stream.removeTrack(track);
    showScreen(c, id, track);
    track.addEventListener("mute", () => hideScreen(c, id, track));
    track.addEventListener("ended", () => hideScreen(c, id, track));
    track.addEventListener("unmute", () => {
      if (c.active && c.members.has(id)) showScreen(c, id, track);
    });
  }

  function toggleMic() {
    const track = call && call.local && call.local.getAudioTracks()[0];
    if (!track) return;
    track.enabled = !track.enabled;
    $("toggle-mic").setAttribute("aria-pressed", String(!track.enabled));
  }

  function toggleCam() {
    const track = call && call.local && call.local.getVideoTracks()[0];
    if (!track) return;
    track.enabled = !track.enabled;
    $("toggle-cam").setAttribute("aria-pressed", String(!track.enabled));
    const self = call.tiles.get(call.participant);
    if (self) self.figure.classList.toggle("video-off", !track.enabled);
  }

  // ---- receiving ----

  /** Answers the server's offers one after another (renegotiations queue up). */
  function receiveOffer(c, sdp) {
    c.recvQueue = c.recvQueue
      .then(() => answerOffer(c, sdp))
      .catch((e) => {
        if (c.active) notice("receive", "Could not receive the others' video: " + e.message, "error");
      });
  }

  async function answerOffer(c, sdp) {
    if (!c.active) return;
    if (!c.recvPc) {
      const pc = new RTCPeerConnection(pcConfig(c));
      pc.addEventListener("track", (ev) => remoteTrack(c, ev));
      pc.addEventListener("connectionstatechange", () => {
        if (!c.active || c.recvPc !== pc) return;
        if (pc.connectionState === "failed") {
          notice("receive", "Receiving the others' video failed: no connection to the media server.", "error");
        } else if (pc.connectionState === "connected") {
          clearNotice("receive");
        }
      });
      c.recvPc = pc;
    }
    const pc = c.recvPc;
    await pc.setRemoteDescription({ type: "offer", sdp });
    await pc.setLocalDescription(await pc.createAnswer());
    // No waiting for candidates: the node is ICE-lite and learns the client's
    // addresses from its checks, which may already be under way (Firefox's are).
    if (!c.active) return;
    const res = await api("POST", c.base + "/subscribe", { auth: auth(c), sdp: pc.localDescription.sdp });
    if (!res.ok) throw new Error(await errorOf(res));
  }

  /** A remote track: its stream's id is the publishing participant's id. */
  function remoteTrack(c, ev) {
    const stream = ev.streams[0];
    if (!stream || !c.active) return;
    const id = stream.id;
    c.trackOwner.set(ev.track.id, id);
    unseal(c, ev.receiver, id);
    // The node names a shared screen's track "{participant}-screen-{mid}".
    if (ev.track.kind === "video" && ev.track.id.startsWith(id + "-screen-")) {
      remoteScreen(c, id, stream, ev.track);
      return;
    }
    const tile = ensureTile(c, id);
    if (tile.stream !== stream) {
      tile.stream = stream;
      stream.addEventListener("removetrack", () => refreshTile(tile));
      stream.addEventListener("addtrack", () => refreshTile(tile));
    }
    ev.track.addEventListener("mute", () => refreshTile(tile));
    ev.track.addEventListener("unmute", () => refreshTile(tile));
    ev.track.addEventListener("ended", () => refreshTile(tile));
    if (!tile.video) {
      const video = document.createElement("video");
      video.dataset.participant = id;
      video.autoplay = true;
      video.playsInline = true;
      video.muted = soundBlocked;
      tile.figure.querySelector(".media").prepend(video);
      tile.video = video;
    }
    if (tile.video.srcObject !== stream) tile.video.srcObject = stream;
    play(tile.video);
    refreshTile(tile);
  }

  /** Shows the avatar instead of the picture while no video frames arrive. */
  function refreshTile(tile) {
    const live = tile.stream
      ? tile.stream.getVideoTracks().some((t) => t.readyState === "live" && !t.muted)
      : false;
    tile.figure.classList.toggle("video-off", !live);
  }

  /** Set once the browser refused to play sound without a click. */
  let soundBlocked = false;

  function play(video) {
    video.play().catch((e) => {
      // Interrupted (a new source, the element moved): it plays again with its next
      // start. Only a refusal means the browser wants a click before sound.
      if (!e || e.name !== "NotAllowedError") return;
      // Autoplay with sound refused: play muted, offer a button to turn sound on.
      soundBlocked = true;
      video.muted = true;
      video.play().catch(() => {});
      show($("enable-sound"), true);
    });
  }

  function enableSound() {
    soundBlocked = false;
    show($("enable-sound"), false);
    if (!call) return;
    for (const [id, tile] of call.tiles) {
      if (id !== call.participant && tile.video) {
        tile.video.muted = false;
        play(tile.video);
      }
    }
  }

  // ---- leaving ----

  /** Ends the call: tells the node (unless `already` out), stops everything. */
  async function leave(reason, already) {
    const c = call;
    if (!c || !c.active) return;
    c.active = false;
    if (c.events) c.events.close();
    for (const pc of [c.sendPc, c.recvPc]) if (pc) pc.close();
    if (c.local) c.local.getTracks().forEach((t) => t.stop());
    if (c.screen) c.screen.track.stop();
    if (c.e2ee) c.e2ee.worker.terminate();
    c.screen = null;
    c.screens.clear();
    $("tiles").classList.remove("presenting");
    const share = $("toggle-screen");
    share.disabled = true;
    share.setAttribute("aria-pressed", "false");
    setText(share.querySelector(".label"), "Share screen");
    for (const tile of c.tiles.values()) if (tile.video) tile.video.srcObject = null;
    $("tiles").replaceChildren();
    $("roster").replaceChildren();
    $("notices").replaceChildren();
    show($("enable-sound"), false);
    for (const id of ["toggle-mic", "toggle-cam"]) {
      $(id).disabled = true;
      $(id).setAttribute("aria-pressed", "false");
    }
    show($("call"), false);
    setText($("left-title"), already ? "The meeting ended for you" : "You left the meeting");
    setText($("left-reason"), reason);
    show($("left-panel"), true);
    $("rejoin").focus();
    if (!already) {
      try {
        await api("DELETE", c.base, { auth: auth(c) });
      } catch (_) {
        /* the node drops us when the event stream is gone */
      }
    }
  }

  // ---- for automated browsers (tests read these; nothing here changes state) ----

  /** The selected ICE candidate pair in a stats report, or null. */
  function selectedPair(report) {
    let pair = null;
    report.forEach((t) => {
      if (t.type === "transport" && t.selectedCandidatePairId) pair = report.get(t.selectedCandidatePairId) || null;
    });
    // Firefox has no transport stats; it marks the pair itself.
    report.forEach((t) => {
      if (!pair && t.type === "candidate-pair" && t.selected) pair = t;
    });
    return pair;
  }

  /** The local candidate of the selected ICE pair in a stats report, or null. */
  function localCandidate(report) {
    const pair = selectedPair(report);
    return (pair && report.get(pair.localCandidateId)) || null;
  }

  /** The local candidate type of the selected ICE pair in a stats report, or null. */
  function candidateType(report) {
    const local = localCandidate(report);
    return local ? local.candidateType : null;
  }

  /** How the selected pair reaches its TURN server (udp, tcp, tls), or null. */
  function relayProtocol(report) {
    const local = localCandidate(report);
    return (local && local.relayProtocol) || null;
  }

  window.confnode = Object.freeze({
    /** Where the call stands: participant id, publishing state, members' count. */
    state() {
      if (!call) return { joined: false };
      return {
        joined: call.active,
        participant: call.participant,
        // The origin of the node that serves the room (with several nodes, maybe
        // another than the page's).
        api: new URL(call.base, location.href).origin,
        publishing: call.publishing,
        members: call.members.size,
        speaker: call.speaker || null,
        pausedVideos: [...call.pausedVideos],
        audioOnly: call.audioOnly,
        hands: [...call.hands],
        // The browser refused to play sound without a click: the others play muted.
        soundBlocked,
        sharing: call.screen !== null,
        e2ee: call.e2ee !== null,
        undecryptable: [...call.undecryptable],
        // Frames through the encryption worker per "operation kind sender".
        e2eeFrames: call.e2ee ? call.e2ee.counts : null,
        screens: [...call.screens.keys()],
        sending: call.sendPc ? call.sendPc.connectionState : null,
        receiving: call.recvPc ? call.recvPc.connectionState : null,
      };
    },
    /** The chat as shown: each message's sender (participant id) and text. */
    chat() {
      return [...$("chat-log").children].map((li) => ({
        participant: li.dataset.member,
        text: li.querySelector(".chat-text").textContent,
      }));
    },
    /** getStats() of both peer connections, reduced to plain numbers per stream, the
     * type of the local ICE candidate each one uses (host, srflx, prflx, relay) and,
     * for a relay, how it reaches the TURN server (udp, tcp, tls), and the browser's
     * estimate of its uplink to the node (bit/s, or null). */
    async stats() {
      const out = {
        inbound: [],
        outbound: [],
        sendingVia: null,
        receivingVia: null,
        sendingRelay: null,
        receivingRelay: null,
        sendEstimate: null,
      };
      if (!call) return out;
      if (call.recvPc) {
        const report = await call.recvPc.getStats();
        out.receivingVia = candidateType(report);
        out.receivingRelay = relayProtocol(report);
        report.forEach((s) => {
          if (s.type !== "inbound-rtp") return;
          out.inbound.push({
            participant: call.trackOwner.get(s.trackIdentifier) || null,
            kind: s.kind,
            screen: String(s.trackIdentifier || "").includes("-screen-"),
            mid: s.mid,
            packetsReceived: s.packetsReceived,
            bytesReceived: s.bytesReceived,
            framesDecoded: s.framesDecoded,
            freezeCount: s.freezeCount,
            totalFreezesDuration: s.totalFreezesDuration,
            frameWidth: s.frameWidth,
            frameHeight: s.frameHeight,
            totalSamplesReceived: s.totalSamplesReceived,
            totalAudioEnergy: s.totalAudioEnergy,
            concealedSamples: s.concealedSamples,
            silentConcealedSamples: s.silentConcealedSamples,
            jitterBufferEmittedCount: s.jitterBufferEmittedCount,
            audioLevel: s.audioLevel,
            packetsLost: s.packetsLost,
            packetsDiscarded: s.packetsDiscarded,
          });
        });
      }
      if (call.sendPc) {
        const report = await call.sendPc.getStats();
        out.sendingVia = candidateType(report);
        out.sendingRelay = relayProtocol(report);
        const pair = selectedPair(report);
        if (pair && pair.availableOutgoingBitrate !== undefined) out.sendEstimate = pair.availableOutgoingBitrate;
        report.forEach((s) => {
          if (s.type !== "outbound-rtp") return;
          out.outbound.push({
            kind: s.kind,
            rid: s.rid,
            packetsSent: s.packetsSent,
            bytesSent: s.bytesSent,
            framesEncoded: s.framesEncoded,
            frameWidth: s.frameWidth,
            frameHeight: s.frameHeight,
            qualityLimitationReason: s.qualityLimitationReason,
          });
        });
      }
      return out;
    },
  });

  // ---- start ----

  const match = /^\/r\/([^/]+)\/?$/.exec(location.pathname);
  if (match) {
    let room;
    try {
      room = decodeURIComponent(match[1]);
    } catch (_) {
      room = match[1];
    }
    roomView(room);
  } else {
    hostView();
  }
})();
