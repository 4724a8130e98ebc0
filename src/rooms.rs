//! Rooms and their participants: the state behind the HTTP room API, sans-IO.
//!
//! Time comes in as unix seconds and randomness as an `RngCore`, so every rule (expiry,
//! capacity, tokens, who is told what) is tested without clocks or sockets. Nothing here
//! sends anything: each change returns the [`Effects`] it has on the participants' event
//! streams (which event goes to which stream, which streams end), and the HTTP layer
//! delivers them.
//!
//! Privacy: display names live here, in memory, only while their participant is in the
//! room. No `Debug` output of this module shows one.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use argon2::password_hash::rand_core::RngCore;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::store::StoredRoom;

/// Live rooms one host may hold at once.
pub(crate) const MAX_ROOMS_PER_HOST: usize = 100;
/// Live rooms on the node at once, all hosts together.
pub(crate) const MAX_ROOMS: usize = 10_000;
/// Event streams one participant may hold open; a further one replaces the oldest.
pub(crate) const MAX_STREAMS_PER_PARTICIPANT: usize = 2;
/// A participant with no open event stream for this long (never connected, or the
/// browser went away) leaves the room, and the others are told.
pub(crate) const DETACHED_GRACE_SECS: u64 = 60;
/// Longest display name, in characters, after trimming.
pub(crate) const MAX_DISPLAY_NAME_CHARS: usize = 64;
/// Longest chat message, in characters, after trimming.
pub(crate) const MAX_CHAT_CHARS: usize = 2_000;
/// Chat messages and hand changes one participant may send per [`CHAT_WINDOW_SECS`]:
/// a quick exchange fits, a flood that would fill everyone's event stream does not.
pub(crate) const CHAT_PER_WINDOW: u32 = 10;
pub(crate) const CHAT_WINDOW_SECS: u64 = 10;

/// Random bytes in a room id (the link is the only key to a room): 128 bits.
const ROOM_ID_BYTES: usize = 16;
/// Random bytes in a participant id (public: it is in the roster; unique, not secret).
const PARTICIPANT_ID_BYTES: usize = 12;
/// Random bytes in a participant's bearer token: 256 bits.
const TOKEN_BYTES: usize = 32;

/// The bounds and lifetimes rooms are kept to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// An unused room expires this long after its creation or after its last
    /// participant left (`rooms.ttl_hours`).
    pub(crate) ttl_secs: u64,
    /// Participants in one room at once (`rooms.max_participants`).
    pub(crate) max_participants: usize,
    pub(crate) max_rooms_per_host: usize,
    pub(crate) max_rooms: usize,
}

impl Limits {
    pub(crate) fn new(ttl_hours: u32, max_participants: u32) -> Limits {
        Limits {
            ttl_secs: u64::from(ttl_hours) * 3600,
            max_participants: max_participants as usize,
            max_rooms_per_host: MAX_ROOMS_PER_HOST,
            max_rooms: MAX_ROOMS,
        }
    }
}

/// Why a request on rooms failed; the HTTP layer maps each to a status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RoomError {
    /// No such room, or it expired or was deleted (404).
    NoRoom,
    /// No such participant in the room (404).
    NoParticipant,
    /// The token is not this participant's (401).
    BadToken,
    /// The room has `max_participants` in it (409).
    Full,
    /// The host holds `max_rooms_per_host` rooms, or the node `max_rooms` (429).
    TooManyRooms,
    /// The room's host locked it: nobody new joins (403).
    Locked,
    /// The room belongs to another host (403).
    NotYourRoom,
    /// The participant sent [`CHAT_PER_WINDOW`] chat messages or hand changes in this
    /// window (429).
    ChatTooFast,
}

impl RoomError {
    pub(crate) fn message(self) -> &'static str {
        match self {
            RoomError::NoRoom => "no such room (it may have expired or been closed)",
            RoomError::NoParticipant => "no such participant in this room",
            RoomError::BadToken => "missing or wrong participant token",
            RoomError::Full => "the room is full",
            RoomError::TooManyRooms => "too many open rooms; delete one first",
            RoomError::Locked => "the room is locked: its host lets nobody new in",
            RoomError::NotYourRoom => "this room belongs to another host",
            RoomError::ChatTooFast => "too many chat messages or hand changes; wait a few seconds",
        }
    }
}

/// One participant as others see it: in rosters, `joined` events and room answers.
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub(crate) struct Member {
    pub(crate) participant: String,
    pub(crate) display_name: String,
    /// The participant raised a hand (and has not lowered it).
    pub(crate) hand_raised: bool,
}

impl fmt::Debug for Member {
    /// The display name stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Member")
            .field("participant", &self.participant)
            .finish_non_exhaustive()
    }
}

/// What a participant's event stream carries. Later the SFU sends `Offer`s here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Event {
    /// Everyone in the room now, in the order they joined (sent on connect and after
    /// every change).
    Roster(Arc<[Member]>),
    /// Someone joined.
    Joined(Member),
    /// Someone left (or was dropped); their id.
    Left(String),
    /// The room was deleted by a host or expired; the stream ends after this.
    RoomClosed,
    /// An SDP offer from the server for the participant's receiving peer connection.
    Offer(String),
    /// The room's active speaker changed; their id.
    Speaker(String),
    /// The video of a participant (their id) no longer fits this receiver's link even
    /// at its lowest layer and is paused (`true`), or flows again (`false`).
    VideoPaused(String, bool),
    /// A chat message to the room.
    Chat(ChatMessage),
    /// A participant (their id) raised a hand (`true`) or lowered it (`false`).
    Hand(String, bool),
}

/// A chat message as the room's streams carry it: who sent it and what it says. It
/// is handed to the streams in the room when it is sent and kept nowhere else.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct ChatMessage {
    pub(crate) participant: String,
    pub(crate) text: Arc<str>,
}

impl fmt::Debug for ChatMessage {
    /// The text stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatMessage")
            .field("participant", &self.participant)
            .finish_non_exhaustive()
    }
}

