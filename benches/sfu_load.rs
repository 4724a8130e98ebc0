//! SFU load on loopback: confnode's SFU with real WebRTC peers (webrtc-rs), and the bare
//! limit of the same fan-out (plain UDP, recvmmsg/sendmmsg, no crypto, no parsing), in
//! the same run.
//!
//!     SFU_LOAD=b cargo bench --bench sfu_load    # 1 publisher × 50 subscribers
//!     SFU_LOAD=c cargo bench --bench sfu_load    # a 10 × 10 conference
//!     SFU_LOAD=d cargo bench --bench sfu_load    # audio only, 1 speaker × 100 listeners
//!     cargo bench --bench sfu_load -- c          # the same, as an argument
//!     SFU_LOAD=ladder cargo bench --bench sfu_load  # b at 10 to 300 subscribers
//!
//! Every round runs the same media schedule through confnode (the release build cargo
//! made for this bench), then through the bare relay. The bare limit is printed beside
//! each confnode figure; that is scenario (e) of issue 11.
//!
//! **Media.** Each publisher sends VP8 in three simulcast layers (rids q/h/f, about
//! 150/500/1500 kbit/s at 30 frames/s, 320×180/640×360/1280×720, a keyframe every 3 s
//! five times the size of a delta frame, frames cut into packets of at most 1100
//! bytes), paced as Chrome paces it (2.5 × the video rate, every 5 ms), and Opus-sized
//! audio (50 packets/s of 100 bytes). Every payload ends in a
//! trailer: publisher, layer, a per-stream counter and the send time (ns since the
//! bench's start, written just before the packet is handed to the sender).
//!
//! **Peers.** Publishers and subscribers are webrtc-rs peer connections (the `webrtc`
//! crate, no code of confnode's media path): ICE, DTLS and SRTP are real, and the
//! node's egress is SRTP. They join through the HTTP room API. Publishers tick on a
//! runtime of their own, and each sends a tick's packets in one burst
//! (`sfu_load/burst.rs`), as a browser's pacer does. Subscribers send no RTCP
//! of their own, so the node never caps their layer (its estimate starts at 2.5 Mbit/s
//! and only congestion it sees lowers it): every subscriber gets layer f and the audio
//! of every other publisher.
//!
//! **Bare limit.** This binary started again with [`BARE_ARG`]: one socket that receives
//! every publisher's packets (one source socket per publisher stream) and sends each
//! layer-f and audio packet to the same receivers the SFU serves, copied into
//! sendmmsg batches; layers q and h are received and dropped, as the SFU drops what no
//! receiver takes. Its packets are the SFU's sizes (RTP header, payload, 24 bytes for
//! the SRTP tag and header extensions).
//!
//! **Measured**, over a window after a warm-up (one keyframe interval, so every
//! subscriber is on layer f): packets in and out per second at the node (its
//! `/metrics`), loss (per-stream counter ranges) and RTP sequence gaps per subscriber,
//! latency from the publisher's write to the packet's arrival in the subscriber's
//! socket (p50/p99; the kernel's receive time, `sfu_load/stamped.rs`, for the SFU's
//! webrtc-rs subscribers and the bare relay's receivers alike, so the generator's own
//! queueing on its one core is left out; the publisher's webrtc-rs send path is in
//! it), and the server's CPU seconds (utime + stime, /proc/PID/stat) per forwarded
//! packet. The node (or bare relay) is pinned to core 0 and the generator to core 1
//! with `taskset`/`sched_setaffinity`, and the output says so.
//!
//! The machine is shared, so each scenario runs in alternating rounds (confnode, bare,
//! confnode, ...) and each side's round of median packets per CPU-second is reported.
//!
//! Settings: `SFU_LOAD_SECS` (measured window per round, default 10; 30 for d, 20 for
//! the ladder), `SFU_LOAD_ROUNDS` (default 3; 1 for the ladder), `SFU_LOAD_UNPACED=1`
//! (each video frame's packets back to back, not paced as a browser paces them; see
//! [`PACING_FACTOR`]), `SFU_LOAD_SUBS` and `SFU_LOAD_PUBS` (override the scenario's
//! counts), `SFU_LOAD_NO_BARE=1`,
//! `SFU_LOAD_JANUS=1` (also confnode and Janus in a network namespace made for the
//! run, over a veth pair: see `sfu_load/janus.rs`; needs root and Debian's `janus`). Each
//! scenario replaces its row in `benches/results/sfu_load.tsv` and redraws
//! `benches/results/sfu_load.svg` from all rows.
//!
//! Everything is on loopback (127.0.0.0/8), or with `SFU_LOAD_JANUS=1` also on a veth
//! pair into a namespace the run makes and deletes; every process started is a child
//! stopped at the end.

#[path = "sfu_load/burst.rs"]
mod burst;
#[path = "../tests/common/mod.rs"]
mod common;
#[path = "sfu_load/janus.rs"]
mod janus;
mod load;
#[path = "../tests/common/peers.rs"]
mod peers;
#[path = "sfu_load/stamped.rs"]
mod stamped;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use load::{
    Epoll, MsgBatch, Proc, cpu_seconds, env_flag, env_u64, print_table, set_buffers, wakeups,
};
use webrtc::api::APIBuilder;
use webrtc::api::media_engine::{MIME_TYPE_OPUS, MIME_TYPE_VP8, MediaEngine};
use webrtc::ice::udp_mux::{UDPMuxDefault, UDPMuxParams};
use webrtc::ice::udp_network::UDPNetwork;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::rtp::header::Header;
use webrtc::rtp::packet::Packet;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpHeaderExtensionCapability, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::{TrackLocal, TrackLocalWriter};

/// The argument that makes this binary the bare relay (`cargo bench` passes `--bench`).
const BARE_ARG: &str = "__sfu_load_bare_relay";
const HOST: &str = "bench";
const PASSWORD: &str = "bench password";
/// The server's core and the generator's.
const SERVER_CORE: usize = 0;
/// Subscriber counts of `SFU_LOAD=ladder`.
const LADDER: [usize; 6] = [10, 25, 50, 100, 200, 300];
const GENERATOR_CORE: usize = 1;

// ---------------------------------------------------------------------------------
// The media schedule

/// Simulcast layers, smallest first, as Chrome names them.
const RIDS: [&str; 3] = ["q", "h", "f"];
/// Bits per second of each layer.
const LAYER_BPS: [u64; 3] = [150_000, 500_000, 1_500_000];
const LAYER_SIZE: [(u16, u16); 3] = [(320, 180), (640, 360), (1280, 720)];
/// The layer every subscriber ends up on (no cap: the best one).
const TOP_LAYER: u8 = 2;
/// The trailer's layer number for audio.
const AUDIO: u8 = 3;
const FPS: u64 = 30;
const KEYFRAME_EVERY: u64 = 90;
/// A keyframe is this many times the size of the average frame.
const KEYFRAME_FACTOR: u64 = 5;
const MAX_PAYLOAD: usize = 1100;
const AUDIO_EVERY_MS: u64 = 20;
/// A browser's pacer sends video at this many times its target rate (libwebrtc's
/// `PacingController`: pacing factor 2.5, packets released every 5 ms), so a keyframe
/// leaves in bursts of a few packets over tens of milliseconds, not all at once. The
/// generator paces its video the same way (audio is not paced); `SFU_LOAD_UNPACED=1`
/// sends each frame's packets back to back instead.
const PACING_FACTOR: f64 = 2.5;
const AUDIO_PAYLOAD: usize = 100;
/// What the SRTP tag and header extensions add to an RTP packet, for the bare relay's
/// packets to be the SFU's size.
const BARE_OVERHEAD: usize = 24;

/// The last bytes of every payload: magic, publisher, layer, counter, send time.
const TRAILER: usize = 20;
const MAGIC: [u8; 3] = *b"CNL";

/// Bytes of frame `frame` of `layer`: keyframes [`KEYFRAME_FACTOR`] times the average,
/// delta frames what is left of the layer's rate over a keyframe interval.
fn frame_bytes(layer: usize, frame: u64) -> usize {
    let interval = LAYER_BPS[layer] * KEYFRAME_EVERY / FPS / 8;
    let key = interval / KEYFRAME_EVERY * KEYFRAME_FACTOR;
    if frame.is_multiple_of(KEYFRAME_EVERY) {
        key as usize
    } else {
        ((interval - key) / (KEYFRAME_EVERY - 1)) as usize
    }
}

/// Packets of a frame of `bytes`: equal parts of at most [`MAX_PAYLOAD`].
fn packets_of(bytes: usize) -> usize {
    bytes.div_ceil(MAX_PAYLOAD).max(1)
}

/// Packets per second a layer sends (averaged over a keyframe interval).
fn layer_pps(layer: usize) -> f64 {
    let total: usize = (0..KEYFRAME_EVERY)
        .map(|f| packets_of(frame_bytes(layer, f)))
        .sum();
    total as f64 * FPS as f64 / KEYFRAME_EVERY as f64
}

const AUDIO_PPS: f64 = 1000.0 / AUDIO_EVERY_MS as f64;

/// One RTP packet a publisher sends now.
struct Out {
    layer: u8,
    seq: u16,
    timestamp: u32,
    marker: bool,
    payload: Vec<u8>,
}

