//! Starting the real `confnode` binary on loopback for integration tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use confnode::stun::message::{Class, Message, Writer, attr, long_term_key, method};

pub mod postgres;
pub mod sim;
pub mod turn;

pub const BIN: &str = env!("CARGO_BIN_EXE_confnode");

/// A port free for UDP and TCP on both 127.0.0.1 and ::1 right now.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let Ok(udp) = UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = udp.local_addr() else { continue };
        let port = addr.port();
        let ok = TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("::1", port)).is_ok()
            && TcpListener::bind(("::1", port)).is_ok();
        if ok {
            return port;
        }
    }
    panic!("no free loopback port found");
}

/// The node as users run it: `cargo build --release` (a no-op when it is up to date;
/// `tests/run.sh` builds it before the tests), and the path of that binary. The
/// browser tests run it, not the debug build: with three Chromiums on a 2-core machine,
/// a debug node's unoptimized crypto took eight to twelve times the CPU of a release
/// build and starved the browsers' encoders.
pub fn release_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--release", "--locked", "--bin", "confnode"])
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .expect("run cargo build --release");
            assert!(status.success(), "cargo build --release failed: {status}");
            // Next to the debug binary cargo built for this test: the same target dir.
            let debug = Path::new(BIN);
            let target = debug
                .parent()
                .and_then(Path::parent)
                .expect("target dir of the test binary");
            let release = target.join("release").join("confnode");
            assert!(release.is_file(), "{} was not built", release.display());
            release
        })
        .clone()
}

/// Fails the test, saying what to install, when a tool the test drives is missing.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "`{tool}` is not installed: install the Debian package `{package}` \
         (apt-get install {package}), or run the README's test command, which does"
    );
}

/// A running node, stopped with SIGTERM when dropped.
pub struct Node {
    child: Option<Child>,
    pub stun: SocketAddr,
    pub stun6: SocketAddr,
    pub http: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Node {
    /// Starts the node on fresh loopback ports (IPv4 and ::1), with `extra` appended
    /// to the generated configuration (sections other than [turn] listen/[http] listen).
    pub fn start(extra: &str) -> Node {
        Node::start_on(&["127.0.0.1", "[::1]"], "", extra)
    }

    /// Waits until the node answers /api/health; Err with its exit status if it
    /// exited first (e.g. a port that [`free_port`] found free was taken by another
    /// process before the node bound it).
    fn wait_ready(&mut self) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some((200, _)) = http_get(self.http, "/api/health") {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("confnode did not answer /api/health within 30 s");
    }

    /// Starts a node with `start(turn port, http port)` on fresh ports until one comes
    /// up: a port found free can be taken by another process (a browser's connection,
    /// another test's relay) before the node binds it, and the node then exits.
    fn start_retrying(mut start: impl FnMut(u16, u16) -> Node) -> Node {
        let mut last = None;
        for _ in 0..5 {
            let mut node = start(free_port(), free_port());
            match node.wait_ready() {
                Ok(()) => return node,
                Err(status) => last = Some(status),
            }
        }
        panic!("confnode exited before it was ready, five times (last: {last:?})");
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// The body of GET /metrics.
    pub fn metrics(&self) -> String {
        let (status, body) = http_get(self.http, "/metrics").expect("GET /metrics");
        assert_eq!(status, 200);
        body
    }

    /// The value of one series, e.g. `confnode_dropped_total{transport="udp",reason="malformed"}`.
    pub fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics(), series)
    }

    /// Sends SIGTERM and waits for the exit.
    /// A node the caller started with its own configuration, on these ports.
    pub fn attach(child: Child, turn_port: u16, http_port: u16) -> Node {
        Node {
            child: Some(child),
            stun: SocketAddr::from(([127, 0, 0, 1], turn_port)),
            stun6: format!("[::1]:{turn_port}").parse().expect("addr"),
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// Waits for `/api/health`; fails if the node exits first.
    pub fn wait_until_ready(&mut self) {
        if let Err(status) = self.wait_ready() {
            panic!("confnode exited before it was ready: {status}");
        }
    }

    /// Sends `signal` to the node.
    pub fn signal(&self, signal: i32) {
        let child = self.child.as_ref().expect("node is running");
        // SAFETY: kill(2) with a pid of a child we started and have not reaped.
        unsafe {
            libc::kill(child.id() as libc::pid_t, signal);
        }
    }

    /// The node's exit status once it exits by itself, within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Ends the node with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let mut child = self.child.take().expect("node is running");
        let _ = child.kill();
        let _ = child.wait();
    }

    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("node is running");
        terminate(&mut child)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }
}

