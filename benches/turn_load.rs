//! TURN relay load on loopback: confnode, coturn (Debian's `turnserver`) and a bare
//! recvmmsg/sendmmsg UDP relay with no TURN at all, in the same run, alternating.
//!
//!     cargo bench --bench turn_load                       # full run, about 6 minutes
//!     TURN_LOAD_QUICK=1 cargo bench --bench turn_load     # one round each, under a minute
//!     TURN_LOAD_ONLY=coturn,bare cargo bench --bench turn_load
//!
//! The load is coturn's own client against each TURN server:
//! `turnutils_uclient -m 100 -n 2000 -l 160 -z 1 -c -e 127.0.0.1 -r PEER_PORT -u user
//! -w pass -p SERVER_PORT 127.0.0.1` with `turnutils_peer` echoing as the peer: 100
//! allocations, each sending 2000 ChannelData messages of 160 bytes, one per
//! millisecond, which the peer echoes back through the relay. Each echoed message is
//! two packets into the server and two out. For each server the bench reports:
//! - server CPU time (utime + stime of its process, /proc/<pid>/stat) per echoed
//!   message, the median of the alternating rounds;
//! - lost messages (sent − echoed, as uclient counts them);
//! - peak RSS per allocation: VmHWM (reset through /proc/<pid>/clear_refs before the
//!   load) minus the idle VmRSS, over 500 allocations held at once;
//! - the highest offered rate it relays with under 1% loss: the offered rate of a run
//!   is the highest one-second send rate the clients report, and the load is raised
//!   by running several uclient processes side by side until loss reaches 1% (the
//!   bare relay's client threads cost less than uclient processes, so its ladder
//!   offers somewhat more at the same step);
//!
//! and the ratios to coturn and to the bare relay. On a 2-core machine the clients and
//! the peer share the cores with the server, so the highest rate is the system's, not
//! the server's alone: compare the rows, not the absolute figure.
//!
//! The bare relay is this bench binary started again with `BARE_RELAY_ARG`: one
//! listening socket like TURN's port 3478 and one socket per allocation, connected to
//! the peer, like a TURN relayed address. It forwards ChannelData payloads client→peer
//! and frames peer→client packets as ChannelData, in batches of recvmmsg/sendmmsg, and
//! does nothing else: no authentication, permissions, lifetimes or refreshes. uclient
//! speaks TURN, which the bare relay does not, so its client is the bench's own
//! (`bare_client`), sending what uclient sends: the same allocations (one socket
//! each, set up before any data, as uclient does), the same 164-byte frames (4-byte
//! ChannelData header + 160 bytes), one per millisecond per allocation, up to 50 per
//! tick to catch up, starting 1–6 s after set-up at random as uclient staggers its
//! sessions, echoed by the same `turnutils_peer`. Its CPU is the relay process's.
//!
//! Settings: `TURN_LOAD_QUICK=1` (one round; RSS per allocation from its 100
//! allocations; no 500-allocation run, no rate ladder), `TURN_LOAD_ONLY=confnode|coturn|bare`
//! (comma-separated), `TURN_LOAD_ROUNDS`.
//!
//! Every server is started afresh for each run and stopped after it; every client is
//! killed after a time limit; a server that does not answer a TURN Allocate fails its
//! row in 2 s with that reason instead of stalling the bench.

mod load;

use load::{
    Epoll, MsgBatch, Proc, Rng, env_flag, env_u64, find_tool, free_port, median, print_table,
    reset_peak_rss, set_buffers, start_confnode, start_coturn, status_kb, tail,
};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

const COMMAND: &str = "cargo bench --bench turn_load";
/// The argument that makes this binary the bare relay (`cargo bench` passes `--bench`).
const BARE_RELAY_ARG: &str = "__turn_load_bare_relay";

const USER: &str = "user";
const PASS: &str = "pass";
const REALM: &str = "confnode";
/// uclient's `-l`: bytes of application data per message.
const MSG_LEN: usize = 160;
/// uclient's `-z`: milliseconds between two messages of one allocation.
const INTERVAL_MS: u64 = 1;
/// Relay ports of every server, below Linux's ephemeral range so that other programs'
/// sockets on this shared machine do not take them.
const RELAY_PORTS: (u16, u16) = (20000, 24999);
/// Loss at or above this fails a step of the rate ladder.
const LOSS_LIMIT: f64 = 0.01;
/// uclient gives each session 100 ms of event loop while setting up allocations.
const UCLIENT_SETUP_PER_ALLOCATION: Duration = Duration::from_millis(100);
/// uclient starts each session's traffic 1 s + up to 5 s after set-up.
const START_SPREAD_MS: u64 = 5000;
const START_DELAY_MS: u64 = 1000;
/// uclient waits up to this for echoes after its last message when some are missing.
const UCLIENT_STOPPING: Duration = Duration::from_secs(10);
/// The bare client waits this long for stragglers: on loopback an echo later than
/// this is lost for any practical purpose, and it keeps lossy runs short.
const BARE_STRAGGLER_WAIT_MS: u64 = 3000;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Confnode,
    Coturn,
    Bare,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Confnode => "confnode",
            Kind::Coturn => "coturn",
            Kind::Bare => "bare relay",
        }
    }
}

/// One load: `procs` clients side by side (uclient processes, or bare client threads),
/// each with `m` allocations sending `n` messages.
#[derive(Clone, Copy, Debug)]
struct Load {
    procs: usize,
    m: usize,
    n: u64,
}

impl Load {
    fn allocations(self) -> usize {
        self.procs * self.m
    }

    fn describe(self) -> String {
        let one = format!("-m {} -n {} -l {MSG_LEN} -z {INTERVAL_MS}", self.m, self.n);
        if self.procs == 1 {
            one
        } else {
            format!("{} x ({one})", self.procs)
        }
    }
}

