//! Overload: how a node degrades when offered more relayed traffic than the machine
//! can carry (issue 12). On loopback, with the node's default `node.overload_percent`
//! (90):
//!
//!     cargo bench --bench overload
//!     OVERLOAD_STEPS=20000,80000 cargo bench --bench overload
//!     OVERLOAD_TURN='max_bandwidth_kbps = 1000' cargo bench --bench overload
//!
//! (`OVERLOAD_TURN` is added to the node's `[turn]` table.)
//!
//! A call is held throughout: eight allocations, each sending a 160-byte ChannelData
//! message every 20 ms (an audio stream) to a peer that echoes it back through the
//! relay. Beside it, 40 load allocations relay ChannelData to a sink at an offered
//! rate raised step by step (`OVERLOAD_STEPS`, messages per second; two sending
//! threads, paced, each step 6 s). For each step the bench prints the rate offered and
//! the rate the sink got, the busiest worker's share of its time
//! (`confnode_busiest_worker_percent`) and whether the node refused new work
//! (`confnode_overloaded`), what became of five new Allocates made in the step (200,
//! 508 or no answer), and the held call's loss and round-trip time (median and 99th
//! percentile). On a 2-core machine the load's threads, the sink and the call share
//! the cores with the node, so the point where it saturates is the system's.

mod load;

/// Seconds since the Unix epoch (the shared TURN client checks its nonces with it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[path = "../tests/common/turn.rs"]
#[allow(dead_code)]
mod turn;

use confnode::stun::message::{Class, Writer, attr, method};
use load::{http_get, print_table, start_confnode};
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use turn::{Client, Creds, UDP, transport};

const HELD: usize = 8;
const HELD_INTERVAL: Duration = Duration::from_millis(20);
const LOAD_ALLOCATIONS: usize = 40;
const LOAD_THREADS: usize = 2;
const MESSAGE: usize = 160;
const STEP: Duration = Duration::from_secs(6);
const PROBES: usize = 5;
const DEFAULT_STEPS: &str = "20000,80000,160000,320000,640000,1280000";

/// An allocation with channel 0x4000 bound to `peer`.
fn allocation(server: SocketAddr, peer: SocketAddr) -> Client {
    let c = Client::new(server);
    let creds = Creds::new("user", "pass", &c.nonce());
    c.allocate(&creds);
    let r = c.create_permission(&[peer], &creds);
    assert_eq!(r.class(), Class::Success, "CreatePermission");
    let r = c.bind_channel(0x4000, peer, &creds);
    assert_eq!(r.class(), Class::Success, "ChannelBind");
    c
}

fn channel_data(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x40, 0x00];
    frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    frame.extend_from_slice(payload);
    frame
}

/// A peer that sends back what it gets (to the relayed address it came from), or
/// only counts it.
fn peer(echo: bool, stop: Arc<AtomicBool>, got: Arc<AtomicU64>) -> (SocketAddr, JoinHandle<()>) {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let addr = sock.local_addr().expect("peer address");
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                got.fetch_add(1, Ordering::Relaxed);
                if echo {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        }
    });
    (addr, thread)
}

/// What the held call saw in the current step.
#[derive(Default)]
struct CallStats {
    sent: u64,
    rtts_us: Vec<u64>,
}