/// A publisher's media schedule: what is due when.
struct Source {
    publisher: u16,
    video: bool,
    frames: u64,
    audio: u64,
    seqs: [u16; 4],
    counters: [u32; 4],
    picture_ids: [u16; 3],
    /// Video packets made but not yet released by the pacer.
    paced: std::collections::VecDeque<Out>,
    /// Bytes the pacer may still release (negative: sent ahead), and when it last ran.
    budget: f64,
    last: Duration,
    unpaced: bool,
}

impl Source {
    fn new(publisher: u16, video: bool) -> Source {
        Source {
            publisher,
            video,
            frames: 0,
            audio: 0,
            seqs: [1000; 4],
            counters: [0; 4],
            picture_ids: [0; 3],
            paced: std::collections::VecDeque::new(),
            budget: 0.0,
            last: Duration::ZERO,
            unpaced: env_flag("SFU_LOAD_UNPACED"),
        }
    }

    /// Appends to `out` every packet due `since` the start: audio when made, video as
    /// the pacer releases it (all of it at once with `SFU_LOAD_UNPACED=1`).
    fn due(&mut self, since: Duration, out: &mut Vec<Out>) {
        let ms = since.as_millis() as u64;
        while self.audio * AUDIO_EVERY_MS <= ms {
            let payload = self.payload(AUDIO, &[0xFC], AUDIO_PAYLOAD);
            out.push(self.packet(AUDIO, (self.audio * 960) as u32, false, payload));
            self.audio += 1;
        }
        while self.video && self.frames * 1000 / FPS <= ms {
            for layer in 0..RIDS.len() {
                self.frame(layer);
            }
            self.frames += 1;
        }
        self.release(since, out);
    }

    /// The pacer: what the time since its last run allows at [`PACING_FACTOR`] × the
    /// video rate, at most one 5 ms interval's worth saved up (as libwebrtc's interval
    /// budget), the last packet of a release taking the budget below zero.
    fn release(&mut self, since: Duration, out: &mut Vec<Out>) {
        if self.unpaced {
            out.extend(self.paced.drain(..));
            return;
        }
        let rate = PACING_FACTOR * LAYER_BPS.iter().sum::<u64>() as f64 / 8.0;
        let elapsed = since.saturating_sub(self.last).as_secs_f64();
        self.last = since;
        self.budget = (self.budget + rate * elapsed).min(rate * 0.005);
        while self.budget > 0.0 {
            let Some(p) = self.paced.pop_front() else {
                break;
            };
            self.budget -= p.payload.len() as f64;
            out.push(p);
        }
    }

    /// The packets of the current frame of `layer`, queued for the pacer.
    fn frame(&mut self, layer: usize) {
        let bytes = frame_bytes(layer, self.frames);
        let parts = packets_of(bytes);
        let key = self.frames.is_multiple_of(KEYFRAME_EVERY);
        let pid = self.picture_ids[layer];
        self.picture_ids[layer] = (pid + 1) & 0x7FFF;
        let timestamp = (self.frames * 90_000 / FPS) as u32;
        for part in 0..parts {
            let head = vp8_head(part == 0, key, pid, LAYER_SIZE[layer]);
            let payload = self.payload(layer as u8, &head, bytes / parts);
            let packet = self.packet(layer as u8, timestamp, part + 1 == parts, payload);
            self.paced.push_back(packet);
        }
    }

    /// `head`, filler and the trailer (send time still zero), `len` bytes in all.
    fn payload(&mut self, layer: u8, head: &[u8], len: usize) -> Vec<u8> {
        let len = len.max(head.len() + TRAILER);
        let mut p = Vec::with_capacity(len);
        p.extend_from_slice(head);
        p.resize(len - TRAILER, 0x5A);
        p.extend_from_slice(&MAGIC);
        p.push(layer);
        p.extend_from_slice(&self.publisher.to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        let counter = &mut self.counters[usize::from(layer)];
        p.extend_from_slice(&counter.to_be_bytes());
        *counter += 1;
        p.extend_from_slice(&[0; 8]);
        p
    }

    fn packet(&mut self, layer: u8, timestamp: u32, marker: bool, payload: Vec<u8>) -> Out {
        let seq = &mut self.seqs[usize::from(layer)];
        let out = Out {
            layer,
            seq: *seq,
            timestamp,
            marker,
            payload,
        };
        *seq = seq.wrapping_add(1);
        out
    }
}

/// The VP8 payload descriptor (RFC 7741: X, I with a 15-bit picture id; S on a frame's
/// first packet) and, on a keyframe's first packet, the frame tag, start code and size
/// (RFC 6386 §9.1), which the SFU reads to find switch points and layer heights.
fn vp8_head(first: bool, key: bool, pid: u16, (w, h): (u16, u16)) -> Vec<u8> {
    let s = if first { 0x10 } else { 0 };
    let mut head = vec![0x80 | s, 0x80, 0x80 | (pid >> 8) as u8, pid as u8];
    if first {
        // Frame tag: bit 0 clear for a key frame, show_frame set.
        head.extend_from_slice(&[if key { 0x10 } else { 0x11 }, 0, 0]);
        if key {
            head.extend_from_slice(&[0x9D, 0x01, 0x2A]);
            head.extend_from_slice(&w.to_le_bytes());
            head.extend_from_slice(&h.to_le_bytes());
        }
    }
    head
}

/// Writes the send time into a payload's trailer.
fn stamp(payload: &mut [u8], epoch: Instant) {
    let ns = epoch.elapsed().as_nanos() as u64;
    let n = payload.len();
    payload[n - 8..].copy_from_slice(&ns.to_be_bytes());
}

/// What a payload's trailer says: (publisher, layer, counter, send time in ns).
fn read_trailer(payload: &[u8]) -> Option<(u16, u8, u32, u64)> {
    let t = payload.get(payload.len().checked_sub(TRAILER)?..)?;
    if t[..3] != MAGIC {
        return None;
    }
    let publisher = u16::from_be_bytes([t[4], t[5]]);
    let counter = u32::from_be_bytes([t[8], t[9], t[10], t[11]]);
    let sent = u64::from_be_bytes(t[12..20].try_into().ok()?);
    Some((publisher, t[3], counter, sent))
}

// ---------------------------------------------------------------------------------
// What a subscriber got

/// One stream's counters seen: lowest, highest, how many.
#[derive(Default, Clone, Copy)]
struct Seen {
    min: u32,
    max: u32,
    count: u64,
}

/// Everything one subscriber received in the measured window.
#[derive(Default)]
struct RecvStats {
    streams: HashMap<(u16, u8), Seen>,
    last_seq: HashMap<u32, u16>,
    gaps: u64,
    packets: u64,
    latency_ns: Vec<u32>,
    layers: [u64; 4],
}

impl RecvStats {
    /// Takes a packet received at `now_ns`; only sequence numbers are followed outside
    /// the window (`measuring` false), so a gap is never counted across its start.
    fn record(&mut self, ssrc: u32, seq: u16, payload: &[u8], now_ns: u64, measuring: bool) {
        let last = self.last_seq.insert(ssrc, seq);
        if !measuring {
            return;
        }
        if let Some(last) = last {
            let step = seq.wrapping_sub(last);
            if (2..0x8000).contains(&step) {
                self.gaps += u64::from(step - 1);
            }
        }
        let Some((publisher, layer, counter, sent)) = read_trailer(payload) else {
            return;
        };
        self.packets += 1;
        self.layers[usize::from(layer.min(AUDIO))] += 1;
        let s = self.streams.entry((publisher, layer)).or_insert(Seen {
            min: counter,
            max: counter,
            count: 0,
        });
        s.min = s.min.min(counter);
        s.max = s.max.max(counter);
        s.count += 1;
        let latency = now_ns.saturating_sub(sent).min(u64::from(u32::MAX));
        self.latency_ns.push(latency as u32);
    }

    /// Packets missing from the counter ranges seen.
    fn lost(&self) -> u64 {
        self.streams
            .values()
            .map(|s| (u64::from(s.max - s.min) + 1).saturating_sub(s.count))
            .sum()
    }
}

type Shared = Arc<Mutex<RecvStats>>;

fn shared_stats(n: usize) -> Vec<Shared> {
    (0..n).map(|_| Arc::default()).collect()
}

// ---------------------------------------------------------------------------------
// Scenarios

#[derive(Clone)]
struct Scenario {
    name: &'static str,
    title: &'static str,
    publishers: usize,
    /// Subscribers that only receive; 0 means every publisher also subscribes (a
    /// conference: each gets everyone but itself).
    listeners: usize,
    video: bool,
}

impl Scenario {
    fn pick(name: &str) -> Scenario {
        let mut s = match name {
            "b" => Scenario {
                name: "b",
                title: "1 publisher × 50 subscribers",
                publishers: 1,
                listeners: 50,
                video: true,
            },
            "c" => Scenario {
                name: "c",
                title: "10 × 10 conference",
                publishers: 10,
                listeners: 0,
                video: true,
            },
            "d" => Scenario {
                name: "d",
                title: "audio only, 1 speaker × 100 listeners",
                publishers: 1,
                listeners: 100,
                video: false,
            },
            other => panic!("unknown scenario {other:?}: b, c or d"),
        };
        let pubs = env_u64("SFU_LOAD_PUBS", s.publishers as u64) as usize;
        let subs = env_u64("SFU_LOAD_SUBS", s.listeners as u64) as usize;
        if (pubs, subs) != (s.publishers, s.listeners) {
            s.title = "custom counts";
        }
        s.publishers = pubs.max(1);
        s.listeners = subs;
        s
    }

