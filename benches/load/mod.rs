//! Shared pieces of the loopback load benches (`stun_load`, `turn_load`): starting and
//! stopping the servers under test, reading their CPU time and memory from /proc,
//! batched UDP I/O for the load generators, and the few STUN bytes they need.
//!
//! Every process started here is a child of the bench, stopped by its pid (SIGTERM,
//! then SIGKILL) when its handle is dropped, so a panicking bench leaves nothing behind.
//! Everything listens on 127.0.0.1 and writes only into temporary directories.

// Each bench is its own crate and uses a different subset of this module.
#![allow(dead_code)]

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The node under test, built by cargo for this bench in the bench profile.
pub const CONFNODE: &str = env!("CARGO_BIN_EXE_confnode");

/// The path of `tool` on PATH, if it is installed.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

/// A loopback port free for UDP and TCP right now (confnode listens on both).
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let Ok(udp) = UdpSocket::bind("127.0.0.1:0") else {
            continue;
        };
        let Ok(addr) = udp.local_addr() else { continue };
        if TcpListener::bind(("127.0.0.1", addr.port())).is_ok() {
            return addr.port();
        }
    }
    panic!("no free loopback port found");
}

/// An integer setting from the environment, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

/// True when the environment variable is set to something other than "" or "0".
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

// ---------------------------------------------------------------------------------
// Child processes

