//! The room API (every route in `openapi.json` beside this file): rooms, participants, their event streams (SSE) and
//! the media calls: `publish` registers a media session with the SFU
//! ([`crate::sfu::session`]) and answers its SDP; `subscribe` is validated and waits
//! for the SFU's forwarding.
//!
//! The state is [`crate::rooms::Rooms`] behind one mutex, together with the senders of
//! the open event streams; each change's [`Effects`] are delivered under the same lock,
//! so every stream sees events in the order the changes happened.
//!
//! Privacy: nothing here logs or stores a display name; logs carry room ids only.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::rand_core::OsRng;
use axum::Extension;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;
use tokio::sync::mpsc;

use super::auth::{HostAuth, ONE_TIME_ACCOUNT, Refusal};
use super::limit::PerSource;
use super::{AppState, error};
use crate::cluster::{Cluster, Located};
use crate::config::Config;
use crate::load::Load;
use crate::metrics::Metrics;
use crate::rooms::{
    CHAT_WINDOW_SECS, Effects, Event, Limits, RoomError, Rooms, StreamId, validate_chat_text,
    validate_display_name,
};
use crate::sfu::sdp::PublishOffer;
use crate::sfu::session::{MediaSessions, PublishRefusal, REOFFER_WINDOW_MS};
use crate::sfu::speaker::{Loudness, Speakers};
use crate::store::{HostKey, RedbStore, RoomStore, StoredRoom};
use crate::turn::policy::OtherNodes;

/// Largest request body: an SDP answer in a large room (a 50-person room's is about
/// 70 KB; the answer's own bound, twice our offer, is checked after).
pub(crate) const MAX_BODY: usize = 1024 * 1024;
/// Largest JSON body (a display name, a preference, a lock).
pub(crate) const MAX_JSON_BODY: usize = 16 * 1024;
/// How long the TURN credentials handed to a participant stay valid.
pub(crate) const TURN_CREDENTIAL_SECS: u64 = 12 * 3600;
/// Events waiting on one stream; a client that falls this far behind loses the stream
/// (it reconnects and starts again from a fresh roster).
const STREAM_QUEUE: usize = 64;
/// Joins one source address (an IPv6 /64) may make per minute: plenty for the people
/// behind one address, too few to fill rooms with participants nobody sees.
pub(crate) const JOINS_PER_MINUTE: u32 = 30;
/// Look-ups in the shared store of rooms this node does not hold, per source address
/// and minute: a page makes a few (its room check, its join, a host's refresh every
/// 3 s), a flood of made-up ids would keep the database busy for everyone.
pub(crate) const LOOKUPS_PER_MINUTE: u32 = 120;
/// SSE comment lines keep idle connections (and proxies) open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// How often media sessions are swept for lost consent (and sessions without a
/// participant).
const MEDIA_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// How often detached participants and expired rooms are swept, in media sweeps.
const ROOM_SWEEP_TICKS: u32 = 5;

/// The room API's shared state.
pub(crate) struct RoomsApi {
    hub: Mutex<Hub>,
    hosts: Arc<HostAuth>,
    /// Replaced on SIGHUP (a new TURN REST secret signs from then on).
    ice: RwLock<IceServers>,
    public_url: String,
    next_stream: AtomicU64,
    /// The SFU's media sessions (shared with the data-plane workers).
    media: Arc<MediaSessions>,
    /// [`JOINS_PER_MINUTE`] per source.
    joins: PerSource,
    /// [`LOOKUPS_PER_MINUTE`] per source.
    lookups: PerSource,
    /// Where rooms are kept across restarts, what it holds now, and the key host names
    /// are hashed with before a room keeps them.
    store: Arc<dyn RoomStore>,
    kept: Mutex<HashMap<String, StoredRoom>>,
    /// The shared store and node set (`store.url`), when there is one.
    cluster: Option<Arc<Cluster>>,
    host_key: HostKey,
    /// Set when the node drains: no new rooms or participants (503).
    draining: AtomicBool,
    /// How busy the data plane is: no new participants while it is overloaded (503).
    load: OnceLock<Arc<Load>>,
    /// Where the other live nodes' media addresses go for TURN's peer policy.
    other_nodes: OnceLock<Arc<OtherNodes>>,
}

/// Room credentials are good while their participant is in the room.
impl crate::turn::auth::Presence for RoomsApi {
    /// A room another node of the shared store serves is asked about its credentials'
    /// signature and expiry only (checked before): a participant may take any node's
    /// relay to its room's node.
    fn is_present(&self, room: &str, participant: &str) -> bool {
        let now = unix_now();
        let hub = self.hub();
        if hub.rooms.holds(room, now) || self.cluster.is_none() {
            return hub.rooms.contains(room, participant, now);
        }
        true
    }
}

impl std::fmt::Debug for RoomsApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomsApi")
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

struct Hub {
    rooms: Rooms,
    streams: HashMap<StreamId, mpsc::Sender<Event>>,
    /// Each room's active speaker (rooms where someone publishes audio).
    speakers: HashMap<String, Speakers>,
    /// The videos paused for lack of bandwidth, as last told: (room, receiver,
    /// publisher).
    paused: HashSet<(String, String, String)>,
}

impl Hub {
    /// Delivers events, then ends the streams that are to end (and any that could not
    /// take an event: gone or too far behind).
    fn apply(&mut self, effects: Effects) {
        let mut close = effects.close;
        for (stream, event) in effects.notices {
            if let Some(tx) = self.streams.get(&stream)
                && tx.try_send(event).is_err()
            {
                close.push(stream);
            }
        }
        for stream in close {
            self.streams.remove(&stream);
        }
    }
}

impl RoomsApi {
    /// Now on the media sessions' clock (ms since the node's epoch): what the SFU's
    /// control plane is told, as it reads no clock itself.
    fn media_now_ms(&self) -> u64 {
        self.media.epoch().elapsed().as_millis() as u64
    }