    /// A point of the ladder: scenario b's fan-out to `n` subscribers, its own row.
    fn with_listeners(mut self, n: usize) -> Scenario {
        self.name = "ladder";
        self.listeners = n;
        self.title = "scenario b's fan-out";
        self
    }

    fn conference(&self) -> bool {
        self.listeners == 0
    }

    fn subscribers(&self) -> usize {
        if self.conference() {
            self.publishers
        } else {
            self.listeners
        }
    }

    /// The publishers subscriber `s` receives.
    fn feeds(&self, s: usize) -> Vec<usize> {
        (0..self.publishers)
            .filter(|p| !self.conference() || *p != s)
            .collect()
    }

    /// Packets per second the node is asked to send (every subscriber, layer f and
    /// audio of each feed).
    fn offered_pps(&self) -> f64 {
        let per_feed = AUDIO_PPS
            + if self.video {
                layer_pps(usize::from(TOP_LAYER))
            } else {
                0.0
            };
        (0..self.subscribers())
            .map(|s| self.feeds(s).len() as f64 * per_feed)
            .sum()
    }

    fn label(&self) -> String {
        format!("{} {}x{}", self.name, self.publishers, self.subscribers())
    }
}

// ---------------------------------------------------------------------------------
// Results of one run

#[derive(Default, Clone)]
struct Run {
    /// Packets per second into and out of the server over the window.
    in_pps: f64,
    out_pps: f64,
    cpu_s: f64,
    secs: f64,
    received: u64,
    lost: u64,
    gaps: u64,
    worst_loss: f64,
    p50_us: f64,
    p99_us: f64,
    layers: [u64; 4],
    /// The generator's own CPU seconds over the window (this process, core 1): near
    /// the window's length, it is the generator that saturates, not the server.
    gen_cpu_s: f64,
    /// Subscribers whose peer connection failed, left out of the run.
    failed: usize,
    /// The node's datagrams per sendmmsg call (0 where not known).
    per_batch: f64,
    /// Times the server's threads went to sleep over the window (waiting for packets).
    wakeups: f64,
}

impl Run {
    fn out_per_cpu_s(&self) -> f64 {
        if self.cpu_s > 0.0 {
            self.out_pps * self.secs / self.cpu_s
        } else {
            f64::NAN
        }
    }

    fn loss(&self) -> f64 {
        let expected = self.received + self.lost;
        if expected == 0 {
            return f64::NAN;
        }
        self.lost as f64 / expected as f64
    }