/// What one client reported: totals and the cumulative count sent at each second.
#[derive(Default)]
struct ClientReport {
    sent: u64,
    received: u64,
    /// (seconds since the client started, messages sent so far)
    samples: Vec<(u64, u64)>,
    /// uclient's "Total connect time": seconds to set up its allocations (at least
    /// 0.1 s each, its own pace). None for the bare client, whose set-up is not paced.
    setup_s: Option<u64>,
    /// Error lines uclient logged, e.g. `error 437 (Allocation Mismatch)` before a retry.
    errors: Vec<String>,
}

/// The measurements of one run against one server.
struct Run {
    load: Load,
    sent: u64,
    received: u64,
    cpu: f64,
    idle_kb: u64,
    peak_kb: u64,
    peak_rate: f64,
    /// The slowest client's set-up, and the quickest's.
    setup_s: Option<u64>,
    setup_min_s: Option<u64>,
}

impl Run {
    fn lost(&self) -> u64 {
        self.sent.saturating_sub(self.received)
    }
    fn loss(&self) -> f64 {
        self.lost() as f64 / (self.sent.max(1)) as f64
    }
    fn us_per_message(&self) -> f64 {
        self.cpu * 1e6 / self.received.max(1) as f64
    }
    fn kb_per_allocation(&self) -> f64 {
        self.peak_kb.saturating_sub(self.idle_kb) as f64 / self.load.allocations() as f64
    }
}

/// Everything measured for one server. `failure` is set when a CPU round fails, after
/// which it is not run again (a server that cannot relay would only burn time-outs).
struct Row {
    kind: Kind,
    cpu_runs: Vec<Run>,
    rss_run: Option<Run>,
    ladder: Vec<Run>,
    failure: Option<String>,
    /// Failures of the 500-allocation run or of the rate ladder, which leave the
    /// other figures standing.
    notes: Vec<String>,
}

struct Env {
    /// The echoing peer every row relays to.
    peer: SocketAddr,
    peer_proc: Proc,
    peer_tool: std::path::PathBuf,
    uclient: Option<std::path::PathBuf>,
    logs: tempfile::TempDir,
}

impl Env {
    /// Restarts the peer if it is gone or silent. Others test with turnutils_peer on
    /// this machine too, and a cleanup that stops them by name takes ours along.
    fn ensure_peer(&mut self) -> Result<(), String> {
        if self.peer_proc.exit_status().is_none() && wait_echo(self.peer, Duration::from_secs(1)) {
            return Ok(());
        }
        println!("    (turnutils_peer had stopped or went silent: starting it again)");
        self.peer_proc.stop();
        let (proc, addr) = start_peer(&self.peer_tool, self.logs.path())?;
        self.peer_proc = proc;
        self.peer = addr;
        Ok(())
    }
}

/// Starts `turnutils_peer` on a fresh loopback port and waits until it echoes.
fn start_peer(
    tool: &std::path::Path,
    logs: &std::path::Path,
) -> Result<(Proc, SocketAddr), String> {
    let port = free_port();
    let mut cmd = Command::new(tool);
    cmd.args(["-L", "127.0.0.1", "-p", &port.to_string()]);
    let mut proc = Proc::spawn(
        "turnutils_peer",
        &mut cmd,
        &logs.join(format!("peer-{port}.log")),
    )?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    if !wait_echo(addr, Duration::from_secs(10)) {
        proc.stop();
        return Err(format!(
            "turnutils_peer did not echo on {addr} within 10 s:\n{}",
            proc.log_tail(10)
        ));
    }
    Ok((proc, addr))
}

