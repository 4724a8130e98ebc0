//! Loopback STUN Binding throughput: answered requests per server CPU-second, for
//! confnode and for coturn (Debian's `turnserver`) measured in the same run.
//!
//!     cargo bench --bench stun_load
//!
//! Both servers run side by side on 127.0.0.1 for the whole run; the rounds alternate
//! between them (confnode, coturn, confnode, coturn, ...) so that whatever else the
//! shared machine is doing falls on both alike, and the report gives medians and the
//! ratio, as DESIGN.md asks of load benches. Each round sends a fixed number of
//! hand-made 20-byte Binding requests (RFC 8489 header, random transaction id;
//! FINGERPRINT too with `STUN_LOAD_FINGERPRINT=1`) from a few UDP sockets, each keeping
//! a window of requests outstanding, and counts the answers whose transaction id it is
//! waiting for. A request unanswered after 250 ms is lost. The server's CPU time is
//! utime + stime from /proc/<pid>/stat around the round, so the client's own cost is
//! not counted.
//!
//! Settings: `STUN_LOAD_REQUESTS` (per round, default 500000: server CPU time comes in
//! 10 ms ticks, so a round should take well over a second of it), `STUN_LOAD_ROUNDS`
//! (default 3), `STUN_LOAD_FINGERPRINT=1`.

mod load;

use load::{
    BINDING_REQUEST_FP_LEN, MsgBatch, Rng, binding_request, binding_success_txid, cpu_seconds,
    env_flag, env_u64, find_tool, median, print_table, set_buffers, start_confnode, start_coturn,
};
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const COMMAND: &str = "cargo bench --bench stun_load";
/// Client sockets per round, each on its own thread. Several sockets (several source
/// ports) let SO_REUSEPORT spread the load over confnode's workers as real clients would.
const SOCKETS: usize = 4;
/// Requests outstanding per socket: enough to keep the server busy, few enough that
/// the socket buffers never overflow.
const WINDOW: usize = 32;
/// A request not answered within this is counted lost (loopback answers take µs).
const ANSWER_TIMEOUT: Duration = Duration::from_millis(250);
/// Every round stops after this, whatever happened.
const ROUND_LIMIT: Duration = Duration::from_secs(20);
/// Requests sent to each server before the measured rounds, to fault in its code and
/// buffers; not counted.
const WARMUP: u64 = 20_000;

/// A server under test.
struct Target {
    name: &'static str,
    addr: SocketAddr,
    pid: u32,
}

#[derive(Default, Clone, Copy)]
struct Counts {
    sent: u64,
    answered: u64,
    lost: u64,
    /// Datagrams that were not an answer to an outstanding request (late answers to
    /// requests already counted lost, or garbage).
    stray: u64,
}

struct Round {
    counts: Counts,
    wall: f64,
    cpu: f64,
}

impl Round {
    fn per_cpu_second(&self) -> f64 {
        self.counts.answered as f64 / self.cpu.max(1e-9)
    }
}