    /// The room API from configuration. `turn_secrets` are the node's effective TURN
    /// REST secrets (the first signs the credentials handed out). With no host account
    /// and no JWT secret, a one-time password is made and printed on stderr; that is only
    /// allowed on a loopback `http.listen`.
    pub(crate) fn new(
        config: &Config,
        turn_secrets: &[String],
        media: Arc<MediaSessions>,
    ) -> Result<RoomsApi, String> {
        let http = &config.http;
        super::auth::check_host_logins(http)?;
        let secret = turn_secrets
            .iter()
            .find(|s| !s.is_empty())
            .cloned()
            .ok_or("no TURN REST secret to sign participants' TURN credentials with")?;
        let (hosts, one_time) = HostAuth::from_config(http);
        if let Some(password) = one_time {
            eprintln!(
                "confnode: no [[http.hosts]] configured; one-time host login: \
                 {ONE_TIME_ACCOUNT} / {password}"
            );
        }
        let dir = &config.store.path;
        let in_store = |e: String| format!("store.path: {e}");
        let mut host_key = HostKey::load_or_create(dir).map_err(in_store)?;
        let (store, cluster): (Arc<dyn RoomStore>, _) = if config.store.url.is_empty() {
            (Arc::new(RedbStore::open(dir).map_err(in_store)?), None)
        } else {
            let in_url = |e: String| format!("store.url: {e}");
            let cluster = Cluster::start(
                &config.store.url,
                &http.public_url.0,
                media.candidates().to_vec(),
                u64::from(config.rooms.ttl_hours) * 3600,
            )
            .map_err(in_url)?;
            // The first node's key hashes every node's hosts: a host who made a room
            // through one node manages it through any.
            host_key = cluster.host_key(&host_key).map_err(in_url)?;
            (cluster.clone(), Some(cluster))
        };
        let mut rooms = Rooms::new(Limits::new(
            config.rooms.ttl_hours,
            config.rooms.max_participants,
        ));
        let kept = restore_rooms(&mut rooms, &*store)?;
        Ok(RoomsApi {
            hub: Mutex::new(Hub {
                rooms,
                streams: HashMap::new(),
                speakers: HashMap::new(),
                paused: HashSet::new(),
            }),
            hosts: Arc::new(hosts),
            ice: RwLock::new(IceServers::from_config(config, secret)),
            public_url: http.public_url.0.clone(),
            next_stream: AtomicU64::new(1),
            media,
            joins: PerSource::new(JOINS_PER_MINUTE, 60),
            lookups: PerSource::new(LOOKUPS_PER_MINUTE, 60),
            store,
            kept: Mutex::new(kept),
            cluster,
            host_key,
            draining: AtomicBool::new(false),
            load: OnceLock::new(),
            other_nodes: OnceLock::new(),
        })
    }

    /// From now on joins answer 503 while `load` says the node is overloaded; its
    /// figures go on `/metrics` every second.
    pub(crate) fn watch_load(&self, load: Arc<Load>) {
        let _ = self.load.set(load);
    }

    /// With a shared store, the other live nodes' media addresses are written to
    /// `nodes` every second, so TURN relays to them (see [`OtherNodes`]).
    pub(crate) fn feed_other_nodes(&self, nodes: Arc<OtherNodes>) {
        let _ = self.other_nodes.set(nodes);
    }

