//! The RTCP the data plane exchanges with participants around the media it forwards.
//!
//! - From receivers: a PLI or FIR becomes a keyframe request to the publisher, through
//!   the track's throttle (many receivers, one request per interval); a generic NACK
//!   is answered from the track's packet cache, in RTX form where negotiated, so the
//!   publisher is not bothered and the repair is one hop short.
//! - From publishers: sender reports, which the track keeps for our receiver reports
//!   (LSR/DLSR, the publisher's round-trip time) and for the sender reports receivers
//!   get (lip sync).
//! - To publishers: transport-cc feedback on every packet's arrival, which Chrome's
//!   bandwidth estimator needs before its encoder ramps up and sends every simulcast
//!   layer; a receiver report per track each second; NACKs for lost packets.
//! - To receivers: a sender report per stream each second.
//! - From receivers: transport-cc feedback on what we sent them, into each receiver's
//!   downlink estimate (`sfu::bwe`).
//!
//! Locks: forwarding holds the publisher's session lock and takes a receiver's inside
//! it. A receiver's RTCP is read under the receiver's lock into [`Requests`], which is
//! let go before the publisher's lock is taken, so that order always holds. Nothing here
//! allocates.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use super::bwe::{ArrivalReport, Estimator, SentPackets};
use super::dtls::SrtpPair;
use super::forward::ResendRefusal;
use super::rtcp::{self, ReportBlock, Rtcp, RtcpIter};

use super::session::{
    Downstream, Feed, ForwardCounts, PublishedMedia, RTCP_SENDER_SSRC, Session, SessionMedia,
    Subscription,
};
use super::srtp::{MAX_RTCP_OVERHEAD, MAX_RTP_OVERHEAD};
use super::track::Track;
use super::twcc::TransportFeedback;

/// How often each stream gets a report (RFC 3550 allows more often at these rates;
/// once a second is what browsers do).
pub(crate) const REPORT_INTERVAL_US: u64 = 1_000_000;
/// How often the publisher's losses are looked at for NACKs.
pub(crate) const NACK_INTERVAL_US: u64 = 20_000;
/// The round-trip time assumed for spacing repeated NACKs.
const NACK_RTT_US: u64 = 50_000;
/// Requests read from one datagram of a receiver's RTCP; more are dropped (a real
/// client sends a few).
const MAX_REQUESTS: usize = 32;

#[derive(Debug, Clone, Copy)]
enum Ask {
    Keyframe,
    /// One FCI entry of a generic NACK: a packet id and the bitmask of 16 after it.
    Nack {
        pid: u16,
        blp: u16,
    },
    /// A reception report on the stream: its round trip spaces retransmissions.
    Report(ReportBlock),
}

#[derive(Debug)]
struct Request {
    publisher: Weak<Session>,
    track: usize,
    ssrc: u32,
    rtx: bool,
    ask: Ask,
}

/// What one datagram of a receiver's RTCP asks of publishers.
#[derive(Debug)]
pub(crate) struct Requests {
    items: [Option<Request>; MAX_REQUESTS],
    len: usize,
}