pub fn terminate(child: &mut Child) -> ExitStatus {
    // SAFETY: kill(2) with a pid of a child we started and have not reaped.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            return child.wait().expect("wait");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("series {series} not in /metrics:\n{text}"))
}

/// A minimal HTTP/1.1 GET: the status and body, or None when nothing listens.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_owned();
    Some((status, body))
}

/// Runs a command with a time limit; returns its status and stdout.
pub fn run_with_timeout(cmd: &mut Command, limit: Duration) -> (ExitStatus, String) {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start command");
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("command output");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status, text)
}

pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write file");
    p
}

// ---- TURN helpers (tests/turn_udp.rs, tests/turn_negative.rs) ----

impl Node {
    /// Like [`Node::start`], with `turn` (keys of the `[turn]` table, one per line, e.g.
    /// `users = { user = "pass" }`) written into the generated `[turn]` table, which
    /// `extra` cannot reopen.
    pub fn start_with_turn(turn: &str, extra: &str) -> Node {
        Node::start_on(&["127.0.0.1", "[::1]"], turn, extra)
    }

    /// Like [`Node::start_with_turn`], listening for TURN on `hosts` (e.g. `127.0.0.2`,
    /// `[::1]`) at one fresh port. `stun` is the first host at that port, `stun6` is
    /// `[::1]` at that port whether or not it is listened on.
    pub fn start_on(hosts: &[&str], turn: &str, extra: &str) -> Node {
        Node::start_retrying(|port, http_port| Node::spawn_on(hosts, turn, extra, port, http_port))
    }

    fn spawn_on(hosts: &[&str], turn: &str, extra: &str, port: u16, http_port: u16) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let listen: Vec<String> = hosts.iter().map(|h| format!("\"{h}:{port}\"")).collect();
        let config = format!(
            "[turn]\nlisten = [{listen}]\n{turn}\n\
             [http]\nlisten = \"127.0.0.1:{http_port}\"\n\
             [store]\npath = \"{store}\"\n{extra}",
            listen = listen.join(", "),
            store = dir.path().join("data").display()
        );
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).expect("write config");
        let child = Command::new(BIN)
            .arg("--config")
            .arg(&path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start confnode");
        let first = format!("{}:{port}", hosts.first().expect("a TURN listen host"));
        Node {
            child: Some(child),
            stun: first.parse().expect("listen address"),
            stun6: format!("[::1]:{port}").parse().expect("addr"),
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            dir,
        }
    }

    /// Resident memory of the node process in kB (VmRSS of /proc/<pid>/status).
    pub fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("read /proc/<pid>/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/<pid>/status")
    }

    /// Polls `series` until `done` holds for its value or `limit` passes; returns the
    /// last value seen.
    pub fn wait_metric(&self, series: &str, limit: Duration, done: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.metric(series);
            if done(v) || Instant::now() > deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, e.g. `turnutils_peer`.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Whether something listens on UDP `port` (any address), from /proc/net/udp{,6}; looks
/// without binding, so it cannot race the process that is about to bind it.
pub fn udp_port_bound(port: u16) -> bool {
    let needle = format!(":{port:04X} ");
    ["/proc/net/udp", "/proc/net/udp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|t| {
            t.lines().skip(1).any(|l| {
                l.split_whitespace()
                    .nth(1)
                    .is_some_and(|a| format!("{a} ").ends_with(&needle))
            })
        })
    })
}

// ---- HTTP helpers (tests/http_rooms.rs) ----

/// The node's output (stdout, where its log goes, and stderr), collected line by line
/// while it runs.
#[derive(Clone, Default)]
pub struct NodeOutput(std::sync::Arc<std::sync::Mutex<String>>);

