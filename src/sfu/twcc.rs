//! Transport-wide congestion control feedback, receiver side (sans-IO).
//!
//! Chrome stamps every RTP packet it sends with a transport-wide sequence number
//! (draft-holmer-rmcat-transport-wide-cc-extensions-01, one counter across all its
//! streams) and runs its bandwidth estimator (GoogCC) on the sender side: it only raises
//! its encoder bitrate, and only turns on the upper simulcast layers, when the receiver
//! tells it when each packet arrived. [`TwccRecorder`] is that receiver: the data plane
//! calls [`TwccRecorder::on_packet`] for each packet from a publisher and, when
//! [`TwccRecorder::due`], sends what [`TwccRecorder::write_feedback`] writes: an RTCP
//! transport-cc feedback packet (RTPFB, PT=205, FMT=15).
//!
//! Storage is one fixed ring of arrival times indexed by the unwrapped sequence number,
//! plus the scratch space to lay out one feedback packet; all of it is allocated in
//! [`TwccRecorder::new`] and never again. Sequence numbers come from the network, so
//! every input is tolerated: reordering, duplicates, wrap-around, jumps either way and a
//! clock going backwards never panic and never make us report thousands of phantom
//! losses.

use super::rtcp::{FMT_TWCC, RTPFB};
use super::rtp::{RtpHeader, read_transport_seq};

/// How long unreported packets may wait for their feedback. libwebrtc sends every 50 to
/// 250 ms depending on the bitrate; the short end keeps GoogCC's estimate fresh, and a
/// feedback packet costs a few dozen bytes.
pub(crate) const FEEDBACK_INTERVAL_US: u64 = 50_000;
/// Pending packets that make feedback due before the interval has passed, so one
/// feedback packet stays well within an MTU at high packet rates.
pub(crate) const FEEDBACK_PENDING_PACKETS: u64 = 100;
/// A sequence number this far from the highest one seen (either way) is not a loss or a
/// reordering but a restarted or hostile sender: recording starts afresh there.
pub(crate) const MAX_SEQ_GAP: u64 = 1000;

/// Arrival times kept: the widest window one feedback round may cover. A power of two,
/// larger than [`MAX_SEQ_GAP`] so that a gap never wraps onto pending slots.
const RING: usize = 2048;
/// The ring slot of a packet not (yet) received.
const NOT_RECEIVED: u64 = u64::MAX;
/// Unwrapped sequence numbers start here, so reordered packets before the first one
/// unwrap without going below zero.
const UNWRAP_BASE: u64 = 1 << 32;

/// Receive deltas are in 250 µs ticks; the reference time in 64 ms ticks (2^8 deltas)
/// and 24 bits (it wraps after about 12 days, which the sender handles).
const DELTA_TICK_US: i128 = 250;
const REFERENCE_TICK_US: u64 = 64_000;
const REFERENCE_MASK: u64 = (1 << 24) - 1;

/// RTCP header (4) + sender and media SSRC (8) + base, count, reference time and
/// feedback count (8).
const HEADER_LEN: usize = 20;
/// The longest run a run-length chunk holds (13 bits).
const MAX_RUN: usize = (1 << 13) - 1;

/// Packet status symbols (2 bits; 3 is reserved).
const SYM_NOT_RECEIVED: u8 = 0;
const SYM_SMALL_DELTA: u8 = 1;
const SYM_LARGE_DELTA: u8 = 2;

/// Records the arrival of one publisher's packets by transport-wide sequence number and
/// writes the transport-cc feedback packets that report them.
pub struct TwccRecorder {
    /// Arrival time (µs) of each packet of the pending window by `unwrapped % RING`,
    /// or [`NOT_RECEIVED`].
    arrivals: Box<[u64]>,
    /// Scratch for one feedback packet: status symbol of each reported packet...
    symbols: Box<[u8]>,
    /// ...and the receive delta (250 µs ticks) of each received one, in order.
    deltas: Box<[i16]>,
    started: bool,
    /// Unwrapped sequence number of the first packet not yet reported.
    next_report: u64,
    /// Highest unwrapped sequence number received; the pending window is
    /// `next_report..=highest` (empty when `next_report > highest`), never wider than
    /// the ring, and every slot in it belongs to its sequence number.
    highest: u64,
    /// When feedback last reported everything pending (or the first packet arrived).
    last_feedback: Option<u64>,
    /// Feedback packet count: lets the sender tell lost feedback from no traffic.
    fb_count: u8,
}

/// The layout of one feedback packet, decided before anything is written.
struct Plan {
    /// Packets reported (status count), ending with a received one.
    count: usize,
    /// Received packets among them (entries of `deltas`).
    received: usize,
    delta_bytes: usize,
    /// Reference time in 64 ms ticks, unmasked.
    reference: u64,
}