impl Event {
    /// The SSE `event:` name.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Event::Roster(_) => "roster",
            Event::Joined(_) => "joined",
            Event::Left(_) => "left",
            Event::RoomClosed => "room_closed",
            Event::Offer(_) => "offer",
            Event::Speaker(_) => "speaker",
            Event::VideoPaused(..) => "video_paused",
            Event::Chat(_) => "chat",
            Event::Hand(..) => "hand",
        }
    }

    /// The SSE `data:` line: one JSON object.
    pub(crate) fn data(&self) -> String {
        let value = match self {
            Event::Roster(members) => serde_json::json!({ "participants": &**members }),
            Event::Joined(m) => serde_json::json!(m),
            Event::Left(id) => serde_json::json!({ "participant": id }),
            Event::RoomClosed => serde_json::json!({}),
            Event::Offer(sdp) => serde_json::json!({ "type": "offer", "sdp": sdp }),
            Event::Speaker(id) => serde_json::json!({ "participant": id }),
            Event::VideoPaused(id, paused) => {
                serde_json::json!({ "participant": id, "paused": paused })
            }
            Event::Chat(m) => serde_json::json!({ "participant": m.participant, "text": &*m.text }),
            Event::Hand(id, raised) => serde_json::json!({ "participant": id, "raised": raised }),
        };
        value.to_string()
    }
}

/// Identifies one open event stream (assigned by the caller, unique per process).
pub(crate) type StreamId = u64;

/// What a change does to event streams: events to deliver, then streams to end.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Effects {
    pub(crate) notices: Vec<(StreamId, Event)>,
    pub(crate) close: Vec<StreamId>,
}

impl Effects {
    fn merge(&mut self, other: Effects) {
        self.notices.extend(other.notices);
        self.close.extend(other.close);
    }
}

/// A room as the API shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RoomView {
    pub(crate) room: String,
    pub(crate) participants: Vec<Member>,
    /// Unix seconds. While people are in the room it cannot expire: then this is the
    /// earliest it could (`now + ttl`).
    pub(crate) expires_at: u64,
    /// Its host locked it (see [`Rooms::set_locked`]).
    pub(crate) locked: bool,
}

/// A participant just admitted.
pub(crate) struct Joined {
    pub(crate) participant: String,
    /// The bearer secret; only its hash is kept.
    pub(crate) token: String,
    pub(crate) effects: Effects,
}

impl fmt::Debug for Joined {
    /// The token stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Joined")
            .field("participant", &self.participant)
            .finish_non_exhaustive()
    }
}

/// An event stream just attached.
#[derive(Debug)]
pub(crate) struct Attached {
    /// The first event of the stream.
    pub(crate) roster: Event,
    /// The participant's oldest stream, ended to keep within
    /// [`MAX_STREAMS_PER_PARTICIPANT`].
    pub(crate) replaced: Option<StreamId>,
}

/// What a participant asked to receive (`PUT preferences`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Preferences {
    /// The simulcast height cap.
    pub(crate) max_height: Option<u32>,
    /// No video at all, only the others' voices.
    pub(crate) audio_only: bool,
}

struct Participant {
    id: String,
    display_name: String,
    token_hash: [u8; 32],
    preferences: Preferences,
    hand_raised: bool,
    /// The start of the participant's chat window and the messages and hand changes
    /// sent in it.
    chat_window: (u64, u32),
    streams: Vec<StreamId>,
    /// When the last stream ended (or the join, before the first one).
    detached_since: Option<u64>,
}

impl Participant {
    /// Counts one chat message or hand change against [`CHAT_PER_WINDOW`].
    fn count_said(&mut self, now: u64) -> Result<(), RoomError> {
        let (start, sent) = &mut self.chat_window;
        if now >= start.saturating_add(CHAT_WINDOW_SECS) {
            (*start, *sent) = (now, 0);
        }
        if *sent >= CHAT_PER_WINDOW {
            return Err(RoomError::ChatTooFast);
        }
        *sent += 1;
        Ok(())
    }
}

struct Room {
    host: Box<str>,
    /// Nobody new joins while set.
    locked: bool,
    participants: Vec<Participant>,
    /// Creation, or when the last participant left; meaningful while empty.
    idle_since: u64,
}

impl Room {
    fn participant(&self, id: &str) -> Option<&Participant> {
        self.participants.iter().find(|p| p.id == id)
    }

    fn participant_mut(&mut self, id: &str) -> Option<&mut Participant> {
        self.participants.iter_mut().find(|p| p.id == id)
    }

    fn expires_at(&self, ttl: u64, now: u64) -> u64 {
        if self.participants.is_empty() {
            self.idle_since.saturating_add(ttl)
        } else {
            now.saturating_add(ttl)
        }
    }

    fn is_expired(&self, ttl: u64, now: u64) -> bool {
        self.participants.is_empty() && now >= self.idle_since.saturating_add(ttl)
    }

    fn roster(&self) -> Arc<[Member]> {
        self.participants
            .iter()
            .map(|p| Member {
                participant: p.id.clone(),
                display_name: p.display_name.clone(),
                hand_raised: p.hand_raised,
            })
            .collect()
    }

    fn all_streams(&self) -> impl Iterator<Item = StreamId> + '_ {
        self.participants
            .iter()
            .flat_map(|p| p.streams.iter().copied())
    }

    /// A participant is gone: the others hear `left` and the new roster; the
    /// participant's own streams hear `left` too and then end.
    fn remove(&mut self, index: usize, now: u64) -> Effects {
        let gone = self.participants.remove(index);
        if self.participants.is_empty() {
            self.idle_since = now;
        }
        let left = Event::Left(gone.id);
        let roster = Event::Roster(self.roster());
        let mut effects = Effects::default();
        for s in self.all_streams() {
            effects.notices.push((s, left.clone()));
            effects.notices.push((s, roster.clone()));
        }
        for &s in &gone.streams {
            effects.notices.push((s, left.clone()));
        }
        effects.close = gone.streams;
        effects
    }
}

/// Every room of the node.
pub struct Rooms {
    limits: Limits,
    rooms: HashMap<String, Room>,
}

impl fmt::Debug for Rooms {
    /// Counts only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rooms")
            .field("rooms", &self.rooms.len())
            .finish_non_exhaustive()
    }
}

impl Rooms {
    pub(crate) fn new(limits: Limits) -> Rooms {
        Rooms {
            limits,
            rooms: HashMap::new(),
        }
    }

    /// The limits the rooms were made with.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Rooms held now (expired ones count until swept).
    pub(crate) fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether no room is held.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// A live (not expired) room.
    fn live(&self, room: &str, now: u64) -> Result<&Room, RoomError> {
        self.rooms
            .get(room)
            .filter(|r| !r.is_expired(self.limits.ttl_secs, now))
            .ok_or(RoomError::NoRoom)
    }