    /// From now on no new rooms or participants; who is in a call stays.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        if let Some(c) = &self.cluster {
            c.own.draining.store(true, Ordering::Relaxed);
        }
    }

    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Participants in all rooms (a draining node waits for none to be left).
    pub(crate) fn participants(&self) -> usize {
        self.hub().rooms.participants_total()
    }

    /// Writes what changed in the rooms since the last call to the store (durable when
    /// this returns).
    fn persist(&self) -> Result<(), String> {
        let now = unix_now();
        let current = self.hub().rooms.to_keep(now);
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let put: Vec<StoredRoom> = current
            .iter()
            .filter(|r| kept.get(&r.id) != Some(*r))
            .cloned()
            .collect();
        let live: std::collections::HashSet<&str> = current.iter().map(|r| r.id.as_str()).collect();
        let remove: Vec<String> = kept
            .keys()
            .filter(|id| !live.contains(id.as_str()))
            .cloned()
            .collect();
        if put.is_empty() && remove.is_empty() {
            return Ok(());
        }
        self.store.write(&put, &remove)?;
        for id in &remove {
            kept.remove(id);
        }
        for r in put {
            kept.insert(r.id.clone(), r);
        }
        Ok(())
    }

    /// A room of the shared store that this node serves from now on.
    fn take_over(&self, stored: &StoredRoom) {
        let now = unix_now();
        if self.hub().rooms.restore(stored, now) {
            self.kept
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(stored.id.clone(), stored.clone());
            self.persist_or_log();
        }
    }

    /// Whether the shared store's live nodes include the page at `origin` (CORS).
    pub(crate) fn is_node_origin(&self, origin: &str) -> bool {
        self.cluster
            .as_ref()
            .is_some_and(|c| c.is_node_origin(origin))
    }

    /// The origins of the other live nodes' pages (none without a shared store).
    pub(crate) fn other_node_origins(&self) -> Vec<String> {
        let Some(c) = &self.cluster else {
            return Vec::new();
        };
        c.live()
            .iter()
            .filter(|n| n.url != c.me())
            .filter_map(|n| crate::cluster::origin_of(&n.url).map(str::to_owned))
            .collect()
    }

    /// Whether rooms are shared with other nodes (`store.url`).
    pub(crate) fn is_clustered(&self) -> bool {
        self.cluster.is_some()
    }

    /// A node that stops leaves the shared store's live set at once.
    pub(crate) fn leave_cluster(&self) {
        if let Some(c) = &self.cluster {
            c.leave();
        }
    }

    /// [`RoomsApi::persist`], where a failure is only logged (the change stands in
    /// memory and is written with the next one).
    fn persist_or_log(&self) {
        if let Err(e) = self.persist() {
            tracing::error!("cannot write rooms to store.path: {e}");
        }
    }

    /// What SIGHUP changes here: the host accounts and JWT secret of `config`, and the
    /// TURN REST secret that signs participants' credentials (the first of
    /// `turn_secrets`, the node's effective ones). Rooms and participants stay.
    pub(crate) fn reload(&self, config: &Config, turn_secrets: &[String]) {
        self.hosts.replace(&config.http);
        if let Some(secret) = turn_secrets.iter().find(|s| !s.is_empty()) {
            *self.ice.write().unwrap_or_else(PoisonError::into_inner) =
                IceServers::from_config(config, secret.clone());
        }
    }

    /// The host login of a request from `source`, as rooms keep it (its keyed hash).
    async fn host(&self, headers: &HeaderMap, source: &Source) -> Result<String, Refusal> {
        let name = self.hosts.authenticate(headers, source_ip(source)).await?;
        Ok(self.host_key.hash(&name))
    }

    fn hub(&self) -> MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every second, makes participants whose media consent ran out leave; every few
    /// seconds removes detached participants and expired rooms (and their media
    /// sessions). Runs until the API is dropped.
    pub(crate) async fn sweep_forever(api: Weak<RoomsApi>, metrics: Arc<Metrics>) {
        let mut tick = tokio::time::interval(MEDIA_SWEEP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks = 0u32;
        loop {
            tick.tick().await;
            let Some(api) = api.upgrade() else { return };
            api.sweep_media();
            api.find_speakers();
            api.tell_paused_videos();
            {
                let hub = api.hub();
                metrics.rooms.set(hub.rooms.len() as i64);
                metrics
                    .participants
                    .set(hub.rooms.participants_total() as i64);
            }
            metrics.media_sessions.set(api.media.len() as i64);
            if let Some(load) = api.load.get() {
                metrics.overloaded.set(i64::from(load.overloaded()));
                metrics
                    .busiest_worker
                    .set(i64::from(load.busiest_percent()));
                if let Some(c) = &api.cluster {
                    c.own
                        .load_percent
                        .store(load.busiest_percent(), Ordering::Relaxed);
                }
            }
            if let Some(c) = &api.cluster {
                let live = c.live();
                metrics.show_node_set(&live);
                if let Some(nodes) = api.other_nodes.get() {
                    let media: Vec<SocketAddr> = live
                        .into_iter()
                        .filter(|n| n.url != c.me())
                        .flat_map(|n| n.media)
                        .collect();
                    nodes.set(&media);
                }
            }
            ticks += 1;
            if ticks.is_multiple_of(ROOM_SWEEP_TICKS) {
                let mut hub = api.hub();
                let effects = hub.rooms.sweep(unix_now());
                hub.apply(effects);
                drop(hub);
                api.drop_orphan_sessions();
                api.persist_or_log();
            }
        }
    }

    /// One window of the active-speaker detection (every [`MEDIA_SWEEP_EVERY`]): the
    /// speech each publisher sent goes to its room's [`Speakers`], and a new speaker
    /// is told to everyone in the room (`speaker`).
    fn find_speakers(&self) {
        let heard = self.media.take_loudness();
        let mut by_room: HashMap<String, Vec<(String, Loudness)>> = HashMap::new();
        for (room, participant, loudness) in heard {
            by_room
                .entry(room)
                .or_default()
                .push((participant, loudness));
        }
        let now = unix_now();
        let mut hub = self.hub();
        hub.speakers.retain(|room, _| by_room.contains_key(room));
        let mut effects = Effects::default();
        for (room, heard) in by_room {
            let speakers = hub.speakers.entry(room.clone()).or_default();
            let Some(speaker) = speakers.window(&heard).map(str::to_owned) else {
                continue;
            };
            self.media.set_speaker(&room, &speaker);
            for stream in hub.rooms.streams_of(&room, now) {
                effects
                    .notices
                    .push((stream, Event::Speaker(speaker.clone())));
            }
        }
        hub.apply(effects);
    }

    /// Tells each receiver which videos its allocation paused since the last look, and
    /// which flow again (`video_paused`), on its newest event stream.
    fn tell_paused_videos(&self) {
        let now_paused: HashSet<(String, String, String)> =
            self.media.paused_videos().into_iter().collect();
        let now = unix_now();
        let mut hub = self.hub();
        if hub.paused == now_paused {
            return;
        }
        let changes: Vec<(&(String, String, String), bool)> = now_paused
            .difference(&hub.paused)
            .map(|k| (k, true))
            .chain(hub.paused.difference(&now_paused).map(|k| (k, false)))
            .collect();
        let mut effects = Effects::default();
        for ((room, receiver, publisher), paused) in changes {
            let stream = hub
                .rooms
                .stream_holders(room, now)
                .into_iter()
                .find(|(p, _)| p == receiver);
            if let Some((_, stream)) = stream {
                effects
                    .notices
                    .push((stream, Event::VideoPaused(publisher.clone(), paused)));
            }
        }
        hub.paused = now_paused;
        hub.apply(effects);
    }

    /// Consent freshness (RFC 7675): a participant whose media session heard no valid
    /// ICE check for 30 s leaves the room (the others hear `left`), and the session
    /// ends. Locks are taken one after the other, never nested.
    fn sweep_media(&self) {
        let expired = self.media.consent_expired(self.media_now_ms());
        if expired.is_empty() {
            return;
        }
        let now = unix_now();
        for (room, participant) in &expired {
            let mut hub = self.hub();
            if let Ok(effects) = hub.rooms.leave(room, participant, now) {
                hub.apply(effects);
                drop(hub);
                tracing::info!(room = %room, "participant left: media consent expired");
            }
        }
        self.media
            .retain(|r, p| !expired.iter().any(|(er, ep)| er == r && ep == p));
        let mut rooms: Vec<&String> = expired.iter().map(|(r, _)| r).collect();
        rooms.sort();
        rooms.dedup();
        for room in rooms {
            self.sync_media(room);
        }
    }

    /// Brings the SFU's receiving sessions of `room` in line with what its participants
    /// publish, and sends the resulting offers to their event streams (under the hub's
    /// lock, so they keep their order with the other events).
    fn sync_media(&self, room: &str) {
        let mut hub = self.hub();
        let holders = hub.rooms.stream_holders(room, unix_now());
        if holders.is_empty() {
            return;
        }
        let now = unix_now();
        let prefs: Vec<_> = holders
            .iter()
            .map(|(p, _)| hub.rooms.preferences(room, p, now))
            .collect();
        let ids: Vec<(String, Option<u16>)> = holders
            .iter()
            .zip(&prefs)
            .map(|((p, _), pref)| (p.clone(), pref.max_height.map(height)))
            .collect();
        let offers = self.media.sync_room(room, &ids, self.media_now_ms());
        // A receiving session made or grown just now starts with every video.
        for ((p, _), pref) in holders.iter().zip(&prefs) {
            if pref.audio_only {
                self.media.set_audio_only(room, p, true);
            }
        }
        let mut effects = Effects::default();
        for (participant, sdp) in offers {
            if let Some(&(_, stream)) = holders.iter().find(|(p, _)| *p == participant) {
                effects.notices.push((stream, Event::Offer(sdp)));
            }
        }
        hub.apply(effects);
    }

    /// Ends the media sessions of participants that are no longer in a room (dropped by
    /// the room sweep, or gone while their publish was being answered).
    fn drop_orphan_sessions(&self) {
        let held = self.media.participants();
        if held.is_empty() {
            return;
        }
        let now = unix_now();
        let gone: Vec<(String, String)> = {
            let hub = self.hub();
            held.into_iter()
                .filter(|(r, p)| !hub.rooms.contains(r, p, now))
                .collect()
        };
        for (room, participant) in &gone {
            self.media.remove_participant(room, participant);
        }
        // The others stop receiving what the dropped ones published.
        let mut rooms: Vec<&String> = gone.iter().map(|(r, _)| r).collect();
        rooms.sort();
        rooms.dedup();
        for room in rooms {
            self.sync_media(room);
        }
    }
}

/// Takes the kept rooms back at start; expired ones leave the store. Returns what the
/// store holds afterwards.
fn restore_rooms(
    rooms: &mut Rooms,
    store: &dyn RoomStore,
) -> Result<HashMap<String, StoredRoom>, String> {
    let (stored, unreadable) = store.load().map_err(|e| format!("store.path: {e}"))?;
    if unreadable > 0 {
        tracing::warn!(
            unreadable,
            "rooms in the store that cannot be read were skipped"
        );
    }
    let now = unix_now();
    let mut gone = Vec::new();
    let mut kept = HashMap::new();
    for r in stored {
        if rooms.restore(&r, now) {
            kept.insert(r.id.clone(), r);
        } else {
            gone.push(r.id);
        }
    }
    if !gone.is_empty() {
        store
            .write(&[], &gone)
            .map_err(|e| format!("store.path: {e}"))?;
    }
    tracing::info!(rooms = kept.len(), purged = gone.len(), "rooms restored");
    // What restore changed (rooms occupied at the end of the last run) is written with
    // the first change.
    Ok(kept)
}

