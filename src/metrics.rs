//! Counters on `/metrics` (Prometheus text format).
//!
//! Hot paths hold cloned counter handles (an `Arc<AtomicU64>` each) taken once at start,
//! and add a whole batch at a time, so counting costs no lookup and little contention.
//! Label values are fixed words: never user names or addresses.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::fmt::Write;

/// The client transport a message came over.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

impl EncodeLabelValue for Transport {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum DropReason {
    /// Not a well-formed message of any protocol we speak.
    Malformed,
    /// A datagram of no protocol the media port speaks: its first byte is outside the
    /// ranges of RFC 7983 for STUN, ChannelData, DTLS and RTP (QUIC's, for one).
    Unrouted,
    /// Well-formed STUN that nothing here answers (a response arriving at the server,
    /// an unknown method).
    Unhandled,
    /// TURN data (ChannelData, a Send indication) or a relayed packet with no
    /// allocation, channel or permission for it: stale, or from a spoofed address.
    NoRoute,
    /// A 401 or 438 answer held back by the per-source limit on unauthenticated
    /// answers (a flood of requests without valid credentials).
    RateLimited,
    /// Over its allocation's bandwidth cap (`turn.max_bandwidth_kbps`).
    Bandwidth,
    /// A copy of an SFU session's nominating ICE check from another address than the
    /// one it came from (someone on the path replaying it).
    Replayed,
    /// The kernel refused or could not take the reply.
    SendFailed,
}

impl DropReason {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Unrouted => "unrouted",
            DropReason::Unhandled => "unhandled",
            DropReason::NoRoute => "no_route",
            DropReason::RateLimited => "rate_limited",
            DropReason::Bandwidth => "bandwidth",
            DropReason::Replayed => "replayed",
            DropReason::SendFailed => "send_failed",
        }
    }
}

impl EncodeLabelValue for DropReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TransportLabel {
    transport: Transport,
}

/// A node of the shared store, by its public URL.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct NodeLabel {
    pub(crate) node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DropLabel {
    transport: Transport,
    reason: DropReason,
}

/// Which way a relayed packet went.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum Direction {
    ToPeer,
    ToClient,
}