/// `run`, with a live peer, once more if the peer was stopped under it.
fn measure(kind: Kind, load: Load, env: &mut Env, label: &str) -> Result<Run, String> {
    env.ensure_peer()?;
    let result = run(kind, load, env, label);
    if env.peer_proc.exit_status().is_none() {
        return result;
    }
    println!("    (turnutils_peer stopped during the run, which does not count: once more)");
    env.ensure_peer()?;
    run(kind, load, env, label)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == BARE_RELAY_ARG) {
        let peer = args
            .get(i + 1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("{BARE_RELAY_ARG} needs the peer's IPv4 address:port"));
        bare_relay_main(peer);
        return;
    }

    let quick = env_flag("TURN_LOAD_QUICK");
    let rounds = env_u64("TURN_LOAD_ROUNDS", if quick { 1 } else { 3 }).max(1);
    let kinds = selected_kinds();

    let peer_tool = find_tool("turnutils_peer").unwrap_or_else(|| {
        panic!(
            "`turnutils_peer` is not installed: install the Debian package `coturn` \
             (apt-get install coturn); every row of this bench uses it as the echoing peer"
        )
    });
    let needs_uclient = kinds.iter().any(|k| *k != Kind::Bare);
    let uclient = find_tool("turnutils_uclient");
    if needs_uclient && uclient.is_none() {
        panic!(
            "`turnutils_uclient` is not installed: install the Debian package `coturn` \
             (apt-get install coturn), or run only the bare relay (TURN_LOAD_ONLY=bare)"
        );
    }

    let logs = tempfile::tempdir().expect("temp dir for logs");
    let (peer_proc, peer) = start_peer(&peer_tool, logs.path()).unwrap_or_else(|e| panic!("{e}"));
    let mut env = Env {
        peer,
        peer_proc,
        peer_tool,
        uclient,
        logs,
    };

    let cpu_load = Load {
        procs: 1,
        m: 100,
        n: 2000,
    };
    // 500 allocations at once. Five uclients of 100 side by side rather than one of
    // 500: uclient sets allocations up one at a time, 100 ms each, so `-m 500` alone
    // would spend 50 s setting up. Short sessions: only the memory matters here.
    let rss_load = Load {
        procs: 5,
        m: 100,
        n: 200,
    };
    // Raising the offered rate: more clients side by side, each like the CPU runs'.
    // One client offers about 45k msg/s at its peak; the steps offer about 1.5x, 2x
    // and 3x that (a 2-core machine shared with the clients tops out in between).
    let ladder = [(2, 75), (2, 100), (3, 100)].map(|(procs, m)| Load {
        procs,
        m,
        ..cpu_load
    });

    println!(
        "TURN relay over UDP on 127.0.0.1, peer turnutils_peer on {peer}; {} \
         alternating round(s) of {} per server{}",
        rounds,
        cpu_load.describe(),
        if quick { " (quick mode)" } else { "" }
    );
    let mut rows: Vec<Row> = kinds
        .iter()
        .map(|&kind| Row {
            kind,
            cpu_runs: Vec::new(),
            rss_run: None,
            ladder: Vec::new(),
            failure: None,
            notes: Vec::new(),
        })
        .collect();

    for round in 1..=rounds {
        for row in rows.iter_mut().filter(|r| r.failure.is_none()) {
            match measure(row.kind, cpu_load, &mut env, &format!("round {round}")) {
                Ok(r) => row.cpu_runs.push(r),
                Err(e) => row.failure = Some(format!("round {round}: {e}")),
            }
        }
    }
    if !quick {
        for row in rows.iter_mut().filter(|r| r.failure.is_none()) {
            match measure(row.kind, rss_load, &mut env, "500 allocations") {
                Ok(r) => row.rss_run = Some(r),
                Err(e) => row.notes.push(format!("500 allocations: {e}")),
            }
        }
        for row in rows.iter_mut().filter(|r| r.failure.is_none()) {
            // Climb while the previous load was relayed with under 1% loss.
            if row.cpu_runs.iter().all(|r| r.loss() >= LOSS_LIMIT) {
                continue;
            }
            for &load in &ladder {
                match measure(row.kind, load, &mut env, "rate ladder") {
                    Ok(r) => {
                        let stop = r.loss() >= LOSS_LIMIT;
                        row.ladder.push(r);
                        if stop {
                            break;
                        }
                    }
                    // A failure under overload is a result of the ladder, not of
                    // the server's other figures: stop climbing, keep the rest.
                    Err(e) => {
                        row.notes
                            .push(format!("rate ladder, {}: {e}", load.describe()));
                        break;
                    }
                }
            }
        }
    }
    env.peer_proc.stop();
    report(&rows, rounds, cpu_load, quick);
}

/// The servers named in TURN_LOAD_ONLY, or all three.
fn selected_kinds() -> Vec<Kind> {
    let Ok(only) = std::env::var("TURN_LOAD_ONLY") else {
        return vec![Kind::Confnode, Kind::Coturn, Kind::Bare];
    };
    let mut kinds = Vec::new();
    for name in only.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let kind = match name {
            "confnode" => Kind::Confnode,
            "coturn" => Kind::Coturn,
            "bare" => Kind::Bare,
            other => {
                panic!("TURN_LOAD_ONLY: unknown server {other:?}; use confnode, coturn or bare")
            }
        };
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    assert!(!kinds.is_empty(), "TURN_LOAD_ONLY names no server");
    kinds
}

// ---------------------------------------------------------------------------------
// One run