/// The `ice_servers` and `relay_ice_servers` handed to participants: this node's TURN
/// addresses, and TURN REST credentials (`<expiry>:room:<room>:<participant>`,
/// base64(HMAC-SHA1(secret, username))) that the node's own TURN accepts.
///
/// Two lists, because the SFU's media port is also the TURN port. Chromium uses every
/// TURN server over UDP as a STUN server of the socket its host candidate shares, and
/// takes every datagram from a STUN server's address as that server's: the SFU's answers
/// to its direct ICE checks are swallowed, and all its media goes through the relay.
/// So `ice_servers` (for `iceTransportPolicy: "all"`) has no TURN over UDP: TURN over
/// TCP on one address (the first IPv4 one: clients whose UDP is blocked) and TURN over
/// TLS on each TLS port. `relay_ice_servers` (for a page that forces the relay, where
/// host candidates take no part) adds TURN over UDP on every address, first.
///
/// Browsers slow their discovery down (and Firefox warns) from five URLs on, so the lists
/// stay short: no `stun:` URLs (an ICE-lite SFU with a public address needs none).
#[derive(Clone)]
pub(crate) struct IceServers {
    /// For `iceTransportPolicy: "all"`: TCP and TLS.
    direct: Vec<String>,
    /// For `iceTransportPolicy: "relay"`: UDP, then TCP and TLS.
    relay: Vec<String>,
    secret: String,
}

impl IceServers {
    pub(crate) fn from_config(config: &Config, secret: String) -> IceServers {
        let mut hostports: Vec<(String, bool)> = Vec::new();
        for l in &config.turn.listen {
            let host = match l.0.ip() {
                IpAddr::V4(_) => config.node.public_ip.to_string(),
                IpAddr::V6(ip) => match config.node.public_ipv6 {
                    Some(public) => format!("[{public}]"),
                    None if !ip.is_unspecified() => format!("[{ip}]"),
                    None => continue,
                },
            };
            let hostport = format!("{host}:{}", l.0.port());
            if !hostports.iter().any(|(h, _)| *h == hostport) {
                hostports.push((hostport, l.0.is_ipv4()));
            }
        }
        // Only IPv6 wildcards without node.public_ipv6: the IPv4 public address.
        if let (true, Some(first)) = (hostports.is_empty(), config.turn.listen.first()) {
            hostports.push((
                format!("{}:{}", config.node.public_ip, first.0.port()),
                true,
            ));
        }
        let mut direct = Vec::new();
        let tcp = hostports.iter().find(|(_, v4)| *v4).or(hostports.first());
        if let Some((h, _)) = tcp {
            direct.push(format!("turn:{h}?transport=tcp"));
        }
        // TURN over TLS needs a name the certificate is for: the public URL's host.
        if let Some(host) = url_host(&config.http.public_url.0) {
            let mut ports: Vec<u16> = config.turn.tls_listen.iter().map(|l| l.0.port()).collect();
            ports.dedup();
            for port in ports {
                direct.push(format!("turns:{host}:{port}?transport=tcp"));
            }
        }
        let relay = hostports
            .iter()
            .map(|(h, _)| format!("turn:{h}?transport=udp"))
            .chain(direct.iter().cloned())
            .collect();
        IceServers {
            direct,
            relay,
            secret,
        }
    }

    /// The two lists (`ice_servers`, `relay_ice_servers`), each one RTCIceServer entry
    /// with the same credentials for `participant` of `room`, valid from `now` for
    /// [`TURN_CREDENTIAL_SECS`] at most and only while the participant is in the room
    /// (the username says which: `<expiry>:room:<room>:<participant>`, see
    /// [`crate::turn::auth::room_credential`]).
    pub(crate) fn for_participant(
        &self,
        room: &str,
        participant: &str,
        now: u64,
    ) -> (serde_json::Value, serde_json::Value) {
        let username = format!("{}:room:{room}:{participant}", now + TURN_CREDENTIAL_SECS);
        let credential = crate::turn::auth::rest_password(&self.secret, &username);
        let entry = |urls: &[String]| json!([{ "urls": urls, "username": username, "credential": credential }]);
        (entry(&self.direct), entry(&self.relay))
    }
}

/// The host of an `http(s)://host[:port][/...]` URL, without the port.
fn url_host(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if authority.starts_with('[') {
        authority.split_inclusive(']').next()?
    } else {
        authority.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn room_error(e: RoomError) -> Response {
    let status = match e {
        RoomError::NoRoom | RoomError::NoParticipant => StatusCode::NOT_FOUND,
        RoomError::BadToken => StatusCode::UNAUTHORIZED,
        RoomError::Full => StatusCode::CONFLICT,
        RoomError::TooManyRooms | RoomError::ChatTooFast => StatusCode::TOO_MANY_REQUESTS,
        RoomError::Locked | RoomError::NotYourRoom => StatusCode::FORBIDDEN,
    };
    let mut response = error(status, e.message());
    if e == RoomError::BadToken {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"confnode\""),
        );
    }
    response
}

fn refused(r: Refusal) -> Response {
    match r {
        Refusal::TooMany { retry_after } => too_many(
            retry_after,
            "too many failed logins from this address; wait before trying again",
        ),
        Refusal::Busy => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many logins being checked; retry in a moment",
        ),
        Refusal::Unauthorized { bearer } => {
            let (message, challenge) = if bearer {
                (
                    "invalid host token",
                    "Bearer realm=\"confnode\", error=\"invalid_token\"",
                )
            } else {
                (
                    "host login needed (Basic, or a Bearer token)",
                    "Basic realm=\"confnode\", charset=\"UTF-8\"",
                )
            };
            let mut response = error(StatusCode::UNAUTHORIZED, message);
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            response
        }
    }
}

/// The client's address, where the server knows it (always, but for handlers called
/// in-process by tests).
type Source = Option<Extension<ConnectInfo<SocketAddr>>>;

fn source_ip(source: &Source) -> Option<IpAddr> {
    source.as_ref().map(|Extension(ConnectInfo(a))| a.ip())
}

/// An error answer ready to send (boxed: a `Response` is large to return by value).
type Refused = Box<Response>;

/// A body read within [`MAX_BODY`], or the fitting error (413 when over).
fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, Refused> {
    b.map_err(|r| {
        let status = r.status();
        Box::new(if status == StatusCode::PAYLOAD_TOO_LARGE {
            error(status, "request body over 1 MiB")
        } else {
            error(status, "cannot read the request body")
        })
    })
}

/// A JSON body: declared `application/json` (415 otherwise: a cross-site HTML form
/// cannot send that type without the browser asking first, so it cannot join anyone to
/// a room), within [`MAX_JSON_BODY`] (413 when over).
fn json_body(headers: &HeaderMap, b: Result<Bytes, BytesRejection>) -> Result<Bytes, Refused> {
    if !declares(headers, "application/json") {
        return Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be application/json",
        )));
    }
    let raw = body(b)?;
    if raw.len() > MAX_JSON_BODY {
        return Err(Box::new(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "JSON body over 16 KiB",
        )));
    }
    Ok(raw)
}