impl EncodeLabelValue for Direction {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(match self {
            Direction::ToPeer => "to_peer",
            Direction::ToClient => "to_client",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabel {
    direction: Direction,
}

/// TURN's metrics, shared by every TURN core.
#[derive(Clone, Debug, Default)]
pub struct TurnMetrics {
    pub(crate) allocations: Gauge,
    pub(crate) permissions: Gauge,
    pub(crate) channels: Gauge,
    pub(crate) auth_failures: Counter,
    pub(crate) peers_refused: Counter,
    pub(crate) quota_refused: Counter,
    pub(crate) relayed_packets_to_peer: Counter,
    pub(crate) relayed_bytes_to_peer: Counter,
    pub(crate) relayed_packets_to_client: Counter,
    pub(crate) relayed_bytes_to_client: Counter,
    /// Datagrams between a relay and the node's own media port handed over inside the
    /// worker (no system call): a client's to the SFU (`to_peer`) and the SFU's to the
    /// client (`to_client`). Also counted in `relayed_packets_*`.
    pub(crate) internal_to_peer: Counter,
    pub(crate) internal_to_client: Counter,
    /// Datagrams from the node's own media port that reached a relay socket through
    /// the kernel (the SFU answering a client whose allocation another worker holds).
    pub(crate) hairpin: Counter,
    /// Of `internal_to_client`: the SFU's datagrams handed from the worker that sent them
    /// to the worker holding the relay (`net::handoff`).
    pub(crate) cross_worker: Counter,
    /// The SFU's datagrams for another worker's relay that went through the kernel
    /// because that worker's hand-over queue was full (then also counted as `hairpin`).
    pub(crate) cross_worker_queue_full: Counter,
}

/// What kind of media packet the SFU received.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum MediaKind {
    Rtp,
    Rtcp,
}

impl EncodeLabelValue for MediaKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(match self {
            MediaKind::Rtp => "rtp",
            MediaKind::Rtcp => "rtcp",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: MediaKind,
}

/// Why the SFU dropped a DTLS or SRTP/SRTCP datagram on the media port.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum MediaDrop {
    /// From an address that never sent a valid ICE check (unknown or spoofed).
    Unvalidated,
    /// SRTP before the session's DTLS handshake gave keys (or after it ended).
    NoKeys,
    /// The SRTP/SRTCP tag did not verify.
    AuthFailed,
    /// Replayed, or older than the replay window.
    Replayed,
    /// Not parsable as SRTP/SRTCP (too short, bad header), or a stream table full.
    Malformed,
    /// A DTLS record the session's DTLS endpoint refused.
    Dtls,
}

impl EncodeLabelValue for MediaDrop {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(match self {
            MediaDrop::Unvalidated => "unvalidated",
            MediaDrop::NoKeys => "no_keys",
            MediaDrop::AuthFailed => "auth_failed",
            MediaDrop::Replayed => "replayed",
            MediaDrop::Malformed => "malformed",
            MediaDrop::Dtls => "dtls",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MediaDropLabel {
    reason: MediaDrop,
}

/// Why the SFU did not answer a receiver's NACK of a packet.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub(crate) enum NackRefusal {
    /// No longer in the cache, or never sent to that receiver.
    NotHeld,
    /// Sent again less than a round trip ago.
    TooSoon,
    /// The receiver's retransmissions spent their share of the stream.
    Budget,
}

impl EncodeLabelValue for NackRefusal {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
        encoder.write_str(match self {
            NackRefusal::NotHeld => "not_held",
            NackRefusal::TooSoon => "too_soon",
            NackRefusal::Budget => "budget",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NackRefusalLabel {
    reason: NackRefusal,
}

/// The SFU's metrics: handles cloned into the session registry and every worker.
#[derive(Clone, Debug, Default)]
pub struct SfuMetrics {
    /// Media sessions whose DTLS handshake completed (SRTP keys in place) and that have
    /// not ended since.
    pub dtls_connected: Gauge,
    /// DTLS handshakes that failed (bad fingerprint, protocol error, timeout).
    pub(crate) dtls_failures: Counter,
    /// Of those, sessions ended because the DTLS library panicked on their records
    /// (caught per session: the worker goes on).
    pub(crate) dtls_panics: Counter,
    /// Media datagrams unprotected, and their bytes on the wire, by kind.
    pub(crate) received_rtp_packets: Counter,
    pub(crate) received_rtp_bytes: Counter,
    pub(crate) received_rtcp_packets: Counter,
    pub(crate) received_rtcp_bytes: Counter,
    pub(crate) dropped_unvalidated: Counter,
    pub(crate) dropped_no_keys: Counter,
    pub(crate) dropped_auth_failed: Counter,
    pub(crate) dropped_replayed: Counter,
    pub(crate) dropped_malformed: Counter,
    pub(crate) dropped_dtls: Counter,
    /// RTP packets forwarded to receivers (one per receiver).
    pub(crate) forwarded_rtp_packets: Counter,
    /// Keyframe requests (PLI) sent to publishers.
    pub(crate) keyframe_requests: Counter,
    /// Packets sent again to receivers that asked for them with a NACK.
    pub(crate) retransmitted_packets: Counter,
    /// NACKed packets not sent again, by reason.
    pub(crate) nack_refused_not_held: Counter,
    pub(crate) nack_refused_too_soon: Counter,
    pub(crate) nack_refused_budget: Counter,
    /// RTCP the SFU sent besides keyframe requests: reports, NACKs, transport-cc.
    pub(crate) rtcp_sent: Counter,
    /// Transport-cc feedback and REMB read from receivers into their downlink estimates.
    pub(crate) downlink_feedback: Counter,
    /// Padding packets sent to probe receivers' paths before raising their video.
    pub(crate) probe_padding: Counter,
    /// `sendmmsg` system calls that sent the SFU's datagrams (the workers' outboxes),
    /// and the datagrams they sent: their ratio is packets per system call.
    pub(crate) send_batches: Counter,
    pub(crate) sent_datagrams: Counter,
}

/// All of the node's metrics and the registry that encodes them.
pub struct Metrics {
    pub(crate) turn: TurnMetrics,
    pub(crate) sfu: SfuMetrics,
    registry: Registry,
    received: Family<TransportLabel, Counter>,
    stun_answered: Family<TransportLabel, Counter>,
    dropped: Family<DropLabel, Counter>,
    /// TCP and TLS client connections open now.
    pub(crate) tcp_connections: Gauge,
    /// TCP and TLS connections refused because `turn.max_tcp_connections` was reached.
    pub(crate) tcp_refused: Counter,
    /// HTTP connections open now.
    pub(crate) http_connections: Gauge,
    /// HTTP connections closed at once: over `http.max_connections` or
    /// `http.max_connections_per_ip`.
    pub(crate) http_refused: Counter,
    /// Rooms the node holds (those in use and those waiting for their link), and
    /// participants in them, and the SFU's media sessions (publishing and receiving);
    /// set every second.
    pub(crate) rooms: Gauge,
    pub(crate) participants: Gauge,
    pub(crate) media_sessions: Gauge,
    /// Whether new allocations and joins are refused for load (1) or not (0), the
    /// busiest data-plane worker's share of the last second in percent (both set every
    /// second), and the allocations and joins refused so (see `load`).
    pub(crate) overloaded: Gauge,
    pub(crate) busiest_worker: Gauge,
    pub(crate) overload_refused_allocations: Counter,
    pub(crate) overload_refused_joins: Counter,
    /// Live nodes in the shared store, this one included (0 without `store.url`); set
    /// every second.
    pub(crate) cluster_nodes: Gauge,
    /// Each live node's rooms, load (its busiest worker, percent) and whether it
    /// drains, as its last heartbeat told.
    pub(crate) cluster_node_rooms: Family<NodeLabel, Gauge>,
    pub(crate) cluster_node_load: Family<NodeLabel, Gauge>,
    pub(crate) cluster_node_draining: Family<NodeLabel, Gauge>,
}

impl Metrics {
    /// The shared store's live nodes, as this node last read them.
    pub(crate) fn show_node_set(&self, live: &[crate::cluster::NodeInfo]) {
        self.cluster_nodes.set(live.len() as i64);
        // Nodes that left go from the series too.
        self.cluster_node_rooms.clear();
        self.cluster_node_load.clear();
        self.cluster_node_draining.clear();
        for n in live {
            let label = NodeLabel {
                node: n.url.clone(),
            };
            self.cluster_node_rooms
                .get_or_create(&label)
                .set(n.rooms as i64);
            self.cluster_node_load
                .get_or_create(&label)
                .set(i64::from(n.load_percent));
            self.cluster_node_draining
                .get_or_create(&label)
                .set(i64::from(n.draining));
        }
    }
}

/// The counters of one transport, cloned into each worker or connection task.
#[derive(Clone, Debug)]
pub(crate) struct TransportCounters {
    pub(crate) received: Counter,
    pub(crate) stun_answered: Counter,
    pub(crate) malformed: Counter,
    pub(crate) unrouted: Counter,
    pub(crate) unhandled: Counter,
    pub(crate) no_route: Counter,
    pub(crate) rate_limited: Counter,
    pub(crate) bandwidth: Counter,
    pub(crate) replayed: Counter,
    pub(crate) send_failed: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every family registered under the `confnode` prefix, all at zero.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("confnode");
        let received = Family::<TransportLabel, Counter>::default();
        let stun_answered = Family::<TransportLabel, Counter>::default();
        let dropped = Family::<DropLabel, Counter>::default();
        let tcp_connections = Gauge::default();
        let tcp_refused = Counter::default();
        let http_connections = Gauge::default();
        let http_refused = Counter::default();
        let rooms = Gauge::default();
        let participants = Gauge::default();
        let media_sessions = Gauge::default();
        let overloaded = Gauge::default();
        let busiest_worker = Gauge::default();
        let overload_refused_allocations = Counter::default();
        let overload_refused_joins = Counter::default();
        let cluster_nodes = Gauge::default();
        let cluster_node_rooms = Family::<NodeLabel, Gauge>::default();
        let cluster_node_load = Family::<NodeLabel, Gauge>::default();
        let cluster_node_draining = Family::<NodeLabel, Gauge>::default();
        registry.register(
            "cluster_node_rooms",
            "Rooms each live node of the shared store serves",
            cluster_node_rooms.clone(),
        );
        registry.register(
            "cluster_node_load_percent",
            "Each live node's busiest data-plane worker, in percent, as placement sees it",
            cluster_node_load.clone(),
        );
        registry.register(
            "cluster_node_draining",
            "1 for a live node that drains (no new rooms are placed on it)",
            cluster_node_draining.clone(),
        );
        registry.register(
            "cluster_nodes",
            "Live nodes sharing rooms through store.url, this one included (0 without a shared store)",
            cluster_nodes.clone(),
        );
        registry.register(
            "overloaded",
            "1 while new allocations (508) and joins (503) are refused because a data-plane worker is past node.overload_percent",
            overloaded.clone(),
        );
        registry.register(
            "busiest_worker_percent",
            "The busiest data-plane worker's share of the last second spent serving, in percent",
            busiest_worker.clone(),
        );
        registry.register(
            "overload_refused_allocations",
            "TURN allocations refused (508) while overloaded",
            overload_refused_allocations.clone(),
        );
        registry.register(
            "overload_refused_joins",
            "Joins refused (503) while overloaded",
            overload_refused_joins.clone(),
        );
        registry.register("rooms", "Rooms held (in use or not)", rooms.clone());
        registry.register(
            "media_sessions",
            "SFU media sessions held (publishing and receiving)",
            media_sessions.clone(),
        );
        registry.register(
            "participants",
            "Participants in rooms",
            participants.clone(),
        );
        registry.register(
            "http_connections",
            "HTTP connections open",
            http_connections.clone(),
        );
        registry.register(
            "http_refused",
            "HTTP connections refused at a connection limit (in total or per address)",
            http_refused.clone(),
        );
        registry.register(
            "received",
            "Datagrams and stream messages received by the data plane",
            received.clone(),
        );
        registry.register(
            "stun_answered",
            "STUN requests answered",
            stun_answered.clone(),
        );
        registry.register("dropped", "Packets dropped, by reason", dropped.clone());
        registry.register(
            "tcp_connections",
            "TCP and TLS client connections open",
            tcp_connections.clone(),
        );
        registry.register(
            "tcp_refused",
            "TCP and TLS connections refused at the connection limit",
            tcp_refused.clone(),
        );
        let turn = register_turn(&mut registry);
        let sfu = register_sfu(&mut registry);
        let m = Metrics {
            turn,
            sfu,
            registry,
            received,
            stun_answered,
            dropped,
            tcp_connections,
            tcp_refused,
            http_connections,
            http_refused,
            rooms,
            participants,
            media_sessions,
            overloaded,
            busiest_worker,
            overload_refused_allocations,
            overload_refused_joins,
            cluster_nodes,
            cluster_node_rooms,
            cluster_node_load,
            cluster_node_draining,
        };
        // Create every series up front so scrapers see zeros, not missing series.
        for t in [Transport::Udp, Transport::Tcp, Transport::Tls] {
            m.transport(t);
        }
        m
    }

    /// The counter handles of one transport.
    pub(crate) fn transport(&self, transport: Transport) -> TransportCounters {
        let label = TransportLabel { transport };
        let drop = |reason| {
            self.dropped
                .get_or_create(&DropLabel { transport, reason })
                .clone()
        };
        TransportCounters {
            received: self.received.get_or_create(&label).clone(),
            stun_answered: self.stun_answered.get_or_create(&label).clone(),
            malformed: drop(DropReason::Malformed),
            unrouted: drop(DropReason::Unrouted),
            unhandled: drop(DropReason::Unhandled),
            no_route: drop(DropReason::NoRoute),
            rate_limited: drop(DropReason::RateLimited),
            bandwidth: drop(DropReason::Bandwidth),
            replayed: drop(DropReason::Replayed),
            send_failed: drop(DropReason::SendFailed),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn register_sfu(registry: &mut Registry) -> SfuMetrics {
    let packets = Family::<KindLabel, Counter>::default();
    let bytes = Family::<KindLabel, Counter>::default();
    let dropped = Family::<MediaDropLabel, Counter>::default();
    let kind = |f: &Family<KindLabel, Counter>, kind| f.get_or_create(&KindLabel { kind }).clone();
    let drop = |reason| dropped.get_or_create(&MediaDropLabel { reason }).clone();
    let refused = Family::<NackRefusalLabel, Counter>::default();
    let refusal = |reason| refused.get_or_create(&NackRefusalLabel { reason }).clone();
    let m = SfuMetrics {
        received_rtp_packets: kind(&packets, MediaKind::Rtp),
        received_rtp_bytes: kind(&bytes, MediaKind::Rtp),
        received_rtcp_packets: kind(&packets, MediaKind::Rtcp),
        received_rtcp_bytes: kind(&bytes, MediaKind::Rtcp),
        dropped_unvalidated: drop(MediaDrop::Unvalidated),
        dropped_no_keys: drop(MediaDrop::NoKeys),
        dropped_auth_failed: drop(MediaDrop::AuthFailed),
        dropped_replayed: drop(MediaDrop::Replayed),
        dropped_malformed: drop(MediaDrop::Malformed),
        dropped_dtls: drop(MediaDrop::Dtls),
        nack_refused_not_held: refusal(NackRefusal::NotHeld),
        nack_refused_too_soon: refusal(NackRefusal::TooSoon),
        nack_refused_budget: refusal(NackRefusal::Budget),
        ..SfuMetrics::default()
    };
    registry.register(
        "sfu_received_packets",
        "SRTP/SRTCP packets received and unprotected by the SFU, by kind",
        packets,
    );
    registry.register(
        "sfu_received_bytes",
        "Bytes (as received, SRTP overhead included) of the SFU's received media, by kind",
        bytes,
    );
    registry.register(
        "sfu_dropped",
        "DTLS and SRTP datagrams the SFU dropped, by reason",
        dropped,
    );
    registry.register(
        "sfu_dtls_connected",
        "Media sessions with DTLS connected",
        m.dtls_connected.clone(),
    );
    registry.register(
        "sfu_dtls_failures",
        "DTLS handshakes of media sessions that failed",
        m.dtls_failures.clone(),
    );
    registry.register(
        "sfu_dtls_panics",
        "Media sessions ended because the DTLS library panicked on their records",
        m.dtls_panics.clone(),
    );
    registry.register(
        "sfu_forwarded_packets",
        "RTP packets the SFU forwarded, counted once per receiver",
        m.forwarded_rtp_packets.clone(),
    );
    registry.register(
        "sfu_keyframe_requests",
        "Keyframe requests (PLI) the SFU sent to publishers",
        m.keyframe_requests.clone(),
    );
    registry.register(
        "sfu_retransmitted_packets",
        "RTP packets the SFU sent again to receivers that NACKed them",
        m.retransmitted_packets.clone(),
    );
    registry.register(
        "sfu_nack_refused",
        "NACKed packets the SFU did not send again, by reason: not_held (gone from the cache), too_soon (sent again less than a round trip ago), budget (the receiver's retransmissions reached half of its stream's bytes)",
        refused,
    );
    registry.register(
        "sfu_rtcp_sent",
        "RTCP the SFU sent: receiver and sender reports, NACKs, transport-cc feedback",
        m.rtcp_sent.clone(),
    );
    registry.register(
        "sfu_downlink_feedback",
        "Transport-cc feedback and REMB packets read from receivers into their downlink bandwidth estimates",
        m.downlink_feedback.clone(),
    );
    registry.register(
        "sfu_probe_padding",
        "Padding packets sent to probe receivers' paths for room before raising their video",
        m.probe_padding.clone(),
    );
    registry.register(
        "sfu_send_batches",
        "sendmmsg system calls that sent the SFU's datagrams (with sfu_sent_datagrams: packets per call)",
        m.send_batches.clone(),
    );
    registry.register(
        "sfu_sent_datagrams",
        "Datagrams of the SFU (media, RTCP, DTLS, and their TURN framing for clients on the node's relays) sent through the kernel in sendmmsg batches",
        m.sent_datagrams.clone(),
    );
    m
}

fn register_turn(registry: &mut Registry) -> TurnMetrics {
    let packets = Family::<DirectionLabel, Counter>::default();
    let bytes = Family::<DirectionLabel, Counter>::default();
    let internal = Family::<DirectionLabel, Counter>::default();
    let series = |f: &Family<DirectionLabel, Counter>, direction| {
        f.get_or_create(&DirectionLabel { direction }).clone()
    };
    let t = TurnMetrics {
        relayed_packets_to_peer: series(&packets, Direction::ToPeer),
        relayed_bytes_to_peer: series(&bytes, Direction::ToPeer),
        relayed_packets_to_client: series(&packets, Direction::ToClient),
        relayed_bytes_to_client: series(&bytes, Direction::ToClient),
        internal_to_peer: series(&internal, Direction::ToPeer),
        internal_to_client: series(&internal, Direction::ToClient),
        ..TurnMetrics::default()
    };
    registry.register(
        "turn_relay_internal",
        "Packets between a TURN relay and the node's own media port handed over in process",
        internal,
    );
    registry.register(
        "turn_relay_hairpin",
        "Packets from the node's own media port that reached a TURN relay through the kernel",
        t.hairpin.clone(),
    );
    registry.register(
        "turn_relay_cross_worker",
        "Packets from the node's own media port handed in process to the worker holding the TURN relay (also counted in turn_relay_internal)",
        t.cross_worker.clone(),
    );
    registry.register(
        "turn_relay_cross_worker_queue_full",
        "Packets from the node's own media port for another worker's TURN relay sent through the kernel because its hand-over queue was full",
        t.cross_worker_queue_full.clone(),
    );
    registry.register("turn_relayed_packets", "Packets relayed by TURN", packets);
    registry.register("turn_relayed_bytes", "Payload bytes relayed by TURN", bytes);
    registry.register(
        "turn_allocations",
        "TURN allocations held",
        t.allocations.clone(),
    );
    registry.register(
        "turn_permissions",
        "TURN permissions installed",
        t.permissions.clone(),
    );
    registry.register("turn_channels", "TURN channels bound", t.channels.clone());
    registry.register(
        "turn_auth_failures",
        "TURN requests refused for wrong credentials",
        t.auth_failures.clone(),
    );
    registry.register(
        "turn_peers_refused",
        "TURN peers refused by the peer policy (403)",
        t.peers_refused.clone(),
    );
    registry.register(
        "turn_quota_refused",
        "TURN allocations refused at a quota (486)",
        t.quota_refused.clone(),
    );
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_reason_is_a_series_from_the_start() {
        let text = Metrics::new().encode();
        for transport in ["udp", "tcp", "tls"] {
            for reason in [
                "malformed",
                "unrouted",
                "unhandled",
                "no_route",
                "rate_limited",
                "bandwidth",
                "replayed",
                "send_failed",
            ] {
                let series = format!(
                    "confnode_dropped_total{{transport=\"{transport}\",reason=\"{reason}\"}} 0"
                );
                assert!(text.contains(&series), "{series} missing from:\n{text}");
            }
        }
    }
}
