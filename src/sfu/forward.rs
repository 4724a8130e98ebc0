//! One receiver's copy of one published track: the [`Forwarder`].
//!
//! A receiver sees a single continuous stream per track, whatever layer of the
//! publisher's simulcast feeds it: its own SSRC, sequence numbers that go on by one
//! across layer switches, timestamps that advance by the wall-clock time between the
//! last packet of the old layer and the keyframe of the new one (so the player's clock
//! neither stalls nor jumps back), and VP8 picture ids and TL0PICIDX that stay
//! continuous. Each run of packets from one layer (an *epoch*) is a fixed offset from the
//! source's numbers, so rewriting is a few additions and stores at known offsets.
//!
//! The data plane copies a received packet into each receiver's output slot (the buffer
//! SRTP will encrypt) and calls [`Forwarder::forward`] on the copy, which rewrites it in
//! place. The packet is read once per packet by [`Track::receive`]; a receiver only
//! writes. Which outgoing number came from which source packet is kept in a fixed ring,
//! so a receiver's NACK is answered from the track's cache with the packet exactly as it
//! was first sent, or in RTX form.

use super::codec::{Codec, Vp8Descriptor, parse_vp8};
use super::rtcp::{self, ReportBlock, ntp_duration, ntp_middle};
use super::rtp::{self, RtpHeader, seq_newer, ts_newer};
use super::simulcast::{Gate, LayerCap, Layers, Selector, TemporalFilter};
use super::track::{Incoming, Track};

/// Outgoing packets remembered for answering NACKs: matches the track's cache.
pub(crate) const HISTORY: usize = 512;
/// A packet is not sent again sooner than one round trip to its receiver after its
/// last retransmission (a NACK repeated before the first answer could arrive gets
/// nothing new), and never sooner than this.
pub(crate) const MIN_RESEND_INTERVAL_US: u64 = 20_000;
/// The round trip assumed until the receiver's reports tell it.
pub(crate) const DEFAULT_ROUND_TRIP_US: u64 = 50_000;
/// A round trip longer than this is taken as this: past it, repairs are too late for
/// any jitter buffer, and one bogus report must not stop retransmissions for long.
const MAX_ROUND_TRIP_US: u64 = 1_000_000;
/// Retransmissions may spend this fraction (1/n) of the bytes forwarded: one SRTCP
/// packet can NACK hundreds of packets, and a receiver that asks for everything again
/// must not make the node send much more than the stream itself.
const RESEND_SHARE: u32 = 2;
/// Unspent retransmission budget kept at most: enough to repair a lost keyframe at
/// once, little next to what a receiver asking for everything could pull.
pub(crate) const RESEND_BURST_BYTES: u32 = 128 * 1024;
/// The budget a new forwarder starts with, so the first packets (a keyframe) can be
/// repaired before the stream earned any.
const RESEND_INITIAL_BYTES: u32 = 16 * 1024;

/// Why a NACKed packet was not sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResendRefusal {
    /// The packet is no longer held (or never was sent to this receiver).
    NotHeld,
    /// It was sent again less than a round trip ago.
    TooSoon,
    /// The receiver's retransmissions used up their share of the stream's bytes.
    OverBudget,
}
/// How far behind the newest packet of an epoch the floor for late packets trails:
/// enough for any reordering, far from the 32768 where serial arithmetic turns.
const FLOOR_LAG: u16 = 0x4000;

/// Header extensions as the receiver negotiated them. The publisher's ids mean nothing
/// to a receiver (each SDP numbers its own), so every element is either given the
/// receiver's id or blanked into padding, in place. The mid is rewritten to the
/// receiver's value; a value longer than the publisher's cannot be written in place, so
/// that mid is blanked instead and the receiver demultiplexes by the SSRC its SDP lists.
// In this order (C's): what every packet reads sits next to the one-byte form's ids
// (1 to 14), mostly in one cache line, where Rust's own order puts it behind the table.
#[derive(Clone)]
#[repr(C)]
pub struct ExtensionMap {
    keep_all: bool,
    /// The publisher's id of the transport-wide sequence number; 0: none.
    transport_cc: u8,
    mid_id: u8,
    mid_len: u8,
    mid: [u8; 16],
    /// Publisher id → receiver id; 0 = blank it.
    ids: [u8; 256],
}

impl Default for ExtensionMap {
    /// Blanks every element.
    fn default() -> Self {
        ExtensionMap {
            keep_all: false,
            transport_cc: 0,
            mid_id: 0,
            mid_len: 0,
            mid: [0; 16],
            ids: [0; 256],
        }
    }
}

impl ExtensionMap {
    /// Leaves the extensions as the publisher sent them.
    pub fn keep_all() -> ExtensionMap {
        ExtensionMap {
            keep_all: true,
            ..ExtensionMap::default()
        }
    }

    /// Publisher id `from` is receiver id `to` (abs-send-time, transport-wide seq —
    /// whose value the data plane then sets per receiver transport — audio level...).
    pub fn map(&mut self, from: u8, to: u8) {
        self.ids[usize::from(from)] = to;
    }

    /// The publisher's transport-wide sequence number `from` becomes the receiver's
    /// `to`; its value is the receiver transport's own, written when the packet is sent
    /// (see [`Forwarder::transport_seq_at`]).
    pub fn set_transport_cc(&mut self, from: u8, to: u8) {
        self.ids[usize::from(from)] = to;
        self.transport_cc = from;
    }

    /// The receiver's id of the transport-wide sequence number, where it gets one (in
    /// the one-byte form).
    fn receiver_transport_cc(&self) -> Option<u8> {
        let id = self.ids[usize::from(self.transport_cc)];
        (self.transport_cc != 0 && (1..=14).contains(&id)).then_some(id)
    }

    /// The publisher's mid extension `from` becomes the receiver's `to` with `value`;
    /// false for a value over 16 bytes (the one-byte form's limit).
    pub fn set_mid(&mut self, from: u8, to: u8, value: &[u8]) -> bool {
        if value.is_empty() || value.len() > self.mid.len() {
            return false;
        }
        self.ids[usize::from(from)] = to;
        self.mid_id = from;
        self.mid[..value.len()].copy_from_slice(value);
        self.mid_len = value.len() as u8;
        true
    }

    /// Rewrites the extensions of `pkt` in place; returns where the transport-wide
    /// sequence number's two bytes are, if the packet has one the receiver gets.
    fn apply(&self, pkt: &mut [u8], header: &RtpHeader) -> Option<usize> {
        let block = header.extension?;
        if self.keep_all {
            return None;
        }
        let mut transport_seq_at = None;
        let mut cursor = block.cursor();
        while let Some(e) = cursor.next(pkt) {
            let Some(element) = pkt.get_mut(e.header..e.value.end) else {
                return transport_seq_at;
            };
            let to = self.ids[usize::from(e.id)];
            let value_at = e.value.start - e.header;
            // Zero bytes are padding in both forms (RFC 8285 §4.2, §4.3).
            if to == 0 || (e.one_byte && to > 14) {
                element.fill(0);
                continue;
            }
            if e.id == self.mid_id {
                let n = usize::from(self.mid_len);
                if n > e.value.len() {
                    element.fill(0);
                    continue;
                }
                if e.one_byte {
                    element[0] = (to << 4) | (n as u8 - 1);
                } else {
                    element[0] = to;
                    element[1] = n as u8;
                }
                element[value_at..value_at + n].copy_from_slice(&self.mid[..n]);
                element[value_at + n..].fill(0);
                continue;
            }
            element[0] = if e.one_byte {
                (to << 4) | (element[0] & 0x0F)
            } else {
                to
            };
            if e.id == self.transport_cc && e.value.len() == 2 {
                transport_seq_at = Some(e.value.start);
            }
        }
        transport_seq_at
    }
}