    fn live_mut(&mut self, room: &str, now: u64) -> Result<&mut Room, RoomError> {
        let ttl = self.limits.ttl_secs;
        self.rooms
            .get_mut(room)
            .filter(|r| !r.is_expired(ttl, now))
            .ok_or(RoomError::NoRoom)
    }

    /// Takes back a room kept from an earlier run. One that was occupied then starts
    /// its time to live again now (its calls ended with that run). Returns false, and
    /// takes nothing, for a room that has expired or whose id is taken.
    pub(crate) fn restore(&mut self, kept: &StoredRoom, now: u64) -> bool {
        let room = Room {
            host: kept.host.as_str().into(),
            locked: kept.locked,
            participants: Vec::new(),
            idle_since: if kept.occupied { now } else { kept.idle_since },
        };
        if room.is_expired(self.limits.ttl_secs, now)
            || self.rooms.contains_key(&kept.id)
            || self.rooms.len() >= self.limits.max_rooms
        {
            return false;
        }
        self.rooms.insert(kept.id.clone(), room);
        true
    }

    /// What is to be kept of every live room (see [`crate::store`]).
    pub(crate) fn to_keep(&self, now: u64) -> Vec<StoredRoom> {
        let ttl = self.limits.ttl_secs;
        self.rooms
            .iter()
            .filter(|(_, r)| !r.is_expired(ttl, now))
            .map(|(id, r)| StoredRoom {
                id: id.clone(),
                host: r.host.to_string(),
                idle_since: r.idle_since,
                occupied: !r.participants.is_empty(),
                locked: r.locked,
            })
            .collect()
    }

    /// Whether a live (not expired) room by this id is here.
    pub(crate) fn holds(&self, room: &str, now: u64) -> bool {
        self.live(room, now).is_ok()
    }

    /// A new empty room for `host`; its id carries 128 random bits.
    pub(crate) fn create(
        &mut self,
        host: &str,
        rng: &mut impl RngCore,
        now: u64,
    ) -> Result<RoomView, RoomError> {
        let ttl = self.limits.ttl_secs;
        let live = |r: &&Room| !r.is_expired(ttl, now);
        if self.rooms.values().filter(live).count() >= self.limits.max_rooms {
            return Err(RoomError::TooManyRooms);
        }
        let of_host = self
            .rooms
            .values()
            .filter(live)
            .filter(|r| &*r.host == host)
            .count();
        if of_host >= self.limits.max_rooms_per_host {
            return Err(RoomError::TooManyRooms);
        }
        // Expired rooms still in the map free their place (and their id) now.
        if self.rooms.len() >= self.limits.max_rooms {
            self.rooms.retain(|_, r| !r.is_expired(ttl, now));
        }
        let id = loop {
            let id = new_room_id(rng);
            if !self.rooms.contains_key(&id) {
                break id;
            }
        };
        self.rooms.insert(
            id.clone(),
            Room {
                host: host.into(),
                locked: false,
                participants: Vec::new(),
                idle_since: now,
            },
        );
        Ok(RoomView {
            room: id,
            participants: Vec::new(),
            expires_at: now.saturating_add(ttl),
            locked: false,
        })
    }

    pub(crate) fn view(&self, room: &str, now: u64) -> Result<RoomView, RoomError> {
        let r = self.live(room, now)?;
        Ok(RoomView {
            room: room.to_owned(),
            participants: r.roster().to_vec(),
            expires_at: r.expires_at(self.limits.ttl_secs, now),
            locked: r.locked,
        })
    }

    /// The live room `room` if `host` made it.
    fn owned_mut(&mut self, room: &str, host: &str, now: u64) -> Result<&mut Room, RoomError> {
        let r = self.live_mut(room, now)?;
        if &*r.host != host {
            return Err(RoomError::NotYourRoom);
        }
        Ok(r)
    }

    /// The room's host locks it (nobody new joins; who is in stays) or opens it again.
    pub(crate) fn set_locked(
        &mut self,
        room: &str,
        host: &str,
        locked: bool,
        now: u64,
    ) -> Result<(), RoomError> {
        self.owned_mut(room, host, now)?.locked = locked;
        Ok(())
    }

    /// The room's host removes a participant: like leaving, the others hear `left`, and
    /// so does the participant's own stream before it ends; its token stops working.
    pub(crate) fn remove_participant(
        &mut self,
        room: &str,
        host: &str,
        participant: &str,
        now: u64,
    ) -> Result<Effects, RoomError> {
        let r = self.owned_mut(room, host, now)?;
        let index = r
            .participants
            .iter()
            .position(|p| p.id == participant)
            .ok_or(RoomError::NoParticipant)?;
        Ok(r.remove(index, now))
    }

    /// Its host deletes a room (see [`Rooms::delete`]); another host may not.
    pub(crate) fn delete_as(
        &mut self,
        room: &str,
        host: &str,
        now: u64,
    ) -> Result<Effects, RoomError> {
        self.owned_mut(room, host, now)?;
        self.delete(room, now)
    }

    /// Deletes a room: every stream in it hears `room_closed` and ends; every token of
    /// it stops working.
    pub(crate) fn delete(&mut self, room: &str, now: u64) -> Result<Effects, RoomError> {
        self.live(room, now)?;
        let r = self.rooms.remove(room).ok_or(RoomError::NoRoom)?;
        Ok(close_room(&r))
    }

    /// Admits a participant under an already validated display name (see
    /// [`validate_display_name`]). The others hear `joined` and the new roster.
    pub(crate) fn join(
        &mut self,
        room: &str,
        display_name: String,
        rng: &mut impl RngCore,
        now: u64,
    ) -> Result<Joined, RoomError> {
        let max = self.limits.max_participants;
        let r = self.live_mut(room, now)?;
        if r.locked {
            return Err(RoomError::Locked);
        }
        if r.participants.len() >= max {
            return Err(RoomError::Full);
        }
        let id = loop {
            let id = random_text::<PARTICIPANT_ID_BYTES>(rng);
            if r.participant(&id).is_none() {
                break id;
            }
        };
        let token = random_text::<TOKEN_BYTES>(rng);
        let member = Member {
            participant: id.clone(),
            display_name: display_name.clone(),
            hand_raised: false,
        };
        let mut effects = Effects::default();
        let joined = Event::Joined(member);
        for s in r.all_streams() {
            effects.notices.push((s, joined.clone()));
        }
        r.participants.push(Participant {
            id: id.clone(),
            display_name,
            token_hash: hash_token(&token),
            preferences: Preferences::default(),
            hand_raised: false,
            chat_window: (now, 0),
            streams: Vec::new(),
            detached_since: Some(now),
        });
        let roster = Event::Roster(r.roster());
        for s in r.all_streams() {
            effects.notices.push((s, roster.clone()));
        }
        Ok(Joined {
            participant: id,
            token,
            effects,
        })
    }