/// The participant token from `Authorization: Bearer`.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// `POST /api/rooms`
pub(crate) async fn create_room(
    State(state): State<AppState>,
    source: Source,
    headers: HeaderMap,
) -> Response {
    let api = &state.rooms;
    if api.is_draining() {
        return draining();
    }
    let host = match api.host(&headers, &source).await {
        Ok(h) => h,
        Err(r) => return refused(r),
    };
    let now = unix_now();
    if let Some(cluster) = &api.cluster {
        // A host's rooms count on every node together.
        let (c, h) = (cluster.clone(), host.clone());
        let held = tokio::task::spawn_blocking(move || c.host_rooms(&h)).await;
        match held.map_err(|e| e.to_string()).and_then(|r| r) {
            Ok(n) if n >= api.hub().rooms.limits().max_rooms_per_host as u64 => {
                return room_error(RoomError::TooManyRooms);
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!("cannot count a host's rooms in store.url: {e}");
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the room could not be saved; try again later",
                );
            }
        }
        let node = cluster.place();
        if node != cluster.me() {
            return create_elsewhere(api, cluster, host, node, now).await;
        }
    }
    let created = api.hub().rooms.create(&host, &mut OsRng, now);
    match created {
        Ok(view) => {
            // The link works after a restart once this answers.
            if let Err(e) = api.persist() {
                tracing::error!("cannot write rooms to store.path: {e}");
                let _ = api.hub().rooms.delete(&view.room, now);
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the room could not be saved; try again later",
                );
            }
            tracing::info!(room = %view.room, "room created");
            let url = format!("{}/r/{}", api.public_url, view.room);
            (
                StatusCode::CREATED,
                Json(json!({
                    "room": view.room,
                    "url": url,
                    "expires_at": crate::date::rfc3339(view.expires_at),
                })),
            )
                .into_response()
        }
        Err(e) => room_error(e),
    }
}

/// A new room kept in the shared store for `node` to serve (it takes the room into
/// memory when first asked for it); the link names this node, whose API redirects.
async fn create_elsewhere(
    api: &Arc<RoomsApi>,
    cluster: &Arc<Cluster>,
    host: String,
    node: String,
    now: u64,
) -> Response {
    let room = StoredRoom {
        id: crate::rooms::new_room_id(&mut OsRng),
        host,
        idle_since: now,
        occupied: false,
        locked: false,
    };
    let (c, r, n) = (cluster.clone(), room.clone(), node.clone());
    let inserted = tokio::task::spawn_blocking(move || c.insert(&r, &n)).await;
    if let Err(e) = inserted.map_err(|e| e.to_string()).and_then(|r| r) {
        tracing::error!("cannot write a room to store.url: {e}");
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the room could not be saved; try again later",
        );
    }
    tracing::info!(room = %room.id, node = %node, "room created on another node");
    let ttl = api.hub().rooms.limits().ttl_secs;
    (
        StatusCode::CREATED,
        Json(json!({
            "room": room.id,
            "url": format!("{}/r/{}", api.public_url, room.id),
            "expires_at": crate::date::rfc3339(now.saturating_add(ttl)),
        })),
    )
        .into_response()
}

/// Before every call on one room (`/api/rooms/{room}/...`), with a shared store: a
/// room this node does not hold is looked up there. One of another live node is
/// answered with a redirect (307, so the method and body go along) to the same path on
/// that node; one of this node's (after a restart) or of a node that left is taken into
/// memory here, and the call goes on. Redirects rather than proxying: the page's event
/// stream and SDP calls then run between the page and the room's node, and no node
/// carries another's traffic or depends on it being up; the page's origin may call every
/// live node (CORS, see `http::cors`).
pub(crate) async fn locate(
    State(state): State<AppState>,
    source: Source,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let api = &state.rooms;
    let Some(cluster) = api.cluster.clone() else {
        return next.run(request).await;
    };
    let path = request.uri().path();
    let room = path
        .strip_prefix("/api/rooms/")
        .map(|rest| rest.split('/').next().unwrap_or(rest))
        .unwrap_or_default();
    let now = unix_now();
    if !crate::rooms::is_room_id(room) || api.hub().rooms.holds(room, now) {
        return next.run(request).await;
    }
    if let Some(ip) = source_ip(&source)
        && let Err(wait) = api.lookups.check(ip, now)
    {
        return too_many(
            wait,
            "too many look-ups of rooms from this address; retry later",
        );
    }
    let (c, r) = (cluster.clone(), room.to_owned());
    let located = tokio::task::spawn_blocking(move || c.locate(&r)).await;
    match located.map_err(|e| e.to_string()).and_then(|r| r) {
        Ok(Located::Nowhere) => next.run(request).await,
        Ok(Located::Here(stored)) => {
            api.take_over(&stored);
            next.run(request).await
        }
        Ok(Located::At(node)) => {
            let target = request.uri().path_and_query().map_or(path, |p| p.as_str());
            redirect(&format!("{node}{target}"))
        }
        Err(e) => {
            tracing::error!("cannot look a room up in store.url: {e}");
            unavailable("the room's node cannot be found right now; try again", "5")
        }
    }
}

/// 307 to `location`, with the usual JSON message.
fn redirect(location: &str) -> Response {
    let mut response = error(
        StatusCode::TEMPORARY_REDIRECT,
        "the room is served by another node",
    );
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// `GET /api/rooms/{room}`
pub(crate) async fn get_room(State(state): State<AppState>, Path(room): Path<String>) -> Response {
    let view = state.rooms.hub().rooms.view(&room, unix_now());
    match view {
        Ok(v) => Json(json!({
            "room": v.room,
            "participants": v.participants,
            "expires_at": crate::date::rfc3339(v.expires_at),
            "locked": v.locked,
        }))
        .into_response(),
        Err(e) => room_error(e),
    }
}

/// `DELETE /api/rooms/{room}` (its host): everyone in it hears `room_closed` and is out.
pub(crate) async fn delete_room(
    State(state): State<AppState>,
    Path(room): Path<String>,
    source: Source,
    headers: HeaderMap,
) -> Response {
    let api = &state.rooms;
    let host = match api.host(&headers, &source).await {
        Ok(h) => h,
        Err(r) => return refused(r),
    };
    let mut hub = api.hub();
    match hub.rooms.delete_as(&room, &host, unix_now()) {
        Ok(effects) => {
            hub.apply(effects);
            drop(hub);
            api.media.remove_room(&room);
            api.persist_or_log();
            tracing::info!(room = %room, "room deleted");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => room_error(e),
    }
}

/// `POST /api/rooms/{room}/participants` `{"display_name"}`
pub(crate) async fn join(
    State(state): State<AppState>,
    Path(room): Path<String>,
    source: Source,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let api = &state.rooms;
    if api.is_draining() {
        return draining();
    }
    if api.load.get().is_some_and(|l| l.refuse_join()) {
        return overloaded();
    }
    let now = unix_now();
    if let Some(ip) = source_ip(&source)
        && let Err(wait) = api.joins.check(ip, now)
    {
        return too_many(wait, "too many joins from this address; retry later");
    }
    let raw = match json_body(&headers, raw) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if let Err(e) = api.hub().rooms.view(&room, now) {
        return room_error(e);
    }
    #[derive(serde::Deserialize)]
    struct JoinBody {
        display_name: String,
    }
    // The parser's message is not passed on: it may quote the input.
    let Ok(parsed) = serde_json::from_slice::<JoinBody>(&raw) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be JSON: {\"display_name\": \"...\"}",
        );
    };
    let name = match validate_display_name(&parsed.display_name) {
        Ok(n) => n,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    let mut hub = api.hub();
    let joined = match hub.rooms.join(&room, name, &mut OsRng, now) {
        Ok(j) => j,
        Err(e) => return room_error(e),
    };
    hub.apply(joined.effects);
    drop(hub);
    tracing::info!(room = %room, "participant joined");
    let (ice_servers, relay_ice_servers) = api
        .ice
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .for_participant(&room, &joined.participant, now);
    (
        StatusCode::CREATED,
        Json(json!({
            "participant": joined.participant,
            "token": joined.token,
            "ice_servers": ice_servers,
            "relay_ice_servers": relay_ice_servers,
        })),
    )
        .into_response()
}

/// 503 while the node drains for an upgrade (`Retry-After`: a minute).
fn draining() -> Response {
    unavailable(
        "the node is being restarted for maintenance; try again in a minute",
        "60",
    )
}

/// 503 while the data plane is too busy for more calls (`Retry-After`: ten seconds).
fn overloaded() -> Response {
    unavailable("the node is at capacity; try again in a few seconds", "10")
}

/// 503 with `message` and `Retry-After: retry_after_secs`.
fn unavailable(message: &str, retry_after_secs: &'static str) -> Response {
    let mut response = error(StatusCode::SERVICE_UNAVAILABLE, message);
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_static(retry_after_secs),
    );
    response
}

/// 429 with `Retry-After`.
fn too_many(retry_after_secs: u64, message: &str) -> Response {
    let mut response = error(StatusCode::TOO_MANY_REQUESTS, message);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    response
}

/// Whether the body is declared of type `mime` (any parameters).
fn declares(headers: &HeaderMap, mime: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case(mime))
}