/// A child process whose stdout and stderr go to a log file; stopped when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc, String> {
        let out = fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("clone log file handle: {e}"))?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("cannot start {name} ({:?}): {e}", cmd.get_program()))?;
        Ok(Proc {
            name: name.to_owned(),
            child: Some(child),
            log: log.to_owned(),
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The exit status if the process has ended.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// The last `lines` lines of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&fs::read_to_string(&self.log).unwrap_or_default(), lines)
    }

    /// Stops it: SIGTERM, then SIGKILL if it has not exited within 5 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        // SAFETY: kill(2) on the pid of our own child, which has not been reaped yet.
        unsafe {
            libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The last `lines` lines of `text`, indented for an error message.
pub fn tail(text: &str, lines: usize) -> String {
    if text.trim().is_empty() {
        // Programs writing to a file buffer their output; one stopped early shows none.
        return "    | (no output)\n".to_owned();
    }
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    all[start..]
        .iter()
        .map(|l| format!("    | {l}\n"))
        .collect()
}

// ---------------------------------------------------------------------------------
// /proc

/// User plus system CPU time of a process (all its threads, live and ended), in
/// seconds. The resolution is one clock tick (10 ms): rounds are sized to take far more.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    cpu_seconds_of(&format!("/proc/{pid}/stat"))
}

fn cpu_seconds_of(path: &str) -> Option<f64> {
    let stat = fs::read_to_string(path).ok()?;
    // The command name (field 2) may hold spaces and parentheses; the fields after the
    // last ')' are fixed: state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

/// How often the threads of process `pid` have gone to sleep so far (their voluntary
/// context switches, summed over /proc/<pid>/task/*/status): how often a server waited
/// for packets and was woken.
pub fn wakeups(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let Ok(status) = fs::read_to_string(task.path().join("status")) else {
            continue;
        };
        total += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    Some(total)
}

/// A `kB` field of /proc/<pid>/status: "VmRSS" (resident now) or "VmHWM" (peak).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| {
        let value = l.strip_prefix(field)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Resets the peak RSS (VmHWM) of a process to its current RSS (Linux ≥ 4.0), so a
/// later VmHWM is the peak of what came after, not of the start-up. False if refused.
pub fn reset_peak_rss(pid: u32) -> bool {
    fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

// ---------------------------------------------------------------------------------
// Starting the servers

/// A confnode started on fresh loopback ports with a temporary configuration.
pub struct Confnode {
    pub proc: Proc,
    pub udp: SocketAddr,
    pub http: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// Starts confnode with `turn_extra` appended to its `[turn]` section, and waits until
/// `GET /api/health` answers.
pub fn start_confnode(turn_extra: &str) -> Result<Confnode, String> {
    let port = free_port();
    let http_port = free_port();
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let config = format!(
        "[turn]\nlisten = [\"127.0.0.1:{port}\"]\n{turn_extra}\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\n\
         [store]\npath = \"{store}\"\n",
        store = dir.path().join("data").display()
    );
    let path = dir.path().join("config.toml");
    fs::write(&path, config).map_err(|e| format!("write {}: {e}", path.display()))?;
    let mut cmd = Command::new(CONFNODE);
    // NO_COLOR: its log goes to a file that error messages quote.
    cmd.arg("--config")
        .arg(&path)
        .env("NO_COLOR", "1")
        .current_dir(dir.path());
    let mut proc = Proc::spawn("confnode", &mut cmd, &dir.path().join("confnode.log"))?;
    let http = SocketAddr::from(([127, 0, 0, 1], http_port));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some((200, _)) = http_get(http, "/api/health") {
            break;
        }
        if let Some(status) = proc.exit_status() {
            return Err(format!(
                "confnode exited at start ({status}):\n{}",
                proc.log_tail(20)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "confnode did not answer GET /api/health within 30 s:\n{}",
                proc.log_tail(20)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Confnode {
        proc,
        udp: SocketAddr::from(([127, 0, 0, 1], port)),
        http,
        dir,
    })
}

/// A coturn `turnserver` on a fresh loopback port.
pub struct Coturn {
    pub proc: Proc,
    pub udp: SocketAddr,
    pub dir: tempfile::TempDir,
}

/// Starts `turnserver` with `extra` options after the common ones, and waits until it
/// answers a STUN Binding request.
///
/// The common options keep it on 127.0.0.1 and inside a temporary directory: no
/// configuration file (`-n`), no TLS/DTLS listeners, no telnet CLI, the log on stdout
/// (into the temporary directory), and the pid file and SQLite user database, which it
/// would otherwise create under /var, in the temporary directory.
pub fn start_coturn(extra: &[String]) -> Result<Coturn, String> {
    let tool = find_tool("turnserver").ok_or(
        "`turnserver` is not installed: install the Debian package `coturn` \
         (apt-get install coturn)",
    )?;
    let port = free_port();
    let dir = tempfile::tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let mut cmd = Command::new(tool);
    cmd.arg("-n")
        .arg("--listening-ip=127.0.0.1")
        .arg(format!("--listening-port={port}"))
        .args(["--no-tls", "--no-dtls", "--no-cli"])
        .args(["--log-file=stdout", "--simple-log"])
        .arg(format!(
            "--pidfile={}",
            dir.path().join("turnserver.pid").display()
        ))
        .arg(format!("--userdb={}", dir.path().join("turndb").display()))
        .args(extra)
        .current_dir(dir.path());
    let mut proc = Proc::spawn("coturn", &mut cmd, &dir.path().join("turnserver.log"))?;
    let udp = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if stun_ping(udp, Duration::from_millis(200)) {
            break;
        }
        if let Some(status) = proc.exit_status() {
            return Err(format!(
                "turnserver exited at start ({status}):\n{}",
                proc.log_tail(20)
            ));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "turnserver did not answer STUN within 15 s:\n{}",
                proc.log_tail(20)
            ));
        }
    }
    Ok(Coturn { proc, udp, dir })
}

/// A minimal HTTP/1.1 GET: the status and body, or None when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |x| x.1).to_owned();
    Some((status, body))
}

// ---------------------------------------------------------------------------------
// STUN bytes (RFC 8489 §5, §14.7)

pub const MAGIC_COOKIE: u32 = 0x2112_A442;
const BINDING_REQUEST: u16 = 0x0001;
const BINDING_SUCCESS: u16 = 0x0101;
const FINGERPRINT: u16 = 0x8028;
const FINGERPRINT_XOR: u32 = 0x5354_554E;
pub const BINDING_REQUEST_LEN: usize = 20;
pub const BINDING_REQUEST_FP_LEN: usize = 28;

/// Writes a Binding request with transaction id `txid` into `out` (at least 28 bytes),
/// with FINGERPRINT when asked; returns its length.
pub fn binding_request(txid: &[u8; 12], fingerprint: bool, out: &mut [u8]) -> usize {
    let body = if fingerprint { 8u16 } else { 0 };
    out[0..2].copy_from_slice(&BINDING_REQUEST.to_be_bytes());
    out[2..4].copy_from_slice(&body.to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..20].copy_from_slice(txid);
    if !fingerprint {
        return BINDING_REQUEST_LEN;
    }
    // The CRC covers the message up to the attribute, with the length already counting it.
    let crc = crc32fast::hash(&out[..20]) ^ FINGERPRINT_XOR;
    out[20..22].copy_from_slice(&FINGERPRINT.to_be_bytes());
    out[22..24].copy_from_slice(&4u16.to_be_bytes());
    out[24..28].copy_from_slice(&crc.to_be_bytes());
    BINDING_REQUEST_FP_LEN
}

/// The transaction id of a well-formed Binding success response, else None.
pub fn binding_success_txid(msg: &[u8]) -> Option<[u8; 12]> {
    if msg.len() < 20 {
        return None;
    }
    let kind = u16::from_be_bytes([msg[0], msg[1]]);
    let body = usize::from(u16::from_be_bytes([msg[2], msg[3]]));
    let cookie = u32::from_be_bytes([msg[4], msg[5], msg[6], msg[7]]);
    if kind != BINDING_SUCCESS || cookie != MAGIC_COOKIE || body + 20 != msg.len() {
        return None;
    }
    msg[8..20].try_into().ok()
}

/// True if a Binding request to `server` is answered within `wait`.
pub fn stun_ping(server: SocketAddr, wait: Duration) -> bool {
    let Ok(sock) = UdpSocket::bind("127.0.0.1:0") else {
        return false;
    };
    let mut rng = Rng::from_os();
    let txid = rng.txid();
    let mut req = [0u8; BINDING_REQUEST_FP_LEN];
    let n = binding_request(&txid, true, &mut req);
    if sock.send_to(&req[..n], server).is_err() {
        return false;
    }
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if left.is_zero() || sock.set_read_timeout(Some(left)).is_err() {
            return false;
        }
        match sock.recv(&mut buf) {
            Ok(len) if binding_success_txid(&buf[..len]) == Some(txid) => return true,
            Ok(_) => continue,
            Err(_) => return false,
        }
    }
    false
}

// ---------------------------------------------------------------------------------
// Small utilities

/// splitmix64: fast, and random enough for transaction ids and start offsets.
pub struct Rng(u64);

impl Rng {
    /// Seeded from the kernel's random source (the clock if that fails).
    pub fn from_os() -> Rng {
        let mut seed = [0u8; 8];
        // SAFETY: getrandom(2) writes at most 8 bytes into our 8-byte buffer.
        let got = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
        if got != 8 {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            seed = (t ^ u64::from(std::process::id())).to_le_bytes();
        }
        Rng(u64::from_le_bytes(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn txid(&mut self) -> [u8; 12] {
        let mut id = [0u8; 12];
        id[..8].copy_from_slice(&self.next_u64().to_le_bytes());
        id[8..].copy_from_slice(&self.next_u64().to_le_bytes()[..4]);
        id
    }
}

/// The median of `values` (None when empty); NaNs sort last.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// Prints rows as a left-aligned table with a header line.
pub fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("  {}", parts.join("  ").trim_end());
    };
    line(header.to_vec());
    let rules: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(rules.iter().map(String::as_str).collect());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

// ---------------------------------------------------------------------------------
// Batched UDP I/O (recvmmsg/sendmmsg), IPv4 only: everything here is on 127.0.0.1.

/// Bytes per slot: any loopback datagram these benches send fits.
pub const SLOT: usize = 2048;

/// A set of datagram slots for recvmmsg/sendmmsg. Slot `i` holds `lens[i]` bytes at
/// the start of `slot(i)` and, for unconnected sockets, the peer address `addrs[i]`.
pub struct MsgBatch {
    bufs: Vec<u8>,
    pub lens: Vec<usize>,
    pub addrs: Vec<SocketAddrV4>,
    raw_addrs: Vec<libc::sockaddr_in>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl MsgBatch {
    pub fn new(slots: usize) -> MsgBatch {
        // SAFETY: sockaddr_in, iovec and mmsghdr are plain C structs for which all
        // zero bytes are a valid value.
        let zero_addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
        let zero_iov: libc::iovec = unsafe { std::mem::zeroed() };
        let zero_hdr: libc::mmsghdr = unsafe { std::mem::zeroed() };
        MsgBatch {
            // Not zeros: zeroed memory comes as untouched pages that would be faulted
            // in, and counted as growth, during the first measured load.
            bufs: vec![0xA5; slots * SLOT],
            lens: vec![0; slots],
            addrs: vec![SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0); slots],
            raw_addrs: vec![zero_addr; slots],
            iovs: vec![zero_iov; slots],
            hdrs: vec![zero_hdr; slots],
        }
    }

    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    pub fn slot(&mut self, i: usize) -> &mut [u8] {
        &mut self.bufs[i * SLOT..(i + 1) * SLOT]
    }

    /// Receives up to `max` datagrams from `fd` into slots `first..`, each written at
    /// `offset` inside its slot (room for a header to be prepended later); sets `lens`
    /// to `offset` + the datagram's size and `addrs` to its source. Returns how many.
    /// `flags` as for recvmmsg(2), e.g. `MSG_DONTWAIT` or `MSG_WAITFORONE`.
    pub fn recv(
        &mut self,
        fd: &impl AsRawFd,
        first: usize,
        max: usize,
        offset: usize,
        flags: libc::c_int,
    ) -> io::Result<usize> {
        let max = max.min(self.capacity() - first);
        for i in first..first + max {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * SLOT + offset..].as_mut_ptr().cast(),
                iov_len: SLOT - offset,
            };
            let hdr = &mut self.hdrs[i].msg_hdr;
            hdr.msg_name = (&raw mut self.raw_addrs[i]).cast();
            hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            hdr.msg_iov = &raw mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
        }
        // SAFETY: every header points into buffers owned by `self` that outlive the call,
        // with the lengths set above.
        let n = unsafe {
            libc::recvmmsg(
                fd.as_raw_fd(),
                self.hdrs[first..].as_mut_ptr(),
                max as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for i in first..first + n {
            self.lens[i] = offset + self.hdrs[i].msg_len as usize;
            let raw = &self.raw_addrs[i];
            self.addrs[i] = SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr)),
                u16::from_be(raw.sin_port),
            );
        }
        Ok(n)
    }

    /// Sends slots `range` on `fd`: bytes `offset..lens[i]` of each slot, to `addrs[i]`
    /// when `addressed`, else on the connected socket. Returns how many went out (the
    /// kernel may take fewer than asked; the rest are the caller's to retry or drop).
    pub fn send(
        &mut self,
        fd: &impl AsRawFd,
        range: std::ops::Range<usize>,
        offset: usize,
        addressed: bool,
    ) -> io::Result<usize> {
        if range.is_empty() {
            return Ok(0);
        }
        for i in range.clone() {
            self.iovs[i] = libc::iovec {
                iov_base: self.bufs[i * SLOT + offset..].as_mut_ptr().cast(),
                iov_len: self.lens[i].saturating_sub(offset),
            };
            let hdr = &mut self.hdrs[i].msg_hdr;
            if addressed {
                let a = self.addrs[i];
                self.raw_addrs[i] = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from(*a.ip()).to_be(),
                    },
                    sin_zero: [0; 8],
                };
                hdr.msg_name = (&raw mut self.raw_addrs[i]).cast();
                hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            } else {
                hdr.msg_name = std::ptr::null_mut();
                hdr.msg_namelen = 0;
            }
            hdr.msg_iov = &raw mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = std::ptr::null_mut();
            hdr.msg_controllen = 0;
            hdr.msg_flags = 0;
        }
        // SAFETY: as in `recv`: the headers point at live buffers owned by `self`.
        let n = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                self.hdrs[range.start..].as_mut_ptr(),
                range.len() as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