    /// Checks that `token` is `participant`'s in `room`.
    pub(crate) fn authenticate(
        &self,
        room: &str,
        participant: &str,
        token: Option<&str>,
        now: u64,
    ) -> Result<(), RoomError> {
        let r = self.live(room, now)?;
        let p = r.participant(participant).ok_or(RoomError::NoParticipant)?;
        let token = token.ok_or(RoomError::BadToken)?;
        if same_hash(&p.token_hash, &hash_token(token)) {
            Ok(())
        } else {
            Err(RoomError::BadToken)
        }
    }

    /// A participant leaves (after [`Rooms::authenticate`]).
    pub(crate) fn leave(
        &mut self,
        room: &str,
        participant: &str,
        now: u64,
    ) -> Result<Effects, RoomError> {
        let r = self.live_mut(room, now)?;
        let index = r
            .participants
            .iter()
            .position(|p| p.id == participant)
            .ok_or(RoomError::NoParticipant)?;
        Ok(r.remove(index, now))
    }

    /// A participant (after [`Rooms::authenticate`]) sends a chat message, already
    /// validated (see [`validate_chat_text`]): every stream in the room, the sender's
    /// own included, gets it, in the order the room took the messages in. At most
    /// [`CHAT_PER_WINDOW`] per [`CHAT_WINDOW_SECS`] per participant.
    pub(crate) fn chat(
        &mut self,
        room: &str,
        participant: &str,
        text: String,
        now: u64,
    ) -> Result<Effects, RoomError> {
        let r = self.live_mut(room, now)?;
        r.participant_mut(participant)
            .ok_or(RoomError::NoParticipant)?
            .count_said(now)?;
        let message = Event::Chat(ChatMessage {
            participant: participant.to_owned(),
            text: text.into(),
        });
        Ok(Effects {
            notices: r.all_streams().map(|s| (s, message.clone())).collect(),
            close: Vec::new(),
        })
    }

    /// A participant (after [`Rooms::authenticate`]) raises or lowers a hand: every
    /// stream in the room hears `hand`, and rosters show it from now on. Counted with
    /// the chat messages ([`CHAT_PER_WINDOW`]).
    pub(crate) fn raise_hand(
        &mut self,
        room: &str,
        participant: &str,
        raised: bool,
        now: u64,
    ) -> Result<Effects, RoomError> {
        let r = self.live_mut(room, now)?;
        let p = r
            .participant_mut(participant)
            .ok_or(RoomError::NoParticipant)?;
        p.count_said(now)?;
        p.hand_raised = raised;
        let hand = Event::Hand(participant.to_owned(), raised);
        Ok(Effects {
            notices: r.all_streams().map(|s| (s, hand.clone())).collect(),
            close: Vec::new(),
        })
    }

    /// Every open event stream of the live room `room`.
    pub(crate) fn streams_of(&self, room: &str, now: u64) -> Vec<StreamId> {
        self.live(room, now)
            .map(|r| r.all_streams().collect())
            .unwrap_or_default()
    }

    /// Participants in all rooms together.
    pub(crate) fn participants_total(&self) -> usize {
        self.rooms.values().map(|r| r.participants.len()).sum()
    }

    /// Whether `participant` is in the live room `room`.
    pub(crate) fn contains(&self, room: &str, participant: &str, now: u64) -> bool {
        self.live(room, now)
            .is_ok_and(|r| r.participant(participant).is_some())
    }

    /// The participants of the live room `room` with an open event stream, each with
    /// its newest stream (where the SFU's offers go).
    pub(crate) fn stream_holders(&self, room: &str, now: u64) -> Vec<(String, StreamId)> {
        let Ok(r) = self.live(room, now) else {
            return Vec::new();
        };
        r.participants
            .iter()
            .filter_map(|p| Some((p.id.clone(), *p.streams.last()?)))
            .collect()
    }

    /// Stores what a participant asked to receive: a height cap, audio only, or both
    /// (`None`: as it was). Returns the preferences now.
    pub(crate) fn set_preferences(
        &mut self,
        room: &str,
        participant: &str,
        (max_height, audio_only): (Option<u32>, Option<bool>),
        now: u64,
    ) -> Result<Preferences, RoomError> {
        let p = self
            .live_mut(room, now)?
            .participant_mut(participant)
            .ok_or(RoomError::NoParticipant)?;
        if let Some(h) = max_height {
            p.preferences.max_height = Some(h);
        }
        if let Some(a) = audio_only {
            p.preferences.audio_only = a;
        }
        Ok(p.preferences)
    }

    pub(crate) fn preferences(&self, room: &str, participant: &str, now: u64) -> Preferences {
        self.live(room, now)
            .ok()
            .and_then(|r| r.participant(participant))
            .map(|p| p.preferences)
            .unwrap_or_default()
    }

    /// An event stream of `participant` opened; it starts with the roster. Beyond
    /// [`MAX_STREAMS_PER_PARTICIPANT`] the oldest stream is replaced (a reloaded page
    /// gets through while its old connection is not yet known to be dead).
    pub(crate) fn attach_stream(
        &mut self,
        room: &str,
        participant: &str,
        stream: StreamId,
        now: u64,
    ) -> Result<Attached, RoomError> {
        let r = self.live_mut(room, now)?;
        let roster = Event::Roster(r.roster());
        let p = r
            .participant_mut(participant)
            .ok_or(RoomError::NoParticipant)?;
        let replaced = if p.streams.len() >= MAX_STREAMS_PER_PARTICIPANT {
            Some(p.streams.remove(0))
        } else {
            None
        };
        p.streams.push(stream);
        p.detached_since = None;
        Ok(Attached { roster, replaced })
    }

    /// An event stream ended (the client went away, or it was closed here). Unknown
    /// rooms, participants and streams are ignored: the stream may have been closed
    /// because they are gone.
    pub(crate) fn detach_stream(
        &mut self,
        room: &str,
        participant: &str,
        stream: StreamId,
        now: u64,
    ) {
        let Some(p) = self
            .rooms
            .get_mut(room)
            .and_then(|r| r.participant_mut(participant))
        else {
            return;
        };
        p.streams.retain(|&s| s != stream);
        if p.streams.is_empty() && p.detached_since.is_none() {
            p.detached_since = Some(now);
        }
    }