    /// Fills in the receivers' side from their stats.
    fn take_stats(&mut self, stats: &[Shared]) {
        let mut all = Vec::new();
        for s in stats {
            let s = s.lock().expect("stats lock");
            self.received += s.packets;
            self.lost += s.lost();
            self.gaps += s.gaps;
            let expected = s.packets + s.lost();
            if expected > 0 {
                self.worst_loss = self.worst_loss.max(s.lost() as f64 / expected as f64);
            }
            for (a, b) in self.layers.iter_mut().zip(s.layers) {
                *a += b;
            }
            all.extend_from_slice(&s.latency_ns);
        }
        all.sort_unstable();
        let pct = |q: f64| {
            all.get(((all.len() as f64 - 1.0) * q).round() as usize)
                .map_or(f64::NAN, |ns| f64::from(*ns) / 1000.0)
        };
        self.p50_us = pct(0.5);
        self.p99_us = pct(0.99);
    }
}

// ---------------------------------------------------------------------------------
// Pinning

/// Pins the calling thread, and every thread it starts from now on, to `core`.
fn pin_self(core: usize) -> bool {
    // SAFETY: cpu_set_t is a plain bit set, zeroed and filled by CPU_SET; the call
    // only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

/// Pins every thread of process `pid` to `core` (`taskset -a -p`).
fn pin_process(pid: u32, core: usize) -> bool {
    Command::new("taskset")
        .args(["-a", "-c", "-p", &core.to_string(), &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// This process's CPU seconds (the generator's).
fn own_cpu() -> f64 {
    cpu_seconds(std::process::id()).expect("/proc/self/stat")
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

// ---------------------------------------------------------------------------------
// The SFU run

const RTP_IN: &str = "confnode_sfu_received_packets_total{kind=\"rtp\"}";
const FORWARDED: &str = "confnode_sfu_forwarded_packets_total";

const SEND_BATCHES: &str = "confnode_sfu_send_batches_total";
const SENT_DATAGRAMS: &str = "confnode_sfu_sent_datagrams_total";

/// Packets in, packets forwarded, the node's CPU seconds, its sendmmsg calls and the
/// datagrams they sent, and its threads' wakeups, now.
fn node_sample(node: &common::Node) -> [f64; 6] {
    let metrics = node.metrics();
    let cpu = cpu_seconds(node.pid()).expect("the node's /proc/PID/stat");
    [
        common::metric_value(&metrics, RTP_IN),
        common::metric_value(&metrics, FORWARDED),
        cpu,
        common::metric_value(&metrics, SEND_BATCHES),
        common::metric_value(&metrics, SENT_DATAGRAMS),
        wakeups(node.pid()).unwrap_or(0) as f64,
    ]
}

/// A publisher's webrtc-rs API: its peer gathers one candidate, on `ip`, through
/// `burst`, and its media engine writes the mid and rid header extensions a simulcast
/// sender needs.
fn publisher_api(ip: Ipv4Addr, burst: &burst::BurstSocket) -> webrtc::api::API {
    api_on(ip, true, Some(burst.clone()))
}

/// The mid and rid header extensions a simulcast sender writes.
fn register_simulcast_extensions(media: &mut MediaEngine) {
    let ext = |uri: &str| RTCRtpHeaderExtensionCapability {
        uri: uri.to_owned(),
    };
    for uri in [
        sdp::extmap::SDES_MID_URI,
        sdp::extmap::SDES_RTP_STREAM_ID_URI,
    ] {
        media
            .register_header_extension(ext(uri), RTPCodecType::Video, None)
            .expect("video header extension");
    }
    media
        .register_header_extension(ext(sdp::extmap::SDES_MID_URI), RTPCodecType::Audio, None)
        .expect("audio header extension");
}

/// A connected publisher: its tracks by trailer layer (q, h, f, audio; video absent
/// for an audio-only one).
struct Publisher {
    pc: Arc<RTCPeerConnection>,
    tracks: Tracks,
    /// Its ICE socket, which sends a tick's packets when told.
    burst: burst::BurstSocket,
}

/// A publisher's tracks by trailer layer (q, h, f, audio).
type Tracks = Vec<Option<Arc<TrackLocalStaticRTP>>>;

fn track(mime: &str, id: &str, rid: Option<&str>) -> Arc<TrackLocalStaticRTP> {
    let cap = RTCRtpCodecCapability {
        mime_type: mime.to_owned(),
        ..Default::default()
    };
    Arc::new(match rid {
        Some(rid) => TrackLocalStaticRTP::new_with_rid(
            cap,
            id.to_owned(),
            rid.to_owned(),
            "stream".to_owned(),
        ),
        None => TrackLocalStaticRTP::new(cap, id.to_owned(), "stream".to_owned()),
    })
}

/// Adds VP8 simulcast (when `video`) and Opus tracks to `pc`: the tracks by trailer
/// layer, and their senders.
async fn add_tracks(pc: &RTCPeerConnection, video: bool) -> (Tracks, Vec<Arc<RTCRtpSender>>) {
    let mut tracks = vec![None; 4];
    let mut senders = Vec::new();
    if video {
        let layers: Vec<_> = RIDS
            .iter()
            .map(|rid| track(MIME_TYPE_VP8, "video", Some(rid)))
            .collect();
        let sender = pc
            .add_track(layers[0].clone() as Arc<dyn TrackLocal + Send + Sync>)
            .await
            .expect("add video track");
        for layer in &layers[1..] {
            sender
                .add_encoding(layer.clone() as Arc<dyn TrackLocal + Send + Sync>)
                .await
                .expect("add simulcast encoding");
        }
        senders.push(sender);
        for (i, t) in layers.into_iter().enumerate() {
            tracks[i] = Some(t);
        }
    }
    let audio = track(MIME_TYPE_OPUS, "audio", None);
    let sender = pc
        .add_track(audio.clone() as Arc<dyn TrackLocal + Send + Sync>)
        .await
        .expect("add audio track");
    senders.push(sender);
    tracks[usize::from(AUDIO)] = Some(audio);

    (tracks, senders)
}

/// Publishes VP8 simulcast (when `video`) and Opus as participant `joined`.
async fn publish(
    ip: Ipv4Addr,
    http: SocketAddr,
    room: &str,
    joined: &common::Joined,
    video: bool,
) -> Publisher {
    let burst = burst::BurstSocket::bind(ip.into()).await;
    let api = publisher_api(ip, &burst);
    let pc = Arc::new(
        api.new_peer_connection(RTCConfiguration::default())
            .await
            .expect("publisher peer connection"),
    );
    let (tracks, senders) = add_tracks(&pc, video).await;
    let mut state = peers::state_channel(&pc);
    let offer = pc.create_offer(None).await.expect("offer");
    let offer = peers::set_local_gathered(&pc, offer).await;
    let path = format!("/api/rooms/{room}/participants/{}/publish", joined.id);
    let r = peers::post_sdp(http, path, &joined.token, offer).await;
    assert_eq!(r.status, 201, "publish: {}", r.body);
    let answer = RTCSessionDescription::answer(r.body).expect("answer");
    pc.set_remote_description(answer)
        .await
        .expect("publisher remote description");
    peers::wait_connected(&mut state, "publisher").await;
    // The node's keyframe requests and reports: read and dropped (keyframes come on
    // schedule).
    peers::drain_rtcp(&senders);
    Publisher { pc, tracks, burst }
}

/// A webrtc-rs API whose peers gather one candidate, on `ip`: through `sock` alone when
/// given (a subscriber's, whose arrivals are then noted: see `stamped`; a publisher's,
/// which sends each tick in one burst: see `burst`), else on sockets of webrtc-rs's
/// own. `simulcast`: the media engine also knows the simulcast
/// extensions (what Janus's peers need).
fn api_on(
    ip: Ipv4Addr,
    simulcast: bool,
    sock: Option<impl webrtc_util::Conn + Send + Sync + 'static>,
) -> webrtc::api::API {
    let mut media = MediaEngine::default();
    media.register_default_codecs().expect("codecs");
    if simulcast {
        register_simulcast_extensions(&mut media);
    }
    let mut settings = peers::settings();
    settings.set_include_loopback_candidate(ip.is_loopback());
    settings.set_ip_filter(Box::new(move |a| a == std::net::IpAddr::V4(ip)));
    if let Some(sock) = sock {
        let mux = UDPMuxDefault::new(UDPMuxParams::new(sock));
        settings.set_udp_network(UDPNetwork::Muxed(mux));
    }
    APIBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(Registry::new())
        .with_setting_engine(settings)
        .build()
}

/// A subscriber's peer connection on a socket of its own on `host` (the veth address
/// for a namespace's server, else 127.0.0.1), recording into `stats` what it reads.
async fn subscriber_pc(
    host: Option<Ipv4Addr>,
    stats: Shared,
    clock: (Instant, Arc<AtomicBool>),
) -> Arc<RTCPeerConnection> {
    let arrivals = stamped::Arrivals::new(clock.0);
    let ip = host.unwrap_or(Ipv4Addr::LOCALHOST);
    let sock = stamped::StampedSocket::bind(ip.into(), arrivals.clone()).await;
    let api = api_on(ip, host.is_some(), Some(sock));
    let pc = Arc::new(
        api.new_peer_connection(RTCConfiguration::default())
            .await
            .expect("subscriber peer connection"),
    );
    record_tracks(&pc, stats, clock, arrivals);
    pc
}

/// A connected subscriber: its peer connection and its open event stream.
struct Subscriber {
    pc: Arc<RTCPeerConnection>,
    _events: common::SseStream,
}

/// Subscribes participant `joined`: answers the node's offer; every RTP packet it reads
/// goes into `stats` (while `measuring`).
async fn subscribe(
    host: Option<Ipv4Addr>,
    http: SocketAddr,
    room: String,
    joined: (String, String),
    stats: Shared,
    clock: (Instant, Arc<AtomicBool>),
) -> Subscriber {
    let (id, token) = joined;
    let events = format!("/api/rooms/{room}/participants/{id}/events");
    let bearer = format!("Bearer {token}");
    let (events, offer) = tokio::task::spawn_blocking(move || {
        let mut stream = common::SseStream::open(http, &events, &[("Authorization", &bearer)])
            .unwrap_or_else(|r| panic!("events: {} {}", r.status, r.body));
        loop {
            let (name, data) = stream.next_event().expect("event stream ended");
            if name == "offer" {
                let v: serde_json::Value = serde_json::from_str(&data).expect("offer JSON");
                return (stream, v["sdp"].as_str().expect("offer sdp").to_owned());
            }
        }
    })
    .await
    .expect("offer event");

    let pc = subscriber_pc(host, stats, clock).await;
    let mut state = peers::state_channel(&pc);
    let offer = RTCSessionDescription::offer(offer).expect("offer");
    pc.set_remote_description(offer)
        .await
        .expect("subscriber remote description");
    let answer = pc.create_answer(None).await.expect("answer");
    let answer = peers::set_local_gathered(&pc, answer).await;
    let path = format!("/api/rooms/{room}/participants/{id}/subscribe");
    let r = peers::post_sdp(http, path, &token, answer).await;
    assert_eq!(r.status, 204, "subscribe: {}", r.body);
    peers::wait_connected(&mut state, "subscriber").await;
    Subscriber {
        pc,
        _events: events,
    }
}

/// Every RTP packet `pc` reads on its remote tracks goes into `stats` (while the
/// `measuring` flag of `clock` is set), timed by when it reached the subscriber's
/// socket (from `arrivals`; when that is unknown, by its read) against the epoch.
fn record_tracks(
    pc: &RTCPeerConnection,
    stats: Shared,
    clock: (Instant, Arc<AtomicBool>),
    arrivals: Arc<stamped::Arrivals>,
) {
    let (epoch, measuring) = clock;
    pc.on_track(Box::new(move |track, _, _| {
        let stats = stats.clone();
        let measuring = measuring.clone();
        let arrivals = arrivals.clone();
        tokio::spawn(async move {
            while let Ok((pkt, _)) = track.read_rtp().await {
                let h = &pkt.header;
                let now = arrivals
                    .take(h.ssrc, h.sequence_number)
                    .unwrap_or_else(|| epoch.elapsed().as_nanos() as u64);
                let on = measuring.load(Ordering::Relaxed);
                if let Ok(mut s) = stats.lock() {
                    s.record(h.ssrc, h.sequence_number, &pkt.payload, now, on);
                }
            }
        });
        Box::pin(async {})
    }));
}

/// Sends a publisher's schedule on its tracks until `stop`, each tick's packets in one
/// burst from its socket.
async fn send_media(
    mut source: Source,
    (tracks, burst): (Tracks, burst::BurstSocket),
    epoch: Instant,
    stop: Arc<AtomicBool>,
) {
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut due = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        source.due(start.elapsed(), &mut due);
        for mut out in due.drain(..) {
            let Some(track) = &tracks[usize::from(out.layer)] else {
                continue;
            };
            stamp(&mut out.payload, epoch);
            let pkt = Packet {
                header: Header {
                    version: 2,
                    marker: out.marker,
                    sequence_number: out.seq,
                    timestamp: out.timestamp,
                    ..Default::default()
                },
                payload: out.payload.into(),
            };
            let _ = track.write_rtp(&pkt).await;
        }
        burst.flush().await;
    }
}

/// The node's configuration for scenario `s`: its `[http]` keys, and the rest
/// (starting with keys of `[node]`, whose header the caller writes).
fn node_config(s: &Scenario) -> (String, String) {
    // Every subscriber's event stream comes from one address.
    let http = format!(
        "max_connections_per_ip = 4096\n{}",
        common::host_account(HOST, PASSWORD)
    );
    // One data-plane worker: the node has one core. Room size above the scenario's.
    // `[node]` keys first: `start_binary_on` opens that table itself.
    let extra = format!(
        "workers = 1\n[rooms]\nmax_participants = {}\n[log]\nlevel = \"warn\"\n",
        s.publishers + s.listeners + 10
    );
    (http, extra)
}

/// The node started inside `ns` on its inner address (through a wrapper script that
/// enters the namespace and execs the binary, so the pid stays the node's); the
/// wrapper's directory must outlive it.
fn start_node_in(s: &Scenario, ns: &janus::Netns) -> (common::Node, tempfile::TempDir) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("temp dir");
    let wrapper = dir.path().join("confnode-in-netns");
    let script = format!(
        "#!/bin/sh\nexec ip netns exec {} {} \"$@\"\n",
        ns.name,
        common::BIN
    );
    std::fs::write(&wrapper, script).expect("write the wrapper");
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
        .expect("chmod the wrapper");
    let (http, extra) = node_config(s);
    let node = common::Node::start_binary_on(&wrapper, ns.inside, &http, &extra).0;
    (node, dir)
}

/// The node on 127.0.0.1 alone: every subscriber then reaches it over IPv4, as the
/// bare relay's receivers do (with `[::1]` too, some webrtc-rs peers would pick it).
fn start_node(s: &Scenario) -> common::Node {
    let (http, extra) = node_config(s);
    common::Node::start_binary_on(
        Path::new(common::BIN),
        std::net::Ipv4Addr::LOCALHOST,
        &http,
        &extra,
    )
    .0
}

/// Joins `n` participants named `prefix`N, participant `i` from address `from(i)`.
fn join_all(
    http: SocketAddr,
    room: &str,
    prefix: &str,
    n: usize,
    from: impl Fn(usize) -> std::net::Ipv4Addr,
) -> Vec<common::Joined> {
    (0..n)
        .map(|i| join_from(http, room, &format!("{prefix}{i}"), from(i)))
        .collect()
}

/// `POST /api/rooms/{room}/participants` over a connection from `from`.
fn join_from(http: SocketAddr, room: &str, name: &str, from: std::net::Ipv4Addr) -> common::Joined {
    use std::io::{Read, Write};
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .expect("TCP socket");
    sock.bind(&SocketAddr::from((from, 0)).into())
        .expect("bind a loopback source address");
    sock.connect(&http.into()).expect("connect to the node");
    let mut stream = std::net::TcpStream::from(sock);
    let body = serde_json::json!({ "display_name": name }).to_string();
    write!(
        stream,
        "POST /api/rooms/{room}/participants HTTP/1.1\r\nHost: {http}\r\n\
         Connection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send the join");
    let mut raw = String::new();
    stream
        .read_to_string(&mut raw)
        .expect("read the join answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 201"), "join: {head}\n{body}");
    let answer: serde_json::Value = serde_json::from_str(body).expect("join JSON");
    common::Joined {
        id: answer["participant"]
            .as_str()
            .expect("participant")
            .to_owned(),
        token: answer["token"].as_str().expect("token").to_owned(),
        answer,
    }
}

/// One run of scenario `s` through confnode: on loopback, or in network namespace `ns`
/// (reached over its veth, as Janus is).
fn run_sfu(s: &Scenario, secs: u64, pinned: bool, ns: Option<&janus::Netns>) -> Run {
    let (node, _wrapper) = match ns {
        None => (start_node(s), None),
        Some(ns) => {
            let (node, wrapper) = start_node_in(s, ns);
            (node, Some(wrapper))
        }
    };
    // Each participant joins from its own address (the node allows 30 joins a minute
    // per address): 127.0.1.x publishers and 127.0.2.x listeners on loopback, the
    // namespace's client addresses on the veth.
    let from = |net: u8, i: usize| match ns {
        None => std::net::Ipv4Addr::new(127, 0, net, (i % 250 + 1) as u8),
        Some(ns) => ns.client(usize::from(net - 1) * s.publishers + i),
    };
    if pinned {
        assert!(
            pin_process(node.pid(), SERVER_CORE),
            "taskset could not pin the node"
        );
    }
    let room = common::create_room(&node, HOST, PASSWORD);
    let pubs = join_all(node.http, &room, "pub", s.publishers, |i| from(1, i));
    let subs = if s.conference() {
        Vec::new()
    } else {
        join_all(node.http, &room, "sub", s.listeners, |i| from(2, i))
    };
    let stats = shared_stats(s.subscribers());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();

    let runtime = runtime(2);
    let senders = publishers_runtime();
    let mut run = runtime.block_on(async {
        let ip = ns.map_or(Ipv4Addr::LOCALHOST, |ns| ns.host);
        let mut publishers = Vec::new();
        for (p, joined) in pubs.iter().enumerate() {
            let (http, room, joined, video) = (node.http, room.clone(), joined.clone(), s.video);
            let publisher = senders
                .spawn(async move { publish(ip, http, &room, &joined, video).await })
                .await
                .expect("publisher");
            let source = Source::new(p as u16, s.video);
            senders.spawn(send_media(
                source,
                (publisher.tracks.clone(), publisher.burst.clone()),
                epoch,
                stop.clone(),
            ));
            publishers.push(publisher);
        }
        // Subscribers join ten at a time.
        let sub_host = ns.map(|ns| ns.host);
        let who: Vec<(String, String)> = if s.conference() {
            pubs.iter()
                .map(|j| (j.id.clone(), j.token.clone()))
                .collect()
        } else {
            subs.iter()
                .map(|j| (j.id.clone(), j.token.clone()))
                .collect()
        };
        let mut subscribers = Vec::new();
        let mut failed = 0;
        for chunk in who.iter().zip(&stats).collect::<Vec<_>>().chunks(10) {
            let tasks: Vec<_> = chunk
                .iter()
                .map(|((id, token), st)| {
                    tokio::spawn(subscribe(
                        sub_host,
                        node.http,
                        room.clone(),
                        (id.clone(), token.clone()),
                        (*st).clone(),
                        (epoch, measuring.clone()),
                    ))
                })
                .collect();
            for t in tasks {
                // A subscriber whose connection failed (its panic is printed) is left
                // out and counted: the run goes on with the others.
                match t.await {
                    Ok(sub) => subscribers.push(sub),
                    Err(_) => failed += 1,
                }
            }
        }
        println!(
            "  {} publishers and {} subscribers connected after {:.1} s ({failed} failed)",
            publishers.len(),
            subscribers.len(),
            epoch.elapsed().as_secs_f64()
        );
        // A keyframe interval and a bit: every subscriber is on layer f.
        tokio::time::sleep(Duration::from_millis(3500)).await;
        let before = node_sample(&node);
        let gen0 = own_cpu();
        measuring.store(true, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(secs)).await;
        measuring.store(false, Ordering::Relaxed);
        let after = node_sample(&node);
        let gen1 = own_cpu();
        stop.store(true, Ordering::Relaxed);
        let span = secs as f64;
        let run = Run {
            in_pps: (after[0] - before[0]) / span,
            out_pps: (after[1] - before[1]) / span,
            cpu_s: after[2] - before[2],
            per_batch: (after[4] - before[4]) / (after[3] - before[3]).max(1.0),
            wakeups: after[5] - before[5],
            gen_cpu_s: gen1 - gen0,
            failed,
            secs: span,
            ..Run::default()
        };
        for p in &publishers {
            let _ = p.pc.close().await;
        }
        for sub in &subscribers {
            let _ = sub.pc.close().await;
        }
        run
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    senders.shutdown_timeout(Duration::from_secs(2));
    run.take_stats(&stats);
    run
}

/// The runtime the publishers send on, one worker of its own: on the generator's one
/// core the subscribers' tasks, which read every packet the server sends, would delay
/// the publishers' ticks by whatever they were doing, as independent browsers' are
/// not; the bare relay's publishers tick on a runtime like it.
fn publishers_runtime() -> tokio::runtime::Runtime {
    runtime(1)
}

/// A multi-threaded tokio runtime of `workers` workers, with timers and I/O.
fn runtime(workers: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

// ---------------------------------------------------------------------------------
// The bare relay

/// The relay process: receives on 127.0.0.1:`port`, and sends each datagram to the
/// receivers `routes` lists for its source port, in sendmmsg batches. Runs until
/// killed.
fn bare_relay_main(port: u16, routes: &Path) {
    let text = std::fs::read_to_string(routes).expect("read the routes file");
    let mut table: HashMap<u16, Vec<SocketAddrV4>> = HashMap::new();
    for line in text.lines() {
        let mut ports = line.split_whitespace().map(|p| p.parse::<u16>());
        let Some(Ok(src)) = ports.next() else {
            continue;
        };
        let dsts = ports
            .map(|p| SocketAddrV4::new([127, 0, 0, 1].into(), p.expect("a port")))
            .collect();
        table.insert(src, dsts);
    }
    let sock = UdpSocket::bind(("127.0.0.1", port)).expect("bind the bare relay");
    set_buffers(&sock, 4 << 20);
    let mut rx = MsgBatch::new(64);
    let mut tx = MsgBatch::new(256);
    loop {
        let n = match rx.recv(&sock, 0, 64, 0, libc::MSG_WAITFORONE) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("bare relay recvmmsg: {e}"),
        };
        let mut queued = 0;
        for i in 0..n {
            let Some(dsts) = table.get(&rx.addrs[i].port()) else {
                continue;
            };
            let len = rx.lens[i];
            for dst in dsts {
                if queued == tx.capacity() {
                    flush(&sock, &mut tx, queued);
                    queued = 0;
                }
                tx.slot(queued)[..len].copy_from_slice(&rx.slot(i)[..len]);
                tx.lens[queued] = len;
                tx.addrs[queued] = *dst;
                queued += 1;
            }
        }
        flush(&sock, &mut tx, queued);
    }
}

/// Sends slots `0..n` of `tx`, retrying what the kernel did not take.
fn flush(sock: &UdpSocket, tx: &mut MsgBatch, n: usize) {
    let mut at = 0;
    while at < n {
        match tx.send(sock, at..n, 0, true) {
            Ok(k) => at += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            // Lost, as a full socket buffer would lose it.
            Err(_) => at += 1,
        }
    }
}

/// A bare RTP packet: a 12-byte header, the payload, [`BARE_OVERHEAD`] bytes.
fn bare_packet(out: &Out, ssrc: u32, epoch: Instant, buf: &mut Vec<u8>) {
    buf.clear();
    buf.push(0x80);
    let pt = if out.layer == AUDIO { 111 } else { 96 };
    buf.push(if out.marker { 0x80 | pt } else { pt });
    buf.extend_from_slice(&out.seq.to_be_bytes());
    buf.extend_from_slice(&out.timestamp.to_be_bytes());
    buf.extend_from_slice(&ssrc.to_be_bytes());
    let at = buf.len();
    buf.extend_from_slice(&out.payload);
    stamp(&mut buf[at..], epoch);
    buf.extend_from_slice(&[0; BARE_OVERHEAD]);
}

/// Reads every receiver socket until `stop`, into `stats`.
fn bare_receive(
    socks: Vec<UdpSocket>,
    stats: Vec<Shared>,
    epoch: Instant,
    measuring: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) {
    let mut epoll = Epoll::new(socks.len()).expect("epoll");
    for (i, s) in socks.iter().enumerate() {
        s.set_nonblocking(true).expect("non-blocking");
        epoll.add(s, i as u64).expect("epoll add");
    }
    // Each datagram is timed by when the kernel put it in the socket, as the SFU's
    // subscribers time theirs (`stamped`), so one reader thread for all sockets does
    // not add its own queueing to the relay's latency.
    let epoch_unix = stamped::epoch_unix_ns(epoch);
    for s in &socks {
        let _ = stamped::last_arrival(s);
    }
    let mut buf = vec![0u8; 2048];
    let mut ready = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        epoll.wait(&mut ready, 50).expect("epoll wait");
        for &i in &ready {
            let sock = &socks[i as usize];
            let on = measuring.load(Ordering::Relaxed);
            let mut st = stats[i as usize].lock().expect("stats lock");
            while let Ok(len) = sock.recv(&mut buf) {
                let now = stamped::last_arrival(sock)
                    .map(|t| t.saturating_sub(epoch_unix))
                    .unwrap_or_else(|| epoch.elapsed().as_nanos() as u64);
                let p = &buf[..len];
                if len < 12 + BARE_OVERHEAD {
                    continue;
                }
                let Some((ssrc, seq)) = stamped::rtp_key(p) else {
                    continue;
                };
                st.record(ssrc, seq, &p[12..len - BARE_OVERHEAD], now, on);
            }
        }
    }
}

fn run_bare(s: &Scenario, secs: u64, pinned: bool) -> Run {
    let bind = || {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a loopback socket");
        let port = sock.local_addr().expect("local address").port();
        (sock, port)
    };
    let streams: Vec<u8> = if s.video {
        vec![0, 1, 2, AUDIO]
    } else {
        vec![AUDIO]
    };
    // One source socket per publisher stream: the relay routes by source port alone.
    let sources: Vec<Vec<(u8, UdpSocket, u16)>> = (0..s.publishers)
        .map(|_| {
            streams
                .iter()
                .map(|&l| {
                    let (sock, port) = bind();
                    (l, sock, port)
                })
                .collect()
        })
        .collect();
    let receivers: Vec<(UdpSocket, u16)> = (0..s.subscribers()).map(|_| bind()).collect();
    let mut routes = String::new();
    for (p, socks) in sources.iter().enumerate() {
        for (layer, _, port) in socks {
            let forwarded = *layer == AUDIO || *layer == TOP_LAYER;
            let dsts: Vec<String> = (0..s.subscribers())
                .filter(|r| forwarded && s.feeds(*r).contains(&p))
                .map(|r| receivers[r].1.to_string())
                .collect();
            writeln!(routes, "{port} {}", dsts.join(" ")).expect("string write");
        }
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let routes_path = dir.path().join("routes");
    std::fs::write(&routes_path, routes).expect("write routes");
    let relay_port = load::free_port();
    let me = std::env::current_exe().expect("this bench's path");
    let mut cmd = if pinned {
        let mut c = Command::new("taskset");
        c.args(["-c", &SERVER_CORE.to_string()]).arg(me);
        c
    } else {
        Command::new(me)
    };
    cmd.arg(BARE_ARG)
        .arg(relay_port.to_string())
        .arg(&routes_path);
    let relay = Proc::spawn("bare relay", &mut cmd, &dir.path().join("relay.log"))
        .expect("start the bare relay");
    std::thread::sleep(Duration::from_millis(300));
    let relay_addr = SocketAddr::from(([127, 0, 0, 1], relay_port));

    let stats = shared_stats(s.subscribers());
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let rx_socks: Vec<UdpSocket> = receivers.into_iter().map(|(sock, _)| sock).collect();
    let receiver = {
        let (stats, measuring, stop) = (stats.clone(), measuring.clone(), stop.clone());
        std::thread::spawn(move || bare_receive(rx_socks, stats, epoch, measuring, stop))
    };
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || bare_send(sources, relay_addr, epoch, stop))
    };
    std::thread::sleep(Duration::from_millis(3500));
    let cpu0 = cpu_seconds(relay.pid()).expect("the relay's /proc/PID/stat");
    let wake0 = wakeups(relay.pid()).unwrap_or(0);
    let gen0 = own_cpu();
    measuring.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs(secs));
    measuring.store(false, Ordering::Relaxed);
    let cpu1 = cpu_seconds(relay.pid()).expect("the relay's /proc/PID/stat");
    let wake1 = wakeups(relay.pid()).unwrap_or(0);
    let gen1 = own_cpu();
    stop.store(true, Ordering::Relaxed);
    let sent_in = sender.join().expect("bare sender");
    receiver.join().expect("bare receiver");
    drop(relay);
    let mut run = Run {
        cpu_s: cpu1 - cpu0,
        gen_cpu_s: gen1 - gen0,
        wakeups: wake1.saturating_sub(wake0) as f64,
        secs: secs as f64,
        ..Run::default()
    };
    run.take_stats(&stats);
    // The relay counts nothing: its egress is what the receivers got in the window.
    run.out_pps = run.received as f64 / run.secs;
    run.in_pps = sent_in;
    run
}

/// Sends every publisher's schedule to the relay until `stop`; the rate sent (pps).
fn bare_send(
    sources: Vec<Vec<(u8, UdpSocket, u16)>>,
    relay: SocketAddr,
    epoch: Instant,
    stop: Arc<AtomicBool>,
) -> f64 {
    // Each publisher a task of its own on a tokio interval of 5 ms, started a share of
    // the tick after the one before, on the webrtc-rs publishers' kind of runtime: the
    // relay is fed at the moments the node is. (Threads sleeping 5 ms after each tick
    // drift together: a tick delayed by another publisher's burst stays late, until
    // every publisher sends in one burst and the relay wakes once per tick.)
    let start = Instant::now();
    let count = sources.len().max(1) as u32;
    let runtime = publishers_runtime();
    let sent: u64 = runtime.block_on(async {
        let publishers: Vec<_> = sources
            .into_iter()
            .enumerate()
            .map(|(p, socks)| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(5) * p as u32 / count).await;
                    bare_publish(p, &socks, relay, epoch, &stop).await
                })
            })
            .collect();
        let mut sent = 0;
        for p in publishers {
            sent += p.await.expect("bare publisher");
        }
        sent
    });
    sent as f64 / start.elapsed().as_secs_f64()
}