/// `PATCH /api/rooms/{room}` `{"locked": bool}` (the room's host): a locked room
/// refuses new participants; who is in stays.
pub(crate) async fn patch_room(
    State(state): State<AppState>,
    Path(room): Path<String>,
    source: Source,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let api = &state.rooms;
    let host = match api.host(&headers, &source).await {
        Ok(h) => h,
        Err(r) => return refused(r),
    };
    let raw = match json_body(&headers, raw) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PatchBody {
        locked: bool,
    }
    let Ok(patch) = serde_json::from_slice::<PatchBody>(&raw) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be JSON: {\"locked\": true or false}",
        );
    };
    let result = api
        .hub()
        .rooms
        .set_locked(&room, &host, patch.locked, unix_now());
    match result {
        Ok(()) => {
            api.persist_or_log();
            tracing::info!(room = %room, locked = patch.locked, "room lock set");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => room_error(e),
    }
}

#[derive(serde::Deserialize)]
pub(crate) struct TokenQuery {
    token: Option<String>,
}

/// `GET /api/rooms/{room}/participants/{p}/events` (token as Bearer or `?token=`)
pub(crate) async fn events(
    State(state): State<AppState>,
    Path((room, participant)): Path<(String, String)>,
    query: Result<Query<TokenQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let from_query = query.ok().and_then(|q| q.0.token);
    let token = bearer(&headers).or(from_query.as_deref());
    let api = &state.rooms;
    let now = unix_now();
    let stream = api.next_stream.fetch_add(1, Ordering::Relaxed);
    let (tx, rx) = mpsc::channel(STREAM_QUEUE);
    let mut hub = api.hub();
    if let Err(e) = hub.rooms.authenticate(&room, &participant, token, now) {
        return room_error(e);
    }
    let attached = match hub.rooms.attach_stream(&room, &participant, stream, now) {
        Ok(a) => a,
        Err(e) => return room_error(e),
    };
    if let Some(old) = attached.replaced {
        hub.streams.remove(&old);
    }
    // A fresh queue has room for the first events.
    let _ = tx.try_send(attached.roster);
    if let Some(speaker) = hub.speakers.get(&room).and_then(Speakers::current) {
        let _ = tx.try_send(Event::Speaker(speaker.to_owned()));
    }
    hub.streams.insert(stream, tx);
    drop(hub);
    // Its receiving session, and an offer when others publish.
    api.sync_media(&room);
    let events = EventStream {
        rx,
        _guard: StreamGuard {
            api: Arc::downgrade(&state.rooms),
            room,
            participant,
            stream,
        },
    };
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response();
    // Reverse proxies must pass events on at once.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// One participant's event stream, as an SSE body.
struct EventStream {
    rx: mpsc::Receiver<Event>,
    /// Held for its `Drop`.
    _guard: StreamGuard,
}

impl futures_core::Stream for EventStream {
    type Item = Result<sse::Event, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut()
            .rx
            .poll_recv(cx)
            .map(|next| next.map(|e| Ok(sse::Event::default().event(e.name()).data(e.data()))))
    }
}

/// Tells the rooms when a stream ends (its client went away or it was closed here).
struct StreamGuard {
    api: Weak<RoomsApi>,
    room: String,
    participant: String,
    stream: StreamId,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(api) = self.api.upgrade() {
            let mut hub = api.hub();
            hub.streams.remove(&self.stream);
            hub.rooms
                .detach_stream(&self.room, &self.participant, self.stream, unix_now());
        }
    }
}

/// A participant's own call: its token checked, or the answer to refuse with.
fn authenticate(
    api: &RoomsApi,
    room: &str,
    participant: &str,
    headers: &HeaderMap,
) -> Result<(), Refused> {
    api.hub()
        .rooms
        .authenticate(room, participant, bearer(headers), unix_now())
        .map_err(|e| Box::new(room_error(e)))
}

/// `DELETE /api/rooms/{room}/participants/{p}`, with the participant's token (it
/// leaves) or the room host's login (it is removed): the others hear `left`.
pub(crate) async fn leave(
    State(state): State<AppState>,
    Path((room, participant)): Path<(String, String)>,
    source: Source,
    headers: HeaderMap,
) -> Response {
    let api = &state.rooms;
    let by_host = match authenticate(api, &room, &participant, &headers) {
        Ok(()) => None,
        // Not the participant's token: a host's login (Basic, or a Bearer JWT)?
        Err(refusal) => match api.host(&headers, &source).await {
            Ok(host) => Some(host),
            Err(_) => return *refusal,
        },
    };
    let now = unix_now();
    let mut hub = api.hub();
    let result = match &by_host {
        None => hub.rooms.leave(&room, &participant, now),
        Some(host) => hub.rooms.remove_participant(&room, host, &participant, now),
    };
    match result {
        Ok(effects) => {
            hub.apply(effects);
            drop(hub);
            api.media.remove_participant(&room, &participant);
            api.sync_media(&room);
            tracing::info!(room = %room, "participant left");
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => room_error(e),
    }
}

/// Checks an SDP body: `application/sdp`, starting with `v=0`.
fn sdp_body(headers: &HeaderMap, raw: &Bytes) -> Result<(), Refused> {
    if !declares(headers, "application/sdp") {
        return Err(Box::new(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be an SDP of type application/sdp",
        )));
    }
    let valid =
        std::str::from_utf8(raw).is_ok_and(|s| s.starts_with("v=0\r\n") || s.starts_with("v=0\n"));
    if !valid {
        return Err(Box::new(error(
            StatusCode::BAD_REQUEST,
            "not an SDP: it must start with the line v=0",
        )));
    }
    Ok(())
}