/// The state without the 2048-entry arrays.
impl std::fmt::Debug for TwccRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwccRecorder")
            .field("next_report", &(self.next_report as u16))
            .field("pending", &self.pending())
            .field("last_feedback", &self.last_feedback)
            .field("fb_count", &self.fb_count)
            .finish()
    }
}

impl Default for TwccRecorder {
    fn default() -> Self {
        Self::new()
    }
}

impl TwccRecorder {
    /// A recorder that has seen no packet.
    pub fn new() -> TwccRecorder {
        TwccRecorder {
            arrivals: vec![NOT_RECEIVED; RING].into_boxed_slice(),
            symbols: vec![SYM_NOT_RECEIVED; RING].into_boxed_slice(),
            deltas: vec![0; RING].into_boxed_slice(),
            started: false,
            next_report: 0,
            highest: 0,
            last_feedback: None,
            fb_count: 0,
        }
    }

    /// A packet with transport-wide sequence number `seq` arrived at `now` (µs,
    /// monotonic). A packet already reported, or older than the pending window (or than
    /// the very first packet), is ignored; so is a duplicate (its first arrival stands).
    pub fn on_packet(&mut self, seq: u16, now: u64) {
        // u64::MAX marks "not received"; a clock there is broken anyway.
        let now = now.min(NOT_RECEIVED - 1);
        self.last_feedback.get_or_insert(now);
        if !self.started {
            self.restart(seq, now);
            return;
        }
        let s = self.unwrap(seq);
        if s > self.highest {
            if s - self.highest > MAX_SEQ_GAP {
                self.restart(seq, now);
            } else {
                self.advance(s, now);
            }
        } else if self.highest - s > MAX_SEQ_GAP {
            self.restart(seq, now);
        } else if s >= self.next_report {
            let slot = &mut self.arrivals[slot(s)];
            if *slot == NOT_RECEIVED {
                *slot = now;
            }
        }
    }

    /// Whether feedback should be sent now: something is unreported and either
    /// [`FEEDBACK_INTERVAL_US`] has passed since the last feedback, or
    /// [`FEEDBACK_PENDING_PACKETS`] are pending. A clock that went backwards counts as
    /// due, so a bad clock cannot silence the feedback.
    pub fn due(&self, now: u64) -> bool {
        let pending = self.pending();
        if pending == 0 {
            return false;
        }
        if pending >= FEEDBACK_PENDING_PACKETS {
            return true;
        }
        match self.last_feedback {
            Some(last) => now < last || now - last >= FEEDBACK_INTERVAL_US,
            None => true,
        }
    }

    /// When [`Self::due`] next turns true without another packet (µs): `None` with
    /// nothing pending.
    pub(crate) fn next_due(&self) -> Option<u64> {
        let pending = self.pending();
        if pending == 0 {
            return None;
        }
        if pending >= FEEDBACK_PENDING_PACKETS {
            return Some(0);
        }
        Some(
            self.last_feedback
                .map_or(0, |last| last + FEEDBACK_INTERVAL_US),
        )
    }

    /// Writes one transport-cc feedback packet covering the unreported packets (as many
    /// as fit `buf`, and up to a receive delta that does not fit 16 bits) into `buf`,
    /// and returns its length; None if nothing is pending or `buf` cannot hold even one
    /// packet's report. What did not fit is left for the next call and keeps
    /// [`Self::due`] true, so call it again while due (or until None) to report
    /// everything now. `sender_ssrc` is our RTCP SSRC,
    /// `media_ssrc` any SSRC of the publisher (Chrome ignores it).
    pub fn write_feedback(
        &mut self,
        buf: &mut [u8],
        sender_ssrc: u32,
        media_ssrc: u32,
        now: u64,
    ) -> Option<usize> {
        let plan = self.plan(buf.len())?;
        let len = self.encode(buf, &plan, sender_ssrc, media_ssrc)?;
        self.next_report = self.next_report.saturating_add(plan.count as u64);
        self.fb_count = self.fb_count.wrapping_add(1);
        // What a full packet or an oversized delta left behind stays due: the interval
        // that made this feedback due has passed for it too.
        if self.pending() == 0 {
            self.last_feedback = Some(now);
        }
        Some(len)
    }

    /// Packets in the pending window (received or not).
    fn pending(&self) -> u64 {
        if !self.started || self.next_report > self.highest {
            return 0;
        }
        self.highest - self.next_report + 1
    }

    /// The unwrapped sequence number nearest to the highest one seen.
    fn unwrap(&self, seq: u16) -> u64 {
        let diff = seq.wrapping_sub(self.highest as u16) as i16;
        self.highest.saturating_add_signed(i64::from(diff))
    }

