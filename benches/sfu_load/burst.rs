//! A publisher's UDP socket that sends each 5 ms tick's RTP as one burst.
//!
//! A browser's pacer releases a tick's packets to its network thread, which sends them
//! back to back: they reach the server microseconds apart. A webrtc-rs publisher
//! encrypts and sends each packet on its own in its task, and on the generator's one
//! core, shared with the subscribers' tasks, a tick's few packets then leave spread
//! over hundreds of microseconds: the server wakes for nearly every one, where the bare
//! relay's publishers (plain `send_to` in a loop) wake it once per tick. This socket,
//! handed to webrtc-rs as the publisher's ICE socket (a `UDPMux` over one socket),
//! holds SRTP packets until [`BurstSocket::flush`] at the end of the tick, so that the
//! servers compared are fed alike. STUN, DTLS and RTCP go out at once.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use webrtc_util::Conn;

use super::stamped::rtp_key;

/// One publisher's ICE socket; clones share it.
#[derive(Clone)]
pub(super) struct BurstSocket {
    inner: Arc<Inner>,
}

struct Inner {
    sock: tokio::net::UdpSocket,
    /// SRTP packets written since the last flush, with where they go.
    held: Mutex<Vec<(Vec<u8>, SocketAddr)>>,
}

impl BurstSocket {
    /// A socket on `ip` (an ephemeral port).
    pub(super) async fn bind(ip: std::net::IpAddr) -> BurstSocket {
        let sock = tokio::net::UdpSocket::bind((ip, 0))
            .await
            .expect("bind a publisher socket");
        BurstSocket {
            inner: Arc::new(Inner {
                sock,
                held: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Sends what was held, back to back.
    pub(super) async fn flush(&self) {
        let held = match self.inner.held.lock() {
            Ok(mut held) => std::mem::take(&mut *held),
            Err(_) => return,
        };
        for (datagram, to) in held {
            // Lost, as a full socket buffer would lose it.
            let _ = self.inner.sock.send_to(&datagram, to).await;
        }
    }
}

#[async_trait::async_trait]
impl Conn for BurstSocket {
    async fn connect(&self, addr: SocketAddr) -> webrtc_util::Result<()> {
        Ok(self.inner.sock.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc_util::Result<usize> {
        Ok(self.inner.sock.recv(buf).await?)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc_util::Result<(usize, SocketAddr)> {
        Ok(self.inner.sock.recv_from(buf).await?)
    }

    async fn send(&self, buf: &[u8]) -> webrtc_util::Result<usize> {
        Ok(self.inner.sock.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc_util::Result<usize> {
        if rtp_key(buf).is_some()
            && let Ok(mut held) = self.inner.held.lock()
        {
            held.push((buf.to_vec(), target));
            return Ok(buf.len());
        }
        Ok(self.inner.sock.send_to(buf, target).await?)
    }

    fn local_addr(&self) -> webrtc_util::Result<SocketAddr> {
        Ok(self.inner.sock.local_addr()?)
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