/// RTX (RFC 4588) as negotiated with the receiver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtxConfig {
    /// The receiver's RTX SSRC.
    pub ssrc: u32,
    /// The receiver's RTX payload type.
    pub payload_type: u8,
}

/// How one receiver gets one track: its SSRC, payload types, RTX and extensions.
#[derive(Clone)]
pub struct ForwarderConfig {
    /// The SSRC the receiver knows this stream by.
    pub ssrc: u32,
    /// The receiver's payload type for the codec; `None` keeps the publisher's.
    pub payload_type: Option<u8>,
    /// RTX for this receiver; `None`: retransmissions go out as the media SSRC.
    pub rtx: Option<RtxConfig>,
    /// The receiver's `max_height` preference.
    pub max_height: Option<u16>,
    /// First outgoing sequence number and timestamp: random, per RFC 3550 §5.1.
    pub initial_seq: u16,
    /// First outgoing RTP timestamp (random).
    pub initial_timestamp: u32,
    /// The receiver's header extension ids.
    pub extensions: ExtensionMap,
}

/// What a forwarder asks of the SFU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Ask the publisher for a keyframe of this layer (through
    /// [`Track::request_keyframe`], which throttles).
    NeedKeyframe {
        /// The layer, 0 = lowest.
        layer: u8,
        /// The publisher's SSRC of that layer.
        ssrc: u32,
    },
}

/// How one outgoing packet was made from its source packet.
#[derive(Debug, Clone, Copy, Default)]
struct Sent {
    out_seq: u16,
    src_seq: u16,
    layer: u8,
    valid: bool,
    tl0_offset: u8,
    pid_offset: u16,
    ts_offset: u32,
    /// When last retransmitted; 0 = never.
    resent_at: u64,
}

/// The offsets of the current epoch, outgoing = source + offset (wrapping).
#[derive(Debug, Clone, Copy, Default)]
struct Offsets {
    seq: u16,
    ts: u32,
    pid: u16,
    tl0: u8,
}

/// Rewrites one track's packets for one receiver: layer switching at keyframes, continuous sequence numbers and timestamps, retransmissions.
pub struct Forwarder {
    ssrc: u32,
    payload_type: Option<u8>,
    rtx: Option<RtxConfig>,
    extensions: ExtensionMap,
    codec: Codec,
    clock_rate: u64,
    selector: Selector,
    /// Which VP8 temporal layers of the forwarded layer pass (see [`LayerCap::Frames`]).
    temporal: TemporalFilter,
    /// The newest source packet the temporal filter left out, and the picture id of
    /// the last frame it left out: numbers after them close up.
    skipped_seq: Option<u16>,
    skipped_pid: Option<u16>,
    /// The track's layers as last seen, for the SSRCs of keyframe requests.
    layers: Layers,
    started: bool,
    /// The source SSRC of the current epoch.
    epoch_ssrc: u32,
    offsets: Offsets,
    /// Newest source sequence number of the epoch, and the oldest still forwarded.
    src_newest: u16,
    src_floor: u16,
    /// The newest outgoing values, and when the timestamp last moved on.
    out_seq: u16,
    out_ts: u32,
    out_ts_at: u64,
    out_pid: u16,
    out_tl0: u8,
    rtx_seq: u16,
    packets: u32,
    octets: u32,
    /// How each recent outgoing packet was made, by outgoing sequence number modulo
    /// [`HISTORY`]; empty for a track that caches nothing to resend (audio), which
    /// then spends neither the memory nor a cache line per packet on it.
    history: Box<[Sent]>,
    /// LSR value and time of the last sender report sent, for the round trip.
    last_sr: Option<(u32, u64)>,
    /// The receiver's round trip (from its reports), which spaces retransmissions.
    round_trip_us: u64,
    /// Bytes retransmissions may still spend (see [`RESEND_SHARE`]).
    resend_budget: u32,
    /// Where the packet last written carries its transport-wide sequence number.
    transport_seq_at: Option<usize>,
}

impl Forwarder {
    /// A forwarder of `track` to one receiver; allocates its NACK history once (when
    /// the track caches packets to resend).
    pub fn new(track: &Track, config: ForwarderConfig) -> Forwarder {
        Forwarder {
            ssrc: config.ssrc,
            payload_type: config.payload_type,
            rtx: config.rtx,
            extensions: config.extensions,
            codec: track.codec(),
            clock_rate: u64::from(track.clock_rate()),
            selector: Selector::new(config.max_height),
            temporal: TemporalFilter::default(),
            skipped_seq: None,
            skipped_pid: None,
            layers: *track.layers(),
            started: false,
            epoch_ssrc: 0,
            offsets: Offsets::default(),
            src_newest: 0,
            src_floor: 0,
            out_seq: config.initial_seq.wrapping_sub(1),
            out_ts: config.initial_timestamp,
            out_ts_at: 0,
            out_pid: 0,
            out_tl0: 0,
            // The RTX stream has its own sequence space; any start unrelated to the
            // media stream's will do, and this one is as unpredictable as that one.
            rtx_seq: config.initial_seq ^ 0x5A5A,
            packets: 0,
            octets: 0,
            history: if track.caches() {
                vec![Sent::default(); HISTORY].into_boxed_slice()
            } else {
                Box::default()
            },
            last_sr: None,
            round_trip_us: DEFAULT_ROUND_TRIP_US,
            resend_budget: RESEND_INITIAL_BYTES,
            transport_seq_at: None,
        }
    }

    /// Reads what [`Forwarder::forward`] reads of this forwarder for most packets, for
    /// a caller that reads ahead for several receivers (see `Downstream::read_ahead`):
    /// the fields are spread over several cache lines, and the slot the next packet
    /// takes in the history is one more.
    pub(crate) fn read_ahead(&self) {
        let next = usize::from(self.out_seq.wrapping_add(1)) % HISTORY;
        std::hint::black_box((
            (
                self.layers.generation,
                self.started,
                self.selector.current(),
            ),
            (
                self.epoch_ssrc,
                self.src_newest,
                self.src_floor,
                self.skipped_seq,
            ),
            (
                self.offsets.seq,
                self.offsets.ts,
                self.out_ts,
                self.out_ts_at,
            ),
            (
                self.packets,
                self.octets,
                self.resend_budget,
                self.payload_type,
            ),
            (self.extensions.keep_all, self.extensions.ids[1]),
            self.history.get(next).map(|s| s.out_seq),
        ));
    }

    /// The SSRC the receiver knows this stream by.
    pub fn ssrc(&self) -> u32 {
        self.ssrc
    }

    pub(crate) fn rtx(&self) -> Option<RtxConfig> {
        self.rtx
    }

    /// The receiver's new `max_height`; a switch follows at the next keyframe.
    pub fn set_max_height(&mut self, max_height: Option<u16>) {
        self.selector.set_max_height(max_height);
    }

    /// The bound the receiver's bandwidth puts on this stream; a switch follows at the
    /// next keyframe (paused: nothing from now on). Cheap when unchanged.
    pub(crate) fn set_layer_cap(&mut self, cap: LayerCap) {
        let (spatial, tid) = match cap {
            LayerCap::Frames { layer, tid } => (LayerCap::UpTo(layer), Some(tid)),
            other => (other, None),
        };
        self.selector.set_cap(spatial);
        self.temporal.set_target(tid);
    }

    /// The layer being forwarded.
    pub fn current_layer(&self) -> Option<u8> {
        self.selector.current()
    }

    /// The layer a switch waits to reach at its next keyframe, if any.
    pub fn target_layer(&self) -> Option<u8> {
        self.selector.target()
    }

    /// Sends retransmissions as they were first sent: the receiver's answer left RTX out.
    pub(crate) fn disable_rtx(&mut self) {
        self.rtx = None;
    }