    /// Starts a fresh window at `seq`: the first packet, or a jump too large to be
    /// losses. Whatever was pending is dropped unreported (GoogCC just never hears of
    /// those packets; with feedback every 50 ms that is at most one interval's worth).
    /// The unwrapped numbering restarts too, so jumps cannot walk it to overflow.
    fn restart(&mut self, seq: u16, now: u64) {
        self.started = true;
        self.highest = UNWRAP_BASE + u64::from(seq);
        self.next_report = self.highest;
        self.arrivals[slot(self.highest)] = now;
    }

    /// Moves the highest sequence number forward to `s` (at most [`MAX_SEQ_GAP`] ahead),
    /// marking the skipped ones not received (yet).
    fn advance(&mut self, s: u64, now: u64) {
        for skipped in self.highest + 1..s {
            self.arrivals[slot(skipped)] = NOT_RECEIVED;
        }
        self.highest = s;
        self.arrivals[slot(s)] = now;
        // Without feedback for a long while the window would outgrow the ring: its
        // oldest packets go unreported rather than being overwritten in place.
        let oldest = s.saturating_sub(RING as u64 - 1);
        if self.next_report < oldest {
            self.next_report = oldest;
        }
    }

    /// Chooses the packets of the next feedback and their symbols and deltas (into the
    /// scratch arrays), stopping before a received packet whose delta does not fit 16
    /// bits or whose report would not fit `cap` bytes.
    fn plan(&mut self, cap: usize) -> Option<Plan> {
        let pending = usize::try_from(self.pending()).ok()?.min(RING);
        let mut plan = Plan {
            count: 0,
            received: 0,
            delta_bytes: 0,
            reference: 0,
        };
        // Where the previous delta put us, in µs: deltas are taken from this rounded
        // position, not from the previous true arrival, so rounding errors do not add up.
        let mut position: Option<i128> = None;
        for i in 0..pending {
            let arrival = self.arrivals[slot(self.next_report + i as u64)];
            if arrival == NOT_RECEIVED {
                self.symbols[i] = SYM_NOT_RECEIVED;
                continue;
            }
            let pos = *position.get_or_insert_with(|| {
                plan.reference = arrival / REFERENCE_TICK_US;
                i128::from(plan.reference * REFERENCE_TICK_US)
            });
            let Some(delta) = delta_ticks(arrival, pos) else {
                break;
            };
            let (symbol, size) = match u8::try_from(delta) {
                Ok(_) => (SYM_SMALL_DELTA, 1),
                Err(_) => (SYM_LARGE_DELTA, 2),
            };
            if max_packet_len(i + 1, plan.delta_bytes + size) > cap {
                break;
            }
            self.symbols[i] = symbol;
            self.deltas[plan.received] = delta;
            plan.received += 1;
            plan.delta_bytes += size;
            plan.count = i + 1;
            position = Some(pos + i128::from(delta) * DELTA_TICK_US);
        }
        (plan.count > 0).then_some(plan)
    }

    /// Writes the planned packet: header, status chunks, deltas, padding.
    fn encode(&self, buf: &mut [u8], plan: &Plan, sender: u32, media: u32) -> Option<usize> {
        let symbols = self.symbols.get(..plan.count)?;
        let chunks = count_chunks(symbols);
        let unpadded = HEADER_LEN + 2 * chunks + plan.delta_bytes;
        let padding = (4 - unpadded % 4) % 4;
        let len = unpadded + padding;
        let mut w = Writer {
            buf: buf.get_mut(..len)?,
            at: 0,
        };
        let p_bit = if padding > 0 { 0x20 } else { 0 };
        w.put(&[0x80 | p_bit | FMT_TWCC, RTPFB])?;
        w.put(&u16::try_from(len / 4 - 1).ok()?.to_be_bytes())?;
        w.put(&sender.to_be_bytes())?;
        w.put(&media.to_be_bytes())?;
        // The low 16 bits of the unwrapped number are the sequence number on the wire.
        w.put(&(self.next_report as u16).to_be_bytes())?;
        w.put(&u16::try_from(plan.count).ok()?.to_be_bytes())?;
        let reference = ((plan.reference & REFERENCE_MASK) as u32) << 8;
        w.put(&(reference | u32::from(self.fb_count)).to_be_bytes())?;
        let mut rest = symbols;
        while !rest.is_empty() {
            let (chunk, used) = next_chunk(rest);
            w.put(&chunk.to_be_bytes())?;
            rest = rest.get(used..)?;
        }
        for &delta in self.deltas.get(..plan.received)? {
            match u8::try_from(delta) {
                Ok(small) => w.put(&[small])?,
                Err(_) => w.put(&delta.to_be_bytes())?,
            }
        }
        if padding > 0 {
            w.put(&[0; 3][..padding - 1])?;
            w.put(&[padding as u8])?;
        }
        (w.at == len).then_some(len)
    }
}

/// The ring slot of an unwrapped sequence number.
fn slot(unwrapped: u64) -> usize {
    (unwrapped % RING as u64) as usize
}