fn main() {
    let requests = env_u64("STUN_LOAD_REQUESTS", 500_000);
    let rounds = env_u64("STUN_LOAD_ROUNDS", 3).max(1);
    let fingerprint = env_flag("STUN_LOAD_FINGERPRINT");

    let confnode = start_confnode("").unwrap_or_else(|e| panic!("cannot start confnode: {e}"));
    let coturn = if find_tool("turnserver").is_some() {
        // A plain STUN server: every TURN request ignored, no authentication.
        let args = ["--stun-only", "--no-auth"].map(String::from);
        Some(start_coturn(&args).unwrap_or_else(|e| panic!("cannot start coturn: {e}")))
    } else {
        println!(
            "NOTE: `turnserver` is not installed, so there is no coturn figure to compare \
             with: install the Debian package `coturn` (apt-get install coturn).\n\
             Reporting confnode's own figure only.\n"
        );
        None
    };

    let mut targets = vec![Target {
        name: "confnode",
        addr: confnode.udp,
        pid: confnode.proc.pid(),
    }];
    if let Some(c) = &coturn {
        targets.push(Target {
            name: "coturn",
            addr: c.udp,
            pid: c.proc.pid(),
        });
    }

    println!(
        "STUN Binding over UDP on 127.0.0.1: {rounds} alternating rounds of {requests} \
         requests per server ({SOCKETS} sockets x {WINDOW} outstanding, {} bytes each{})",
        if fingerprint {
            BINDING_REQUEST_FP_LEN
        } else {
            20
        },
        if fingerprint {
            ", with FINGERPRINT"
        } else {
            ""
        },
    );
    for t in &targets {
        drive(t.addr, WARMUP, fingerprint);
    }

    let mut results: Vec<Vec<Round>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for (t, res) in targets.iter().zip(&mut results) {
            let r = measure(t, requests, fingerprint);
            println!(
                "  round {round} {:<8}  answered {:>7}  lost {:>5}  server CPU {:>6.3} s  \
                 {:>9.0} answered/CPU-s  {:>8.0} answered/s",
                t.name,
                r.counts.answered,
                r.counts.lost,
                r.cpu,
                r.per_cpu_second(),
                r.counts.answered as f64 / r.wall.max(1e-9),
            );
            if r.counts.stray > 0 {
                println!(
                    "    ({} datagrams were no answer to an outstanding request: late or malformed)",
                    r.counts.stray
                );
            }
            if r.counts.sent < requests {
                println!(
                    "    (stopped by the {} s round limit after sending {} requests)",
                    ROUND_LIMIT.as_secs(),
                    r.counts.sent
                );
            }
            res.push(r);
        }
    }

    println!("\nMedians of {rounds} rounds:");
    let mut rows = Vec::new();
    let mut per_cpu = Vec::new();
    for (t, res) in targets.iter().zip(&results) {
        let m = |f: &dyn Fn(&Round) -> f64| median(&res.iter().map(f).collect::<Vec<_>>());
        let rate = m(&Round::per_cpu_second).unwrap_or(f64::NAN);
        per_cpu.push(rate);
        rows.push(vec![
            t.name.to_owned(),
            format!(
                "{:.0}",
                m(&|r| r.counts.answered as f64).unwrap_or(f64::NAN)
            ),
            format!("{:.0}", m(&|r| r.counts.lost as f64).unwrap_or(f64::NAN)),
            format!("{:.3}", m(&|r| r.cpu).unwrap_or(f64::NAN)),
            format!(
                "{:.0}",
                m(&|r| r.counts.answered as f64 / r.wall.max(1e-9)).unwrap_or(f64::NAN)
            ),
            format!("{rate:.0}"),
        ]);
    }
    print_table(
        &[
            "server",
            "answered",
            "lost",
            "server CPU s",
            "answered/s (wall)",
            "answered per server CPU-s",
        ],
        &rows,
    );
    if let [ours, theirs] = per_cpu[..] {
        println!(
            "\nconfnode/coturn, answered per server CPU-second: {:.2} (above 1: confnode \
             answers more per CPU-second)",
            ours / theirs
        );
    } else {
        println!("\nconfnode/coturn: no coturn figure (see the note above)");
    }
    println!("command: {COMMAND}");
}

/// One measured round against `t`: server CPU time around a fixed load.
fn measure(t: &Target, requests: u64, fingerprint: bool) -> Round {
    let cpu = || {
        cpu_seconds(t.pid).unwrap_or_else(|| {
            panic!(
                "{} (pid {}) is gone: /proc/{}/stat unreadable",
                t.name, t.pid, t.pid
            )
        })
    };
    let cpu0 = cpu();
    let start = Instant::now();
    let counts = drive(t.addr, requests, fingerprint);
    let wall = start.elapsed().as_secs_f64();
    let cpu1 = cpu();
    Round {
        counts,
        wall,
        cpu: cpu1 - cpu0,
    }
}