/// Publisher `p`'s schedule, sent from its sockets (one per layer) to the bare relay
/// until `stop`. Returns the packets sent.
async fn bare_publish(
    p: usize,
    socks: &[(u8, UdpSocket, u16)],
    relay: SocketAddr,
    epoch: Instant,
    stop: &AtomicBool,
) -> u64 {
    let mut schedule = Source::new(p as u16, socks.len() > 1);
    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    let mut due = Vec::new();
    let mut buf = Vec::with_capacity(2048);
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        schedule.due(start.elapsed(), &mut due);
        for out in due.drain(..) {
            let Some((_, sock, _)) = socks.iter().find(|(l, _, _)| *l == out.layer) else {
                continue;
            };
            let ssrc = (p as u32) << 8 | u32::from(out.layer);
            bare_packet(&out, ssrc, epoch, &mut buf);
            // A loopback UDP send does not block.
            if sock.send_to(&buf, relay).is_ok() {
                sent += 1;
            }
        }
    }
    sent
}

// ---------------------------------------------------------------------------------
// Report

fn cpu_model() -> String {
    let out = Command::new("lscpu").output().map(|o| o.stdout);
    let text = String::from_utf8_lossy(&out.unwrap_or_default()).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("Model name:"))
        .map_or_else(|| "unknown CPU".to_owned(), |m| m.trim().to_owned())
}