/// The receive delta from `position` to `arrival` in 250 µs ticks, rounded to nearest;
/// None if it does not fit 16 bits (more than ~8 s either way).
fn delta_ticks(arrival: u64, position: i128) -> Option<i16> {
    let us = i128::from(arrival) - position;
    i16::try_from((us + DELTA_TICK_US / 2).div_euclid(DELTA_TICK_US)).ok()
}

/// An upper bound of the packet length for `count` statuses: no chunk but the last
/// covers fewer than 7 of them (see [`next_chunk`]).
fn max_packet_len(count: usize, delta_bytes: usize) -> usize {
    let unpadded = HEADER_LEN + 2 * count.div_ceil(7) + delta_bytes;
    unpadded.next_multiple_of(4)
}

fn count_chunks(mut symbols: &[u8]) -> usize {
    let mut n = 0;
    while !symbols.is_empty() {
        let (_, used) = next_chunk(symbols);
        symbols = symbols.get(used..).unwrap_or_default();
        n += 1;
    }
    n
}

/// The next status chunk for `symbols` (not empty) and how many symbols it covers:
/// a run-length chunk for a run of 14 or more (or the whole rest), else a one-bit
/// vector of 14 if none of them has a large delta, else a two-bit vector of 7. Vectors
/// at the end are padded with "not received", which the status count excludes.
fn next_chunk(symbols: &[u8]) -> (u16, usize) {
    let first = symbols.first().copied().unwrap_or(SYM_NOT_RECEIVED);
    let run = symbols
        .iter()
        .take(MAX_RUN)
        .take_while(|&&s| s == first)
        .count();
    if run >= 14 || run == symbols.len() {
        return ((u16::from(first) << 13) | run as u16, run);
    }
    let one_bit = &symbols[..symbols.len().min(14)];
    if one_bit.iter().all(|&s| s != SYM_LARGE_DELTA) {
        let bits = one_bit
            .iter()
            .enumerate()
            .fold(0u16, |acc, (j, &s)| acc | (u16::from(s) << (13 - j)));
        return (0x8000 | bits, one_bit.len());
    }
    let two_bit = &symbols[..symbols.len().min(7)];
    let bits = two_bit.iter().enumerate().fold(0u16, |acc, (j, &s)| {
        acc | (u16::from(s & 3) << (12 - 2 * j))
    });
    (0xC000 | bits, two_bit.len())
}

/// Appends to a buffer without ever indexing out of it.
struct Writer<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Option<()> {
        let end = self.at.checked_add(bytes.len())?;
        self.buf.get_mut(self.at..end)?.copy_from_slice(bytes);
        self.at = end;
        Some(())
    }
}

/// Transport-cc feedback to one publisher: the arrival time of every packet by its
/// transport-wide sequence number, reported every few tens of milliseconds.
pub(crate) struct TransportFeedback {
    /// The publisher's id of the transport-wide sequence number extension.
    ext: u8,
    recorder: TwccRecorder,
    /// An SSRC of the publisher, for the feedback's media SSRC field.
    media_ssrc: Option<u32>,
}

impl std::fmt::Debug for TransportFeedback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransportFeedback")
            .field("ext", &self.ext)
            .field("media_ssrc", &self.media_ssrc)
            .finish_non_exhaustive()
    }
}

impl TransportFeedback {
    pub(crate) fn new(ext: u8) -> TransportFeedback {
        TransportFeedback {
            ext,
            recorder: TwccRecorder::new(),
            media_ssrc: None,
        }
    }

    /// Notes the arrival (`now`, µs) of the decrypted RTP packet `pkt` (its header read
    /// into `header`).
    pub(crate) fn on_rtp(&mut self, pkt: &[u8], header: &RtpHeader, now: u64) {
        let Some(seq) = header
            .extension_value(pkt, self.ext)
            .and_then(read_transport_seq)
        else {
            return;
        };
        self.media_ssrc.get_or_insert(header.ssrc);
        self.recorder.on_packet(seq, now);
    }

    /// When feedback is next due without another packet (µs).
    pub(crate) fn next_due(&self) -> Option<u64> {
        self.media_ssrc.and(self.recorder.next_due())
    }

