//! Starting the real `confnode` binary on loopback for integration tests.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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
        let port = free_port();
        let http_port = free_port();
        let dir = tempfile::tempdir().expect("temp dir");
        let config = format!(
            "[turn]\nlisten = [\"127.0.0.1:{port}\", \"[::1]:{port}\"]\n\
             [http]\nlisten = \"127.0.0.1:{http_port}\"\n\
             [store]\npath = \"{store}\"\n{extra}",
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
        let node = Node {
            child: Some(child),
            stun: SocketAddr::from(([127, 0, 0, 1], port)),
            stun6: format!("[::1]:{port}").parse().expect("addr"),
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            dir,
        };
        node.wait_ready();
        node
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some((200, _)) = http_get(self.http, "/api/health") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("confnode did not answer /api/health within 30 s");
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