impl NodeOutput {
    pub fn text(&self) -> String {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// The first line containing `needle`, waiting up to `limit` for it.
    pub fn wait_for_line(&self, needle: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        loop {
            let found = self
                .text()
                .lines()
                .find(|l| l.contains(needle))
                .map(str::to_owned);
            if found.is_some() || Instant::now() > deadline {
                return found;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Node {
    /// Like [`Node::start_with_turn`], with `http` (keys of `[http]`, one per line) written
    /// into the generated `[http]` table (`{HTTP_PORT}` there becomes the port it listens
    /// on); the node's output is collected (and echoed).
    pub fn start_with_http(turn: &str, http: &str, extra: &str) -> (Node, NodeOutput) {
        Node::start_binary_with_http(Path::new(BIN), turn, http, extra)
    }

    /// Like [`Node::start_with_http`], running the binary `bin` (e.g.
    /// [`release_binary`]).
    pub fn start_binary_with_http(
        bin: &Path,
        turn: &str,
        http: &str,
        extra: &str,
    ) -> (Node, NodeOutput) {
        Node::start_logged(|port, http_port, log| {
            Node::spawn_with_http(bin, (turn, http, extra), (None, port, http_port), log)
        })
    }

    /// [`Node::start_binary_with_http`] with every listener on `ip` alone (an address
    /// of a network namespace's link, say), which is also the node's public address.
    pub fn start_binary_on(
        bin: &Path,
        ip: std::net::Ipv4Addr,
        http: &str,
        extra: &str,
    ) -> (Node, NodeOutput) {
        let extra = format!("[node]\npublic_ip = \"{ip}\"\n{extra}");
        Node::start_logged(|port, http_port, log| {
            let mut node =
                Node::spawn_with_http(bin, ("", http, &extra), (Some(ip), port, http_port), log);
            node.stun = SocketAddr::from((ip, port));
            node.http = SocketAddr::from((ip, http_port));
            node
        })
    }

    /// Starts a node with `spawn` (retrying on other ports), its output collected.
    fn start_logged(mut spawn: impl FnMut(u16, u16, &NodeOutput) -> Node) -> (Node, NodeOutput) {
        let log = NodeOutput::default();
        let node = Node::start_retrying(|port, http_port| {
            // Each attempt's output on its own: a failed start's lines are not the node's.
            if let Ok(mut t) = log.0.lock() {
                t.clear();
            }
            spawn(port, http_port, &log)
        });
        (node, log)
    }

    fn spawn_with_http(
        bin: &Path,
        (turn, http, extra): (&str, &str, &str),
        (ip, port, http_port): (Option<std::net::Ipv4Addr>, u16, u16),
        log: &NodeOutput,
    ) -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let (turn_listen, http_listen) = match ip {
            Some(ip) => (format!("\"{ip}:{port}\""), format!("{ip}:{http_port}")),
            None => (
                format!("\"127.0.0.1:{port}\", \"[::1]:{port}\""),
                format!("127.0.0.1:{http_port}"),
            ),
        };
        // `{HTTP_PORT}` in the [http] keys is the port this attempt listens on (for a
        // public_url that must name it).
        let http = http.replace("{HTTP_PORT}", &http_port.to_string());
        let config = format!(
            "[turn]\nlisten = [{turn_listen}]\n{turn}\n\
             [http]\nlisten = \"{http_listen}\"\n{http}\n\
             [store]\npath = \"{store}\"\n{extra}",
            store = dir.path().join("data").display()
        );
        let path = dir.path().join("config.toml");
        std::fs::write(&path, config).expect("write config");
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&path)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start confnode");
        let stdout = child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>);
        let stderr = child
            .stderr
            .take()
            .map(|e| Box::new(e) as Box<dyn Read + Send>);
        for pipe in [stdout, stderr].into_iter().flatten() {
            let log = log.clone();
            std::thread::spawn(move || {
                use std::io::BufRead;
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    eprintln!("{line}");
                    if let Ok(mut t) = log.0.lock() {
                        t.push_str(&line);
                        t.push('\n');
                    }
                }
            });
        }
        Node {
            child: Some(child),
            stun: SocketAddr::from(([127, 0, 0, 1], port)),
            stun6: format!("[::1]:{port}").parse().expect("addr"),
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            dir,
        }
    }
}

/// An HTTP answer: status, head (status line and headers) and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl HttpResponse {
    /// A header's value (the first, name case-insensitive).
    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
}

/// A minimal HTTP/1.1 request over a fresh connection (`Connection: close`); the body
/// is sent with its Content-Length. Panics when the node cannot be reached.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        req.push_str(&format!("{n}: {v}\r\n"));
    }
    if !body.is_empty() || matches!(method, "POST" | "PUT") {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).expect("send head");
    // The node may answer (413) before reading all of a large body.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP answer to {method} {path}: {text:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line: {head}"));
    HttpResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// An open `text/event-stream` response, read event by event.
pub struct SseStream {
    reader: std::io::BufReader<TcpStream>,
    pending: String,
    ended: bool,
}