    /// Writes the feedback due by `now` into `out[..room]`, one RTCP packet at a time,
    /// handing each to `emit(out, len)` (which encrypts it in place, in the room behind
    /// `len`, and sends it). `sender_ssrc` is our RTCP SSRC.
    pub(crate) fn write_due(
        &mut self,
        out: &mut [u8],
        room: usize,
        sender_ssrc: u32,
        now: u64,
        mut emit: impl FnMut(&mut [u8], usize),
    ) {
        let Some(media_ssrc) = self.media_ssrc else {
            return;
        };
        let room = room.min(out.len());
        // A long gap can take more than one packet; each round reports what fits.
        for _ in 0..4 {
            if !self.recorder.due(now) {
                return;
            }
            let Some(n) =
                self.recorder
                    .write_feedback(&mut out[..room], sender_ssrc, media_ssrc, now)
            else {
                return;
            };
            emit(out, n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtcp::transport_feedbacks::transport_layer_cc::{
        PacketStatusChunk, SymbolTypeTcc, TransportLayerCc,
    };

    const SENDER: u32 = 0x1111_2222;
    const MEDIA: u32 = 0x3333_4444;

    /// One reported packet: its sequence number and arrival time, if received.
    type Report = (u16, Option<i64>);

    /// Parses one feedback packet with webrtc-rs and checks the framing.
    fn parse(bytes: &[u8]) -> TransportLayerCc {
        assert_eq!(bytes.len() % 4, 0, "32-bit aligned");
        assert_eq!(bytes[0] >> 6, 2);
        assert_eq!(bytes[0] & 0x1f, 15);
        assert_eq!(bytes[1], 205);
        let words = u16::from_be_bytes([bytes[2], bytes[3]]) as usize;
        assert_eq!((words + 1) * 4, bytes.len());
        let padded = bytes[0] & 0x20 != 0;
        if padded {
            let pad = usize::from(bytes[bytes.len() - 1]);
            assert!((1..=3).contains(&pad));
        }
        let mut packets = rtcp::packet::unmarshal(&mut &bytes[..]).expect("webrtc-rs parses it");
        assert_eq!(packets.len(), 1);
        let packet = packets.remove(0);
        assert_eq!(packet.header().padding, padded);
        let fb = packet
            .as_any()
            .downcast_ref::<TransportLayerCc>()
            .expect("a transport-cc packet")
            .clone();
        assert_eq!(fb.sender_ssrc, SENDER);
        assert_eq!(fb.media_ssrc, MEDIA);
        fb
    }

    /// Every reported packet with its reconstructed arrival time (µs).
    fn decode(fb: &TransportLayerCc) -> Vec<Report> {
        let mut statuses = Vec::new();
        for chunk in &fb.packet_chunks {
            match chunk {
                PacketStatusChunk::RunLengthChunk(c) => {
                    statuses.extend(std::iter::repeat_n(
                        c.packet_status_symbol,
                        c.run_length.into(),
                    ));
                }
                PacketStatusChunk::StatusVectorChunk(c) => statuses.extend(&c.symbol_list),
            }
        }
        statuses.truncate(fb.packet_status_count.into());
        assert_eq!(statuses.len(), usize::from(fb.packet_status_count));
        let mut time = i64::from(fb.reference_time) * 64_000;
        let mut deltas = fb.recv_deltas.iter();
        let mut out = Vec::new();
        for (i, status) in statuses.iter().enumerate() {
            let seq = fb.base_sequence_number.wrapping_add(i as u16);
            if *status == SymbolTypeTcc::PacketNotReceived {
                out.push((seq, None));
                continue;
            }
            let delta = deltas.next().expect("a delta per received packet");
            assert_eq!(delta.type_tcc_packet, *status);
            time += delta.delta;
            out.push((seq, Some(time)));
        }
        assert!(deltas.next().is_none());
        out
    }

    fn write(rec: &mut TwccRecorder, now: u64) -> Option<Vec<u8>> {
        let mut buf = [0u8; 1200];
        let n = rec.write_feedback(&mut buf, SENDER, MEDIA, now)?;
        Some(buf[..n].to_vec())
    }

    /// Writes feedback until nothing is pending; all reports, packet by packet.
    fn drain(rec: &mut TwccRecorder, now: u64) -> Vec<Vec<Report>> {
        let mut out = Vec::new();
        while let Some(bytes) = write(rec, now) {
            out.push(decode(&parse(&bytes)));
            assert!(out.len() < 100, "feedback never ends");
        }
        out
    }

    /// Asserts the reports say exactly `expected` (seq, arrival µs or None), each time
    /// within 250 µs.
    fn assert_reports(reports: &[Report], expected: &[(u16, Option<u64>)]) {
        assert_eq!(reports.len(), expected.len(), "{reports:?}");
        for (&(seq, got), &(want_seq, want)) in reports.iter().zip(expected) {
            assert_eq!(seq, want_seq);
            match (got, want) {
                (None, None) => {}
                (Some(g), Some(w)) => {
                    assert!((g - w as i64).abs() <= 250, "seq {seq}: {g} vs {w}");
                }
                _ => panic!("seq {seq}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn in_order_all_received() {
        let mut rec = TwccRecorder::new();
        let start = 5_000_123;
        let expected: Vec<_> = (0..50u16)
            .map(|i| (100 + i, Some(start + u64::from(i) * 1_337)))
            .collect();
        for &(seq, t) in &expected {
            rec.on_packet(seq, t.unwrap());
        }
        let reports = drain(&mut rec, 6_000_000);
        assert_eq!(reports.len(), 1);
        assert_reports(&reports[0], &expected);
    }

    #[test]
    fn accumulated_deltas_do_not_drift() {
        // 1337 µs is not a multiple of 250: per-delta rounding would drift 13 µs a packet.
        let mut rec = TwccRecorder::new();
        let expected: Vec<_> = (0..900u16)
            .map(|i| (i, Some(1_000_000 + u64::from(i) * 1_337)))
            .collect();
        for &(seq, t) in &expected {
            rec.on_packet(seq, t.unwrap());
        }
        let reports: Vec<_> = drain(&mut rec, 3_000_000).concat();
        assert_reports(&reports, &expected);
        for (&(_, got), &(_, want)) in reports.iter().zip(&expected) {
            assert!((got.unwrap() - want.unwrap() as i64).abs() <= 125);
        }
    }

    #[test]
    fn losses_are_reported_not_received() {
        let mut rec = TwccRecorder::new();
        let received = [10u16, 11, 14, 15, 16, 40, 41, 43];
        for (i, &seq) in received.iter().enumerate() {
            rec.on_packet(seq, 1_000_000 + i as u64 * 5_000);
        }
        let expected: Vec<_> = (10..=43u16)
            .map(|seq| {
                let i = received.iter().position(|&s| s == seq);
                (seq, i.map(|i| 1_000_000 + i as u64 * 5_000))
            })
            .collect();
        let reports = drain(&mut rec, 2_000_000);
        assert_eq!(reports.len(), 1);
        assert_reports(&reports[0], &expected);
    }

    #[test]
    fn long_loss_runs_are_run_length_encoded() {
        let mut rec = TwccRecorder::new();
        rec.on_packet(0, 1_000);
        rec.on_packet(900, 2_000);
        let bytes = write(&mut rec, 3_000).unwrap();
        // header, received, run of 899 lost, received, two deltas: no per-loss cost.
        assert!(bytes.len() <= 32, "{} bytes", bytes.len());
        let reports = decode(&parse(&bytes));
        assert_eq!(reports.len(), 901);
        assert_eq!(reports.iter().filter(|r| r.1.is_some()).count(), 2);
        assert_eq!(reports[900], (900, Some(2_000)));
    }

    #[test]
    fn reordered_packet_fills_its_slot() {
        let mut rec = TwccRecorder::new();
        rec.on_packet(1, 10_000);
        rec.on_packet(3, 12_000);
        rec.on_packet(2, 13_000); // late, still pending
        rec.on_packet(4, 14_000);
        let reports = drain(&mut rec, 20_000);
        assert_reports(
            &reports[0],
            &[
                (1, Some(10_000)),
                (2, Some(13_000)),
                (3, Some(12_000)),
                (4, Some(14_000)),
            ],
        );
        // Too late: 2 was already reported, 0 is older than any window.
        rec.on_packet(2, 21_000);
        rec.on_packet(0, 21_000);
        assert!(write(&mut rec, 22_000).is_none());
    }

    #[test]
    fn late_packet_after_report_is_ignored_and_gap_stays_lost() {
        let mut rec = TwccRecorder::new();
        rec.on_packet(1, 10_000);
        rec.on_packet(3, 11_000);
        let first = drain(&mut rec, 12_000);
        assert_reports(
            &first[0],
            &[(1, Some(10_000)), (2, None), (3, Some(11_000))],
        );
        rec.on_packet(2, 13_000);
        rec.on_packet(4, 14_000);
        let second = drain(&mut rec, 15_000);
        assert_reports(&second[0], &[(4, Some(14_000))]);
    }

    #[test]
    fn duplicates_keep_the_first_arrival() {
        let mut rec = TwccRecorder::new();
        rec.on_packet(7, 10_000);
        rec.on_packet(8, 11_000);
        rec.on_packet(8, 19_000);
        rec.on_packet(7, 20_000);
        let reports = drain(&mut rec, 30_000);
        assert_reports(&reports[0], &[(7, Some(10_000)), (8, Some(11_000))]);
    }

    #[test]
    fn wraps_around_65535() {
        let mut rec = TwccRecorder::new();
        let seqs = [65_530u16, 65_531, 65_533, 65_534, 65_535, 0, 1, 3];
        for (i, &seq) in seqs.iter().enumerate() {
            rec.on_packet(seq, 100_000 + i as u64 * 2_000);
        }
        let reports = drain(&mut rec, 200_000);
        assert_eq!(reports.len(), 1);
        let expected: Vec<_> = (0..10u16)
            .map(|i| {
                let seq = 65_530u16.wrapping_add(i);
                let at = seqs.iter().position(|&s| s == seq);
                (seq, at.map(|at| 100_000 + at as u64 * 2_000))
            })
            .collect();
        assert_reports(&reports[0], &expected);
        // And the next window continues after the wrap.
        rec.on_packet(4, 300_000);
        assert_reports(&drain(&mut rec, 310_000)[0], &[(4, Some(300_000))]);
    }

    #[test]
    fn large_delta_over_64ms() {
        let mut rec = TwccRecorder::new();
        rec.on_packet(1, 1_000_000);
        rec.on_packet(2, 1_070_000); // 70 ms: over a one-byte delta
        rec.on_packet(3, 1_071_000);
        rec.on_packet(4, 3_000_000); // ~1.9 s
        let fb = parse(&write(&mut rec, 3_100_000).unwrap());
        let kinds: Vec<_> = fb.recv_deltas.iter().map(|d| d.type_tcc_packet).collect();
        assert_eq!(kinds[1], SymbolTypeTcc::PacketReceivedLargeDelta);
        assert_eq!(kinds[2], SymbolTypeTcc::PacketReceivedSmallDelta);
        assert_eq!(kinds[3], SymbolTypeTcc::PacketReceivedLargeDelta);
        assert_reports(
            &decode(&fb),
            &[
                (1, Some(1_000_000)),
                (2, Some(1_070_000)),
                (3, Some(1_071_000)),
                (4, Some(3_000_000)),
            ],
        );
    }

    #[test]
    fn negative_delta_from_reordered_arrival() {
        let mut rec = TwccRecorder::new();
        rec.on_packet(1, 1_000_000);
        rec.on_packet(3, 1_001_000); // seq 3 overtakes seq 2
        rec.on_packet(2, 1_003_000);
        let fb = parse(&write(&mut rec, 1_100_000).unwrap());
        assert!(fb.recv_deltas.iter().any(|d| d.delta < 0));
        assert_reports(
            &decode(&fb),
            &[
                (1, Some(1_000_000)),
                (2, Some(1_003_000)),
                (3, Some(1_001_000)),
            ],
        );
    }

    #[test]
    fn delta_beyond_16_bits_ends_the_packet() {
        let mut rec = TwccRecorder::new();
        rec.on_packet(1, 1_000_000);
        rec.on_packet(2, 1_001_000);
        rec.on_packet(4, 20_000_000); // 19 s later: no i16 delta reaches it
        rec.on_packet(5, 20_001_000);
        let reports = drain(&mut rec, 21_000_000);
        assert_eq!(reports.len(), 2);
        assert_reports(&reports[0], &[(1, Some(1_000_000)), (2, Some(1_001_000))]);
        assert_reports(
            &reports[1],
            &[(3, None), (4, Some(20_000_000)), (5, Some(20_001_000))],
        );
    }

    #[test]
    fn window_larger_than_one_packet_is_split_without_gaps_or_overlaps() {
        let mut rec = TwccRecorder::new();
        // Mixed small and large deltas and some losses, so all chunk kinds appear.
        let mut expected = Vec::new();
        let mut t = 1_000_000u64;
        for i in 0..1_900u16 {
            let seq = 60_000u16.wrapping_add(i);
            t += if i % 5 == 0 { 70_000 } else { 800 };
            if i % 11 == 3 {
                expected.push((seq, None));
            } else {
                rec.on_packet(seq, t);
                expected.push((seq, Some(t)));
            }
        }
        let mut small = [0u8; 300];
        let mut all = Vec::new();
        let mut packets = 0;
        while let Some(n) = rec.write_feedback(&mut small, SENDER, MEDIA, t) {
            assert!(n <= small.len());
            all.extend(decode(&parse(&small[..n])));
            packets += 1;
        }
        assert!(packets > 2);
        assert_reports(&all, &expected);
    }

    #[test]
    fn feedback_count_increments_and_wraps() {
        let mut rec = TwccRecorder::new();
        for i in 0..300u16 {
            rec.on_packet(i, 1_000 + u64::from(i) * 1_000);
            let fb = parse(&write(&mut rec, 2_000 + u64::from(i) * 1_000).unwrap());
            assert_eq!(fb.fb_pkt_count, i as u8);
            assert_eq!(fb.base_sequence_number, i);
            assert_eq!(fb.packet_status_count, 1);
        }
    }

    #[test]
    fn due_after_interval_or_many_packets() {
        let mut rec = TwccRecorder::new();
        assert!(!rec.due(0));
        rec.on_packet(1, 1_000_000);
        assert!(!rec.due(1_000_000));
        assert!(!rec.due(1_000_000 + FEEDBACK_INTERVAL_US - 1));
        assert!(rec.due(1_000_000 + FEEDBACK_INTERVAL_US));
        write(&mut rec, 1_060_000).unwrap();
        assert!(!rec.due(2_000_000), "nothing pending");
        rec.on_packet(2, 1_070_000);
        assert!(!rec.due(1_070_000));
        assert!(rec.due(1_060_000 + FEEDBACK_INTERVAL_US));
        // Many pending packets make it due at once.
        for seq in 3..3 + FEEDBACK_PENDING_PACKETS as u16 {
            rec.on_packet(seq, 1_080_000);
        }
        assert!(rec.due(1_080_000));
        // A clock that went backwards does not silence feedback.
        write(&mut rec, 1_080_000).unwrap();
        rec.on_packet(200, 1_090_000);
        assert!(rec.due(500_000));
    }

    #[test]
    fn split_feedback_stays_due_until_everything_is_reported() {
        let mut rec = TwccRecorder::new();
        rec.on_packet(1, 1_000_000);
        rec.on_packet(2, 1_001_000);
        rec.on_packet(3, 20_000_000); // too far for a 16-bit delta from 2
        let now = 20_100_000;
        assert!(rec.due(now));
        write(&mut rec, now).unwrap();
        assert!(rec.due(now), "3 is left");
        write(&mut rec, now).unwrap();
        assert!(!rec.due(now));
        assert!(write(&mut rec, now).is_none());
    }

    #[test]
    fn big_sequence_jump_starts_a_new_window() {
        let mut rec = TwccRecorder::new();
        rec.on_packet(10, 1_000_000);
        rec.on_packet(11, 1_001_000);
        assert_eq!(drain(&mut rec, 1_010_000).len(), 1);
        rec.on_packet(12, 1_020_000);
        rec.on_packet(30_000, 1_021_000); // not 29988 losses
        rec.on_packet(30_001, 1_022_000);
        let reports = drain(&mut rec, 1_030_000);
        assert_eq!(reports.len(), 1);
        assert_reports(
            &reports[0],
            &[(30_000, Some(1_021_000)), (30_001, Some(1_022_000))],
        );
        // A far jump backwards (a restarted sender) also starts afresh.
        rec.on_packet(5, 1_040_000);
        rec.on_packet(6, 1_041_000);
        assert_reports(
            &drain(&mut rec, 1_050_000)[0],
            &[(5, Some(1_040_000)), (6, Some(1_041_000))],
        );
    }

    #[test]
    fn window_wider_than_the_ring_drops_its_oldest() {
        let mut rec = TwccRecorder::new();
        for i in 0..3_000u16 {
            rec.on_packet(i, 1_000_000 + u64::from(i) * 100);
        }
        let all: Vec<_> = drain(&mut rec, 2_000_000).concat();
        assert_eq!(all.len(), RING);
        assert_eq!(all[0].0, 3_000 - RING as u16);
        assert!(all.iter().all(|r| r.1.is_some()));
        assert_eq!(all.last().unwrap().0, 2_999);
    }

    #[test]
    fn small_buffers_and_empty_state() {
        let mut rec = TwccRecorder::new();
        let mut buf = [0u8; 64];
        assert_eq!(rec.write_feedback(&mut buf, SENDER, MEDIA, 0), None);
        rec.on_packet(1, 1_000);
        rec.on_packet(2, 101_000); // a two-byte delta: 25 bytes, padded to 28
        for len in 0..24 {
            assert_eq!(
                rec.write_feedback(&mut buf[..len], SENDER, MEDIA, 0),
                None,
                "{len}"
            );
        }
        // 24 bytes hold one packet's report; the other follows.
        let n = rec
            .write_feedback(&mut buf[..24], SENDER, MEDIA, 0)
            .unwrap();
        assert_reports(&decode(&parse(&buf[..n])), &[(1, Some(1_000))]);
        let n = rec
            .write_feedback(&mut buf[..24], SENDER, MEDIA, 0)
            .unwrap();
        assert_reports(&decode(&parse(&buf[..n])), &[(2, Some(101_000))]);
    }

    #[test]
    fn extreme_inputs_never_panic_and_stay_parseable() {
        let mut rec = TwccRecorder::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut buf = [0u8; 1200];
        let mut seq = 0u16;
        for round in 0..20_000u64 {
            let r = next();
            seq = match r % 8 {
                0 => r as u16,                                  // anywhere
                1 => seq.wrapping_sub((r >> 8) as u16 % 2_000), // backwards
                2 => seq.wrapping_add((r >> 8) as u16 % 1_200), // gaps
                _ => seq.wrapping_add(1),
            };
            let now = match (r >> 20) % 6 {
                0 => u64::MAX,
                1 => 0,
                2 => r >> 24, // anywhere, often backwards
                _ => round * 1_000,
            };
            rec.on_packet(seq, now);
            let _ = rec.due(now);
            if r % 7 == 0 {
                let len = (r >> 40) as usize % buf.len();
                if let Some(n) = rec.write_feedback(&mut buf[..len], SENDER, MEDIA, now) {
                    assert!(n <= len);
                    // webrtc-rs reads the 24-bit reference time unsigned; it parses anyway.
                    parse(&buf[..n]);
                }
            }
        }
    }
}