/// An authenticated call with an SDP body: the body, or the answer to refuse with.
fn sdp_call(
    api: &RoomsApi,
    room: &str,
    participant: &str,
    headers: &HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Bytes, Refused> {
    authenticate(api, room, participant, headers)?;
    let raw = body(raw)?;
    sdp_body(headers, &raw)?;
    Ok(raw)
}

/// A participant's own call with a JSON body: the body, or the answer to refuse with.
fn json_call(
    api: &RoomsApi,
    room: &str,
    participant: &str,
    headers: &HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Bytes, Refused> {
    authenticate(api, room, participant, headers)?;
    json_body(headers, raw)
}

/// `POST .../participants/{p}/publish` (SDP offer, WHIP-like): 201 with our SDP
/// answer; the participant's media session is registered under our ICE ufrag, so the
/// data plane answers its connectivity checks. A second publish is refused (409).
pub(crate) async fn publish(
    State(state): State<AppState>,
    Path((room, participant)): Path<(String, String)>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let api = &state.rooms;
    let raw = match sdp_call(api, &room, &participant, &headers, raw) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    if api.media.is_publishing(&room, &participant) {
        return already_publishing();
    }
    let offer = match parse_offer(&raw) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    match api
        .media
        .publish(&room, &participant, &offer, api.media_now_ms())
    {
        Ok(answer) => {
            tracing::info!(room = %room, "participant publishes");
            api.sync_media(&room);
            (
                StatusCode::CREATED,
                [(header::CONTENT_TYPE, "application/sdp")],
                answer,
            )
                .into_response()
        }
        Err(e) => publish_refused(e),
    }
}

/// A publisher's offer, or the error answer that says what is wrong with it.
fn parse_offer(raw: &[u8]) -> Result<PublishOffer, Refused> {
    PublishOffer::parse(raw).map_err(|e| {
        let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
        Box::new(error(status, &e.to_string()))
    })
}

fn publish_refused(e: PublishRefusal) -> Response {
    match e {
        PublishRefusal::AlreadyPublishing => already_publishing(),
        PublishRefusal::Full => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node holds as many media sessions as it can",
        ),
        PublishRefusal::NotPublishing => error(
            StatusCode::CONFLICT,
            "this participant does not publish yet: POST the first offer",
        ),
        PublishRefusal::TooManyReoffers => too_many(
            REOFFER_WINDOW_MS / 1000,
            "too many re-offers; wait a few seconds",
        ),
        PublishRefusal::NewTransport => error(
            StatusCode::BAD_REQUEST,
            "a re-offer keeps the ICE credentials of the first offer; a new connection \
             needs a new participant",
        ),
    }
}

/// The query of `PUT .../publish`: `screen`, the mid of a section that carries a
/// shared screen (given again with every re-offer while it is shared).
#[derive(serde::Deserialize)]
pub(crate) struct RepublishQuery {
    screen: Option<String>,
}

/// `PUT .../participants/{p}/publish` (SDP re-offer of the publishing connection): 200
/// with our answer. A track added (a shared screen: its mid in `?screen=`) is forwarded
/// to the room, one stopped is taken from it; the rest goes on.
pub(crate) async fn republish(
    State(state): State<AppState>,
    Path((room, participant)): Path<(String, String)>,
    query: Result<Query<RepublishQuery>, QueryRejection>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let api = &state.rooms;
    let raw = match sdp_call(api, &room, &participant, &headers, raw) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let Ok(Query(query)) = query else {
        return error(StatusCode::BAD_REQUEST, "the query takes only screen=<mid>");
    };
    let offer = match parse_offer(&raw) {
        Ok(o) => o,
        Err(r) => return *r,
    };
    let screens: Vec<&str> = query.screen.as_deref().into_iter().collect();
    match api
        .media
        .republish(&room, &participant, &offer, &screens, api.media_now_ms())
    {
        Ok(answer) => {
            api.sync_media(&room);
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/sdp")],
                answer,
            )
                .into_response()
        }
        Err(e) => publish_refused(e),
    }
}

fn already_publishing() -> Response {
    error(
        StatusCode::CONFLICT,
        "this participant already publishes; leave and join again to publish anew",
    )
}

/// `POST .../participants/{p}/subscribe` (SDP answer to the server's offer)
pub(crate) async fn subscribe(
    State(state): State<AppState>,
    Path((room, participant)): Path<(String, String)>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let api = &state.rooms;
    let raw = match sdp_call(api, &room, &participant, &headers, raw) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let Some(limit) = api.media.max_answer_len(&room, &participant) else {
        return error(
            StatusCode::CONFLICT,
            "no offer is waiting for an answer: open the event stream first",
        );
    };
    if raw.len() > limit {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the answer is longer than any answer to our offer can be",
        );
    }
    match api
        .media
        .subscribe_answer(&room, &participant, &raw, api.media_now_ms())
    {
        Ok(()) => {
            // What changed while the offer was out goes in the next one.
            api.sync_media(&room);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => {
            let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST);
            error(status, &e.to_string())
        }
    }
}

/// A height as the SFU takes it.
fn height(h: u32) -> u16 {
    h.min(u32::from(u16::MAX)) as u16
}

/// The body of `PUT .../preferences`: `max_height` (a positive integer) and
/// `audio_only` (a boolean), either or both; `None` for anything else.
fn parse_preferences(raw: &[u8]) -> Option<(Option<u32>, Option<bool>)> {
    let v = serde_json::from_slice::<serde_json::Value>(raw).ok()?;
    let o = v.as_object()?;
    let max_height = match o.get("max_height") {
        None => None,
        Some(h) => Some(
            h.as_u64()
                .and_then(|h| u32::try_from(h).ok())
                .filter(|&h| h > 0)?,
        ),
    };
    let audio_only = match o.get("audio_only") {
        None => None,
        Some(a) => Some(a.as_bool()?),
    };
    (max_height.is_some() || audio_only.is_some()).then_some((max_height, audio_only))
}

/// `PUT .../participants/{p}/preferences` `{"max_height": 180, "audio_only": false}`
pub(crate) async fn preferences(
    State(state): State<AppState>,
    Path((room, participant)): Path<(String, String)>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let api = &state.rooms;
    let raw = match json_call(api, &room, &participant, &headers, raw) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let Some(asked) = parse_preferences(&raw) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be JSON with \"max_height\" (a positive integer), \"audio_only\" \
             (true or false), or both",
        );
    };
    let stored = api
        .hub()
        .rooms
        .set_preferences(&room, &participant, asked, unix_now());
    match stored {
        Ok(now) => {
            if asked.0.is_some() {
                let h = now.max_height.map(height);
                api.media.set_max_height(&room, &participant, h);
            }
            if asked.1.is_some() {
                api.media
                    .set_audio_only(&room, &participant, now.audio_only);
            }
            StatusCode::NO_CONTENT.into_response()
        }
        Err(e) => room_error(e),
    }
}