impl Requests {
    fn push(&mut self, feeds: &[Feed], ssrc: u32, ask: Ask) {
        let Some(feed) = feeds.iter().find(|f| f.ssrc == ssrc) else {
            return;
        };
        if let Some(slot) = self.items.get_mut(self.len) {
            *slot = Some(Request {
                publisher: feed.publisher.clone(),
                track: feed.track,
                ssrc,
                rtx: feed.rtx,
                ask,
            });
            self.len += 1;
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Reads a receiver's (decrypted, compound) RTCP: keyframe requests and NACKs for the
/// streams `sub` receives. Reports and anything else are left alone.
pub(crate) fn receiver_requests(sub: &Subscription, rtcp: &[u8]) -> Requests {
    let mut requests = Requests {
        items: [const { None }; MAX_REQUESTS],
        len: 0,
    };
    let feeds = sub.feeds.as_slice();
    for packet in RtcpIter::new(rtcp) {
        match packet {
            Rtcp::ReceiverReport(rr) => {
                for block in rr.blocks {
                    requests.push(feeds, block.ssrc, Ask::Report(block));
                }
            }
            Rtcp::Pli { media, .. } => requests.push(feeds, media, Ask::Keyframe),
            Rtcp::Fir(fb) => {
                for (ssrc, _) in fb.fir_entries() {
                    requests.push(feeds, ssrc, Ask::Keyframe);
                }
            }
            Rtcp::Nack(fb) => {
                for entry in fb.fci.chunks_exact(4) {
                    let pid = u16::from_be_bytes([entry[0], entry[1]]);
                    let blp = u16::from_be_bytes([entry[2], entry[3]]);
                    requests.push(feeds, fb.media, Ask::Nack { pid, blp });
                }
            }
            _ => {}
        }
    }
    requests
}

/// Reads the transport-cc feedback and REMB in a receiver's (decrypted, compound) RTCP
/// into its downlink estimate `bwe`, about the packets `sent` holds; returns how many
/// such packets there were. Unparsable ones are skipped.
pub(crate) fn estimate_downlink(
    bwe: &mut Estimator,
    sent: &SentPackets,
    rtcp: &[u8],
    now: u64,
) -> u64 {
    let mut read = 0;
    for packet in RtcpIter::new(rtcp) {
        match packet {
            Rtcp::TransportCc(fb) => {
                if let Some(report) = ArrivalReport::parse(fb.fci) {
                    bwe.on_feedback(&report, sent, now);
                    read += 1;
                }
            }
            Rtcp::Remb(remb) => {
                bwe.on_remb(remb.bitrate);
                read += 1;
            }
            _ => {}
        }
    }
    read
}

/// Carries out what a receiver asked for (its lock is not held): keyframe requests go
/// to the publisher as PLIs, NACKed packets go back to the receiver from the cache.
/// `now` (µs) is when the RTCP arrived; retransmissions are taken as sent at `sent_us`.
pub(crate) fn answer_receiver(
    requests: &Requests,
    receiver: &Arc<Session>,
    out: &mut [u8],
    counts: &mut ForwardCounts,
    (now, sent_us): (u64, u64),
    send: &mut impl FnMut(&[u8], SocketAddr, usize),
) {
    for r in requests.items.iter().take(requests.len).flatten() {
        let Some(publisher) = r.publisher.upgrade() else {
            continue;
        };
        if publisher.is_closed() {
            continue;
        }
        let mut media = publisher.media();
        let SessionMedia {
            tracks,
            srtp,
            media_peer,
            ..
        } = &mut *media;
        let Some(PublishedMedia { track, outs, .. }) = tracks.get_mut(r.track) else {
            continue;
        };
        let Some(o) = outs
            .iter_mut()
            .find(|o| Arc::ptr_eq(&o.subscriber, receiver) && o.forwarder.ssrc() == r.ssrc)
        else {
            continue;
        };
        match r.ask {
            Ask::Keyframe => {
                if let Some(layer) = o.forwarder.keyframe_layer()
                    && let Some(req) = track.request_keyframe(layer, now)
                    && let Some(peer) = *media_peer
                {
                    send_pli(out, srtp, req.ssrc, peer, send);
                    counts.keyframe_requests += 1;
                }
            }
            Ask::Report(block) => {
                if let Some(rtt) = o.forwarder.round_trip(&block, now) {
                    o.forwarder.set_round_trip(rtt);
                }
            }
            Ask::Nack { pid, blp } => {
                if !r.rtx && o.forwarder.rtx().is_some() {
                    o.forwarder.disable_rtx();
                }
                for seq in nacked(pid, blp) {
                    resend(track, o, seq, out, (now, sent_us), counts, send);
                }
            }
        }
    }
}

/// The sequence numbers of one NACK FCI entry.
fn nacked(pid: u16, blp: u16) -> impl Iterator<Item = u16> {
    std::iter::once(pid).chain(
        (0..16u16)
            .filter(move |bit| blp & (1 << bit) != 0)
            .map(move |bit| pid.wrapping_add(bit + 1)),
    )
}

/// Sends the receiver of `o` the packet it lost, `out_seq` of its stream, again.
fn resend(
    track: &Track,
    o: &mut Downstream,
    out_seq: u16,
    out: &mut [u8],
    (now, sent_us): (u64, u64),
    counts: &mut ForwardCounts,
    send: &mut impl FnMut(&[u8], SocketAddr, usize),
) {
    let n = match o.forwarder.resend(track, out_seq, out, now) {
        Ok(n) => n,
        Err(refusal) => {
            match refusal {
                ResendRefusal::NotHeld => counts.resend_not_held += 1,
                ResendRefusal::TooSoon => counts.resend_too_soon += 1,
                ResendRefusal::OverBudget => counts.resend_over_budget += 1,
            }
            return;
        }
    };
    if n + MAX_RTP_OVERHEAD > out.len() {
        return;
    }
    if o.egress
        .send_rtp(out, n, o.forwarder.transport_seq_at(), sent_us, send)
    {
        counts.retransmitted += 1;
    }
}

/// Takes in a publisher's (decrypted, compound) RTCP: its sender reports.
pub(crate) fn on_publisher_rtcp(tracks: &mut [PublishedMedia], rtcp: &[u8], now: u64) {
    for packet in RtcpIter::new(rtcp) {
        if let Rtcp::SenderReport(sr) = packet {
            for t in tracks.iter_mut() {
                if t.track.on_sender_report(&sr, now) {
                    break;
                }
            }
        }
    }
}

/// What is due for `t` by `now` (after one of its packets was forwarded, or when the
/// worker's timer ran out): keyframe requests the throttle held back, NACKs for the
/// publisher's losses, and each second a
/// receiver report to the publisher and a sender report to each receiver. `now` is µs
/// on the shared clock, whose start was `unix_at_epoch_us` on the wall clock.
pub(crate) fn send_track_due(
    out: &mut [u8],
    counts: &mut ForwardCounts,
    t: &mut PublishedMedia,
    srtp: &mut Option<Box<SrtpPair>>,
    publisher: (SocketAddr, usize),
    (now, unix_at_epoch_us): (u64, u64),
    send: &mut impl FnMut(&[u8], SocketAddr, usize),
) {
    while let Some(req) = t.track.poll_keyframe(now) {
        send_pli(out, srtp, req.ssrc, publisher, send);
        counts.keyframe_requests += 1;
    }
    if now >= t.next_nack {
        t.next_nack = now + NACK_INTERVAL_US;
        if let Some(n) = t.track.write_nacks(out, RTCP_SENDER_SSRC, now, NACK_RTT_US) {
            counts.rtcp_sent += u64::from(send_rtcp(out, n, srtp, publisher, send));
        }
    }
    if now < t.next_report {
        return;
    }
    t.next_report = now + REPORT_INTERVAL_US;
    if let Some(n) = t.track.write_receiver_report(out, RTCP_SENDER_SSRC, now) {
        counts.rtcp_sent += u64::from(send_rtcp(out, n, srtp, publisher, send));
    }
    let ntp_now = rtcp::ntp_from_unix_micros(unix_at_epoch_us.saturating_add(now));
    for o in &mut t.outs {
        if !o.is_sending() {
            continue;
        }
        if let Some(n) = o.forwarder.write_sender_report(out, &t.track, now, ntp_now) {
            counts.rtcp_sent += u64::from(o.egress.send_rtcp(out, n, send));
        }
    }
}

/// A PLI for the publisher's `ssrc`, encrypted with the publisher's keys.
pub(crate) fn send_pli(
    out: &mut [u8],
    srtp: &mut Option<Box<SrtpPair>>,
    ssrc: u32,
    to: (SocketAddr, usize),
    send: &mut impl FnMut(&[u8], SocketAddr, usize),
) {
    if let Some(n) = rtcp::write_pli(out, RTCP_SENDER_SSRC, ssrc) {
        send_rtcp(out, n, srtp, to, send);
    }
}

/// Encrypts the RTCP in `out[..n]` with `srtp`'s outbound keys and sends it; false
/// when there are no keys or no room.
fn send_rtcp(
    out: &mut [u8],
    n: usize,
    srtp: &mut Option<Box<SrtpPair>>,
    (to, via): (SocketAddr, usize),
    send: &mut impl FnMut(&[u8], SocketAddr, usize),
) -> bool {
    let Some(keys) = srtp.as_mut() else {
        return false;
    };
    if n + MAX_RTCP_OVERHEAD <= out.len()
        && let Ok(k) = keys.outbound.protect_rtcp(out, n)
    {
        send(&out[..k], to, via);
        return true;
    }
    false
}

/// Sends `twcc`'s transport-cc feedback due by `now` to the publisher, encrypted with
/// its keys.
pub(crate) fn send_transport_feedback(
    twcc: &mut TransportFeedback,
    out: &mut [u8],
    counts: &mut ForwardCounts,
    srtp: &mut Option<Box<SrtpPair>>,
    publisher: (SocketAddr, usize),
    now: u64,
    send: &mut impl FnMut(&[u8], SocketAddr, usize),
) {
    let room = out.len().saturating_sub(MAX_RTCP_OVERHEAD);
    twcc.write_due(out, room, RTCP_SENDER_SSRC, now, |out, n| {
        counts.rtcp_sent += u64::from(send_rtcp(out, n, srtp, publisher, send));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nack_entries_expand_to_their_sequence_numbers() {
        assert_eq!(nacked(10, 0).collect::<Vec<_>>(), [10]);
        assert_eq!(nacked(10, 0b101).collect::<Vec<_>>(), [10, 11, 13]);
        assert_eq!(
            nacked(65_535, 0x8000).collect::<Vec<_>>(),
            [65_535, 15],
            "wraps"
        );
    }
}