impl SseStream {
    /// GETs `path`; a non-200 answer comes back as `Err`.
    pub fn open(
        addr: SocketAddr,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Result<SseStream, HttpResponse> {
        use std::io::BufRead;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut req =
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).expect("send");
        let mut reader = std::io::BufReader::new(s);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            let n = reader.read_line(&mut line).expect("read head");
            if n == 0 || line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line: {head:?}"));
        let stream = SseStream {
            reader,
            pending: String::new(),
            ended: false,
        };
        if status == 200 {
            return Ok(stream);
        }
        // An error answer: read its body (Content-Length).
        let len = head
            .lines()
            .find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        let mut reader = stream.reader;
        reader.read_exact(&mut body).expect("error body");
        Err(HttpResponse {
            status,
            head,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }

    /// The next event as (name, data), skipping keep-alive comments; `None` once the
    /// server ended the stream. Panics when nothing arrives within 10 s.
    pub fn next_event(&mut self) -> Option<(String, String)> {
        use std::io::BufRead;
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if block.lines().all(|l| l.starts_with(':') || l.is_empty()) {
                    continue;
                }
                return Some((name, data));
            }
            if self.ended {
                return None;
            }
            // One chunk of the chunked body.
            let mut size = String::new();
            match self.reader.read_line(&mut size) {
                Ok(0) => {
                    self.ended = true;
                    continue;
                }
                Ok(_) => {}
                Err(e) => panic!("no event within 10 s: {e}"),
            }
            let size = usize::from_str_radix(size.trim(), 16)
                .unwrap_or_else(|_| panic!("bad chunk size {size:?}"));
            if size == 0 {
                self.ended = true;
                continue;
            }
            let mut chunk = vec![0u8; size + 2];
            self.reader
                .read_exact(&mut chunk)
                .unwrap_or_else(|e| panic!("chunk: {e}"));
            self.pending
                .push_str(&String::from_utf8_lossy(&chunk[..size]));
        }
    }

    /// The next event, which must be `name`; its data as JSON.
    pub fn expect(&mut self, name: &str) -> serde_json::Value {
        match self.next_event() {
            Some((n, data)) if n == name => serde_json::from_str(&data)
                .unwrap_or_else(|e| panic!("{name} data is not JSON ({e}): {data}")),
            other => panic!("expected a {name} event, got {other:?}"),
        }
    }
}

/// coturn's `turnutils_peer` echoing on `hosts` at a fresh port, killed when dropped.
pub struct Peer {
    pub port: u16,
    _child: KillOnDrop,
}