fn today() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    out.unwrap_or_default()
}

fn fmtpct(x: f64) -> String {
    if x.is_nan() {
        "-".to_owned()
    } else {
        format!("{:.3} %", x * 100.0)
    }
}

/// The run of median egress packets per CPU-second.
fn median_run(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.out_per_cpu_s().total_cmp(&b.out_per_cpu_s()));
    runs.swap_remove(runs.len() / 2)
}

fn print_runs(s: &Scenario, sfu: &Run, bare: Option<&Run>, janus: Option<(&Run, &Run)>) {
    let mut rows = Vec::new();
    let others = bare.map(|b| ("bare", b)).into_iter();
    let others = others.chain(
        janus
            .into_iter()
            .flat_map(|(n, j)| [("confnode (netns)", n), ("Janus (netns)", j)]),
    );
    for (name, r) in std::iter::once(("confnode", sfu)).chain(others) {
        rows.push(vec![
            name.to_owned(),
            format!("{:.0}", r.in_pps),
            format!("{:.0}", r.out_pps),
            format!("{:.2}", r.cpu_s),
            format!("{:.0}", r.out_per_cpu_s()),
            format!("{:.2}", r.cpu_s / (r.out_pps * r.secs) * 1e6),
            fmtpct(r.loss()),
            fmtpct(r.worst_loss),
            r.gaps.to_string(),
            format!("{:.0}", r.p50_us),
            format!("{:.0}", r.p99_us),
            format!("{:.0}", r.wakeups / r.secs),
            format!("{:.0} %", r.gen_cpu_s / r.secs * 100.0),
            r.failed.to_string(),
        ]);
    }
    println!(
        "\nscenario {} ({}): offered egress {:.0} packets/s",
        s.name,
        s.title,
        s.offered_pps()
    );
    print_table(
        &[
            "server",
            "in pps",
            "out pps",
            "CPU s",
            "out pkts/CPU-s",
            "µs CPU/pkt",
            "loss",
            "worst sub",
            "seq gaps",
            "p50 µs",
            "p99 µs",
            "wakeups/s",
            "generator CPU",
            "subs failed",
        ],
        &rows,
    );
    println!(
        "  confnode sent {:.1} datagrams per sendmmsg call",
        sfu.per_batch
    );
    for (name, r) in [("confnode", Some(sfu)), ("Janus", janus.map(|(_, j)| j))] {
        if let Some(r) = r {
            let l = r.layers;
            println!(
                "  {name} subscribers got: q {} h {} f {} audio {} packets",
                l[0], l[1], l[2], l[3]
            );
        }
    }
    if let Some(b) = bare {
        println!(
            "  confnode egress per CPU-second = {:.3} × the bare limit",
            sfu.out_per_cpu_s() / b.out_per_cpu_s()
        );
    }
    if let Some((n, j)) = janus {
        println!(
            "  in the network namespace (over the veth): confnode egress per CPU-second = \
             {:.2} × Janus's",
            n.out_per_cpu_s() / j.out_per_cpu_s()
        );
    }
}