    /// The layer a receiver's PLI/FIR on this stream is about: the one it decodes, or the
    /// one it waits for.
    pub fn keyframe_layer(&self) -> Option<u8> {
        self.selector.current().or(self.selector.target())
    }

    /// Where the packet last written by [`Forwarder::forward`] or
    /// [`Forwarder::retransmit`] carries its transport-wide sequence number (the RTX
    /// header leaves it in place), which [`crate::sfu::egress::Egress`] fills in from
    /// the receiver's counter when it sends the packet.
    pub fn transport_seq_at(&self) -> Option<usize> {
        self.transport_seq_at
    }

    /// Packets and payload octets sent (for sender reports).
    pub fn sent(&self) -> (u32, u32) {
        (self.packets, self.octets)
    }

    /// Rewrites `pkt` (a copy of the packet `info` describes) for this receiver. Returns
    /// the length to send, or `None` when this receiver does not get it (another layer,
    /// no keyframe yet, older than the current layer's start).
    pub fn forward(&mut self, pkt: &mut [u8], info: &Incoming, now: u64) -> Option<usize> {
        if info.len > pkt.len() {
            return None;
        }
        if info.layers.generation != self.layers.generation {
            self.layers = info.layers;
        }
        let seq = info.header.seq;
        if self.started
            && self.selector.current() == Some(info.layer)
            && info.header.ssrc != self.epoch_ssrc
        {
            // The publisher replaced the layer's SSRC: its numbers have nothing to do
            // with the epoch's, so the receiver starts over at a keyframe.
            self.selector.restart();
        }
        let gate = self
            .selector
            .on_packet(info.layer, info.switch_point, &info.layers);
        match gate {
            Gate::Drop => return None,
            Gate::Switch => self.start_epoch(info, now),
            Gate::Forward => {
                let behind = self.src_newest.wrapping_sub(seq);
                let span = self.src_newest.wrapping_sub(self.src_floor);
                // From before this layer's keyframe: its outgoing number was used.
                if behind < 0x8000 && behind > span {
                    return None;
                }
            }
        }
        if let Some(d) = &info.vp8
            && !self.temporal.pass(
                info.header.timestamp,
                d.tid,
                d.layer_sync,
                gate == Gate::Switch,
            )
        {
            self.skip(seq, d);
            return None;
        }
        let newest = seq == self.src_newest || seq_newer(seq, self.src_newest);
        // A late packet from before a left-out one: the numbers closed up over its place.
        if !newest && self.skipped_seq.is_some_and(|s| seq_newer(s, seq)) {
            return None;
        }
        if newest {
            self.src_newest = seq;
            if self.src_newest.wrapping_sub(self.src_floor) > FLOOR_LAG {
                self.src_floor = self.src_newest.wrapping_sub(FLOOR_LAG);
            }
        }
        let o = self.offsets;
        let out_seq = seq.wrapping_add(o.seq);
        let out_ts = info.header.timestamp.wrapping_add(o.ts);
        self.transport_seq_at = self.rewrite(pkt, &info.header, info.vp8.as_ref(), out_seq, o);
        if newest {
            self.out_seq = out_seq;
            if ts_newer(out_ts, self.out_ts) || self.packets == 0 {
                self.out_ts = out_ts;
                self.out_ts_at = now;
            }
            if let Some(d) = &info.vp8 {
                if let Some(pid) = d.picture_id {
                    self.out_pid = pid.wrapping_add(o.pid) & 0x7FFF;
                }
                if let Some(idx) = d.tl0picidx {
                    self.out_tl0 = idx.wrapping_add(o.tl0);
                }
            }
        }
        if let Some(slot) = self.history.get_mut(usize::from(out_seq) % HISTORY) {
            *slot = Sent {
                out_seq,
                src_seq: seq,
                layer: info.layer,
                valid: true,
                tl0_offset: o.tl0,
                pid_offset: o.pid,
                ts_offset: o.ts,
                resent_at: 0,
            };
        }
        self.packets = self.packets.wrapping_add(1);
        let payload = info.header.payload_end - info.header.payload_offset;
        self.octets = self.octets.wrapping_add(payload as u32);
        self.resend_budget = self
            .resend_budget
            .saturating_add(info.len as u32 / RESEND_SHARE)
            .min(RESEND_BURST_BYTES);
        Some(info.len)
    }

    /// A packet the temporal filter leaves out: the numbers after it close up, so that
    /// the receiver sees neither a missing packet (which it would ask for again) nor a
    /// missing picture id.
    fn skip(&mut self, seq: u16, d: &Vp8Descriptor) {
        if !seq_newer(seq, self.src_newest) {
            return; // a late one: no number was kept for it
        }
        self.src_newest = seq;
        if self.src_newest.wrapping_sub(self.src_floor) > FLOOR_LAG {
            self.src_floor = self.src_newest.wrapping_sub(FLOOR_LAG);
        }
        self.offsets.seq = self.offsets.seq.wrapping_sub(1);
        self.skipped_seq = Some(seq);
        if let Some(pid) = d.picture_id
            && self.skipped_pid != Some(pid)
        {
            self.offsets.pid = self.offsets.pid.wrapping_sub(1) & 0x7FFF;
            self.skipped_pid = Some(pid);
        }
    }

    /// Starts an epoch at the keyframe `info`: the next outgoing sequence number, the
    /// timestamp moved on by the wall-clock time since the last one, the next picture id
    /// and TL0PICIDX.
    fn start_epoch(&mut self, info: &Incoming, now: u64) {
        let h = &info.header;
        let (next_seq, next_ts) = if self.started {
            let elapsed = now.saturating_sub(self.out_ts_at);
            let ticks = (u128::from(elapsed) * u128::from(self.clock_rate) / 1_000_000) as u32;
            (
                self.out_seq.wrapping_add(1),
                self.out_ts.wrapping_add(ticks.max(1)),
            )
        } else {
            (self.out_seq.wrapping_add(1), self.out_ts)
        };
        let mut o = Offsets {
            seq: next_seq.wrapping_sub(h.seq),
            ts: next_ts.wrapping_sub(h.timestamp),
            pid: 0,
            tl0: 0,
        };
        if self.started
            && let Some(d) = &info.vp8
        {
            if let Some(pid) = d.picture_id {
                o.pid = self.out_pid.wrapping_add(1).wrapping_sub(pid) & 0x7FFF;
            }
            if let Some(idx) = d.tl0picidx {
                o.tl0 = self.out_tl0.wrapping_add(1).wrapping_sub(idx);
            }
        }
        self.offsets = o;
        self.skipped_seq = None;
        self.skipped_pid = None;
        self.epoch_ssrc = h.ssrc;
        self.src_newest = h.seq;
        self.src_floor = h.seq;
        // The keyframe's timestamp is the newest even if it is not ahead in the new
        // epoch's numbers (a rounding of a few ticks).
        self.out_ts = next_ts;
        self.out_ts_at = now;
        self.started = true;
    }

    /// Rewrites `pkt` into this receiver's numbers; returns where its transport-wide
    /// sequence number goes.
    fn rewrite(
        &self,
        pkt: &mut [u8],
        header: &RtpHeader,
        vp8: Option<&Vp8Descriptor>,
        out_seq: u16,
        o: Offsets,
    ) -> Option<usize> {
        rtp::set_seq(pkt, out_seq);
        rtp::set_timestamp(pkt, header.timestamp.wrapping_add(o.ts));
        rtp::set_ssrc(pkt, self.ssrc);
        if let Some(pt) = self.payload_type {
            rtp::set_payload_type(pkt, pt);
        }
        if let (Some(d), Some(payload)) = (vp8, pkt.get_mut(header.payload_offset..)) {
            if let Some(pid) = d.picture_id {
                d.write_picture_id(payload, pid.wrapping_add(o.pid) & 0x7FFF);
            }
            if let Some(idx) = d.tl0picidx {
                d.write_tl0picidx(payload, idx.wrapping_add(o.tl0));
            }
        }
        self.extensions.apply(pkt, header)
    }

