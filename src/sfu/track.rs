//! A published track as the SFU receives it: up to three simulcast layers, each with its
//! own SSRC (and RTX SSRC), reception statistics, packet cache and NACK generator, plus
//! the keyframe-request throttle that stands between many receivers and the publisher.
//!
//! Every packet from the publisher goes through [`Track::receive`] once, however many
//! receivers it goes to: the header and codec payload are read there, and the result, an
//! [`Incoming`], is what each receiver's [`Forwarder`](super::forward::Forwarder) works
//! from. Layers that learn their SSRC from the packets (simulcast by rid, RFC 8852) are
//! bound here on first sight.

use super::codec::{Codec, Vp8Descriptor, parse_vp8};
use super::nack::{Arrival, NackGenerator, PacketCache};
use super::report::{ReceiveStats, SrInfo};
use super::rtcp::{self, MAX_REPORT_BLOCKS, ReportBlock, SenderReport};
use super::rtp::{RtpHeader, unwrap_rtx};
use super::simulcast::{LAYER_TIMEOUT_US, Layers, MAX_LAYERS};

/// Keyframe requests (PLI/FIR) to one publisher SSRC are sent at most this often: each
/// one costs the publisher a large frame, and a keyframe answers every receiver at once.
pub(crate) const KEYFRAME_INTERVAL_US: u64 = 500_000;
/// Most sequence numbers put in one NACK per layer and call.
const NACKS_PER_CALL: usize = 64;

/// One encoding of a published track, as the SDP describes it.
#[derive(Debug, Clone, Default)]
pub struct LayerConfig {
    /// The rid (RFC 8851), for layers whose SSRCs are learned from the rid extension.
    pub rid: Option<String>,
    /// The media SSRC, if the SDP names it (`a=ssrc-group` or `a=ssrc`).
    pub ssrc: Option<u32>,
    /// The RTX SSRC paired with `ssrc`, if negotiated.
    pub rtx_ssrc: Option<u32>,
    /// Frame height if known (0 = unknown); VP8 keyframes update it.
    pub height: u16,
}

/// What the SDP says of a published track, for [`Track::new`].
#[derive(Debug, Clone)]
pub struct TrackConfig {
    /// The negotiated codec.
    pub codec: Codec,
    /// RTP clock rate in Hz (90 000 for video, 48 000 for Opus).
    pub clock_rate: u32,
    /// The media payload type the publisher uses; RTX packets are turned back into it
    /// and other payload types are dropped.
    pub payload_type: u8,
    /// 1..=3 layers, lowest first.
    pub layers: Vec<LayerConfig>,
    /// The publisher's extension ids of rid and repaired-rid, where negotiated.
    pub rid_extension: Option<u8>,
    /// Repaired-rid: names the layer of an RTX packet.
    pub repaired_rid_extension: Option<u8>,
    /// Packets cached per layer for answering NACKs (0: none, e.g. audio).
    pub cache_packets: usize,
    /// Whether to ask the publisher for lost packets.
    pub nack: bool,
}

/// A packet that `Track::receive` refused, for the drop counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// Not RTP, or cut short.
    Malformed,
    /// An SSRC no layer has, and no rid to learn it from.
    UnknownSsrc,
    /// A payload type the track did not negotiate.
    PayloadType,
    /// Already received (found in the cache).
    Duplicate,
    /// RTX padding without a packet in it (bandwidth probing).
    Padding,
}

/// A received packet, read once for all receivers.
#[derive(Debug, Clone, Copy)]
pub struct Incoming {
    pub(crate) layer: u8,
    /// Length of the packet (RTX already unwrapped).
    pub len: usize,
    pub(crate) header: RtpHeader,
    /// A receiver may start here (first packet of a keyframe, or any audio packet).
    pub(crate) switch_point: bool,
    /// The VP8 payload descriptor, offsets relative to the payload.
    pub(crate) vp8: Option<Vp8Descriptor>,
    pub(crate) layers: Layers,
    /// It came as RTX, or filled a gap.
    pub retransmission: bool,
}

/// A keyframe request to send to the publisher now, as a PLI (or FIR with `fir_seq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyframeRequest {
    /// The layer (0 = lowest) the request is for.
    pub layer: u8,
    /// The publisher's SSRC of that layer.
    pub ssrc: u32,
    pub(crate) fir_seq: u8,
}

