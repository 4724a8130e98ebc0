//! STUN over TCP (and, with TLS in front, over TLS) on tokio, framed per RFC 8489 §6.2.2
//! and RFC 8656 §12.5: a STUN message carries its own length; a ChannelData message
//! carries its length and is padded to four bytes.

use crate::metrics::{Metrics, TransportCounters};
use crate::stun;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// A connection that sends nothing for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
const STUN_HEADER: usize = 20;
/// Room for the largest STUN message (a 16-bit length after the header) and its reply.
const BUF_SIZE: usize = STUN_HEADER + u16::MAX as usize + 1;

/// Why a connection ended early.
#[derive(Debug, PartialEq, Eq)]
enum Framing {
    /// The byte stream is not STUN or ChannelData: the framing is lost.
    Malformed,
}

/// Accepts connections on `listener` until the task is dropped; each connection holds a
/// permit of `limit`, and connections over the limit are closed at once.
pub async fn serve(
    listener: TcpListener,
    counters: TransportCounters,
    metrics: Arc<Metrics>,
    limit: Arc<Semaphore>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            metrics.tcp_refused.inc();
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let counters = counters.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            metrics.tcp_connections.inc();
            let _ = handle_connection(stream, peer, &counters).await;
            metrics.tcp_connections.dec();
            drop(permit);
        });
    }
}

/// Reads framed messages from one client and answers them in order.
pub async fn handle_connection<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    peer: SocketAddr,
    counters: &TransportCounters,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let len = match tokio::time::timeout(IDLE_TIMEOUT, read_frame(&mut stream, &mut buf)).await
        {
            Err(_) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(Err(Framing::Malformed))) => {
                counters.received.inc();
                counters.malformed.inc();
                return Ok(());
            }
            Ok(Ok(Ok(frame))) => frame,
        };
        counters.received.inc();
        let Some(len) = len else {
            // ChannelData: routed once TURN lands.
            counters.unrouted.inc();
            continue;
        };
        match stun::answer(&mut buf, len, peer) {
            stun::Verdict::Reply(n) => {
                stream.write_all(&buf[..n]).await?;
                counters.stun_answered.inc();
            }
            stun::Verdict::Indication => {}
            stun::Verdict::Unhandled => {
                counters.unhandled.inc();
            }
            stun::Verdict::Malformed => {
                counters.malformed.inc();
            }
        }
    }
}

/// Reads one frame into `buf`. `Ok(Ok(Some(len)))` is a STUN message of `len` bytes,
/// `Ok(Ok(None))` a ChannelData message (consumed), `Ok(Err(_))` a broken stream.
async fn read_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut [u8],
) -> std::io::Result<Result<Option<usize>, Framing>> {
    stream.read_exact(&mut buf[..4]).await?;
    let length = usize::from(u16::from_be_bytes([buf[2], buf[3]]));
    match buf[0] {
        0..=3 => {
            if length % 4 != 0 {
                return Ok(Err(Framing::Malformed));
            }
            let total = STUN_HEADER + length;
            stream.read_exact(&mut buf[4..total]).await?;
            Ok(Ok(Some(total)))
        }
        0x40..=0x7f => {
            let padded = length.div_ceil(4) * 4;
            stream.read_exact(&mut buf[4..4 + padded]).await?;
            Ok(Ok(None))
        }
        _ => Ok(Err(Framing::Malformed)),
    }
}