/// A server under test, stopped when dropped.
struct Server {
    proc: Proc,
    addr: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

fn start_server(kind: Kind, env: &Env) -> Result<Server, String> {
    let (first, last) = RELAY_PORTS;
    match kind {
        Kind::Confnode => {
            let turn = format!(
                "users = {{ {USER} = \"{PASS}\" }}\nrealm = \"{REALM}\"\n\
                 allow_loopback_peers = true\nrelay_ports = \"{first}-{last}\"\n"
            );
            let c = start_confnode(&turn)?;
            Ok(Server {
                proc: c.proc,
                addr: c.udp,
                _dir: Some(c.dir),
            })
        }
        Kind::Coturn => {
            let args = vec![
                "--lt-cred-mech".to_owned(),
                format!("--user={USER}:{PASS}"),
                format!("--realm={REALM}"),
                "--relay-ip=127.0.0.1".to_owned(),
                "--allow-loopback-peers".to_owned(),
                format!("--min-port={first}"),
                format!("--max-port={last}"),
            ];
            let c = start_coturn(&args)?;
            Ok(Server {
                proc: c.proc,
                addr: c.udp,
                _dir: Some(c.dir),
            })
        }
        Kind::Bare => start_bare_relay(env),
    }
}

/// Starts the bare relay (this binary again) and reads its port from its first line.
fn start_bare_relay(env: &Env) -> Result<Server, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    let log = env.logs.path().join(format!("bare-{}.log", free_port()));
    let mut cmd = Command::new(exe);
    cmd.arg(BARE_RELAY_ARG).arg(env.peer.to_string());
    let mut proc = Proc::spawn("bare relay", &mut cmd, &log)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(port) = text
            .lines()
            .find_map(|l| l.strip_prefix("READY ")?.trim().parse::<u16>().ok())
        {
            return Ok(Server {
                proc,
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                _dir: None,
            });
        }
        if let Some(status) = proc.exit_status() {
            return Err(format!(
                "bare relay exited ({status}):\n{}",
                proc.log_tail(10)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "bare relay not ready within 10 s:\n{}",
                proc.log_tail(10)
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a fresh server, puts `load` through it and measures. A fresh process per
/// run keeps runs independent and makes its peak RSS that of this load alone.
fn run(kind: Kind, load: Load, env: &Env, label: &str) -> Result<Run, String> {
    let mut server = start_server(kind, env)?;
    if kind != Kind::Bare && !answers_allocate(server.addr) {
        return Err(format!(
            "{} does not answer a TURN Allocate request (no response within 2 s), so \
             turnutils_uclient cannot allocate; is TURN in this build?",
            kind.name()
        ));
    }
    let pid = server.proc.pid();
    let gone = |what: &str| format!("{} (pid {pid}) is gone: no {what}", kind.name());
    // Start-up has settled once the server answers; the peak is reset so that it
    // measures this load, not the start-up.
    let reset = reset_peak_rss(pid);
    let idle_kb = status_kb(pid, "VmRSS").ok_or_else(|| gone("VmRSS"))?;
    let cpu0 = load::cpu_seconds(pid).ok_or_else(|| gone("/proc stat"))?;
    let reports = match kind {
        Kind::Bare => run_bare_clients(server.addr, load),
        _ => run_uclients(server.addr, load, env),
    };
    let cpu1 = load::cpu_seconds(pid);
    let peak_kb = if reset {
        status_kb(pid, "VmHWM")
    } else {
        // Without the reset the peak may be the start-up's; the current RSS is the
        // honest lower bound then.
        status_kb(pid, "VmRSS")
    };
    if let Some(status) = server.proc.exit_status() {
        return Err(format!(
            "{} exited during the run ({status}):\n{}",
            kind.name(),
            server.proc.log_tail(15)
        ));
    }
    let reports =
        reports.map_err(|e| format!("{e}\n  server log:\n{}", server.proc.log_tail(8)))?;
    server.proc.stop();
    let (Some(cpu1), Some(peak_kb)) = (cpu1, peak_kb) else {
        return Err(gone("/proc entry after the run"));
    };
    let run = Run {
        load,
        sent: reports.iter().map(|r| r.sent).sum(),
        received: reports.iter().map(|r| r.received).sum(),
        cpu: cpu1 - cpu0,
        idle_kb,
        peak_kb,
        peak_rate: peak_rate(&reports),
        setup_s: reports.iter().filter_map(|r| r.setup_s).max(),
        setup_min_s: reports.iter().filter_map(|r| r.setup_s).min(),
    };
    if run.received == 0 {
        return Err(format!("nothing was relayed ({} sent, 0 echoed)", run.sent));
    }
    // Side by side clients only add up when their traffic overlaps, which it does
    // when their set-ups take about as long: show both ends.
    let setup = match (run.setup_min_s, run.setup_s) {
        (Some(a), Some(b)) if a != b => format!("  set-up {a}-{b} s"),
        (_, Some(b)) => format!("  set-up {b} s"),
        _ => String::new(),
    };
    println!(
        "  {label:<15} {:<10} {:<26} sent {:>7}  echoed {:>7}  lost {:>5} ({:.2}%)  \
         server CPU {:>6.2} s = {:>5.2} µs/msg  peak {:>6.0} msg/s  RSS +{:.1} kB/allocation{setup}",
        kind.name(),
        load.describe(),
        run.sent,
        run.received,
        run.lost(),
        run.loss() * 100.0,
        run.cpu,
        run.us_per_message(),
        run.peak_rate,
        run.kb_per_allocation(),
    );
    let errors: Vec<&String> = reports.iter().flat_map(|r| &r.errors).collect();
    if let Some(first) = errors.first() {
        // Retried errors do not fail a run but slow its set-up: worth seeing.
        println!(
            "    turnutils_uclient logged {} error line(s), the first: {first}",
            errors.len()
        );
    }
    let _ = io::stdout().flush();
    Ok(run)
}

/// The highest one-second send rate of the clients together, their seconds aligned
/// on their common start.
fn peak_rate(reports: &[ClientReport]) -> f64 {
    let mut per_second: BTreeMap<u64, f64> = BTreeMap::new();
    for r in reports {
        for w in r.samples.windows(2) {
            let ((t0, s0), (t1, s1)) = (w[0], w[1]);
            if t1 > t0 {
                *per_second.entry(t1).or_default() +=
                    s1.saturating_sub(s0) as f64 / (t1 - t0) as f64;
            }
        }
    }
    per_second.values().copied().fold(0.0, f64::max)
}

// ---------------------------------------------------------------------------------
// turnutils_uclient

/// Runs `load.procs` uclients side by side against `server` and parses their reports.
fn run_uclients(server: SocketAddr, load: Load, env: &Env) -> Result<Vec<ClientReport>, String> {
    let tool = env
        .uclient
        .as_ref()
        .ok_or("turnutils_uclient is not installed (Debian package coturn)")?;
    let setup = UCLIENT_SETUP_PER_ALLOCATION * load.m as u32;
    // Set-up gets three times what uclient needs with a quick server, plus 20 s: a
    // server answering 437 makes uclient wait a second and try again.
    let setup_limit = setup * 3 + Duration::from_secs(20);
    // uclient's output goes to a file, block-buffered: line buffering keeps what it
    // said when it has to be stopped (coreutils' stdbuf, where installed).
    let stdbuf = find_tool("stdbuf");
    let traffic = Duration::from_millis(START_DELAY_MS + START_SPREAD_MS + load.n * INTERVAL_MS);
    let limit = setup_limit + traffic + UCLIENT_STOPPING + Duration::from_secs(15);

    let mut procs = Vec::new();
    for i in 0..load.procs {
        let log = env
            .logs
            .path()
            .join(format!("uclient-{}-{i}.log", server.port()));
        let mut cmd = match &stdbuf {
            Some(stdbuf) => {
                let mut c = Command::new(stdbuf);
                c.arg("-oL").arg(tool);
                c
            }
            None => Command::new(tool),
        };
        cmd.args(["-m", &load.m.to_string(), "-n", &load.n.to_string()])
            .args(["-l", &MSG_LEN.to_string(), "-z", &INTERVAL_MS.to_string()])
            .args(["-c", "-e", "127.0.0.1", "-r", &env.peer.port().to_string()])
            .args(["-u", USER, "-w", PASS, "-p", &server.port().to_string()])
            .arg("127.0.0.1");
        procs.push(Proc::spawn("turnutils_uclient", &mut cmd, &log)?);
    }
    let start = Instant::now();
    let mut codes: Vec<Option<Option<i32>>> = vec![None; procs.len()];
    let failure = loop {
        for (p, code) in procs.iter_mut().zip(&mut codes) {
            if code.is_none()
                && let Some(status) = p.exit_status()
            {
                *code = Some(status.code());
            }
        }
        if codes.iter().all(Option::is_some) {
            break None;
        }
        let elapsed = start.elapsed();
        if elapsed > limit {
            break Some(format!(
                "turnutils_uclient still running after {} s",
                limit.as_secs()
            ));
        }
        if elapsed > setup_limit {
            // A server that cannot allocate leaves uclient retrying: give up early.
            let stuck = procs.iter().position(|p| {
                !std::fs::read_to_string(&p.log)
                    .unwrap_or_default()
                    .contains("Total connect time")
            });
            if let Some(i) = stuck {
                break Some(format!(
                    "turnutils_uclient had not set up its {} allocations after {} s:\n{}",
                    load.m,
                    setup_limit.as_secs(),
                    procs[i].log_tail(8)
                ));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    for p in &mut procs {
        p.stop();
    }
    if let Some(f) = failure {
        return Err(f);
    }
    let mut reports = Vec::new();
    for (p, code) in procs.iter().zip(&codes) {
        let text = std::fs::read_to_string(&p.log).unwrap_or_default();
        let code = code.flatten();
        if code != Some(0) {
            let why = if text.contains("Cannot complete Allocation") {
                "could not allocate"
            } else {
                "failed"
            };
            return Err(format!(
                "turnutils_uclient {why} (exit {}):\n{}",
                code.map_or("by signal".to_owned(), |c| c.to_string()),
                tail(&text, 8)
            ));
        }
        reports.push(parse_uclient(&text).ok_or_else(|| {
            format!(
                "turnutils_uclient output lacks its final counts:\n{}",
                tail(&text, 8)
            )
        })?);
    }
    Ok(reports)
}

/// Reads uclient's report. Its lines start with a time stamp in seconds; those that
/// matter are, from coturn 4.6's uclient.c:
///   `3: : start_mclient: msz=100, tot_send_msgs=16213, tot_recv_msgs=16121, ...`
///     once a second while sending (cumulative counts);
///   `8: : start_mclient: tot_send_msgs=200000, tot_recv_msgs=200000` at the end;
///   `8: : Total lost packets 0 (0.000000%), total send dropped 0 (0.000000%)`;
///   `0: : Total connect time is 10` once its allocations are set up;
///   `0: : error 437 (Allocation Mismatch)` for an error answer it retries.
/// None when the final counts are missing (uclient did not finish).
fn parse_uclient(text: &str) -> Option<ClientReport> {
    let mut report = ClientReport::default();
    let mut finished = false;
    for (i, line) in text.lines().enumerate() {
        if let Some(s) = number_after(line, "Total connect time is ") {
            report.setup_s = Some(s);
        }
        // `error 437 (Allocation Mismatch)`, `ERROR: ...`; the final "total send
        // dropped" line is counts, not an error.
        let lower = line.to_ascii_lowercase();
        if lower.contains("error") && !lower.contains("tot_") {
            let text = line.split_once(": : ").map_or(line, |x| x.1);
            report.errors.push(text.trim().to_owned());
        }
        let Some(sent) = number_after(line, "tot_send_msgs=") else {
            continue;
        };
        let received = number_after(line, "tot_recv_msgs=")?;
        if line.contains("msz=") {
            // The time stamp before the first ':'; the line index if it is not one
            // (the lines come once a second anyway).
            let second = line
                .split(':')
                .next()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(i as u64);
            report.samples.push((second, sent));
        } else {
            report.sent = sent;
            report.received = received;
            finished = true;
        }
    }
    (finished && text.contains("Total lost packets")).then_some(report)
}

/// The decimal number right after `key` in `line`.
fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

// ---------------------------------------------------------------------------------
// The bare relay's client: uclient's traffic without TURN

/// The 4-byte ChannelData header of a message of `len` bytes on channel 0x4000. A
/// header with length 0 is the bare relay's "allocate" (and its answer).
fn channel_header(len: usize) -> [u8; 4] {
    let len = (len as u16).to_be_bytes();
    [0x40, 0x00, len[0], len[1]]
}

fn run_bare_clients(relay: SocketAddr, load: Load) -> Result<Vec<ClientReport>, String> {
    let traffic = START_DELAY_MS + START_SPREAD_MS + load.n * INTERVAL_MS;
    let deadline =
        Instant::now() + Duration::from_millis(traffic + BARE_STRAGGLER_WAIT_MS + 20_000);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..load.procs)
            .map(|_| s.spawn(move || bare_client(relay, load.m, load.n, deadline)))
            .collect();
        handles
            .into_iter()
            .map(|h| match h.join() {
                Ok(r) => r.map_err(|e| format!("bare client: {e}")),
                Err(_) => Err("bare client thread panicked".to_owned()),
            })
            .collect()
    })
}

/// One uclient's worth of traffic through the bare relay: `m` allocations (sockets)
/// each sending `n` framed messages, one every INTERVAL_MS, as described at the top.
fn bare_client(relay: SocketAddr, m: usize, n: u64, deadline: Instant) -> io::Result<ClientReport> {
    let mut rng = Rng::from_os();
    let mut epoll = Epoll::new(256)?;
    let mut socks = Vec::with_capacity(m);
    for i in 0..m {
        let s = UdpSocket::bind("127.0.0.1:0")?;
        s.connect(relay)?;
        s.set_nonblocking(true)?;
        epoll.add(&s, i as u64)?;
        socks.push(s);
    }
    let mut tokens = Vec::new();
    let mut buf = [0u8; 2048];

    // Set-up: every allocation first, as uclient does before sending any data.
    let hello = channel_header(0);
    let mut ready = vec![false; m];
    let mut waiting = m;
    let setup_deadline = Instant::now() + Duration::from_secs(10);
    while waiting > 0 {
        for (s, _) in socks.iter().zip(&ready).filter(|(_, r)| !**r) {
            let _ = s.send(&hello);
        }
        let retry = Instant::now() + Duration::from_millis(200);
        while waiting > 0 && Instant::now() < retry {
            epoll.wait(&mut tokens, 50)?;
            for &t in &tokens {
                let i = t as usize;
                while let Ok(len) = socks[i].recv(&mut buf) {
                    if buf[..len] == hello && !ready[i] {
                        ready[i] = true;
                        waiting -= 1;
                    }
                }
            }
        }
        if Instant::now() > setup_deadline {
            return Err(io::Error::other(format!(
                "{waiting} of {m} allocations unanswered after 10 s"
            )));
        }
    }

    // Traffic, on uclient's schedule.
    let mut frame = [7u8; 4 + MSG_LEN];
    frame[..4].copy_from_slice(&channel_header(MSG_LEN));
    let mut next_ms: Vec<u64> = (0..m)
        .map(|_| START_DELAY_MS + rng.next_u64() % START_SPREAD_MS)
        .collect();
    let mut sent_per = vec![0u64; m];
    let mut report = ClientReport::default();
    let start = Instant::now();
    let mut last_send_ms = 0;
    loop {
        let now_ms = start.elapsed().as_millis() as u64;
        while report.samples.len() as u64 <= now_ms / 1000 {
            report
                .samples
                .push((report.samples.len() as u64, report.sent));
        }
        let mut all_sent = true;
        for i in 0..m {
            // At most 50 per tick, as uclient catches up after a slow tick.
            let mut burst = 0;
            while sent_per[i] < n && now_ms >= next_ms[i] && burst < 50 {
                frame[4..12].copy_from_slice(&sent_per[i].to_be_bytes());
                // uclient counts only what send() accepted; so do we.
                if socks[i].send(&frame).is_ok() {
                    report.sent += 1;
                }
                sent_per[i] += 1;
                next_ms[i] += INTERVAL_MS;
                burst += 1;
                last_send_ms = now_ms;
            }
            all_sent &= sent_per[i] >= n;
        }
        epoll.wait(&mut tokens, 1)?;
        for &t in &tokens {
            let s = &socks[t as usize];
            while let Ok(len) = s.recv(&mut buf) {
                if len == frame.len() && buf[..2] == frame[..2] {
                    report.received += 1;
                }
            }
        }
        let stragglers_done =
            report.received >= report.sent || now_ms > last_send_ms + BARE_STRAGGLER_WAIT_MS;
        if (all_sent && stragglers_done) || Instant::now() > deadline {
            break;
        }
    }
    Ok(report)
}

// ---------------------------------------------------------------------------------
// The bare relay process

/// Datagrams taken from one socket per turn, and the size of the client-bound batch.
const BATCH: usize = 64;

/// Relays until killed: see the top of the file. Prints `READY <port>` once listening.
fn bare_relay_main(peer: SocketAddrV4) {
    if let Err(e) = bare_relay(peer) {
        eprintln!("bare relay: {e}");
        std::process::exit(1);
    }
}

struct Allocation {
    sock: UdpSocket,
    client: SocketAddrV4,
}

fn bare_relay(peer: SocketAddrV4) -> io::Result<()> {
    let listen = UdpSocket::bind("127.0.0.1:0")?;
    listen.set_nonblocking(true)?;
    // The same 4 MB confnode asks for on its listening sockets.
    set_buffers(&listen, 4 << 20);
    let port = listen.local_addr()?.port();
    let mut epoll = Epoll::new(256)?;
    const LISTEN: u64 = u64::MAX;
    epoll.add(&listen, LISTEN)?;
    println!("READY {port}");
    io::stdout().flush()?;

    let mut allocations: Vec<Allocation> = Vec::new();
    let mut by_client: HashMap<SocketAddrV4, usize> = HashMap::new();
    let mut inbound = MsgBatch::new(BATCH);
    // Client-bound packets from every relay socket go out together on `listen`.
    let mut outbound = MsgBatch::new(BATCH);
    let mut queued = 0;
    let mut tokens = Vec::new();
    loop {
        epoll.wait(&mut tokens, 1000)?;
        for &token in &tokens {
            if token == LISTEN {
                // Client → peer.
                let n = match inbound.recv(&listen, 0, BATCH, 0, libc::MSG_DONTWAIT) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                };
                // Consecutive packets of one allocation leave in one sendmmsg.
                let mut run: Option<(usize, usize)> = None; // (allocation, first slot)
                for i in 0..n {
                    let mut target = None;
                    if let Some(len) = classify(&mut inbound, i) {
                        let client = inbound.addrs[i];
                        target = match by_client.get(&client) {
                            Some(&a) => Some(a),
                            // The first packet of a new client allocates for it.
                            None => {
                                let a = allocate(&mut allocations, &epoll, client, peer).ok();
                                if let Some(a) = a {
                                    by_client.insert(client, a);
                                }
                                a
                            }
                        };
                        if target.is_some() && len == 0 {
                            // An allocate: answer it, relay nothing.
                            let hello = channel_header(0);
                            queue_reply(&mut outbound, &mut queued, &listen, client, &hello);
                            target = None;
                        }
                    }
                    if let Some((a, first)) = run
                        && target != Some(a)
                    {
                        flush_to_peer(&mut inbound, &allocations[a].sock, first..i);
                        run = None;
                    }
                    if let (Some(a), None) = (target, run) {
                        run = Some((a, i));
                    }
                }
                if let Some((a, first)) = run {
                    flush_to_peer(&mut inbound, &allocations[a].sock, first..n);
                }
            } else {
                // Peer → client: received behind room for the ChannelData header.
                let a = &allocations[token as usize];
                if queued == BATCH {
                    flush_to_clients(&mut outbound, &mut queued, &listen);
                }
                let n = match outbound.recv(&a.sock, queued, BATCH - queued, 4, libc::MSG_DONTWAIT)
                {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    // ICMP from the peer's port (e.g. between runs): nothing to relay.
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                    Err(e) => return Err(e),
                };
                for i in queued..queued + n {
                    let len = outbound.lens[i] - 4;
                    outbound.slot(i)[..4].copy_from_slice(&channel_header(len));
                    outbound.addrs[i] = a.client;
                }
                queued += n;
            }
        }
        flush_to_clients(&mut outbound, &mut queued, &listen);
    }
}

/// The payload length of ChannelData in slot `i` (trimming any padding), or None for
/// anything else, which is dropped.
fn classify(batch: &mut MsgBatch, i: usize) -> Option<usize> {
    let total = batch.lens[i];
    let head = batch.slot(i);
    if total < 4 || head[0] & 0xC0 != 0x40 {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([head[2], head[3]]));
    if 4 + len > total {
        return None;
    }
    batch.lens[i] = 4 + len;
    Some(len)
}

/// A relay socket for a new client, connected to the peer like a TURN permission.
fn allocate(
    allocations: &mut Vec<Allocation>,
    epoll: &Epoll,
    client: SocketAddrV4,
    peer: SocketAddrV4,
) -> io::Result<usize> {
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.connect(peer)?;
    sock.set_nonblocking(true)?;
    let token = allocations.len();
    epoll.add(&sock, token as u64)?;
    allocations.push(Allocation { sock, client });
    Ok(token)
}

/// Sends the payloads (after the 4-byte header) of `slots` to the peer.
fn flush_to_peer(batch: &mut MsgBatch, sock: &UdpSocket, slots: std::ops::Range<usize>) {
    let mut from = slots.start;
    while from < slots.end {
        match batch.send(sock, from..slots.end, 4, false) {
            Ok(0) | Err(_) => return, // a full buffer drops, as any relay would
            Ok(k) => from += k,
        }
    }
}

fn queue_reply(
    batch: &mut MsgBatch,
    queued: &mut usize,
    listen: &UdpSocket,
    to: SocketAddrV4,
    bytes: &[u8],
) {
    if *queued == batch.capacity() {
        flush_to_clients(batch, queued, listen);
    }
    let i = *queued;
    batch.slot(i)[..bytes.len()].copy_from_slice(bytes);
    batch.lens[i] = bytes.len();
    batch.addrs[i] = to;
    *queued += 1;
}

fn flush_to_clients(batch: &mut MsgBatch, queued: &mut usize, listen: &UdpSocket) {
    let mut from = 0;
    while from < *queued {
        match batch.send(listen, from..*queued, 0, true) {
            Ok(0) | Err(_) => break, // a full buffer drops, as any relay would
            Ok(k) => from += k,
        }
    }
    *queued = 0;
}

// ---------------------------------------------------------------------------------
// Helpers and the report

/// True if `server` answers an unauthenticated TURN Allocate request at all (a TURN
/// server answers 401 with its realm and nonce). Checked before each run so that a
/// server without TURN fails in 2 s with a clear reason rather than after uclient's
/// set-up time-out.
fn answers_allocate(server: SocketAddr) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    if sock.connect(server).is_err() {
        return false;
    }
    let txid = Rng::from_os().txid();
    // Allocate (0x0003), one attribute: REQUESTED-TRANSPORT (0x0019) = UDP (17).
    let mut req = [0u8; 28];
    req[0..2].copy_from_slice(&0x0003u16.to_be_bytes());
    req[2..4].copy_from_slice(&8u16.to_be_bytes());
    req[4..8].copy_from_slice(&load::MAGIC_COOKIE.to_be_bytes());
    req[8..20].copy_from_slice(&txid);
    req[20..24].copy_from_slice(&[0x00, 0x19, 0x00, 0x04]);
    req[24..28].copy_from_slice(&[17, 0, 0, 0]);
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        if sock.send(&req).is_err()
            || sock
                .set_read_timeout(Some(Duration::from_millis(300)))
                .is_err()
        {
            return false;
        }
        while let Ok(n) = sock.recv(&mut buf) {
            let kind = u16::from_be_bytes([buf[0], buf[1]]);
            // A success (0x0103) or error (0x0113) response to our Allocate.
            if n >= 20 && (kind == 0x0103 || kind == 0x0113) && buf[8..20] == txid {
                return true;
            }
        }
    }
    false
}

/// True once `peer` echoes a datagram.
fn wait_echo(peer: SocketAddr, limit: Duration) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    if sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .is_err()
    {
        return false;
    }
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        // Not STUN, not ChannelData: turnutils_peer echoes whatever it gets.
        if sock.send_to(b"turn_load probe", peer).is_ok()
            && matches!(sock.recv_from(&mut buf), Ok((n, from)) if from == peer && &buf[..n] == b"turn_load probe")
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The figures of one row, each None where not measured.
struct Figures {
    us_per_msg: Option<f64>,
    loss: Option<f64>,
    kb_per_alloc: Option<(f64, usize)>,
    /// The rate, and whether it is only a lower bound (no run reached 1% loss).
    max_rate: Option<(f64, bool)>,
    setup_s: Option<f64>,
}

fn figures(row: &Row) -> Figures {
    let runs = &row.cpu_runs;
    let us_per_msg = median(&runs.iter().map(Run::us_per_message).collect::<Vec<_>>());
    let loss = median(&runs.iter().map(Run::loss).collect::<Vec<_>>());
    let setups: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.setup_s)
        .map(|s| s as f64)
        .collect();
    let rss_source = row.rss_run.as_ref().or(runs.first());
    let kb_per_alloc = rss_source.map(|r| (r.kb_per_allocation(), r.load.allocations()));
    // Every run is a point of the rate curve; the best rate among those under 1%
    // loss is the answer, marked "at least" when no run reached 1% loss.
    let all: Vec<&Run> = runs.iter().chain(&row.ladder).collect();
    let ok = all
        .iter()
        .filter(|r| r.loss() < LOSS_LIMIT)
        .map(|r| r.peak_rate)
        .fold(None, |m: Option<f64>, r| Some(m.map_or(r, |m| m.max(r))));
    let never_failed = all.iter().all(|r| r.loss() < LOSS_LIMIT);
    Figures {
        us_per_msg,
        loss,
        kb_per_alloc,
        max_rate: ok.map(|r| (r, never_failed)),
        setup_s: median(&setups),
    }
}