    /// Drops participants without an event stream for [`DETACHED_GRACE_SECS`] (the
    /// others are told) and removes expired rooms. Call it every few seconds.
    pub(crate) fn sweep(&mut self, now: u64) -> Effects {
        let ttl = self.limits.ttl_secs;
        let mut effects = Effects::default();
        for r in self.rooms.values_mut() {
            while let Some(index) = r.participants.iter().position(|p| {
                p.detached_since
                    .is_some_and(|t| now >= t.saturating_add(DETACHED_GRACE_SECS))
            }) {
                effects.merge(r.remove(index, now));
            }
        }
        self.rooms.retain(|_, r| {
            let expired = r.is_expired(ttl, now);
            if expired {
                effects.merge(close_room(r));
            }
            !expired
        });
        effects
    }
}

/// `room_closed` to every stream of a room, then the end of each.
fn close_room(r: &Room) -> Effects {
    let close: Vec<StreamId> = r.all_streams().collect();
    Effects {
        notices: close.iter().map(|&s| (s, Event::RoomClosed)).collect(),
        close,
    }
}

/// A display name as given, trimmed: 1 to [`MAX_DISPLAY_NAME_CHARS`] characters, none
/// of them a control character (line breaks, escapes, bidi overrides and other format
/// characters).
pub(crate) fn validate_display_name(name: &str) -> Result<String, &'static str> {
    let name = name.trim();
    if name.is_empty() {
        return Err("display_name must not be empty");
    }
    if name.chars().count() > MAX_DISPLAY_NAME_CHARS {
        return Err("display_name must be at most 64 characters");
    }
    if name.chars().any(is_forbidden) {
        return Err("display_name must not contain control characters");
    }
    Ok(name.to_owned())
}

/// A chat message as given, trimmed: 1 to [`MAX_CHAT_CHARS`] characters; line breaks
/// and tabs are allowed, other control and format characters (see
/// [`validate_display_name`]) are not.
pub(crate) fn validate_chat_text(text: &str) -> Result<String, &'static str> {
    let text = text.trim();
    if text.is_empty() {
        return Err("text must not be empty");
    }
    if text.chars().count() > MAX_CHAT_CHARS {
        return Err("text must be at most 2000 characters");
    }
    if text
        .chars()
        .any(|c| c != '\n' && c != '\t' && is_forbidden(c))
    {
        return Err("text must not contain control characters other than line breaks and tabs");
    }
    Ok(text.to_owned())
}

/// Control characters (Cc), and the format characters that reorder or hide text
/// (bidi embeddings, overrides and isolates, zero-width and line/paragraph separators).
fn is_forbidden(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}' | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}')
}

/// A room id: [`ROOM_ID_BYTES`] random bytes in base64url (also for a room that a
/// shared store places on another node).
pub(crate) fn new_room_id(rng: &mut impl RngCore) -> String {
    random_text::<ROOM_ID_BYTES>(rng)
}