const RESULTS_HEADER: &str = "label\tscenario\ttitle\tpublishers\tsubscribers\toffered_pps\t\
sfu_in_pps\tsfu_out_pps\tsfu_cpu_s\tsfu_pkts_per_cpu_s\tsfu_loss\tsfu_gaps\tsfu_p50_us\tsfu_p99_us\t\
bare_out_pps\tbare_cpu_s\tbare_pkts_per_cpu_s\tbare_loss\tbare_p50_us\tbare_p99_us\tdate\tcpu\t\
sfu_generator_cpu\tbare_generator_cpu\t\
janus_out_pps\tjanus_cpu_s\tjanus_pkts_per_cpu_s\tjanus_loss\tjanus_p50_us\tjanus_p99_us\t\
netns_sfu_pkts_per_cpu_s\tnetns_sfu_loss\tnetns_sfu_p99_us";

fn results_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/results")
}

fn results_file() -> PathBuf {
    results_dir().join("sfu_load.tsv")
}

/// The rows of the results file (none if there is none).
fn read_rows() -> Vec<Vec<String>> {
    let old = std::fs::read_to_string(results_file()).unwrap_or_default();
    old.lines()
        .skip(1)
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect()
}

fn write_plot(rows: &[Vec<String>]) {
    let svg = results_dir().join("sfu_load.svg");
    std::fs::write(&svg, plot::svg(rows)).expect("write the plot");
}

/// Replaces this scenario's row in the results file; returns all rows.
fn save_row(
    s: &Scenario,
    sfu: &Run,
    bare: Option<&Run>,
    janus: Option<(&Run, &Run)>,
) -> Vec<Vec<String>> {
    let dir = results_dir();
    std::fs::create_dir_all(&dir).expect("create benches/results");
    let label = s.label();
    let mut rows: Vec<Vec<String>> = read_rows()
        .into_iter()
        .filter(|r| r.first() != Some(&label))
        .collect();
    let none = Run {
        out_pps: f64::NAN,
        p50_us: f64::NAN,
        p99_us: f64::NAN,
        ..Run::default()
    };
    let b = bare.cloned().unwrap_or_else(|| none.clone());
    let (n, j) = janus.map_or((none.clone(), none), |(n, j)| (n.clone(), j.clone()));
    rows.push(vec![
        label,
        s.name.to_owned(),
        s.title.to_owned(),
        s.publishers.to_string(),
        s.subscribers().to_string(),
        format!("{:.0}", s.offered_pps()),
        format!("{:.0}", sfu.in_pps),
        format!("{:.0}", sfu.out_pps),
        format!("{:.2}", sfu.cpu_s),
        format!("{:.0}", sfu.out_per_cpu_s()),
        format!("{:.6}", sfu.loss()),
        sfu.gaps.to_string(),
        format!("{:.0}", sfu.p50_us),
        format!("{:.0}", sfu.p99_us),
        format!("{:.0}", b.out_pps),
        format!("{:.2}", b.cpu_s),
        format!("{:.0}", b.out_per_cpu_s()),
        format!("{:.6}", b.loss()),
        format!("{:.0}", b.p50_us),
        format!("{:.0}", b.p99_us),
        today(),
        cpu_model(),
        format!("{:.3}", sfu.gen_cpu_s / sfu.secs),
        format!("{:.3}", b.gen_cpu_s / b.secs.max(1.0)),
        format!("{:.0}", j.out_pps),
        format!("{:.2}", j.cpu_s),
        format!("{:.0}", j.out_per_cpu_s()),
        format!("{:.6}", j.loss()),
        format!("{:.0}", j.p50_us),
        format!("{:.0}", j.p99_us),
        format!("{:.0}", n.out_per_cpu_s()),
        format!("{:.6}", n.loss()),
        format!("{:.0}", n.p99_us),
    ]);
    rows.sort_by(|a, b| a[0].cmp(&b[0]));
    let mut text = format!("{RESULTS_HEADER}\n");
    for r in &rows {
        text.push_str(&r.join("\t"));
        text.push('\n');
    }
    std::fs::write(results_file(), text).expect("write benches/results/sfu_load.tsv");
    rows
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == BARE_ARG) {
        let port = args
            .get(i + 1)
            .and_then(|p| p.parse().ok())
            .expect("the bare relay needs a port");
        let routes = args.get(i + 2).expect("the bare relay needs a routes file");
        bare_relay_main(port, Path::new(routes));
        return;
    }
    let name = args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .cloned()
        .or_else(|| std::env::var("SFU_LOAD").ok())
        .unwrap_or_else(|| "b".to_owned());
    if name == "plot" {
        // Only redraws the plot from the results file.
        write_plot(&read_rows());
        return;
    }
    let scenarios = if name == "ladder" {
        // Scenario b's fan-out at rising subscriber counts: points along the load axis.
        LADDER
            .iter()
            .map(|&n| Scenario::pick("b").with_listeners(n))
            .collect()
    } else {
        vec![Scenario::pick(&name)]
    };
    let ladder = name == "ladder";
    // Scenario d's node uses ~0.03 CPU-seconds a second, read in 10 ms ticks: a longer
    // window keeps its figure's steps near 1 %.
    let window = match name.as_str() {
        "ladder" => 20,
        "d" => 30,
        _ => 10,
    };
    let secs = env_u64("SFU_LOAD_SECS", window).max(1);
    let rounds = env_u64("SFU_LOAD_ROUNDS", if ladder { 1 } else { 3 }).max(1);

    let pinned = cores() >= 2 && pin_self(GENERATOR_CORE);
    println!(
        "sfu_load: {}; {} s measured per run, {} alternating rounds",
        if pinned {
            format!(
                "server pinned to core {SERVER_CORE}, generator to core {GENERATOR_CORE} (taskset)"
            )
        } else {
            "NOT pinned (fewer than 2 cores)".to_owned()
        },
        secs,
        rounds
    );
    println!("  machine: {}, {}", cpu_model(), today());
    for scenario in &scenarios {
        println!(
            "\nscenario {} ({}): {} publishers, {} subscribers",
            scenario.name,
            scenario.title,
            scenario.publishers,
            scenario.subscribers()
        );
        // Alternating rounds; each side's round of median packets per CPU-second is
        // the one reported (the machine is shared).
        let with_janus = env_flag("SFU_LOAD_JANUS");
        let (mut sfus, mut bares, mut januses) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds {
            let sfu = run_sfu(scenario, secs, pinned, None);
            let bare = (!env_flag("SFU_LOAD_NO_BARE")).then(|| run_bare(scenario, secs, pinned));
            // Janus needs a network namespace: confnode runs there too for that row.
            let janus = with_janus.then(|| {
                let ns = janus::Netns::create(scenario.publishers + scenario.listeners);
                let node = run_sfu(scenario, secs, pinned, Some(&ns));
                (node, janus::run(scenario, secs, pinned, &ns))
            });
            if rounds > 1 {
                let rate = |r: Option<&Run>| {
                    r.map_or("-".to_owned(), |r| format!("{:.0}", r.out_per_cpu_s()))
                };
                println!(
                    "  round {}: egress packets per CPU-second: confnode {:.0}, bare {}, Janus {}",
                    round + 1,
                    sfu.out_per_cpu_s(),
                    rate(bare.as_ref()),
                    rate(janus.as_ref().map(|(_, j)| j))
                );
            }
            sfus.push(sfu);
            bares.extend(bare);
            januses.extend(janus);
        }
        // Each round's confnode over the bare round right after it: the machine's speed
        // drifts over minutes, less between neighbouring rounds.
        let mut ratios: Vec<f64> = sfus
            .iter()
            .zip(&bares)
            .map(|(s, b)| s.out_per_cpu_s() / b.out_per_cpu_s())
            .collect();
        let sfu = median_run(sfus);
        let bare = (!bares.is_empty()).then(|| median_run(bares));
        let janus = (!januses.is_empty()).then(|| {
            let (nodes, janus): (Vec<Run>, Vec<Run>) = januses.into_iter().unzip();
            (median_run(nodes), median_run(janus))
        });
        let janus = janus.as_ref().map(|(n, j)| (n, j));
        print_runs(scenario, &sfu, bare.as_ref(), janus);
        if ratios.len() > 1 {
            ratios.sort_by(f64::total_cmp);
            let each: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
            println!(
                "  each round's confnode over its bare round: median {:.3} × (sorted: {})",
                ratios[ratios.len() / 2],
                each.join(" / ")
            );
        }
        write_plot(&save_row(scenario, &sfu, bare.as_ref(), janus));
    }
    println!("  results: benches/results/sfu_load.tsv, plot: benches/results/sfu_load.svg");
}