fn report(rows: &[Row], rounds: u64, cpu_load: Load, quick: bool) {
    let figs: Vec<Figures> = rows.iter().map(figures).collect();
    println!(
        "\nTURN relay, medians of {rounds} round(s) of `turnutils_uclient {} -c` \
         (the bare relay: the same traffic from the bench's client):",
        cpu_load.describe()
    );
    let fmt = |v: Option<f64>, digits: usize| v.map_or("-".to_owned(), |v| format!("{v:.digits$}"));
    let mut table = Vec::new();
    for (row, f) in rows.iter().zip(&figs) {
        let mut cells = vec![
            row.kind.name().to_owned(),
            fmt(f.us_per_msg, 2),
            f.loss
                .map_or("-".to_owned(), |l| format!("{:.3}%", l * 100.0)),
            fmt(f.setup_s, 0),
            f.kb_per_alloc
                .map_or("-".to_owned(), |(kb, n)| format!("{kb:.1} (of {n})")),
            f.max_rate.map_or("-".to_owned(), |(r, open)| {
                format!("{}{r:.0}", if open { ">= " } else { "" })
            }),
        ];
        if row.failure.is_some() {
            cells.push("FAILED (below)".to_owned());
        }
        table.push(cells);
    }
    print_table(
        &[
            "server",
            "server CPU µs per echoed msg",
            "lost",
            "uclient set-up s",
            "peak RSS kB per allocation",
            "max msg/s under 1% loss",
            "",
        ],
        &table,
    );

    for row in rows {
        if let Some(fail) = &row.failure {
            println!("\n{} FAILED in {fail}", row.kind.name());
        }
        for note in &row.notes {
            println!("\n{} failed in {note}", row.kind.name());
        }
    }
    println!(
        "\n(uclient set-up: its seconds to set up {} allocations, 0.1 s each at best; \
         RSS: VmHWM - idle VmRSS over the allocations named; rate: the highest one-second \
         send rate of a run under 1% loss, \">=\" when no run reached 1%)",
        cpu_load.m
    );

    let find = |k: Kind| rows.iter().position(|r| r.kind == k).map(|i| &figs[i]);
    let pairs = [
        ("confnode/coturn", Kind::Confnode, Kind::Coturn),
        ("confnode/bare", Kind::Confnode, Kind::Bare),
        ("coturn/bare", Kind::Coturn, Kind::Bare),
    ];
    let mut ratio_rows = Vec::new();
    for (label, a, b) in pairs {
        let (Some(fa), Some(fb)) = (find(a), find(b)) else {
            continue;
        };
        let ratio = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
            _ => "-".to_owned(),
        };
        // Per-allocation memory of the bare relay is a few hundred bytes at most, so
        // a ratio to it says nothing; only ratios between TURN servers are shown.
        let rss = if b == Kind::Bare {
            "-".to_owned()
        } else {
            ratio(fa.kb_per_alloc.map(|x| x.0), fb.kb_per_alloc.map(|x| x.0))
        };
        // A rate that is only a lower bound makes the ratio a bound too.
        let rate = match (fa.max_rate, fb.max_rate) {
            (Some((x, false)), Some((y, false))) => ratio(Some(x), Some(y)),
            (Some((x, true)), Some((y, false))) => format!(">= {}", ratio(Some(x), Some(y))),
            (Some((x, false)), Some((y, true))) => format!("<= {}", ratio(Some(x), Some(y))),
            _ => "-".to_owned(),
        };
        ratio_rows.push(vec![
            label.to_owned(),
            ratio(fa.us_per_msg, fb.us_per_msg),
            rss,
            rate,
        ]);
    }
    if !ratio_rows.is_empty() {
        println!("\nRatios (CPU and memory: below 1 is better for the first; rate: above 1):");
        print_table(
            &["", "CPU per msg", "RSS per allocation", "max rate"],
            &ratio_rows,
        );
    }
    let mut cmd = String::new();
    if quick {
        cmd.push_str("TURN_LOAD_QUICK=1 ");
    }
    if let Ok(only) = std::env::var("TURN_LOAD_ONLY") {
        let _ = write!(cmd, "TURN_LOAD_ONLY={only} ");
    }
    if let Ok(r) = std::env::var("TURN_LOAD_ROUNDS") {
        let _ = write!(cmd, "TURN_LOAD_ROUNDS={r} ");
    }
    println!("\ncommand: {cmd}{COMMAND}");
}
