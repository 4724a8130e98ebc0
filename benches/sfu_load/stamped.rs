//! A subscriber's UDP socket that notes when each RTP packet reached it.
//!
//! A webrtc-rs subscriber reads a packet only after its ICE, DTLS and SRTP tasks ran,
//! and on the generator's one core a hundred subscribers' tasks queue behind each
//! other: read times then measure the generator as much as the server. This socket,
//! handed to webrtc-rs as the subscriber's ICE socket (a `UDPMux` over one socket),
//! asks the kernel when each datagram arrived (`SIOCGSTAMPNS` after the read: on
//! loopback, the moment the server's send put it on the loopback device) and notes it
//! under the packet's SSRC and sequence number, which SRTP leaves in the clear; the
//! subscriber's track reader takes that time for the packet's latency.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use webrtc_util::Conn;

/// `SIOCGSTAMPNS` (`asm-generic/sockios.h`; the libc crate does not name it): the
/// kernel's receive time of the last datagram read, as a `timespec` of
/// `CLOCK_REALTIME`. The first call turns receive timestamps on for the socket.
const SIOCGSTAMPNS: libc::c_ulong = 0x8907;

/// Arrival times not yet taken by a reader; more than this and the notes are dropped
/// (packets the reader never takes: RTCP-like, or read before measuring began).
const MAX_NOTED: usize = 16_384;

/// Arrival times by (SSRC, sequence number), ns since the run's epoch.
#[derive(Debug)]
pub(super) struct Arrivals {
    noted: Mutex<HashMap<(u32, u16), u64>>,
    /// `CLOCK_REALTIME` at the epoch, ns.
    epoch_unix_ns: u64,
}

impl Arrivals {
    /// Arrivals timed against `epoch` (the clock the senders stamp with).
    pub(super) fn new(epoch: Instant) -> Arc<Arrivals> {
        Arc::new(Arrivals {
            noted: Mutex::new(HashMap::new()),
            epoch_unix_ns: epoch_unix_ns(epoch),
        })
    }

    /// When the RTP packet `ssrc`/`seq` arrived, once.
    pub(super) fn take(&self, ssrc: u32, seq: u16) -> Option<u64> {
        self.noted.lock().ok()?.remove(&(ssrc, seq))
    }

    fn note(&self, datagram: &[u8], unix_ns: u64) {
        let Some(key) = rtp_key(datagram) else {
            return;
        };
        if let Ok(mut noted) = self.noted.lock() {
            if noted.len() >= MAX_NOTED {
                noted.clear();
            }
            noted.insert(key, unix_ns.saturating_sub(self.epoch_unix_ns));
        }
    }
}

/// `CLOCK_REALTIME` at `epoch`, ns since 1970: a kernel receive time minus this is on
/// the senders' clock (ns since the epoch).
pub(super) fn epoch_unix_ns(epoch: Instant) -> u64 {
    let unix_now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    unix_now.saturating_sub(epoch.elapsed().as_nanos() as u64)
}

/// SSRC and sequence number of an RTP or SRTP packet (version 2, not RTCP's payload
/// types 192–223); `None` for STUN, DTLS and RTCP.
pub(super) fn rtp_key(d: &[u8]) -> Option<(u32, u16)> {
    if d.len() < 12 || d[0] >> 6 != 2 || (192..=223).contains(&d[1]) {
        return None;
    }
    let seq = u16::from_be_bytes([d[2], d[3]]);
    let ssrc = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
    Some((ssrc, seq))
}

/// The kernel's receive time of the last datagram read from `sock`, ns since 1970
/// (`None` before the first; the first call turns the socket's timestamps on).
pub(super) fn last_arrival(sock: &impl AsRawFd) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ioctl on a socket we own, with a pointer to a live timespec, which is
    // what SIOCGSTAMPNS writes.
    let r = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGSTAMPNS, &mut ts) };
    (r == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// One subscriber's ICE socket, noting arrivals in `arrivals`.
pub(super) struct StampedSocket {
    sock: tokio::net::UdpSocket,
    arrivals: Arc<Arrivals>,
}

impl StampedSocket {
    /// A socket on `ip` (an ephemeral port).
    pub(super) async fn bind(ip: std::net::IpAddr, arrivals: Arc<Arrivals>) -> StampedSocket {
        let sock = tokio::net::UdpSocket::bind((ip, 0))
            .await
            .expect("bind a subscriber socket");
        // Turns the socket's receive timestamps on before the first packet.
        let _ = last_arrival(&sock);
        StampedSocket { sock, arrivals }
    }
}

#[async_trait::async_trait]
impl Conn for StampedSocket {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(self.sock.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        loop {
            self.sock.readable().await?;
            match self.sock.try_recv_from(buf) {
                Ok((n, from)) => {
                    // This task is the socket's only reader: the last datagram is ours.
                    if let Some(at) = last_arrival(&self.sock) {
                        self.arrivals.note(&buf[..n], at);
                    }
                    return Ok((n, from));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.sock.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        Ok(self.sock.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.sock.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc_util::Result<()> {
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}