    /// A keyframe request this receiver needs sent (see [`Selector::poll_keyframe`]).
    /// Cheap enough to call after every `forward`.
    pub fn poll_action(&mut self, now: u64) -> Option<Action> {
        let layer = self.selector.poll_keyframe(now)?;
        let ssrc = self.layers.ssrc(layer)?;
        Some(Action::NeedKeyframe { layer, ssrc })
    }

    /// The source packet (layer, source sequence number) behind outgoing `out_seq`, if
    /// it is still in the history.
    pub(crate) fn nack_source(&self, out_seq: u16) -> Option<(u8, u16)> {
        let s = self.history.get(usize::from(out_seq) % HISTORY)?;
        (s.valid && s.out_seq == out_seq).then_some((s.layer, s.src_seq))
    }

    /// The interval before a packet is sent again: the receiver's round trip.
    pub(crate) fn resend_interval(&self) -> u64 {
        self.round_trip_us.max(MIN_RESEND_INTERVAL_US)
    }

    /// Takes the round trip a receiver report told (see [`Forwarder::round_trip`]).
    pub(crate) fn set_round_trip(&mut self, round_trip_us: u64) {
        self.round_trip_us = round_trip_us.min(MAX_ROUND_TRIP_US);
    }

    /// Answers a receiver's NACK of `out_seq` (a number of this stream's outgoing
    /// space) from `track`'s cache: the packet rewritten as it was first sent,
    /// RTX-wrapped when negotiated, into `out`. Returns the length to send.
    pub fn resend(
        &mut self,
        track: &Track,
        out_seq: u16,
        out: &mut [u8],
        now: u64,
    ) -> Result<usize, ResendRefusal> {
        let (layer, src_seq) = self.nack_source(out_seq).ok_or(ResendRefusal::NotHeld)?;
        let cached = track.cached(layer, src_seq).ok_or(ResendRefusal::NotHeld)?;
        self.retransmit(out_seq, cached, out, now)
    }

    /// Writes `cached` (the source packet of `out_seq`, from the track's cache) into
    /// `out` rewritten exactly as it was first sent, then in RTX form when negotiated
    /// (`out` needs two bytes more then). Returns the length to send. Refused when the
    /// history no longer knows `out_seq` or `cached` is not its source, when it was
    /// sent again less than a round trip ago, or when the receiver's retransmissions
    /// spent their share of the stream.
    pub(crate) fn retransmit(
        &mut self,
        out_seq: u16,
        cached: &[u8],
        out: &mut [u8],
        now: u64,
    ) -> Result<usize, ResendRefusal> {
        let slot = usize::from(out_seq) % HISTORY;
        let sent = *self.history.get(slot).ok_or(ResendRefusal::NotHeld)?;
        if !sent.valid || sent.out_seq != out_seq {
            return Err(ResendRefusal::NotHeld);
        }
        if sent.resent_at != 0 && now.saturating_sub(sent.resent_at) < self.resend_interval() {
            return Err(ResendRefusal::TooSoon);
        }
        let header = RtpHeader::parse(cached).ok_or(ResendRefusal::NotHeld)?;
        if header.seq != sent.src_seq {
            return Err(ResendRefusal::NotHeld);
        }
        let len = cached.len();
        // RTX adds the original sequence number.
        let cost = len as u32 + if self.rtx.is_some() { 2 } else { 0 };
        if cost > self.resend_budget {
            return Err(ResendRefusal::OverBudget);
        }
        out.get_mut(..len)
            .ok_or(ResendRefusal::NotHeld)?
            .copy_from_slice(cached);
        let vp8 = match self.codec {
            Codec::Vp8 => cached.get(header.payload()).and_then(parse_vp8),
            _ => None,
        };
        let o = Offsets {
            seq: 0,
            ts: sent.ts_offset,
            pid: sent.pid_offset,
            tl0: sent.tl0_offset,
        };
        self.transport_seq_at = self.rewrite(out, &header, vp8.as_ref(), out_seq, o);
        let len = match self.rtx {
            Some(rtx) => {
                let n = rtp::wrap_rtx(out, &header, rtx.ssrc, rtx.payload_type, self.rtx_seq)
                    .ok_or(ResendRefusal::NotHeld)?;
                self.rtx_seq = self.rtx_seq.wrapping_add(1);
                n
            }
            None => len,
        };
        if let Some(s) = self.history.get_mut(slot) {
            s.resent_at = now.max(1);
        }
        self.resend_budget -= cost;
        Ok(len)
    }

    /// Writes into `out` an RTX packet of `padding` bytes of padding only (probing the
    /// receiver's path, see `sfu::bwe::probe`), with the current timestamp. Returns its
    /// length; `None` without RTX or a transport-wide sequence number, which it needs
    /// to be of any use (the receiver drops it once it counted it).
    pub(crate) fn write_padding(&mut self, out: &mut [u8], padding: usize) -> Option<usize> {
        let rtx = self.rtx?;
        let id = self.extensions.receiver_transport_cc()?;
        let header = (rtx.ssrc, rtx.payload_type, self.rtx_seq, self.out_ts);
        let n = rtp::write_padding(out, header, id, padding)?;
        self.rtx_seq = self.rtx_seq.wrapping_add(1);
        self.transport_seq_at = Some(rtp::PADDING_TRANSPORT_SEQ_AT);
        Some(n)
    }

    /// A sender report for this stream. The RTP time is mapped through the current
    /// epoch from the publisher's own last report of the layer, with the publisher's NTP
    /// time moved on by the time since: audio and video of one publisher then keep the
    /// relation its reports give them, which is what receivers synchronise lips by.
    /// Without a report from the publisher, `ntp_now` (our wall clock) and the newest
    /// outgoing timestamp moved on by the time since are used. `None` before anything
    /// was sent, or when `buf` is too small.
    pub fn write_sender_report(
        &mut self,
        buf: &mut [u8],
        track: &Track,
        now: u64,
        ntp_now: u64,
    ) -> Option<usize> {
        if !self.started {
            return None;
        }
        let ticks = |us: u64| (u128::from(us) * u128::from(self.clock_rate) / 1_000_000) as u32;
        let (ntp, rtp_ts) = match self.selector.current().and_then(|l| track.sender_report(l)) {
            Some(sr) => {
                let elapsed = now.saturating_sub(sr.received_at);
                (
                    sr.ntp.wrapping_add(ntp_duration(elapsed)),
                    sr.rtp_timestamp
                        .wrapping_add(ticks(elapsed))
                        .wrapping_add(self.offsets.ts),
                )
            }
            None => (
                ntp_now,
                self.out_ts
                    .wrapping_add(ticks(now.saturating_sub(self.out_ts_at))),
            ),
        };
        let n =
            rtcp::write_sender_report(buf, self.ssrc, ntp, rtp_ts, self.packets, self.octets, &[])?;
        self.last_sr = Some((ntp_middle(ntp), now));
        Some(n)
    }