/// `POST .../participants/{p}/chat` `{"text": "..."}`: to everyone in the room, on
/// their event streams (see [`Rooms::chat`]). The text is in no log: the access log
/// names the route, never a body.
pub(crate) async fn chat(
    State(state): State<AppState>,
    Path((room, participant)): Path<(String, String)>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let api = &state.rooms;
    let raw = match json_call(api, &room, &participant, &headers, raw) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let text = serde_json::from_slice::<serde_json::Value>(&raw)
        .ok()
        .and_then(|v| v.get("text")?.as_str().map(validate_chat_text));
    let text = match text {
        Some(Ok(t)) => t,
        Some(Err(why)) => return error(StatusCode::BAD_REQUEST, why),
        None => {
            return error(
                StatusCode::BAD_REQUEST,
                "the body must be JSON with \"text\" (a string)",
            );
        }
    };
    // Taken and delivered under one lock: every stream gets the room's order.
    let mut hub = api.hub();
    let told = hub.rooms.chat(&room, &participant, text, unix_now());
    tell_room(&mut hub, told)
}

/// 204 once a participant's message is delivered to the room (under the hub's lock:
/// every stream gets the room's order), or why not (429 with `Retry-After` when they
/// say too much).
fn tell_room(hub: &mut Hub, told: Result<Effects, RoomError>) -> Response {
    match told {
        Ok(effects) => {
            hub.apply(effects);
            StatusCode::NO_CONTENT.into_response()
        }
        Err(RoomError::ChatTooFast) => too_many(CHAT_WINDOW_SECS, RoomError::ChatTooFast.message()),
        Err(e) => room_error(e),
    }
}

/// `PUT .../participants/{p}/hand` `{"raised": true}`: everyone in the room hears
/// `hand`; rosters show it.
pub(crate) async fn hand(
    State(state): State<AppState>,
    Path((room, participant)): Path<(String, String)>,
    headers: HeaderMap,
    raw: Result<Bytes, BytesRejection>,
) -> Response {
    let api = &state.rooms;
    let raw = match json_call(api, &room, &participant, &headers, raw) {
        Ok(b) => b,
        Err(r) => return *r,
    };
    let Some(raised) = serde_json::from_slice::<serde_json::Value>(&raw)
        .ok()
        .and_then(|v| v.get("raised")?.as_bool())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "the body must be JSON with \"raised\" (true or false)",
        );
    };
    let mut hub = api.hub();
    let told = hub
        .rooms
        .raise_hand(&room, &participant, raised, unix_now());
    tell_room(&mut hub, told)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two seconds of speech from one publisher: the others' event streams hear
    /// `speaker`, once.
    #[tokio::test]
    async fn the_active_speaker_is_told_to_the_room() {
        let mut config = Config::default();
        config.turn.auth_secret = vec!["a TURN REST secret for the test".to_owned()];
        let store = tempfile::tempdir().expect("temp dir");
        config.store.path = store.path().to_owned();
        let media = Arc::new(MediaSessions::new(
            crate::node::clock_epoch(),
            vec!["127.0.0.1:3478".parse().expect("addr")],
            Arc::new(crate::node::dtls_identity().expect("identity")),
            Default::default(),
            [7; 32],
        ));
        let api = RoomsApi::new(&config, &["s".to_owned()], media.clone()).expect("api");
        let now = unix_now();
        let (room, a, mut rx) = {
            let mut hub = api.hub();
            let room = hub.rooms.create("h", &mut OsRng, now).expect("room").room;
            let a = hub
                .rooms
                .join(&room, "A".into(), &mut OsRng, now)
                .expect("a");
            let b = hub
                .rooms
                .join(&room, "B".into(), &mut OsRng, now)
                .expect("b");
            hub.rooms
                .attach_stream(&room, &b.participant, 1, now)
                .expect("stream");
            let (tx, rx) = mpsc::channel(STREAM_QUEUE);
            hub.streams.insert(1, tx);
            (room, a.participant, rx)
        };
        let offer = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            a=group:BUNDLE 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nc=IN IP4 0.0.0.0\r\n\
            a=ice-ufrag:Clnt\r\na=ice-pwd:clientpassword0123456789\r\n\
            a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:A6:BC\r\n\
            a=setup:actpass\r\na=mid:0\r\na=sendonly\r\na=rtcp-mux\r\n\
            a=extmap:1 urn:ietf:params:rtp-hdrext:ssrc-audio-level\r\n\
            a=rtpmap:111 opus/48000/2\r\n";
        let offer = PublishOffer::parse(offer.as_bytes()).expect("offer");
        let answer = media.publish(&room, &a, &offer, 0).expect("publish");
        let ufrag = answer
            .lines()
            .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
            .expect("ufrag");
        let session = media.lookup(ufrag.as_bytes()).expect("session");
        let mut speakers = Vec::new();
        for _ in 0..3 {
            session.media().tracks[0].loudness = Loudness {
                packets: 50,
                speech: 45,
            };
            api.find_speakers();
            while let Ok(e) = rx.try_recv() {
                if let Event::Speaker(id) = e {
                    speakers.push(id);
                }
            }
        }
        assert_eq!(speakers, vec![a.clone()]);
        assert_eq!(
            api.hub().speakers.get(&room).and_then(Speakers::current),
            Some(a.as_str())
        );
    }

    #[test]
    fn public_url_hosts() {
        assert_eq!(
            url_host("https://meet.example.org"),
            Some("meet.example.org")
        );
        assert_eq!(url_host("http://localhost:8080/x"), Some("localhost"));
        assert_eq!(url_host("https://[2001:db8::1]:443"), Some("[2001:db8::1]"));
        assert_eq!(url_host("ftp://x"), None);
    }

    #[test]
    fn ice_servers_from_listen_addresses() {
        let config = Config::from_toml(
            "[node]\npublic_ip = \"203.0.113.7\"\n\
             [turn]\nlisten = [\"0.0.0.0:3478\", \"[::1]:3479\", \"[::]:3480\"]\n\
             tls_listen = [\":5349\"]\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n\
             [http]\npublic_url = \"https://meet.example.org\"\n",
        )
        .expect("config");
        let ice = IceServers::from_config(&config, "s3cret".into());
        let direct = [
            "turn:203.0.113.7:3478?transport=tcp",
            "turns:meet.example.org:5349?transport=tcp",
        ];
        assert_eq!(ice.direct, direct);
        assert_eq!(
            ice.relay,
            vec![
                "turn:203.0.113.7:3478?transport=udp",
                "turn:[::1]:3479?transport=udp",
                direct[0],
                direct[1],
            ]
        );
        let (all, relay) = ice.for_participant("r1", "p1", 1_000);
        for v in [&all, &relay] {
            assert_eq!(v[0]["username"], "44200:room:r1:p1");
            assert_eq!(
                v[0]["credential"],
                crate::turn::auth::rest_password("s3cret", "44200:room:r1:p1").as_str()
            );
        }
        assert_eq!(all[0]["urls"], json!(direct));
    }
}