/// Sends `total` Binding requests to `server` from SOCKETS sockets in parallel and
/// waits for their answers (or ANSWER_TIMEOUT, or ROUND_LIMIT).
fn drive(server: SocketAddr, total: u64, fingerprint: bool) -> Counts {
    let deadline = Instant::now() + ROUND_LIMIT;
    let per_socket = total / SOCKETS as u64;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..SOCKETS)
            .map(|i| {
                // The first socket takes the remainder so the total is exact.
                let quota = per_socket + if i == 0 { total % SOCKETS as u64 } else { 0 };
                s.spawn(move || drive_socket(server, quota, fingerprint, deadline))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => panic!("load generator socket failed: {e}"),
                Err(_) => panic!("load generator thread panicked"),
            })
            .fold(Counts::default(), |a, c| Counts {
                sent: a.sent + c.sent,
                answered: a.answered + c.answered,
                lost: a.lost + c.lost,
                stray: a.stray + c.stray,
            })
    })
}

/// One client socket: keeps WINDOW requests outstanding until `quota` have been sent,
/// sending and receiving in batches (sendmmsg/recvmmsg) so the client stays cheap next
/// to the server on a small machine.
fn drive_socket(
    server: SocketAddr,
    quota: u64,
    fingerprint: bool,
    deadline: Instant,
) -> io::Result<Counts> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(server)?;
    set_buffers(&sock, 1 << 20);
    // recvmmsg with MSG_WAITFORONE waits this long for the first answer of a batch.
    sock.set_read_timeout(Some(Duration::from_millis(10)))?;
    let mut rng = Rng::from_os();
    let mut out = MsgBatch::new(WINDOW);
    let mut inbox = MsgBatch::new(WINDOW);
    let mut ids = [[0u8; 12]; WINDOW];
    let mut outstanding: HashMap<[u8; 12], Instant> = HashMap::with_capacity(2 * WINDOW);
    // Send order, to find the oldest outstanding request without scanning the map.
    let mut order: VecDeque<([u8; 12], Instant)> = VecDeque::new();
    let mut c = Counts::default();
    loop {
        let now = Instant::now();
        let room = (WINDOW - outstanding.len()).min((quota - c.sent) as usize);
        if room > 0 {
            for (i, id) in ids.iter_mut().enumerate().take(room) {
                *id = rng.txid();
                out.lens[i] = binding_request(id, fingerprint, out.slot(i));
            }
            let sent = match out.send(&sock, 0..room, 0, false) {
                Ok(n) => n,
                // An ICMP error from an earlier datagram, or a full buffer: try later.
                Err(e) if transient(&e) => 0,
                Err(e) => return Err(e),
            };
            for id in &ids[..sent] {
                outstanding.insert(*id, now);
                order.push_back((*id, now));
            }
            c.sent += sent as u64;
        }
        if outstanding.is_empty() && c.sent >= quota {
            break;
        }
        if now >= deadline {
            // What was never sent is not lost; the round line says the limit was hit.
            c.lost += outstanding.len() as u64;
            break;
        }
        match inbox.recv(&sock, 0, WINDOW, 0, libc::MSG_WAITFORONE) {
            Ok(n) => {
                for i in 0..n {
                    let len = inbox.lens[i];
                    match binding_success_txid(&inbox.slot(i)[..len]) {
                        Some(id) if outstanding.remove(&id).is_some() => c.answered += 1,
                        _ => c.stray += 1,
                    }
                }
            }
            Err(e) if transient(&e) => {}
            Err(e) => return Err(e),
        }
        let now = Instant::now();
        while let Some((id, at)) = order.front() {
            if !outstanding.contains_key(id) {
                order.pop_front();
            } else if now.duration_since(*at) > ANSWER_TIMEOUT {
                outstanding.remove(id);
                c.lost += 1;
                order.pop_front();
            } else {
                break;
            }
        }
    }
    Ok(c)
}

/// Errors a load generator rides out: timeouts, interruptions, full buffers, and the
/// ICMP "port unreachable" a connected UDP socket reports for an earlier datagram.
fn transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionRefused
    ) || e.raw_os_error() == Some(libc::ENOBUFS)
}