    /// The round-trip time to the receiver (microseconds) from a report block of its
    /// about this stream, if it quotes our last sender report.
    pub(crate) fn round_trip(&self, block: &ReportBlock, now: u64) -> Option<u64> {
        let (lsr, sent_at) = self.last_sr?;
        if block.ssrc != self.ssrc || block.last_sr == 0 || block.last_sr != lsr {
            return None;
        }
        let held = u64::from(block.delay_since_last_sr) * 1_000_000 / 65_536;
        Some(now.saturating_sub(sent_at).saturating_sub(held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sfu::codec::tests::{vp8_payload, vp8_payload_sized};
    use crate::sfu::rtcp::{Rtcp, RtcpIter};
    use crate::sfu::rtp::tests::{Rng, packet};
    use crate::sfu::track::tests::{PT, RID_EXT, simulcast_track, vp8_packet};
    use crate::sfu::track::{LayerConfig, TrackConfig};

    const OUT_SSRC: u32 = 0xC0FFEE;
    const SSRCS: [u32; 3] = [111, 222, 333];
    const RIDS: [&[u8]; 3] = [b"q", b"h", b"f"];
    /// Source timestamps of the layers start far apart, as Chrome's do.
    const TS_BASE: [u32; 3] = [1_000, 2_000_000_000, 4_000_000_000];
    const SEQ_BASE: [u16; 3] = [100, 30_000, 65_000];
    const HEIGHTS: [u16; 3] = [180, 360, 720];

    fn config(max_height: Option<u16>) -> ForwarderConfig {
        ForwarderConfig {
            ssrc: OUT_SSRC,
            payload_type: Some(100),
            rtx: None,
            max_height,
            initial_seq: 65_530,
            initial_timestamp: 7,
            extensions: ExtensionMap::default(),
        }
    }

    /// Sends frames of three layers into a track, 30 per second, one packet each, and
    /// hands every packet that is forwarded to `seen`.
    struct Sim {
        track: Track,
        fwd: Forwarder,
        frame: [u32; 3],
        now: u64,
        actions: Vec<Action>,
    }

    impl Sim {
        fn new(max_height: Option<u16>) -> Sim {
            let mut track = simulcast_track();
            // Heights as the SDP describes them (VP8 keyframes would confirm them).
            for (l, h) in HEIGHTS.iter().enumerate() {
                track.set_height(l as u8, *h);
            }
            let fwd = Forwarder::new(&track, config(max_height));
            Sim {
                track,
                fwd,
                frame: [0; 3],
                now: 1_000_000,
                actions: Vec::new(),
            }
        }

        /// One packet of `layer`: returns the rewritten header and VP8 descriptor.
        fn send(&mut self, layer: usize, key: bool) -> Option<(RtpHeader, Vp8Descriptor)> {
            let f = self.frame[layer];
            self.frame[layer] += 1;
            let seq = SEQ_BASE[layer].wrapping_add(f as u16);
            let ts = TS_BASE[layer].wrapping_add(f * 3000);
            let mut p = packet(
                PT,
                seq,
                ts,
                SSRCS[layer],
                &[(RID_EXT, RIDS[layer])],
                &vp8_payload_sized(
                    key,
                    true,
                    (f as u16 + 50 * layer as u16) & 0x7FFF,
                    f as u8,
                    HEIGHTS[layer],
                ),
            );
            let len = p.len();
            let info = self.track.receive(&mut p, len, self.now).ok()?;
            let out = self.fwd.forward(&mut p, &info, self.now);
            while let Some(a) = self.fwd.poll_action(self.now) {
                self.actions.push(a);
            }
            let n = out?;
            let h = RtpHeader::parse(&p[..n])?;
            let d = parse_vp8(&p[h.payload()])?;
            Some((h, d))
        }

        /// A frame interval: every layer in `layers` sends one packet, a keyframe for
        /// layer `key`; returns what the receiver got.
        fn tick(
            &mut self,
            layers: &[usize],
            key: Option<usize>,
        ) -> Vec<(RtpHeader, Vp8Descriptor)> {
            self.now += 33_333;
            layers
                .iter()
                .filter_map(|&l| self.send(l, key == Some(l)))
                .collect()
        }
    }

    /// Checks that outgoing packets continue the previous ones: seq +1, picture id +1,
    /// TL0PICIDX +1, timestamp ahead by about a frame.
    fn assert_continuous(got: &[(RtpHeader, Vp8Descriptor)]) {
        for w in got.windows(2) {
            let (a, da) = &w[0];
            let (b, db) = &w[1];
            assert_eq!(b.seq, a.seq.wrapping_add(1), "sequence continues");
            assert_eq!(b.ssrc, OUT_SSRC);
            assert_eq!(b.payload_type, 100);
            assert_eq!(
                db.picture_id.unwrap(),
                (da.picture_id.unwrap() + 1) & 0x7FFF
            );
            assert_eq!(db.tl0picidx.unwrap(), da.tl0picidx.unwrap().wrapping_add(1));
            let dt = b.timestamp.wrapping_sub(a.timestamp);
            assert!((2_900..=3_100).contains(&dt), "timestamp step {dt}");
        }
    }

    #[test]
    fn continuous_across_layer_switches_and_wraparound() {
        let mut s = Sim::new(Some(360));
        let mut got = Vec::new();
        // Layer 0 starts with a keyframe and is taken; the other layers show up, layer
        // 1 (360) becomes the target and its keyframe is asked for.
        got.extend(s.tick(&[0, 1, 2], Some(0)));
        assert_eq!(got.len(), 1);
        assert_eq!(s.fwd.current_layer(), Some(0));
        assert_eq!(s.fwd.target_layer(), Some(1));
        assert_eq!(got[0].0.seq, 65_530);
        assert_eq!(got[0].0.timestamp, 7);
        assert_eq!(
            s.actions,
            vec![Action::NeedKeyframe {
                layer: 1,
                ssrc: 222
            }]
        );
        // Layer 0 flows until layer 1's keyframe.
        for _ in 0..5 {
            got.extend(s.tick(&[0, 1, 2], None));
        }
        assert_eq!(got.len(), 6);
        got.extend(s.tick(&[1, 0, 2], Some(1)));
        assert_eq!(s.fwd.current_layer(), Some(1));
        for _ in 0..10 {
            got.extend(s.tick(&[0, 1, 2], None));
        }
        // Up to the top layer, then down again, each at a keyframe.
        s.fwd.set_max_height(None);
        got.extend(s.tick(&[0, 1, 2], None));
        assert_eq!(s.fwd.current_layer(), Some(1));
        got.extend(s.tick(&[2, 0, 1], Some(2)));
        assert_eq!(s.fwd.current_layer(), Some(2));
        s.fwd.set_max_height(Some(180));
        got.extend(s.tick(&[0, 1, 2], None));
        got.extend(s.tick(&[0, 1, 2], Some(0)));
        assert_eq!(s.fwd.current_layer(), Some(0));
        got.extend(s.tick(&[0, 1, 2], None));
        assert_eq!(got.len(), 6 + 1 + 10 + 1 + 1 + 1 + 1 + 1);
        assert_continuous(&got);
        // The sequence numbers crossed 65535.
        assert!(got.iter().any(|(h, _)| h.seq == 65535));
        assert!(got.iter().any(|(h, _)| h.seq == 0));
        let asked: Vec<u8> = s
            .actions
            .iter()
            .map(|Action::NeedKeyframe { layer, .. }| *layer)
            .collect();
        assert_eq!(asked, vec![1, 2, 0]);
    }

    #[test]
    fn falls_back_at_once_when_the_layer_stops() {
        let mut s = Sim::new(None);
        let mut got = Vec::new();
        got.extend(s.tick(&[2, 1, 0], Some(2)));
        assert_eq!(s.fwd.current_layer(), Some(2));
        for _ in 0..3 {
            got.extend(s.tick(&[0, 1, 2], None));
        }
        // The top layer stops; a second later the receiver is re-targeted and asks.
        s.actions.clear();
        for _ in 0..31 {
            got.extend(s.tick(&[0, 1], None));
        }
        assert_eq!(s.fwd.target_layer(), Some(1));
        assert_eq!(
            s.actions,
            vec![Action::NeedKeyframe {
                layer: 1,
                ssrc: 222
            }]
        );
        got.extend(s.tick(&[0, 1], Some(1)));
        assert_eq!(s.fwd.current_layer(), Some(1));
        got.extend(s.tick(&[0, 1], None));
        assert_eq!(got.len(), 6);
        // Sequence numbers go on; the timestamp jumped by the real pause (~1 s).
        let (before, after) = (&got[3].0, &got[4].0);
        assert_eq!(after.seq, before.seq.wrapping_add(1));
        let jump = after.timestamp.wrapping_sub(before.timestamp);
        assert!((90_000..=96_000).contains(&jump), "jump {jump}");
        assert_continuous(&got[4..]);
        assert_continuous(&got[..4]);
    }

    #[test]
    fn a_replaced_ssrc_restarts_at_a_keyframe() {
        let mut t = simulcast_track();
        let mut f = Forwarder::new(&t, config(None));
        let mut run = |p: Vec<u8>, now| {
            let mut p = p;
            let len = p.len();
            let info = t.receive(&mut p, len, now).ok()?;
            let out = f.forward(&mut p, &info, now);
            let action = f.poll_action(now);
            Some((out.map(|n| RtpHeader::parse(&p[..n]).unwrap().seq), action))
        };
        assert_eq!(
            run(vp8_packet(111, b"q", 10, 0, true), 0),
            Some((Some(65_530), None))
        );
        assert_eq!(
            run(vp8_packet(111, b"q", 11, 0, false), 1),
            Some((Some(65_531), None))
        );
        // Same rid, new SSRC and numbers: dropped until its keyframe, which is asked for.
        let asked = Some(Action::NeedKeyframe {
            layer: 0,
            ssrc: 999,
        });
        assert_eq!(
            run(vp8_packet(999, b"q", 40_000, 0, false), 2),
            Some((None, asked))
        );
        assert_eq!(
            run(vp8_packet(999, b"q", 40_001, 0, true), 3),
            Some((Some(65_532), None))
        );
    }

    #[test]
    fn late_packets_of_an_old_epoch_are_dropped() {
        let mut t = simulcast_track();
        let mut f = Forwarder::new(&t, config(None));
        let mut run = |p: Vec<u8>, now| {
            let mut p = p;
            let len = p.len();
            let info = t.receive(&mut p, len, now).ok()?;
            f.forward(&mut p, &info, now)
                .map(|n| RtpHeader::parse(&p[..n]).unwrap().seq)
        };
        assert_eq!(run(vp8_packet(111, b"q", 10, 0, true), 0), Some(65_530));
        // 9 arrives late: older than the keyframe that started the epoch.
        assert_eq!(run(vp8_packet(111, b"q", 9, 0, false), 1), None);
        // 12 then 11 (reordered within the epoch) keep their places.
        assert_eq!(run(vp8_packet(111, b"q", 12, 0, false), 2), Some(65_532));
        assert_eq!(run(vp8_packet(111, b"q", 11, 0, false), 3), Some(65_531));
        // A long epoch: the floor follows, so numbers 40000 ahead are not mistaken for
        // old ones.
        for k in 0..40_000u16 {
            assert!(run(vp8_packet(111, b"q", 13 + k, 0, false), 4).is_some());
        }
    }

    #[test]
    fn nack_answered_from_the_cache_plain_and_rtx() {
        for rtx in [
            None,
            Some(RtxConfig {
                ssrc: 0xFEED,
                payload_type: 101,
            }),
        ] {
            let mut s = Sim::new(None);
            s.fwd = Forwarder::new(
                &s.track,
                ForwarderConfig {
                    rtx,
                    ..config(None)
                },
            );
            let mut sent = Vec::new();
            let mut frame_bytes = Vec::new();
            // Keep the forwarded bytes for comparison.
            s.now += 1;
            for i in 0..20 {
                let key = i == 0;
                let f = s.frame[2];
                s.frame[2] += 1;
                let mut p = vp8_packet(333, b"f", 500 + f as u16, 90 * f, key);
                let len = p.len();
                let info = s.track.receive(&mut p, len, s.now).unwrap();
                let n = s.fwd.forward(&mut p, &info, s.now).unwrap();
                sent.push(RtpHeader::parse(&p[..n]).unwrap().seq);
                frame_bytes.push(p[..n].to_vec());
            }
            let mut out = [0u8; 1600];
            let now = s.now + 100_000;
            let n = s.fwd.resend(&s.track, sent[5], &mut out, now).unwrap();
            match rtx {
                None => assert_eq!(&out[..n], &frame_bytes[5][..], "byte for byte"),
                Some(rtx) => {
                    let h = RtpHeader::parse(&out[..n]).unwrap();
                    assert_eq!((h.ssrc, h.payload_type), (rtx.ssrc, rtx.payload_type));
                    let payload = &out[h.payload()];
                    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), sent[5]);
                    // Unwrapped, it is the packet as first sent.
                    let back = rtp::unwrap_rtx(&mut out[..n], &h, OUT_SSRC, 100).unwrap();
                    assert_eq!(&out[..back], &frame_bytes[5][..]);
                }
            }
            // Not again within a round trip; again after it; unknown numbers not.
            assert_eq!(
                s.fwd.resend(&s.track, sent[5], &mut out, now + 1),
                Err(ResendRefusal::TooSoon)
            );
            assert!(
                s.fwd
                    .resend(&s.track, sent[5], &mut out, now + DEFAULT_ROUND_TRIP_US)
                    .is_ok()
            );
            assert_eq!(
                s.fwd
                    .resend(&s.track, sent[19].wrapping_add(1), &mut out, now),
                Err(ResendRefusal::NotHeld)
            );
            assert_eq!(
                s.fwd.resend(&s.track, sent[3], &mut out[..10], now),
                Err(ResendRefusal::NotHeld)
            );
        }
    }

    /// Review finding: one SRTCP packet could NACK hundreds of packets, each answered
    /// again every 20 ms. A receiver asking for every packet, over and over, gets each
    /// at most once per round trip and no more than half the stream's bytes again.
    #[test]
    fn nacks_for_everything_get_half_the_stream_once_per_round_trip() {
        let mut s = Sim::new(None);
        let mut sent = Vec::new();
        let mut forwarded_bytes = 0;
        for i in 0..300 {
            let key = if i == 0 { Some(2) } else { None };
            let f = s.frame[2];
            s.now += 33_333;
            let mut p = vp8_packet(333, b"f", 500 + f as u16, 90 * f, key.is_some());
            p.resize(1000, 0);
            s.frame[2] += 1;
            let len = p.len();
            let info = s.track.receive(&mut p, len, s.now).unwrap();
            let n = s.fwd.forward(&mut p, &info, s.now).unwrap();
            forwarded_bytes += n;
            sent.push(RtpHeader::parse(&p[..n]).unwrap().seq);
        }
        s.fwd.set_round_trip(200_000);
        let mut out = [0u8; 1600];
        let mut resent_bytes = 0;
        let mut refusals = (0, 0);
        // Every packet asked for ten times over 100 ms (less than the round trip).
        for k in 0..10 {
            for &seq in &sent {
                match s.fwd.resend(&s.track, seq, &mut out, s.now + k * 10_000) {
                    Ok(n) => resent_bytes += n,
                    Err(ResendRefusal::TooSoon) => refusals.0 += 1,
                    Err(ResendRefusal::OverBudget) => refusals.1 += 1,
                    Err(ResendRefusal::NotHeld) => panic!("{seq} is held"),
                }
            }
        }
        assert!(resent_bytes > 0);
        assert!(
            resent_bytes <= RESEND_BURST_BYTES as usize && resent_bytes <= forwarded_bytes / 2,
            "{resent_bytes} of {forwarded_bytes} bytes sent again"
        );
        assert!(refusals.0 > 0 && refusals.1 > 0, "{refusals:?}");
        // The first packet sent again waits for the round trip, then for the budget
        // that new forwarding earns.
        let first = sent[0];
        assert_eq!(
            s.fwd.resend(&s.track, first, &mut out, s.now + 150_000),
            Err(ResendRefusal::TooSoon)
        );
        assert_eq!(
            s.fwd.resend(&s.track, first, &mut out, s.now + 200_000),
            Err(ResendRefusal::OverBudget)
        );
        for _ in 0..3 {
            let f = s.frame[2];
            s.frame[2] += 1;
            let mut p = vp8_packet(333, b"f", 500 + f as u16, 90 * f, false);
            p.resize(1000, 0);
            let len = p.len();
            let info = s.track.receive(&mut p, len, s.now).unwrap();
            s.fwd.forward(&mut p, &info, s.now).unwrap();
        }
        assert!(
            s.fwd
                .resend(&s.track, first, &mut out, s.now + 200_000)
                .is_ok()
        );
    }

    #[test]
    fn retransmission_after_a_switch_keeps_the_old_mapping() {
        let mut s = Sim::new(Some(180));
        let first: Vec<_> = s.tick(&[0, 1, 2], Some(0));
        let (h0, d0) = first[0];
        let original = {
            // Rebuild what the receiver got for that packet from the cache.
            let mut out = [0u8; 1600];
            let n = s.fwd.resend(&s.track, h0.seq, &mut out, s.now).unwrap();
            out[..n].to_vec()
        };
        s.fwd.set_max_height(None);
        s.tick(&[0, 1, 2], None);
        s.tick(&[2, 0, 1], Some(2));
        assert_eq!(s.fwd.current_layer(), Some(2));
        let mut out = [0u8; 1600];
        let now = s.now + DEFAULT_ROUND_TRIP_US;
        let n = s.fwd.resend(&s.track, h0.seq, &mut out, now).unwrap();
        assert_eq!(&out[..n], &original[..]);
        let h = RtpHeader::parse(&out[..n]).unwrap();
        assert_eq!((h.seq, h.timestamp), (h0.seq, h0.timestamp));
        assert_eq!(
            parse_vp8(&out[h.payload()]).unwrap().picture_id,
            d0.picture_id
        );
    }

    #[test]
    fn extensions_are_mapped_blanked_and_mid_rewritten() {
        let t = simulcast_track();
        let mut ext = ExtensionMap::default();
        ext.map(3, 2); // abs-send-time
        ext.set_mid(4, 1, b"7");
        let mut f = Forwarder::new(
            &t,
            ForwarderConfig {
                extensions: ext,
                ..config(None)
            },
        );
        let mut t = t;
        let mut p = packet(
            PT,
            1,
            0,
            111,
            &[(RID_EXT, b"q"), (3, &[1, 2, 3]), (4, b"12"), (9, &[5])],
            &vp8_payload(true, true, 1, 1),
        );
        let len = p.len();
        let info = t.receive(&mut p, len, 0).unwrap();
        let n = f.forward(&mut p, &info, 0).unwrap();
        let h = RtpHeader::parse(&p[..n]).unwrap();
        assert_eq!(h.find_extension(&p, RID_EXT), None, "rid blanked");
        assert_eq!(h.find_extension(&p, 9), None, "unknown blanked");
        assert_eq!(h.extension_value(&p, 2), Some(&[1, 2, 3][..]));
        assert_eq!(
            h.extension_value(&p, 1),
            Some(&b"7"[..]),
            "shorter mid fits"
        );
        assert_eq!(h.find_extension(&p, 3), None);
        let mut c = h.extension.unwrap().cursor();
        let mut ids = Vec::new();
        while let Some(e) = c.next(&p) {
            ids.push(e.id);
        }
        assert_eq!(ids, vec![2, 1]);

        // A mid longer than the publisher's is blanked.
        let mut long = ExtensionMap::default();
        long.set_mid(4, 1, b"123");
        let mut f = Forwarder::new(
            &t,
            ForwarderConfig {
                extensions: long,
                ..config(None)
            },
        );
        let mut p = packet(PT, 2, 0, 111, &[(4, b"12")], &vp8_payload(true, true, 2, 2));
        let len = p.len();
        let info = t.receive(&mut p, len, 0).unwrap();
        let n = f.forward(&mut p, &info, 0).unwrap();
        let h = RtpHeader::parse(&p[..n]).unwrap();
        assert_eq!(h.find_extension(&p, 1), None);
        assert!(!ExtensionMap::default().set_mid(1, 1, &[b'x'; 17]));
    }

    #[test]
    fn transport_wide_number_keeps_its_place_under_the_receivers_id() {
        let mut t = simulcast_track();
        let mut ext = ExtensionMap::default();
        ext.set_transport_cc(5, 3);
        let mut f = Forwarder::new(
            &t,
            ForwarderConfig {
                extensions: ext,
                ..config(None)
            },
        );
        let mut p = packet(
            PT,
            1,
            0,
            111,
            &[(RID_EXT, b"q"), (5, &[0xAB, 0xCD])],
            &vp8_payload(true, true, 1, 1),
        );
        let len = p.len();
        let info = t.receive(&mut p, len, 0).unwrap();
        let n = f.forward(&mut p, &info, 0).unwrap();
        let h = RtpHeader::parse(&p[..n]).unwrap();
        let at = f.transport_seq_at().expect("the packet has one");
        assert_eq!(h.extension_value(&p, 3), Some(&p[at..at + 2]));
        // Without the element, there is nothing to number.
        let mut p = packet(
            PT,
            2,
            0,
            111,
            &[(RID_EXT, b"q")],
            &vp8_payload(false, true, 1, 1),
        );
        let len = p.len();
        let info = t.receive(&mut p, len, 0).unwrap();
        f.forward(&mut p, &info, 0).unwrap();
        assert_eq!(f.transport_seq_at(), None);
    }

    /// Chrome's L1T3 (TIDs 0 2 1 2 ..., every frame with the layer-sync bit, two
    /// packets each): capped to TID 0, then to all again. The receiver sees one stream
    /// without a gap in its numbers or its picture ids, and the way back up goes one
    /// temporal layer at a time.
    #[test]
    fn left_out_temporal_layers_leave_no_gap_in_numbers_or_picture_ids() {
        let mut track = simulcast_track();
        let mut fwd = Forwarder::new(&track, config(None));
        fwd.set_layer_cap(LayerCap::Frames { layer: 0, tid: 0 });
        let mut got = Vec::new();
        let mut seq = SEQ_BASE[0];
        for f in 0..16u32 {
            if f == 7 {
                fwd.set_layer_cap(LayerCap::Any);
            }
            let tid = [0u8, 2, 1, 2][f as usize % 4];
            for part in 0..2 {
                let key = f == 0 && part == 0;
                let mut payload = vp8_payload_sized(key, part == 0, f as u16, (f / 4) as u8, 180);
                payload[5] = tid << 6 | 0x20;
                let ts = TS_BASE[0] + f * 3000;
                let mut p = packet(PT, seq, ts, SSRCS[0], &[(RID_EXT, RIDS[0])], &payload);
                seq = seq.wrapping_add(1);
                let len = p.len();
                let now = 1_000_000 + u64::from(f) * 33_333;
                let info = track.receive(&mut p, len, now).unwrap();
                if let Some(n) = fwd.forward(&mut p, &info, now) {
                    let h = RtpHeader::parse(&p[..n]).unwrap();
                    let d = parse_vp8(&p[h.payload()]).unwrap();
                    got.push((h.seq, d.picture_id.unwrap(), f));
                }
            }
        }
        let frames: Vec<u32> = got.iter().step_by(2).map(|g| g.2).collect();
        assert_eq!(frames, [0, 4, 8, 10, 11, 12, 13, 14, 15]);
        for w in got.windows(2) {
            let ((s0, p0, f0), (s1, p1, f1)) = (w[0], w[1]);
            assert_eq!(s1, s0.wrapping_add(1), "numbers close up: {got:?}");
            let step = if f0 == f1 { 0 } else { 1 };
            assert_eq!(p1, (p0 + step) & 0x7FFF, "picture ids close up: {got:?}");
        }
    }

    #[test]
    fn probe_padding_goes_on_the_rtx_stream_with_the_receivers_number() {
        let t = simulcast_track();
        let mut ext = ExtensionMap::default();
        ext.set_transport_cc(5, 3);
        let rtx = RtxConfig {
            ssrc: 0xBEEF,
            payload_type: 97,
        };
        let mut f = Forwarder::new(
            &t,
            ForwarderConfig {
                extensions: ext.clone(),
                rtx: Some(rtx),
                ..config(None)
            },
        );
        let mut out = [0u8; 1500];
        let mut seqs = Vec::new();
        for _ in 0..2 {
            let n = f.write_padding(&mut out, rtp::MAX_PADDING).unwrap();
            let h = RtpHeader::parse(&out[..n]).unwrap();
            assert_eq!((h.ssrc, h.payload_type), (rtx.ssrc, rtx.payload_type));
            assert!(h.payload().is_empty());
            let at = f.transport_seq_at().unwrap();
            assert_eq!(h.find_extension(&out[..n], 3), Some(at..at + 2));
            seqs.push(h.seq);
        }
        assert_eq!(seqs[1], seqs[0].wrapping_add(1), "the RTX stream's numbers");
        // Without RTX, or without a transport-wide number for the receiver: none.
        f.disable_rtx();
        assert_eq!(f.write_padding(&mut out, 100), None);
        let mut f = Forwarder::new(
            &t,
            ForwarderConfig {
                rtx: Some(rtx),
                ..config(None)
            },
        );
        assert_eq!(f.write_padding(&mut out, 100), None);
    }

    #[test]
    fn audio_is_forwarded_from_the_first_packet() {
        let mut t = Track::new(TrackConfig {
            codec: Codec::Audio,
            clock_rate: 48_000,
            payload_type: 111,
            layers: vec![LayerConfig {
                ssrc: Some(5),
                ..LayerConfig::default()
            }],
            rid_extension: None,
            repaired_rid_extension: None,
            cache_packets: 0,
            nack: false,
        });
        let mut f = Forwarder::new(
            &t,
            ForwarderConfig {
                payload_type: None,
                ..config(None)
            },
        );
        for i in 0..3u16 {
            let mut p = packet(
                111,
                65535u16.wrapping_add(i),
                960 * u32::from(i),
                5,
                &[],
                b"op",
            );
            let len = p.len();
            let info = t.receive(&mut p, len, 0).unwrap();
            let n = f.forward(&mut p, &info, 0).unwrap();
            let h = RtpHeader::parse(&p[..n]).unwrap();
            assert_eq!(h.seq, 65_530 + i);
            assert_eq!(h.timestamp, 7 + 960 * u32::from(i));
            assert_eq!(h.payload_type, 111);
            assert_eq!(f.poll_action(0), None);
        }
        // Audio is not cached to be resent, so the forwarder keeps no history of it: a
        // NACK of a packet just sent is refused as not held.
        assert!(f.history.is_empty());
        let mut out = [0u8; 1500];
        assert_eq!(
            f.resend(&t, 65_531, &mut out, 0),
            Err(ResendRefusal::NotHeld)
        );
        assert_eq!(
            f.retransmit(65_531, b"\x80\x6f\xff\xff", &mut out, 0),
            Err(ResendRefusal::NotHeld)
        );
    }

    #[test]
    fn sender_report_maps_the_publishers_clock() {
        let mut s = Sim::new(None);
        let mut buf = [0u8; 64];
        assert_eq!(
            s.fwd.write_sender_report(&mut buf, &s.track, s.now, 1),
            None
        );
        let got = s.tick(&[2, 1, 0], Some(2));
        let (first, _) = got[0];
        // Without a report from the publisher: our clock, timestamp extrapolated.
        let n = s
            .fwd
            .write_sender_report(&mut buf, &s.track, s.now + 500_000, 42)
            .unwrap();
        let Some(Rtcp::SenderReport(sr)) = RtcpIter::new(&buf[..n]).next() else {
            panic!()
        };
        assert_eq!((sr.ssrc, sr.ntp, sr.packet_count), (OUT_SSRC, 42, 1));
        assert_eq!(sr.rtp_timestamp, first.timestamp.wrapping_add(45_000));
        // The publisher's report of layer 2: RTP time = its frame 0 timestamp at NTP T.
        let t_ntp = 0x0000_1000_0000_0000u64;
        let mut sr_buf = [0u8; 64];
        let m = rtcp::write_sender_report(&mut sr_buf, 333, t_ntp, TS_BASE[2], 0, 0, &[]).unwrap();
        let Some(Rtcp::SenderReport(psr)) = RtcpIter::new(&sr_buf[..m]).next() else {
            panic!()
        };
        assert!(s.track.on_sender_report(&psr, s.now));
        let n = s
            .fwd
            .write_sender_report(&mut buf, &s.track, s.now + 1_000_000, 0)
            .unwrap();
        let Some(Rtcp::SenderReport(sr)) = RtcpIter::new(&buf[..n]).next() else {
            panic!()
        };
        assert_eq!(sr.ntp, t_ntp + (1 << 32));
        // Frame 0 of layer 2 went out with `first.timestamp`; a second later is 90000 on.
        assert_eq!(sr.rtp_timestamp, first.timestamp.wrapping_add(90_000));
        // The receiver's RR quoting it gives the round trip.
        let block = ReportBlock {
            ssrc: OUT_SSRC,
            last_sr: ntp_middle(sr.ntp),
            delay_since_last_sr: 65_536 / 10,
            ..ReportBlock::default()
        };
        let rtt = s
            .fwd
            .round_trip(&block, s.now + 1_000_000 + 150_000)
            .unwrap();
        assert!((49_000..=51_000).contains(&rtt), "rtt {rtt}");
        assert_eq!(
            s.fwd.round_trip(
                &ReportBlock {
                    last_sr: 1,
                    ..block
                },
                s.now
            ),
            None
        );
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(0x1357_9BDF_2468_ACE0);
        let mut t = simulcast_track();
        let mut fwds: Vec<Forwarder> = [None, Some(180), Some(720)]
            .into_iter()
            .map(|h| {
                Forwarder::new(
                    &t,
                    ForwarderConfig {
                        rtx: Some(RtxConfig {
                            ssrc: 9,
                            payload_type: 101,
                        }),
                        extensions: ExtensionMap::default(),
                        ..config(h)
                    },
                )
            })
            .collect();
        let mut buf = [0u8; 128];
        let mut out = [0u8; 128];
        for i in 0..100_000u64 {
            let layer = rng.below(3);
            let base = vp8_packet(SSRCS[layer], RIDS[layer], i as u16, i as u32, i % 7 == 0);
            buf[..base.len()].copy_from_slice(&base);
            for _ in 0..rng.below(4) {
                let at = rng.below(base.len());
                buf[at] = rng.next() as u8;
            }
            let len = base.len() - rng.below(3);
            let now = i * 10_000;
            if let Ok(info) = t.receive(&mut buf, len, now) {
                for f in &mut fwds {
                    out[..len].copy_from_slice(&buf[..len]);
                    let _ = f.forward(&mut out, &info, now);
                    let _ = f.poll_action(now);
                    let seq = rng.next() as u16;
                    let _ = f.resend(&t, seq, &mut out, now);
                }
            }
        }
    }
}