mod plot {
    //! A hand-written SVG of the results file: egress packets per server CPU-second
    //! (top) and loss (bottom) against offered egress load, confnode and bare.

    use std::fmt::Write as _;

    const W: f64 = 760.0;
    const LEFT: f64 = 90.0;
    const RIGHT: f64 = 170.0;
    const PANEL: f64 = 220.0;
    const TOP: [f64; 2] = [76.0, 356.0];

    /// Columns of the results file (see `RESULTS_HEADER`).
    const LABEL: usize = 0;
    const OFFERED: usize = 5;
    const SFU_RATE: usize = 9;
    const SFU_LOSS: usize = 10;
    const BARE_RATE: usize = 16;
    const BARE_LOSS: usize = 17;
    const DATE: usize = 20;
    const CPU: usize = 21;
    const JANUS_RATE: usize = 26;
    const JANUS_LOSS: usize = 27;

    fn num(row: &[String], col: usize) -> f64 {
        row.get(col)
            .and_then(|v| v.parse().ok())
            .filter(|v: &f64| v.is_finite())
            .unwrap_or(f64::NAN)
    }

    /// A round upper bound for an axis reaching `max`, and its tick step.
    fn axis(max: f64) -> (f64, f64) {
        let max = if max.is_finite() && max > 0.0 {
            max
        } else {
            1.0
        };
        let raw = max / 5.0;
        let mag = 10f64.powf(raw.log10().floor());
        let step = [1.0, 2.0, 2.5, 5.0, 10.0]
            .iter()
            .map(|m| m * mag)
            .find(|s| *s >= raw)
            .unwrap_or(10.0 * mag);
        ((max / step).ceil() * step, step)
    }

    fn fmt_tick(v: f64) -> String {
        if v >= 1000.0 {
            format!("{}k", v / 1000.0)
        } else {
            format!("{v}")
        }
    }

    pub(super) fn svg(rows: &[Vec<String>]) -> String {
        // A log axis for the load: the ladder doubles it from point to point.
        let loads = || rows.iter().map(|r| num(r, OFFERED)).filter(|v| *v > 0.0);
        let decade = |v: f64| 10f64.powf(v.log10().floor());
        let x_min = decade(loads().fold(f64::INFINITY, f64::min).min(1e9));
        let x_max = decade(loads().fold(0.0, f64::max).max(1.0)) * 10.0;
        let rate_max = rows
            .iter()
            .flat_map(|r| [num(r, SFU_RATE), num(r, BARE_RATE), num(r, JANUS_RATE)])
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        let loss_max = rows
            .iter()
            .flat_map(|r| [num(r, SFU_LOSS), num(r, BARE_LOSS), num(r, JANUS_LOSS)])
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
            * 100.0;
        let panels = [
            (
                "egress packets per server CPU-second",
                axis(rate_max * 1.1),
                1.0,
            ),
            ("loss (%)", axis(loss_max.max(0.1) * 1.1), 100.0),
        ];
        let height = TOP[1] + PANEL + 80.0;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{height}\" \
             font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>"
        );
        let machine = rows
            .first()
            .map(|r| format!("{}, {}", r[CPU.min(r.len() - 1)], r[DATE.min(r.len() - 1)]))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "<text x=\"{LEFT}\" y=\"22\" font-size=\"15\">confnode SFU vs the bare \
             sendmmsg fan-out (sfu_load)</text>\n<text x=\"{LEFT}\" y=\"40\" \
             fill=\"#555\">{machine}; server on one core, generator on the other</text>"
        );
        let plot_w = W - LEFT - RIGHT;
        for (k, (title, (y_max, y_step), scale)) in panels.iter().enumerate() {
            let top = TOP[k];
            let span = (x_max / x_min).ln();
            let x_of = |v: f64| LEFT + (v / x_min).ln() / span * plot_w;
            let y_of = |v: f64| top + PANEL - v / y_max * PANEL;
            let _ = writeln!(
                s,
                "<rect x=\"{LEFT}\" y=\"{top}\" width=\"{plot_w}\" height=\"{PANEL}\" \
                 fill=\"none\" stroke=\"#999\"/>\n<text x=\"{LEFT}\" y=\"{}\" \
                 font-weight=\"bold\">{title}</text>",
                top - 6.0
            );
            let mut v = 0.0;
            while v <= *y_max + 1e-9 {
                let y = y_of(v);
                let _ = writeln!(
                    s,
                    "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
                     <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                    LEFT + plot_w,
                    LEFT - 6.0,
                    y + 4.0,
                    fmt_tick((v * 1000.0).round() / 1000.0)
                );
                v += y_step;
            }
            let mut d = x_min;
            while d <= x_max * 1.001 {
                for m in [1.0, 2.0, 5.0] {
                    let x = d * m;
                    if x > x_max * 1.001 {
                        break;
                    }
                    let _ = writeln!(
                        s,
                        "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{top}\" y2=\"{}\" \
                         stroke=\"#eee\"/><text x=\"{x:.1}\" y=\"{}\" \
                         text-anchor=\"middle\">{}</text>",
                        top + PANEL,
                        top + PANEL + 16.0,
                        fmt_tick(x),
                        x = x_of(x)
                    );
                }
                d *= 10.0;
            }
            for row in rows {
                let x = x_of(num(row, OFFERED));
                let (sfu, bare, janus) = if k == 0 {
                    (
                        num(row, SFU_RATE),
                        num(row, BARE_RATE),
                        num(row, JANUS_RATE),
                    )
                } else {
                    (
                        num(row, SFU_LOSS) * scale,
                        num(row, BARE_LOSS) * scale,
                        num(row, JANUS_LOSS) * scale,
                    )
                };
                if janus.is_finite() {
                    let y = y_of(janus);
                    let _ = writeln!(
                        s,
                        "<path d=\"M{:.1},{:.1} l5,9 h-10 z\" fill=\"#e07b00\"/>",
                        x,
                        y - 5.0
                    );
                }
                if bare.is_finite() {
                    let y = y_of(bare);
                    let _ = writeln!(
                        s,
                        "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"8\" height=\"8\" fill=\"#888\"/>",
                        x - 4.0,
                        y - 4.0
                    );
                }
                if sfu.is_finite() {
                    let y = y_of(sfu);
                    let _ = writeln!(
                        s,
                        "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"#1f6fd1\"/>"
                    );
                    // Loss is labelled only where there is some: the zeros share a line.
                    if k == 0 || sfu > 0.0 {
                        let _ = writeln!(
                            s,
                            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#1f6fd1\" \
                             font-size=\"10\" transform=\"rotate(-30 {:.1} {:.1})\">{}</text>",
                            x + 6.0,
                            y - 6.0,
                            x + 6.0,
                            y - 6.0,
                            row[LABEL]
                        );
                    }
                }
            }
        }
        let bottom = TOP[1] + PANEL;
        let _ = writeln!(
            s,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">offered egress load \
             (packets/s the scenario asks the server to send, log scale)</text>\n\
             <text x=\"{LEFT}\" y=\"{}\" fill=\"#555\">Loss is counted at the subscribers, \
             the generator's webrtc-rs peers on one core.</text>",
            LEFT + plot_w / 2.0,
            bottom + 36.0,
            bottom + 56.0
        );
        let lx = LEFT + plot_w + 16.0;
        let _ = writeln!(
            s,
            "<circle cx=\"{lx}\" cy=\"{}\" r=\"5\" fill=\"#1f6fd1\"/>\
             <text x=\"{}\" y=\"{}\">confnode (SRTP)</text>\n\
             <rect x=\"{}\" y=\"{}\" width=\"8\" height=\"8\" fill=\"#888\"/>\
             <text x=\"{}\" y=\"{}\">bare UDP fan-out</text>\n\
             <path d=\"M{lx},{} l5,9 h-10 z\" fill=\"#e07b00\"/>\
             <text x=\"{}\" y=\"{}\">Janus (veth)</text>\n</svg>",
            TOP[0] + 10.0,
            lx + 10.0,
            TOP[0] + 14.0,
            lx - 4.0,
            TOP[0] + 26.0,
            lx + 10.0,
            TOP[0] + 34.0,
            TOP[0] + 44.0,
            lx + 10.0,
            TOP[0] + 54.0
        );
        s
    }
}