/// Sets a socket's receive and send buffers (best effort: capped at rmem_max/wmem_max).
pub fn set_buffers(sock: &UdpSocket, bytes: usize) {
    let s = socket2::SockRef::from(sock);
    let _ = s.set_recv_buffer_size(bytes);
    let _ = s.set_send_buffer_size(bytes);
}

// ---------------------------------------------------------------------------------
// epoll, level-triggered: a socket stays ready until drained, so a loop may take a
// bounded number of datagrams from each and come back for the rest.

pub struct Epoll {
    fd: std::os::fd::OwnedFd,
    events: Vec<libc::epoll_event>,
}

impl Epoll {
    /// An epoll set reporting up to `max_events` ready descriptors per wait.
    pub fn new(max_events: usize) -> io::Result<Epoll> {
        // SAFETY: epoll_create1 has no memory preconditions.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: epoll_event is a plain C struct; all zero bytes are a valid value.
        let zero = unsafe { std::mem::zeroed::<libc::epoll_event>() };
        Ok(Epoll {
            fd,
            events: vec![zero; max_events.max(1)],
        })
    }

    /// Watches `fd` for input; `token` comes back in the events.
    pub fn add(&self, fd: &impl AsRawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: libc::EPOLLIN as u32,
            u64: token,
        };
        // SAFETY: both descriptors are open; `ev` is a valid event for the call.
        let rc = unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &raw mut ev,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout_ms` (-1: no limit) and puts the ready tokens in `tokens`.
    pub fn wait(&mut self, tokens: &mut Vec<u64>, timeout_ms: i32) -> io::Result<()> {
        tokens.clear();
        // SAFETY: `events` has room for the count we pass.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as libc::c_int,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(e)
            };
        }
        // The struct is packed on x86-64: copy the field out rather than borrow it.
        tokens.extend(self.events[..n as usize].iter().map(|ev| ev.u64));
        Ok(())
    }
}