/// One held allocation: a message every [`HELD_INTERVAL`], the echoes timed.
fn held_stream(c: Client, epoch: Instant, stop: Arc<AtomicBool>, stats: Arc<Mutex<CallStats>>) {
    c.sock.set_nonblocking(true).expect("non-blocking");
    let mut buf = [0u8; 2048];
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            let mut payload = [0u8; MESSAGE];
            let now_us = epoch.elapsed().as_micros() as u64;
            payload[..8].copy_from_slice(&now_us.to_be_bytes());
            let _ = c.sock.send_to(&channel_data(&payload), c.server);
            stats.lock().expect("stats").sent += 1;
            next += HELD_INTERVAL;
        }
        while let Ok((n, _)) = c.sock.recv_from(&mut buf) {
            if n >= 12 && buf[..2] == [0x40, 0x00] {
                let sent = u64::from_be_bytes(buf[4..12].try_into().expect("8 bytes"));
                let rtt = (epoch.elapsed().as_micros() as u64).saturating_sub(sent);
                stats.lock().expect("stats").rtts_us.push(rtt);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Sends ChannelData through `clients` at `rate` messages per second (all threads
/// together) until `stop`; counts what it sent.
fn load_sender(
    clients: Vec<Client>,
    rate: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) {
    let frame = channel_data(&[7u8; MESSAGE]);
    let mut window = (Instant::now(), 0u64);
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let per_thread = rate.load(Ordering::Relaxed) / LOAD_THREADS as u64;
        let elapsed = window.0.elapsed();
        if elapsed >= Duration::from_secs(1) {
            window = (Instant::now(), 0);
            continue;
        }
        let due = per_thread * elapsed.as_micros() as u64 / 1_000_000;
        if window.1 >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        let c = &clients[i % clients.len()];
        i += 1;
        if c.sock.send_to(&frame, c.server).is_ok() {
            sent.fetch_add(1, Ordering::Relaxed);
        }
        window.1 += 1;
    }
}

/// What became of [`PROBES`] new Allocates: (succeeded, 508, no answer).
fn probe_allocations(server: SocketAddr) -> (usize, usize, usize) {
    let mut outcome = (0, 0, 0);
    for _ in 0..PROBES {
        let c = Client::new(server);
        let id = turn::tid();
        let Some(challenge) = c.exchange(
            &Client::build(method::ALLOCATE, &id, &transport(UDP), None),
            &id,
        ) else {
            outcome.2 += 1;
            continue;
        };
        let creds = Creds::new("user", "pass", &challenge.expect_challenge("Allocate"));
        let id = turn::tid();
        let raw = Client::build(method::ALLOCATE, &id, &transport(UDP), Some(&creds));
        match c.exchange(&raw, &id) {
            Some(r) if r.class() == Class::Success => {
                outcome.0 += 1;
                // Gone again (an unanswered Refresh leaves it to expire).
                let id = turn::tid();
                let lifetime_zero = |w: &mut Writer<'_>| w.add_u32(attr::LIFETIME, 0);
                let _ = c.exchange(
                    &Client::build(method::REFRESH, &id, &lifetime_zero, Some(&creds)),
                    &id,
                );
            }
            Some(r) if r.error_code() == Some(508) => outcome.1 += 1,
            _ => outcome.2 += 1,
        }
    }
    outcome
}

fn metric(http: SocketAddr, series: &str) -> f64 {
    let text = http_get(http, "/metrics")
        .map(|(_, t)| t)
        .unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with(series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn percentile(sorted: &[u64], p: f64) -> String {
    if sorted.is_empty() {
        return "-".to_owned();
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    format!("{:.2} ms", sorted[i] as f64 / 1000.0)
}

fn main() {
    let steps: Vec<u64> = std::env::var("OVERLOAD_STEPS")
        .unwrap_or_else(|_| DEFAULT_STEPS.to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let turn_extra = std::env::var("OVERLOAD_TURN").unwrap_or_default();
    let node = match start_confnode(&format!(
        "users = {{ user = \"pass\" }}\nallow_loopback_peers = true\n{turn_extra}\n"
    )) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("overload: {e}");
            std::process::exit(1);
        }
    };
    let server = node.udp;
    let stop = Arc::new(AtomicBool::new(false));
    let echoed = Arc::new(AtomicU64::new(0));
    let sunk = Arc::new(AtomicU64::new(0));
    let (echo_addr, echo) = peer(true, stop.clone(), echoed);
    let (sink_addr, sink) = peer(false, stop.clone(), sunk.clone());

    let epoch = Instant::now();
    let call = Arc::new(Mutex::new(CallStats::default()));
    let mut threads = vec![echo, sink];
    for _ in 0..HELD {
        let c = allocation(server, echo_addr);
        let (stop, call) = (stop.clone(), call.clone());
        threads.push(std::thread::spawn(move || {
            held_stream(c, epoch, stop, call)
        }));
    }
    let rate = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    for _ in 0..LOAD_THREADS {
        let clients = (0..LOAD_ALLOCATIONS / LOAD_THREADS)
            .map(|_| allocation(server, sink_addr))
            .collect();
        let (rate, stop, sent) = (rate.clone(), stop.clone(), sent.clone());
        threads.push(std::thread::spawn(move || {
            load_sender(clients, rate, stop, sent)
        }));
    }

    let mut rows = Vec::new();
    for &offered in &steps {
        rate.store(offered, Ordering::Relaxed);
        // Two seconds to settle (the node decides after two busy seconds), then measure.
        std::thread::sleep(Duration::from_secs(2));
        *call.lock().expect("stats") = CallStats::default();
        let (sent0, sunk0, started) = (
            sent.load(Ordering::Relaxed),
            sunk.load(Ordering::Relaxed),
            Instant::now(),
        );
        let probes = probe_allocations(server);
        std::thread::sleep(STEP.saturating_sub(started.elapsed()));
        let secs = started.elapsed().as_secs_f64();
        let busiest = metric(node.http, "confnode_busiest_worker_percent");
        let overloaded = metric(node.http, "confnode_overloaded");
        let stats = std::mem::take(&mut *call.lock().expect("stats"));
        let mut rtts = stats.rtts_us;
        rtts.sort_unstable();
        let loss =
            100.0 * stats.sent.saturating_sub(rtts.len() as u64) as f64 / stats.sent.max(1) as f64;
        rows.push(vec![
            offered.to_string(),
            format!(
                "{:.0}",
                (sent.load(Ordering::Relaxed) - sent0) as f64 / secs
            ),
            format!(
                "{:.0}",
                (sunk.load(Ordering::Relaxed) - sunk0) as f64 / secs
            ),
            format!("{busiest:.0} %"),
            if overloaded > 0.0 { "yes" } else { "no" }.to_owned(),
            format!("{}/{}/{}", probes.0, probes.1, probes.2),
            format!("{loss:.1} %"),
            percentile(&rtts, 0.5),
            percentile(&rtts, 0.99),
        ]);
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    print_table(
        &[
            "target msg/s",
            "offered msg/s",
            "relayed msg/s",
            "busiest worker",
            "refusing",
            "new allocs 200/508/lost",
            "call loss",
            "call RTT p50",
            "call RTT p99",
        ],
        &rows,
    );
}