/// Whether `text` could be a room id (what [`new_room_id`] makes): checked before a
/// shared store is asked for it.
pub(crate) fn is_room_id(text: &str) -> bool {
    text.len() == ROOM_ID_BYTES.div_ceil(3) * 4 - (3 - ROOM_ID_BYTES % 3) % 3
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// `N` random bytes as unpadded base64url text.
fn random_text<const N: usize>(rng: &mut impl RngCore) -> String {
    let mut raw = [0u8; N];
    rng.fill_bytes(&mut raw);
    URL_SAFE_NO_PAD.encode(raw)
}

fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares two digests without an early exit.
fn same_hash(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::rand_core::{CryptoRng, Error};

    /// A deterministic generator (xorshift64): ids differ, tests repeat.
    struct TestRng(u64);

    impl RngCore for TestRng {
        fn next_u32(&mut self) -> u32 {
            self.next_u64() as u32
        }
        fn next_u64(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            for b in dest {
                *b = self.next_u64() as u8;
            }
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl CryptoRng for TestRng {}

    const T0: u64 = 1_800_000_000;
    const TTL: u64 = 24 * 3600;

    fn rooms() -> (Rooms, TestRng) {
        (
            Rooms::new(Limits::new(24, 3)),
            TestRng(0x1234_5678_9abc_def1),
        )
    }

    fn name(s: &str) -> String {
        validate_display_name(s).expect("valid name")
    }

    #[test]
    fn ids_and_tokens_have_their_sizes() {
        let (mut r, mut rng) = rooms();
        let room = r.create("host", &mut rng, T0).expect("room").room;
        // 16 bytes = 128 bits in 22 base64url characters.
        assert_eq!(room.len(), 22);
        assert!(
            room.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        let j = r.join(&room, name("Ann"), &mut rng, T0).expect("join");
        assert_eq!(j.participant.len(), 16);
        assert_eq!(j.token.len(), 43);
        let other = r.create("host", &mut rng, T0).expect("room").room;
        assert_ne!(room, other);
    }

    #[test]
    fn unused_room_expires_after_ttl() {
        let (mut r, mut rng) = rooms();
        let v = r.create("host", &mut rng, T0).expect("room");
        assert_eq!(v.expires_at, T0 + TTL);
        assert_eq!(
            r.view(&v.room, T0 + TTL - 1).expect("live").expires_at,
            T0 + TTL
        );
        assert_eq!(r.view(&v.room, T0 + TTL), Err(RoomError::NoRoom));
        // Expired but not yet swept: joining fails too.
        assert_eq!(
            r.join(&v.room, name("Ann"), &mut rng, T0 + TTL).err(),
            Some(RoomError::NoRoom)
        );
        assert_eq!(r.len(), 1);
        r.sweep(T0 + TTL);
        assert!(r.is_empty());
    }

    #[test]
    fn occupied_room_does_not_expire_and_ttl_restarts_when_empty() {
        let (mut r, mut rng) = rooms();
        let room = r.create("host", &mut rng, T0).expect("room").room;
        let j = r.join(&room, name("Ann"), &mut rng, T0 + 10).expect("join");
        r.attach_stream(&room, &j.participant, 1, T0 + 10)
            .expect("attach");
        let later = T0 + 3 * TTL;
        let v = r.view(&room, later).expect("occupied rooms stay");
        assert_eq!(v.expires_at, later + TTL);
        assert!(r.sweep(later).notices.is_empty());
        r.leave(&room, &j.participant, later).expect("leave");
        assert_eq!(r.view(&room, later).expect("live").expires_at, later + TTL);
        assert!(r.view(&room, later + TTL - 1).is_ok());
        assert_eq!(r.view(&room, later + TTL), Err(RoomError::NoRoom));
    }

    #[test]
    fn capacity_is_enforced_and_freed_by_leaving() {
        let (mut r, mut rng) = rooms();
        let room = r.create("host", &mut rng, T0).expect("room").room;
        let ids: Vec<String> = (0..3)
            .map(|i| {
                r.join(&room, name(&format!("P{i}")), &mut rng, T0)
                    .expect("join")
                    .participant
            })
            .collect();
        assert_eq!(
            r.join(&room, name("late"), &mut rng, T0).err(),
            Some(RoomError::Full)
        );
        r.leave(&room, &ids[1], T0).expect("leave");
        assert!(r.join(&room, name("late"), &mut rng, T0).is_ok());
    }

    #[test]
    fn rooms_per_host_and_in_total_are_bounded() {
        let mut rng = TestRng(7);
        let mut r = Rooms::new(Limits {
            ttl_secs: TTL,
            max_participants: 2,
            max_rooms_per_host: 2,
            max_rooms: 3,
        });
        r.create("a", &mut rng, T0).expect("1");
        r.create("a", &mut rng, T0).expect("2");
        assert_eq!(
            r.create("a", &mut rng, T0).err(),
            Some(RoomError::TooManyRooms)
        );
        r.create("b", &mut rng, T0).expect("3");
        assert_eq!(
            r.create("c", &mut rng, T0).err(),
            Some(RoomError::TooManyRooms)
        );
        // Expired rooms do not count, even before a sweep.
        assert!(r.create("c", &mut rng, T0 + TTL).is_ok());
        assert!(r.len() <= 3);
    }

    #[test]
    fn tokens_are_per_participant() {
        let (mut r, mut rng) = rooms();
        let room = r.create("host", &mut rng, T0).expect("room").room;
        let a = r.join(&room, name("Ann"), &mut rng, T0).expect("join");
        let b = r.join(&room, name("Bob"), &mut rng, T0).expect("join");
        assert_ne!(a.token, b.token);
        assert_eq!(
            r.authenticate(&room, &a.participant, Some(&a.token), T0),
            Ok(())
        );
        assert_eq!(
            r.authenticate(&room, &a.participant, Some(&b.token), T0),
            Err(RoomError::BadToken)
        );
        assert_eq!(
            r.authenticate(&room, &a.participant, None, T0),
            Err(RoomError::BadToken)
        );
        assert_eq!(
            r.authenticate(&room, &a.participant, Some(""), T0),
            Err(RoomError::BadToken)
        );
        assert_eq!(
            r.authenticate(&room, "nobody", Some(&a.token), T0),
            Err(RoomError::NoParticipant)
        );
        assert_eq!(
            r.authenticate("nowhere", &a.participant, Some(&a.token), T0),
            Err(RoomError::NoRoom)
        );
        // After leaving, the token is worthless.
        r.leave(&room, &a.participant, T0).expect("leave");
        assert_eq!(
            r.authenticate(&room, &a.participant, Some(&a.token), T0),
            Err(RoomError::NoParticipant)
        );
    }

    #[test]
    fn join_and_leave_tell_the_others() {
        let (mut r, mut rng) = rooms();
        let room = r.create("host", &mut rng, T0).expect("room").room;
        let a = r.join(&room, name("Ann"), &mut rng, T0).expect("join");
        assert!(a.effects.notices.is_empty(), "nobody listens yet");
        let att = r
            .attach_stream(&room, &a.participant, 10, T0)
            .expect("attach");
        let Event::Roster(members) = &att.roster else {
            panic!("first event is the roster")
        };
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].display_name, "Ann");

        let b = r.join(&room, name("  Bob "), &mut rng, T0).expect("join");
        let events: Vec<_> = b
            .effects
            .notices
            .iter()
            .map(|(s, e)| (*s, e.name()))
            .collect();
        assert_eq!(events, vec![(10, "joined"), (10, "roster")]);
        let Event::Joined(m) = &b.effects.notices[0].1 else {
            panic!("joined")
        };
        assert_eq!(m.display_name, "Bob");
        assert_eq!(m.participant, b.participant);
        r.attach_stream(&room, &b.participant, 20, T0)
            .expect("attach");

        let e = r.leave(&room, &b.participant, T0).expect("leave");
        let events: Vec<_> = e.notices.iter().map(|(s, e)| (*s, e.name())).collect();
        assert_eq!(events, vec![(10, "left"), (10, "roster"), (20, "left")]);
        assert_eq!(e.notices[0].1, Event::Left(b.participant.clone()));
        assert_eq!(e.close, vec![20]);
        let Event::Roster(members) = &e.notices[1].1 else {
            panic!("roster")
        };
        assert_eq!(members.len(), 1);
        assert_eq!(
            r.leave(&room, &b.participant, T0).err(),
            Some(RoomError::NoParticipant)
        );
    }

    #[test]
    fn delete_closes_every_stream() {
        let (mut r, mut rng) = rooms();
        let room = r.create("host", &mut rng, T0).expect("room").room;
        let a = r.join(&room, name("Ann"), &mut rng, T0).expect("join");
        let b = r.join(&room, name("Bob"), &mut rng, T0).expect("join");
        r.attach_stream(&room, &a.participant, 1, T0)
            .expect("attach");
        r.attach_stream(&room, &b.participant, 2, T0)
            .expect("attach");
        r.attach_stream(&room, &b.participant, 3, T0)
            .expect("attach");
        let e = r.delete(&room, T0).expect("delete");
        assert_eq!(
            e.notices,
            vec![
                (1, Event::RoomClosed),
                (2, Event::RoomClosed),
                (3, Event::RoomClosed)
            ]
        );
        assert_eq!(e.close, vec![1, 2, 3]);
        assert_eq!(r.view(&room, T0), Err(RoomError::NoRoom));
        assert_eq!(
            r.authenticate(&room, &a.participant, Some(&a.token), T0),
            Err(RoomError::NoRoom)
        );
        assert_eq!(r.delete(&room, T0), Err(RoomError::NoRoom));
    }

    #[test]
    fn only_its_host_deletes_a_room() {
        let (mut r, mut rng) = rooms();
        let room = r.create("host", &mut rng, T0).expect("room").room;
        assert_eq!(
            r.delete_as(&room, "other", T0).err(),
            Some(RoomError::NotYourRoom)
        );
        assert!(r.view(&room, T0).is_ok());
        assert!(r.delete_as(&room, "host", T0).is_ok());
        assert_eq!(r.view(&room, T0), Err(RoomError::NoRoom));
    }

    #[test]
    fn streams_per_participant_are_bounded() {
        let (mut r, mut rng) = rooms();
        let room = r.create("host", &mut rng, T0).expect("room").room;
        let a = r.join(&room, name("Ann"), &mut rng, T0).expect("join");
        let p = &a.participant;
        assert_eq!(r.attach_stream(&room, p, 1, T0).expect("1").replaced, None);
        assert_eq!(r.attach_stream(&room, p, 2, T0).expect("2").replaced, None);
        assert_eq!(
            r.attach_stream(&room, p, 3, T0).expect("3").replaced,
            Some(1)
        );
        // The replaced stream's later detach changes nothing.
        r.detach_stream(&room, p, 1, T0);
        let e = r.leave(&room, p, T0).expect("leave");
        assert_eq!(e.close, vec![2, 3]);
        assert_eq!(
            r.attach_stream(&room, p, 4, T0).err(),
            Some(RoomError::NoParticipant)
        );
    }

    #[test]
    fn detached_participants_are_dropped_after_grace() {
        let (mut r, mut rng) = rooms();
        let room = r.create("host", &mut rng, T0).expect("room").room;
        let a = r.join(&room, name("Ann"), &mut rng, T0).expect("join");
        let b = r.join(&room, name("Bob"), &mut rng, T0).expect("join");
        r.attach_stream(&room, &a.participant, 1, T0)
            .expect("attach");
        // Bob never opens a stream.
        assert!(r.sweep(T0 + DETACHED_GRACE_SECS - 1).notices.is_empty());
        let e = r.sweep(T0 + DETACHED_GRACE_SECS);
        assert_eq!(e.notices[0], (1, Event::Left(b.participant.clone())));
        assert_eq!(r.view(&room, T0 + 61).expect("room").participants.len(), 1);
        // Ann's stream ends; she gets the grace too, then the room idles.
        r.detach_stream(&room, &a.participant, 1, T0 + 100);
        assert!(r.sweep(T0 + 159).notices.is_empty());
        r.sweep(T0 + 160);
        let v = r.view(&room, T0 + 160).expect("empty room lives on");
        assert!(v.participants.is_empty());
        assert_eq!(v.expires_at, T0 + 160 + TTL);
        // Reattaching within the grace keeps her.
        let c = r.join(&room, name("Cy"), &mut rng, T0 + 200).expect("join");
        r.attach_stream(&room, &c.participant, 5, T0 + 200)
            .expect("a");
        r.detach_stream(&room, &c.participant, 5, T0 + 210);
        r.attach_stream(&room, &c.participant, 6, T0 + 260)
            .expect("a");
        r.sweep(T0 + 400);
        assert_eq!(r.view(&room, T0 + 400).expect("room").participants.len(), 1);
    }

    #[test]
    fn a_host_locks_its_room_and_removes_participants() {
        let (mut rooms, mut rng) = rooms();
        let room = rooms.create("dana", &mut rng, 0).unwrap().room;
        let ann = rooms.join(&room, name("Ann"), &mut rng, 1).unwrap();
        let bo = rooms.join(&room, name("Bo"), &mut rng, 1).unwrap();
        let ann_stream = rooms.attach_stream(&room, &ann.participant, 7, 1).unwrap();
        drop(ann_stream);
        // Another host may do neither.
        assert_eq!(
            rooms.set_locked(&room, "eve", true, 2),
            Err(RoomError::NotYourRoom)
        );
        assert_eq!(
            rooms
                .remove_participant(&room, "eve", &bo.participant, 2)
                .unwrap_err(),
            RoomError::NotYourRoom
        );
        rooms.set_locked(&room, "dana", true, 2).unwrap();
        assert!(rooms.view(&room, 2).unwrap().locked);
        assert_eq!(
            rooms.join(&room, name("Cy"), &mut rng, 3).unwrap_err(),
            RoomError::Locked
        );
        // Removed: the others hear it, the token is void.
        let effects = rooms
            .remove_participant(&room, "dana", &bo.participant, 4)
            .unwrap();
        assert!(
            effects
                .notices
                .contains(&(7, Event::Left(bo.participant.clone())))
        );
        assert_eq!(
            rooms.authenticate(&room, &bo.participant, Some(&bo.token), 4),
            Err(RoomError::NoParticipant)
        );
        rooms.set_locked(&room, "dana", false, 5).unwrap();
        assert!(rooms.join(&room, name("Cy"), &mut rng, 5).is_ok());
    }

    #[test]
    fn room_ids_are_recognised() {
        let mut rng = TestRng(7);
        let id = new_room_id(&mut rng);
        assert_eq!(id.len(), 22);
        assert!(is_room_id(&id));
        assert!(!is_room_id(&id[1..]));
        assert!(!is_room_id("aaaaaaaaaaaaaaaaaaaa/."));
    }

    #[test]
    fn preferences_are_stored() {
        let (mut r, mut rng) = rooms();
        let room = r.create("host", &mut rng, T0).expect("room").room;
        let a = r.join(&room, name("Ann"), &mut rng, T0).expect("join");
        assert_eq!(
            r.preferences(&room, &a.participant, T0),
            Preferences::default()
        );
        r.set_preferences(&room, &a.participant, (Some(180), None), T0)
            .expect("set");
        let both = r
            .set_preferences(&room, &a.participant, (None, Some(true)), T0)
            .expect("set");
        let want = Preferences {
            max_height: Some(180),
            audio_only: true,
        };
        assert_eq!(both, want, "each kept what the other set");
        assert_eq!(r.preferences(&room, &a.participant, T0), want);
        assert_eq!(
            r.set_preferences(&room, "nobody", (Some(180), None), T0),
            Err(RoomError::NoParticipant)
        );
    }

    #[test]
    fn display_names() {
        assert_eq!(
            validate_display_name("  Ann Lee \t").as_deref(),
            Ok("Ann Lee")
        );
        assert_eq!(validate_display_name("Zoë 🎥").as_deref(), Ok("Zoë 🎥"));
        assert!(validate_display_name("").is_err());
        assert!(validate_display_name("   ").is_err());
        assert!(validate_display_name("a\nb").is_err());
        assert!(validate_display_name("a\u{7}b").is_err());
        assert!(validate_display_name("a\u{202E}b").is_err());
        assert!(validate_display_name("a\u{200B}b").is_err());
        let max: String = "é".repeat(64);
        assert!(validate_display_name(&max).is_ok());
        assert!(validate_display_name(&format!("{max}e")).is_err());
    }

    #[test]
    fn events_serialise() {
        let m = Member {
            participant: "p1".into(),
            display_name: "Ann \"A\"".into(),
            hand_raised: false,
        };
        let roster = Event::Roster(Arc::from(vec![m.clone()]));
        assert_eq!(
            roster.data(),
            r#"{"participants":[{"display_name":"Ann \"A\"","hand_raised":false,"participant":"p1"}]}"#
        );
        assert_eq!(Event::Left("p1".into()).data(), r#"{"participant":"p1"}"#);
        assert_eq!(Event::RoomClosed.name(), "room_closed");
        assert_eq!(Event::RoomClosed.data(), "{}");
        assert_eq!(Event::Offer("v=0".into()).name(), "offer");
        let paused = Event::VideoPaused("p2".into(), true);
        assert_eq!(paused.name(), "video_paused");
        assert_eq!(paused.data(), r#"{"participant":"p2","paused":true}"#);
        // No display name in Debug output (logs).
        assert!(!format!("{:?}", Event::Joined(m)).contains("Ann"));
    }

    #[test]
    fn chat_reaches_every_stream_in_the_room_in_order_and_is_bounded() {
        let (mut r, mut rng) = rooms();
        let room = r.create("host", &mut rng, T0).expect("room").room;
        let ann = r.join(&room, name("Ann"), &mut rng, T0).expect("join");
        let bo = r.join(&room, name("Bo"), &mut rng, T0).expect("join");
        r.attach_stream(&room, &ann.participant, 1, T0)
            .expect("stream");
        r.attach_stream(&room, &bo.participant, 2, T0)
            .expect("stream");
        let mut seen = Vec::new();
        for text in ["one", "two"] {
            let fx = r
                .chat(&room, &ann.participant, text.to_owned(), T0)
                .expect("sent");
            seen.extend(fx.notices);
        }
        let texts = |stream: StreamId| -> Vec<String> {
            seen.iter()
                .filter(|(s, _)| *s == stream)
                .map(|(_, e)| match e {
                    Event::Chat(m) => {
                        assert_eq!(m.participant, ann.participant);
                        m.text.to_string()
                    }
                    other => panic!("not a chat message: {other:?}"),
                })
                .collect()
        };
        // The sender's own stream too: everyone sees the room's one order.
        assert_eq!(texts(1), ["one", "two"]);
        assert_eq!(texts(2), ["one", "two"]);
        let event = Event::Chat(ChatMessage {
            participant: "p".into(),
            text: "hi \"there\"".into(),
        });
        assert_eq!(event.name(), "chat");
        assert_eq!(event.data(), r#"{"participant":"p","text":"hi \"there\""}"#);
        // The text stays out of Debug output (and so out of logs).
        assert!(!format!("{event:?}").contains("there"));

        // Ten per ten seconds per participant.
        for _ in 2..CHAT_PER_WINDOW {
            r.chat(&room, &ann.participant, "x".into(), T0 + 1)
                .expect("within the window");
        }
        assert_eq!(
            r.chat(&room, &ann.participant, "x".into(), T0 + 9).err(),
            Some(RoomError::ChatTooFast)
        );
        // Others are not held back by it, and the next window opens.
        r.chat(&room, &bo.participant, "x".into(), T0 + 9)
            .expect("another participant");
        r.chat(&room, &ann.participant, "x".into(), T0 + 10)
            .expect("next window");
        assert_eq!(
            r.chat(&room, "nobody", "x".into(), T0 + 10).err(),
            Some(RoomError::NoParticipant)
        );
    }

    #[test]
    fn chat_text_is_checked() {
        assert_eq!(
            validate_chat_text("  hi\n there\t ").as_deref(),
            Ok("hi\n there")
        );
        assert!(validate_chat_text(" \n ").is_err());
        assert!(validate_chat_text(&"é".repeat(MAX_CHAT_CHARS)).is_ok());
        assert!(validate_chat_text(&"é".repeat(MAX_CHAT_CHARS + 1)).is_err());
        assert!(validate_chat_text("a\u{202E}b").is_err());
        assert!(validate_chat_text("a\u{7}b").is_err());
    }

    #[test]
    fn raised_hands_are_told_and_in_the_roster() {
        let (mut r, mut rng) = rooms();
        let room = r.create("host", &mut rng, T0).expect("room").room;
        let ann = r.join(&room, name("Ann"), &mut rng, T0).expect("join");
        let bo = r.join(&room, name("Bo"), &mut rng, T0).expect("join");
        r.attach_stream(&room, &bo.participant, 2, T0)
            .expect("stream");
        let fx = r
            .raise_hand(&room, &ann.participant, true, T0)
            .expect("raised");
        assert_eq!(
            fx.notices,
            [(2, Event::Hand(ann.participant.clone(), true))]
        );
        let hands = |r: &Rooms| -> Vec<bool> {
            r.view(&room, T0)
                .expect("room")
                .participants
                .iter()
                .map(|m| m.hand_raised)
                .collect()
        };
        assert_eq!(hands(&r), [true, false]);
        // Someone who joins later sees it in the roster their stream starts with.
        let cy = r.join(&room, name("Cy"), &mut rng, T0).expect("join");
        let first = r
            .attach_stream(&room, &cy.participant, 3, T0)
            .expect("stream");
        assert!(first.roster.data().contains(r#""hand_raised":true"#));
        r.raise_hand(&room, &ann.participant, false, T0)
            .expect("lowered");
        assert_eq!(hands(&r), [false, false, false]);
        // Hand changes count with chat messages: a flood of either is held back.
        for _ in 2..CHAT_PER_WINDOW {
            r.raise_hand(&room, &ann.participant, true, T0 + 1)
                .expect("within the window");
        }
        assert_eq!(
            r.raise_hand(&room, &ann.participant, false, T0 + 1).err(),
            Some(RoomError::ChatTooFast)
        );
        assert_eq!(
            r.chat(&room, &ann.participant, "x".into(), T0 + 1).err(),
            Some(RoomError::ChatTooFast)
        );
    }
}