struct Layer {
    rid: Option<Box<[u8]>>,
    rtx_ssrc: Option<u32>,
    last_packet: u64,
    stats: ReceiveStats,
    cache: Option<PacketCache>,
    nack: Option<NackGenerator>,
    /// When a keyframe request was last sent, and whether another one waits.
    keyframe_sent: Option<u64>,
    keyframe_pending: bool,
    fir_seq: u8,
}

/// One published track: its layers' receive state, NACK cache and keyframe requests; [`Forwarder`](super::forward::Forwarder)s read from it.
pub struct Track {
    codec: Codec,
    clock_rate: u32,
    payload_type: u8,
    rid_extension: Option<u8>,
    repaired_rid_extension: Option<u8>,
    layers: Vec<Layer>,
    view: Layers,
}

impl Track {
    /// Allocates every cache and table the track will use; nothing later allocates.
    /// Layers past [`MAX_LAYERS`] are ignored; no layer at all makes one without SSRC.
    pub fn new(config: TrackConfig) -> Track {
        let mut configs = config.layers;
        configs.truncate(MAX_LAYERS);
        if configs.is_empty() {
            configs.push(LayerConfig::default());
        }
        let mut view = Layers {
            count: configs.len() as u8,
            ..Layers::default()
        };
        let layers = configs
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                view.heights[i] = c.height;
                view.ssrcs[i] = c.ssrc;
                Layer {
                    rid: c.rid.map(|r| r.into_bytes().into_boxed_slice()),
                    rtx_ssrc: c.rtx_ssrc,
                    last_packet: 0,
                    stats: ReceiveStats::new(config.clock_rate),
                    cache: (config.cache_packets > 0)
                        .then(|| PacketCache::new(config.cache_packets)),
                    nack: config.nack.then(NackGenerator::new),
                    keyframe_sent: None,
                    keyframe_pending: false,
                    fir_seq: 0,
                }
            })
            .collect();
        Track {
            codec: config.codec,
            clock_rate: config.clock_rate.max(1),
            payload_type: config.payload_type,
            rid_extension: config.rid_extension,
            repaired_rid_extension: config.repaired_rid_extension,
            layers,
            view,
        }
    }

    pub(crate) fn codec(&self) -> Codec {
        self.codec
    }

    pub(crate) fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    /// The layers as they are now.
    pub(crate) fn layers(&self) -> &Layers {
        &self.view
    }

    /// The layer with media or RTX SSRC `ssrc`.
    pub(crate) fn layer_of(&self, ssrc: u32) -> Option<u8> {
        (0..self.layers.len() as u8).find(|&l| {
            self.view.ssrc(l) == Some(ssrc) || self.layers[usize::from(l)].rtx_ssrc == Some(ssrc)
        })
    }

    /// Sets a layer's height (from the SDP, or observed by the caller).
    pub fn set_height(&mut self, layer: u8, height: u16) {
        if let Some(h) = self.view.heights.get_mut(usize::from(layer))
            && *h != height
        {
            *h = height;
            self.view.generation = self.view.generation.wrapping_add(1);
        }
    }

    /// Reads, checks, counts and caches a packet from the publisher, `buf[..len]`, at
    /// `now` (monotonic microseconds). An RTX packet is turned back into the packet it
    /// repairs, in place.
    pub fn receive(&mut self, buf: &mut [u8], len: usize, now: u64) -> Result<Incoming, Dropped> {
        let header = buf
            .get(..len)
            .and_then(RtpHeader::parse)
            .ok_or(Dropped::Malformed)?;
        self.receive_parsed(buf, len, header, now)
    }

    /// [`Track::receive`] of a packet whose header the caller has read already:
    /// `header` is `RtpHeader::parse(&buf[..len])`.
    pub(crate) fn receive_parsed(
        &mut self,
        buf: &mut [u8],
        len: usize,
        mut header: RtpHeader,
        now: u64,
    ) -> Result<Incoming, Dropped> {
        let pkt = buf.get_mut(..len).ok_or(Dropped::Malformed)?;
        let (layer, rtx) = self.route(pkt, &header)?;
        let mut len = len;
        if rtx {
            let ssrc = self.view.ssrc(layer).ok_or(Dropped::UnknownSsrc)?;
            len = unwrap_rtx(pkt, &header, ssrc, self.payload_type).ok_or(Dropped::Padding)?;
            header = RtpHeader::parse(&pkt[..len]).ok_or(Dropped::Malformed)?;
        }
        if header.payload_type != self.payload_type {
            return Err(Dropped::PayloadType);
        }
        let pkt = &buf[..len];
        let payload = &pkt[header.payload()];
        // A padding-only packet on the media SSRC is forwarded as it is: dropping it
        // would leave a gap in the receivers' sequence numbers that they ask after.
        let vp8 = match self.codec {
            Codec::Vp8 if !payload.is_empty() => {
                Some(parse_vp8(payload).ok_or(Dropped::Malformed)?)
            }
            _ => None,
        };
        let switch_point = !payload.is_empty() && self.codec.switch_point(payload, vp8.as_ref());

        let l = &mut self.layers[usize::from(layer)];
        if l.cache.as_ref().is_some_and(|c| c.contains(header.seq)) {
            return Err(Dropped::Duplicate);
        }
        let mut retransmission = rtx;
        if let Some(nack) = &mut l.nack {
            match nack.on_packet(header.seq, now) {
                Arrival::Recovered => retransmission = true,
                // Too many lost to repair: every receiver will need a keyframe.
                Arrival::Jump if self.codec != Codec::Audio => l.keyframe_pending = true,
                Arrival::Jump => {}
                Arrival::New | Arrival::Old => {}
            }
        }
        l.stats
            .on_packet(header.seq, header.timestamp, now, retransmission);
        if switch_point && self.codec != Codec::Audio {
            // This keyframe answers every request made so far.
            l.keyframe_pending = false;
        }
        if let Some(cache) = &mut l.cache {
            cache.insert(header.seq, pkt);
        }
        l.last_packet = now;
        let mut changed = false;
        if !self.view.is_active(layer) {
            self.view.active |= 1 << layer;
            changed = true;
            // A layer of unknown height never fits a receiver's cap: its first keyframe
            // tells the height, so one is asked for when it started without one.
            if self.codec == Codec::Vp8
                && self.view.heights[usize::from(layer)] == 0
                && !switch_point
            {
                l.keyframe_pending = true;
            }
        }
        if let Some((_, height)) = vp8.and_then(|d| d.size)
            && self.view.heights[usize::from(layer)] != height
        {
            self.view.heights[usize::from(layer)] = height;
            changed = true;
        }
        if changed {
            self.view.generation = self.view.generation.wrapping_add(1);
        }
        self.expire(now);
        Ok(Incoming {
            layer,
            len,
            header,
            switch_point,
            vp8,
            layers: self.view,
            retransmission,
        })
    }

    /// Which layer a packet belongs to and whether it is RTX; binds SSRCs learned from
    /// the rid and repaired-rid extensions, or the single layer's SSRC on first sight.
    fn route(&mut self, pkt: &[u8], header: &RtpHeader) -> Result<(u8, bool), Dropped> {
        let ssrc = header.ssrc;
        for (i, l) in self.layers.iter().enumerate() {
            if self.view.ssrcs[i] == Some(ssrc) {
                return Ok((i as u8, false));
            }
            if l.rtx_ssrc == Some(ssrc) {
                return Ok((i as u8, true));
            }
        }
        let by_rid = |id: Option<u8>, layers: &[Layer]| {
            let rid = header.extension_value(pkt, id?)?;
            layers.iter().position(|l| l.rid.as_deref() == Some(rid))
        };
        if let Some(i) = by_rid(self.rid_extension, &self.layers) {
            if self.view.ssrcs[i].is_some() {
                // The publisher replaced the encoding's SSRC: nothing of the old one
                // is worth keeping.
                let l = &mut self.layers[i];
                l.stats.reset();
                if let Some(c) = &mut l.cache {
                    c.clear();
                }
                if let Some(n) = &mut l.nack {
                    n.reset();
                }
            }
            self.bind(i, ssrc);
            return Ok((i as u8, false));
        }
        if let Some(i) = by_rid(self.repaired_rid_extension, &self.layers) {
            self.layers[i].rtx_ssrc = Some(ssrc);
            return Ok((i as u8, true));
        }
        // One layer without rids: the caller routed the packet here by its mid, so the
        // first packet of the media payload type names its SSRC.
        if self.layers.len() == 1
            && self.view.ssrcs[0].is_none()
            && self.layers[0].rid.is_none()
            && header.payload_type == self.payload_type
        {
            self.bind(0, ssrc);
            return Ok((0, false));
        }
        Err(Dropped::UnknownSsrc)
    }

    fn bind(&mut self, layer: usize, ssrc: u32) {
        self.view.ssrcs[layer] = Some(ssrc);
        self.view.generation = self.view.generation.wrapping_add(1);
    }

    /// Marks layers silent for [`LAYER_TIMEOUT_US`] as stopped.
    fn expire(&mut self, now: u64) {
        for (i, l) in self.layers.iter().enumerate() {
            let bit = 1u8 << i;
            if self.view.active & bit != 0 && now.saturating_sub(l.last_packet) > LAYER_TIMEOUT_US {
                self.view.active &= !bit;
                self.view.generation = self.view.generation.wrapping_add(1);
            }
        }
    }

    /// Timers: layer timeouts. Packets of any layer run them too; this is for a track
    /// that went silent altogether.
    pub fn poll(&mut self, now: u64) {
        self.expire(now);
    }

    /// A receiver (or the SFU itself) wants a keyframe of `layer`. Returns the request
    /// to send now, or `None` when one went out less than [`KEYFRAME_INTERVAL_US`] ago:
    /// then this one waits, and [`Track::poll_keyframe`] sends it when the interval is
    /// over unless a keyframe arrives first.
    pub fn request_keyframe(&mut self, layer: u8, now: u64) -> Option<KeyframeRequest> {
        let ssrc = self.view.ssrc(layer)?;
        let l = self.layers.get_mut(usize::from(layer))?;
        if l.keyframe_sent
            .is_some_and(|at| now.saturating_sub(at) < KEYFRAME_INTERVAL_US)
        {
            l.keyframe_pending = true;
            return None;
        }
        Some(Self::sent(l, layer, ssrc, now))
    }

    fn sent(l: &mut Layer, layer: u8, ssrc: u32, now: u64) -> KeyframeRequest {
        l.keyframe_sent = Some(now);
        l.keyframe_pending = false;
        l.fir_seq = l.fir_seq.wrapping_add(1);
        KeyframeRequest {
            layer,
            ssrc,
            fir_seq: l.fir_seq,
        }
    }

    /// When a keyframe request held back by the throttle is next due (µs), if any.
    pub(crate) fn keyframe_due(&self) -> Option<u64> {
        self.layers
            .iter()
            .zip(&self.view.ssrcs)
            .filter(|(l, ssrc)| l.keyframe_pending && ssrc.is_some())
            .map(|(l, _)| l.keyframe_sent.map_or(0, |at| at + KEYFRAME_INTERVAL_US))
            .min()
    }

    /// Whether some layer has packets it still asks the publisher for.
    pub(crate) fn has_missing(&self) -> bool {
        self.layers
            .iter()
            .any(|l| l.nack.as_ref().is_some_and(|n| n.outstanding() > 0))
    }

    /// A keyframe request held back by the throttle that is due now; call until `None`.
    pub fn poll_keyframe(&mut self, now: u64) -> Option<KeyframeRequest> {
        for (i, l) in self.layers.iter_mut().enumerate() {
            let Some(ssrc) = self.view.ssrcs[i] else {
                continue;
            };
            if l.keyframe_pending
                && l.keyframe_sent
                    .is_none_or(|at| now.saturating_sub(at) >= KEYFRAME_INTERVAL_US)
            {
                return Some(Self::sent(l, i as u8, ssrc, now));
            }
        }
        None
    }

    /// Takes in a sender report of the publisher (for RR's LSR/DLSR and for mapping
    /// receivers' timestamps in their sender reports). False for a foreign SSRC.
    pub(crate) fn on_sender_report(&mut self, sr: &SenderReport<'_>, now: u64) -> bool {
        let Some(layer) = self
            .layer_of(sr.ssrc)
            .filter(|&l| self.view.ssrc(l) == Some(sr.ssrc))
        else {
            return false;
        };
        self.layers[usize::from(layer)]
            .stats
            .on_sender_report(sr.ntp, sr.rtp_timestamp, now);
        true
    }

    /// The publisher's last sender report for `layer`.
    pub(crate) fn sender_report(&self, layer: u8) -> Option<SrInfo> {
        self.layers
            .get(usize::from(layer))?
            .stats
            .last_sender_report()
    }

    /// A receiver report from `sender_ssrc` with a block per layer that sent anything.
    pub fn write_receiver_report(
        &mut self,
        buf: &mut [u8],
        sender_ssrc: u32,
        now: u64,
    ) -> Option<usize> {
        let mut blocks = [ReportBlock::default(); MAX_LAYERS];
        let mut n = 0;
        for (i, l) in self.layers.iter_mut().enumerate() {
            if let Some(ssrc) = self.view.ssrcs[i]
                && l.stats.started()
                && n < MAX_REPORT_BLOCKS
            {
                blocks[n] = l.stats.report(ssrc, now);
                n += 1;
            }
        }
        rtcp::write_receiver_report(buf, sender_ssrc, &blocks[..n])
    }

    /// NACKs for the packets missing now, one packet per layer with losses, written one
    /// after another into `buf` (a compound to follow an RR). `rtt` (microseconds)
    /// spaces the repeated requests. `None` when nothing is due or nothing fits.
    pub fn write_nacks(
        &mut self,
        buf: &mut [u8],
        sender_ssrc: u32,
        now: u64,
        rtt: u64,
    ) -> Option<usize> {
        let mut written = 0;
        let mut seqs = [0u16; NACKS_PER_CALL];
        for (i, l) in self.layers.iter_mut().enumerate() {
            let (Some(ssrc), Some(nack)) = (self.view.ssrcs[i], &mut l.nack) else {
                continue;
            };
            let n = nack.due(now, rtt, &mut seqs);
            if n == 0 {
                continue;
            }
            match rtcp::write_nack(buf.get_mut(written..)?, sender_ssrc, ssrc, &seqs[..n]) {
                Some(len) => written += len,
                None => break,
            }
        }
        (written > 0).then_some(written)
    }

    /// Whether the track keeps packets to answer NACKs with (video does; audio is
    /// better concealed than resent).
    pub(crate) fn caches(&self) -> bool {
        self.layers.iter().any(|l| l.cache.is_some())
    }

    /// The cached packet `seq` of `layer`.
    pub(crate) fn cached(&self, layer: u8, seq: u16) -> Option<&[u8]> {
        self.layers
            .get(usize::from(layer))?
            .cache
            .as_ref()?
            .get(seq)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::sfu::codec::tests::vp8_payload;
    use crate::sfu::rtcp::{Rtcp, RtcpIter};
    use crate::sfu::rtp::tests::{Rng, packet};

    pub(crate) const PT: u8 = 96;
    pub(crate) const RID_EXT: u8 = 10;
    pub(crate) const RRID_EXT: u8 = 11;

    /// A VP8 track with three layers learned by rid.
    pub(crate) fn simulcast_track() -> Track {
        let layer = |rid: &str| LayerConfig {
            rid: Some(rid.into()),
            ..LayerConfig::default()
        };
        Track::new(TrackConfig {
            codec: Codec::Vp8,
            clock_rate: 90_000,
            payload_type: PT,
            layers: vec![layer("q"), layer("h"), layer("f")],
            rid_extension: Some(RID_EXT),
            repaired_rid_extension: Some(RRID_EXT),
            cache_packets: 512,
            nack: true,
        })
    }

    /// A VP8 packet of layer `ssrc` carrying its rid.
    pub(crate) fn vp8_packet(ssrc: u32, rid: &[u8], seq: u16, ts: u32, key: bool) -> Vec<u8> {
        packet(
            PT,
            seq,
            ts,
            ssrc,
            &[(RID_EXT, rid)],
            &vp8_payload(key, true, seq & 0x7FFF, 0),
        )
    }

    fn receive(t: &mut Track, mut p: Vec<u8>, now: u64) -> Result<Incoming, Dropped> {
        let len = p.len();
        t.receive(&mut p, len, now)
    }

    #[test]
    fn layers_are_bound_by_rid_and_time_out() {
        let mut t = simulcast_track();
        assert_eq!(t.layers().active, 0);
        let a = receive(&mut t, vp8_packet(111, b"q", 1, 0, true), 0).unwrap();
        assert_eq!(a.layer, 0);
        assert!(a.switch_point);
        assert_eq!(a.layers.heights[0], 360, "observed from the keyframe");
        let b = receive(&mut t, vp8_packet(333, b"f", 1, 0, false), 10).unwrap();
        assert_eq!(b.layer, 2);
        assert_eq!(t.layers().active, 0b101);
        assert_eq!(t.layer_of(333), Some(2));
        // Later packets without the rid are known by SSRC.
        let c = receive(&mut t, packet(PT, 2, 0, 333, &[], &[0x90, 0x80, 1, 0]), 20).unwrap();
        assert_eq!(c.layer, 2);
        // Layer 0 stops: it is inactive once a packet of another layer shows the time.
        let g = t.layers().generation;
        receive(&mut t, vp8_packet(333, b"f", 3, 0, false), 1_000_001).unwrap();
        assert_eq!(t.layers().active, 0b100);
        assert_ne!(t.layers().generation, g);
        t.poll(2_500_000);
        assert_eq!(t.layers().active, 0);
        // Unknown SSRC without rid, wrong payload type, garbage.
        assert_eq!(
            receive(&mut t, packet(PT, 1, 0, 999, &[], b"x"), 0).unwrap_err(),
            Dropped::UnknownSsrc
        );
        assert_eq!(
            receive(&mut t, packet(PT + 1, 9, 0, 333, &[], b"x"), 0).unwrap_err(),
            Dropped::PayloadType
        );
        assert_eq!(
            receive(&mut t, vec![0x80; 5], 0).unwrap_err(),
            Dropped::Malformed
        );
    }

    #[test]
    fn a_layer_starting_without_keyframe_gets_one_asked_for() {
        let mut t = simulcast_track();
        receive(&mut t, vp8_packet(111, b"q", 1, 0, true), 0).unwrap();
        receive(&mut t, vp8_packet(222, b"h", 1, 0, false), 0).unwrap();
        let req = t.poll_keyframe(0).unwrap();
        assert_eq!((req.layer, req.ssrc), (1, 222));
        assert_eq!(t.poll_keyframe(0), None);
    }

    #[test]
    fn rtx_is_unwrapped_and_duplicates_dropped() {
        let mut t = simulcast_track();
        receive(&mut t, vp8_packet(111, b"q", 10, 0, true), 0).unwrap();
        receive(&mut t, vp8_packet(111, b"q", 12, 0, false), 0).unwrap();
        // Packet 11 comes as RTX, learned by repaired-rid.
        let orig = vp8_packet(111, b"q", 11, 0, false);
        let h = RtpHeader::parse(&orig).unwrap();
        let mut rtx = orig.clone();
        rtx.extend_from_slice(&[0, 0]);
        let n = crate::sfu::rtp::wrap_rtx(&mut rtx, &h, 0xAB, 97, 500).unwrap();
        rtx.truncate(n);
        // Repaired-rid instead of rid.
        let ext = h.find_extension(&rtx, RID_EXT).unwrap();
        rtx[ext.start - 1] = (RRID_EXT << 4) | (rtx[ext.start - 1] & 0x0F);
        let got = receive(&mut t, rtx.clone(), 0).unwrap();
        assert!(got.retransmission);
        assert_eq!((got.layer, got.header.seq, got.header.ssrc), (0, 11, 111));
        assert_eq!(t.cached(0, 11).map(<[u8]>::len), Some(orig.len()));
        // The same again is a duplicate; probing padding on RTX is dropped.
        assert_eq!(receive(&mut t, rtx, 0).unwrap_err(), Dropped::Duplicate);
        let mut pad = packet(97, 501, 0, 0xAB, &[], &[0, 0, 0, 4]);
        pad[0] |= 0x20;
        assert_eq!(receive(&mut t, pad, 0).unwrap_err(), Dropped::Padding);
    }

    #[test]
    fn single_layer_binds_its_ssrc() {
        let mut t = Track::new(TrackConfig {
            codec: Codec::Audio,
            clock_rate: 48_000,
            payload_type: 111,
            layers: vec![],
            rid_extension: None,
            repaired_rid_extension: None,
            cache_packets: 0,
            nack: false,
        });
        assert_eq!(
            receive(&mut t, packet(112, 1, 0, 5, &[], b"x"), 0).unwrap_err(),
            Dropped::UnknownSsrc
        );
        let a = receive(&mut t, packet(111, 1, 0, 5, &[], b"opus"), 0).unwrap();
        assert!(a.switch_point);
        assert_eq!(t.layers().ssrcs[0], Some(5));
        assert_eq!(
            receive(&mut t, packet(111, 1, 0, 6, &[], b"x"), 0).unwrap_err(),
            Dropped::UnknownSsrc
        );
    }

    #[test]
    fn keyframe_requests_are_throttled_and_merged() {
        let mut t = simulcast_track();
        assert_eq!(t.request_keyframe(0, 0), None, "SSRC not known yet");
        receive(&mut t, vp8_packet(111, b"q", 1, 0, false), 0).unwrap();
        let first = t.request_keyframe(0, 1_000).unwrap();
        assert_eq!((first.layer, first.ssrc), (0, 111));
        // Ten receivers ask within the interval: nothing goes out now...
        for i in 0..10 {
            assert_eq!(t.request_keyframe(0, 2_000 + i), None);
        }
        assert_eq!(t.poll_keyframe(400_000), None);
        // ...one request goes out when it is over.
        let second = t.poll_keyframe(501_000).unwrap();
        assert_eq!(second.fir_seq, first.fir_seq.wrapping_add(1));
        assert_eq!(t.poll_keyframe(501_001), None);
        // A keyframe arriving in the interval answers the waiting requests.
        assert_eq!(t.request_keyframe(0, 600_000), None);
        receive(&mut t, vp8_packet(111, b"q", 2, 0, true), 700_000).unwrap();
        assert_eq!(t.poll_keyframe(1_100_000), None);
        // At most one per interval, whatever the rate of asking.
        let mut sent = 0;
        for ms in 0..5_000u64 {
            let now = 2_000_000 + ms * 1_000;
            sent += usize::from(t.request_keyframe(0, now).is_some());
            sent += usize::from(t.poll_keyframe(now).is_some());
        }
        assert_eq!(sent, 10);
    }

    #[test]
    fn nacks_and_receiver_reports_for_the_publisher() {
        let mut t = simulcast_track();
        for seq in [1u16, 2, 5, 6] {
            receive(&mut t, vp8_packet(111, b"q", seq, 0, false), 0).unwrap();
        }
        receive(&mut t, vp8_packet(222, b"h", 100, 0, false), 0).unwrap();
        receive(&mut t, vp8_packet(222, b"h", 102, 0, false), 0).unwrap();
        let mut buf = [0u8; 256];
        let n = t.write_nacks(&mut buf, 1, 1_000, 0).unwrap();
        let mut asked = Vec::new();
        for p in RtcpIter::new(&buf[..n]) {
            let Rtcp::Nack(f) = p else { panic!() };
            asked.push((f.media, f.nack_seqs().collect::<Vec<_>>()));
        }
        assert_eq!(asked, vec![(111, vec![3, 4]), (222, vec![101])]);
        assert_eq!(
            t.write_nacks(&mut buf, 1, 2_000, 100_000),
            None,
            "not yet again"
        );

        let n = t.write_receiver_report(&mut buf, 1, 0).unwrap();
        let Some(Rtcp::ReceiverReport(rr)) = RtcpIter::new(&buf[..n]).next() else {
            panic!()
        };
        let blocks: Vec<_> = rr.blocks.collect();
        assert_eq!(blocks.len(), 2);
        assert_eq!((blocks[0].ssrc, blocks[0].cumulative_lost), (111, 2));
        assert_eq!((blocks[1].ssrc, blocks[1].highest_seq), (222, 102));
    }

    #[test]
    fn garbage_never_panics() {
        let mut rng = Rng(0x5555_AAAA_1234_4321);
        let mut t = simulcast_track();
        let base = vp8_packet(111, b"q", 1, 0, true);
        let mut buf = [0u8; 128];
        for i in 0..100_000u64 {
            let len = rng.below(base.len() + 8);
            buf[..base.len()].copy_from_slice(&base);
            // Flip a few bytes of a valid packet, or all of them.
            if i % 3 == 0 {
                rng.fill(&mut buf[..len]);
            } else {
                for _ in 0..3 {
                    let at = rng.below(base.len());
                    buf[at] = rng.next() as u8;
                }
            }
            if let Ok(inc) = t.receive(&mut buf, len, i * 1_000) {
                assert!(inc.len <= len);
            }
            let _ = t.request_keyframe((i % 4) as u8, i * 1_000);
            let _ = t.poll_keyframe(i * 1_000);
            let mut out = [0u8; 64];
            let _ = t.write_nacks(&mut out, 1, i * 1_000, 0);
            let _ = t.write_receiver_report(&mut out, 1, i * 1_000);
        }
    }
}