impl Peer {
    pub fn start(hosts: &[&str]) -> Peer {
        require_tool("turnutils_peer", "coturn");
        let port = free_port();
        let mut cmd = Command::new("turnutils_peer");
        cmd.args(["-p", &port.to_string()]);
        for h in hosts {
            cmd.args(["-L", h]);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start turnutils_peer");
        let peer = Peer {
            port,
            _child: KillOnDrop(child),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !udp_port_bound(port) {
            assert!(
                Instant::now() < deadline,
                "turnutils_peer did not bind UDP port {port} within 10 s"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        peer
    }
}

/// A TURN Allocate over UDP with the given long-term credentials: true on success.
pub fn turn_allocate(server: SocketAddr, username: &str, password: &str) -> bool {
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let exchange = |request: &[u8]| -> Vec<u8> {
        let mut buf = [0u8; 1500];
        for _ in 0..5 {
            sock.send_to(request, server).expect("send");
            if let Ok((n, _)) = sock.recv_from(&mut buf) {
                return buf[..n].to_vec();
            }
        }
        panic!("no answer from TURN at {server}");
    };
    // First without credentials: 401 with REALM and NONCE.
    let mut buf = [0u8; 512];
    let mut w = Writer::new(&mut buf, method::ALLOCATE, Class::Request, &[7; 12]).expect("w");
    w.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
        .expect("attr");
    let n = w.finish();
    let challenge = exchange(&buf[..n]);
    let msg = Message::parse(&challenge).expect("STUN answer");
    assert_eq!(msg.class(), Class::Error);
    let realm = msg.get(attr::REALM).expect("REALM").to_vec();
    let nonce = msg.get(attr::NONCE).expect("NONCE").to_vec();
    // Then with them.
    let mut buf = [0u8; 512];
    let mut w = Writer::new(&mut buf, method::ALLOCATE, Class::Request, &[8; 12]).expect("w");
    w.add_u32(attr::REQUESTED_TRANSPORT, 17 << 24)
        .expect("attr");
    w.add(attr::USERNAME, username.as_bytes()).expect("attr");
    w.add(attr::REALM, &realm).expect("attr");
    w.add(attr::NONCE, &nonce).expect("attr");
    let key = long_term_key(username.as_bytes(), &realm, password.as_bytes());
    w.add_integrity(&key).expect("mi");
    w.add_fingerprint().expect("fp");
    let n = w.finish();
    let answer = exchange(&buf[..n]);
    let msg = Message::parse(&answer).expect("STUN answer");
    if msg.class() != Class::Success {
        return false;
    }
    assert_eq!(
        msg.verify_integrity(&key),
        Some(true),
        "signed with our key"
    );
    assert!(msg.xor_address(attr::XOR_RELAYED_ADDRESS).is_some());
    true
}

/// A cheap argon2id hash for `[[http.hosts]]` in tests (the config takes any argon2id
/// parameters; the default ones are slow in a debug build).
pub fn cheap_hash(password: &str) -> String {
    use argon2::password_hash::rand_core::OsRng;
    use argon2::password_hash::{PasswordHasher, SaltString};
    let params = argon2::Params::new(8, 1, 1, None).expect("params");
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
        .expect("hash")
        .to_string()
}

/// `Authorization: Basic` for a host login.
/// The `[[http.hosts]]` table of one host account (for `Node::start_with_http`).
pub fn host_account(name: &str, password: &str) -> String {
    format!(
        "[[http.hosts]]\nname = \"{name}\"\npassword_hash = \"{}\"\n",
        cheap_hash(password)
    )
}

/// Creates a room as host `name` with `password` (`POST /api/rooms`, 201); its id.
pub fn create_room(node: &Node, name: &str, password: &str) -> String {
    let r = http(
        node.http,
        "POST",
        "/api/rooms",
        &[("Authorization", &basic_auth(name, password))],
        b"",
    );
    assert_eq!(r.status, 201, "create room: {}", r.body);
    r.json()["room"].as_str().expect("room").to_owned()
}

pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine;
    let raw = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

/// Seconds since 1970 now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

/// A Chrome-like publisher offer: Opus and VP8 with RTX, bundled, rtcp-mux.
pub const PUBLISH_OFFER: &str = "v=0\r\n\
o=- 4611731400430051336 2 IN IP4 127.0.0.1\r\n\
s=-\r\n\
t=0 0\r\n\
a=group:BUNDLE 0 1\r\n\
m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Clnt\r\n\
a=ice-pwd:clientpassword0123456789\r\n\
a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:A6:BC\r\n\
a=setup:actpass\r\n\
a=mid:0\r\n\
a=sendonly\r\n\
a=rtcp-mux\r\n\
a=rtpmap:111 opus/48000/2\r\n\
m=video 9 UDP/TLS/RTP/SAVPF 96 97\r\n\
c=IN IP4 0.0.0.0\r\n\
a=ice-ufrag:Clnt\r\n\
a=ice-pwd:clientpassword0123456789\r\n\
a=fingerprint:sha-256 6B:8B:5D:EA:59:04:20:23:29:C8:87:1C:CC:87:32:BE:DD:8C:66:A5:8E:50:55:EA:8C:D3:B6:5C:09:5E:A6:BC\r\n\
a=setup:actpass\r\n\
a=mid:1\r\n\
a=sendonly\r\n\
a=rtcp-mux\r\n\
a=rtpmap:96 VP8/90000\r\n\
a=rtpmap:97 rtx/90000\r\n\
a=fmtp:97 apt=96\r\n";

/// A participant that joined a room: its id, token and the whole join answer.
#[derive(Clone)]
pub struct Joined {
    pub id: String,
    pub token: String,
    pub answer: serde_json::Value,
}

/// Joins `room` of `node` as `name` (`POST /api/rooms/{room}/participants`); the
/// answer must be 201.
pub fn join(node: &Node, room: &str, name: &str) -> Joined {
    let body = serde_json::json!({ "display_name": name }).to_string();
    let r = http(
        node.http,
        "POST",
        &format!("/api/rooms/{room}/participants"),
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let answer = r.json();
    Joined {
        id: answer["participant"].as_str().expect("id").to_owned(),
        token: answer["token"].as_str().expect("token").to_owned(),
        answer,
    }
}

/// The number after `key` in `line` (e.g. uclient's `tot_send_msgs=` → 300).
pub fn number_after(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// What one uclient run reported.
#[derive(Debug)]
pub struct Totals {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
}

/// Reads uclient's closing summary: the totals line (without `msz=`, which the
/// per-second progress lines have) and `Total lost packets N`.
pub fn uclient_totals(out: &str) -> Totals {
    let summary = out
        .lines()
        .rfind(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))
        .unwrap_or_else(|| panic!("no tot_send_msgs summary in uclient output:\n{out}"));
    let lost = out
        .lines()
        .find_map(|l| number_after(l, "Total lost packets "))
        .unwrap_or_else(|| panic!("no `Total lost packets` in uclient output:\n{out}"));
    Totals {
        sent: number_after(summary, "tot_send_msgs=").expect("tot_send_msgs"),
        received: number_after(summary, "tot_recv_msgs=").expect("tot_recv_msgs"),
        lost,
    }
}
