//! The HTTP accept loop: hyper's HTTP/1 connections, bounded so that idle or trickling
//! clients cannot hold the node's file descriptors (which relay sockets need too) or its
//! memory.
//!
//! - A request head must arrive whole within [`HEADER_TIMEOUT`]; the same clock runs
//!   while a kept-alive connection waits for its next request, so idle connections
//!   close after it too. Response bodies (event streams) are not limited by it.
//! - A request head larger than [`MAX_HEAD`] closes the connection.
//! - Connections in total (`http.max_connections`) and per client address
//!   (`http.max_connections_per_ip`; an IPv6 /64 counts as one) are capped; one over a
//!   cap is closed at once and counted (`confnode_http_refused_total`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower_service::Service;

use crate::metrics::Metrics;
use crate::net::client::client_prefix;

/// The longest a client may take to send a request head, or to start its next
/// request on a kept-alive connection.
pub(crate) const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest request head (request line and headers) read.
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// The caps of [`serve`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConnectionLimits {
    pub(crate) total: usize,
    pub(crate) per_ip: usize,
}

/// Serves `app` on `listener` until the task is dropped.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
) {
    let mut make: IntoMakeServiceWithConnectInfo<Router, SocketAddr> =
        app.into_make_service_with_connect_info::<SocketAddr>();
    let open = Arc::new(Open::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors, most likely: let some close first.
                tracing::warn!("HTTP accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = Open::admit(&open, peer.ip(), limits) else {
            metrics.http_refused.inc();
            drop(stream);
            continue;
        };
        let service = match make.call(peer).await {
            Ok(s) => s,
            Err(never) => match never {},
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            metrics.http_connections.inc();
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(MAX_HEAD)
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
            // A client that goes away or times out ends here; nothing to report.
            let _ = connection.await;
            metrics.http_connections.dec();
        });
    }
}

/// Connections open now, in total and per client.
#[derive(Default)]
struct Open {
    counts: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

impl Open {
    /// A slot for a connection from `ip`, or `None` over a cap.
    fn admit(open: &Arc<Open>, ip: IpAddr, limits: ConnectionLimits) -> Option<Slot> {
        let key = client_prefix(ip);
        let mut counts = open.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, per_ip) = &mut *counts;
        let mine = per_ip.get(&key).copied().unwrap_or(0);
        if *total >= limits.total || mine >= limits.per_ip {
            return None;
        }
        *total += 1;
        per_ip.insert(key, mine + 1);
        Some(Slot {
            open: open.clone(),
            key,
        })
    }
}

/// One admitted connection; frees its place when dropped.
struct Slot {
    open: Arc<Open>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self
            .open
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (total, per_ip) = &mut *counts;
        *total = total.saturating_sub(1);
        if let Some(n) = per_ip.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_in_total_and_per_client_and_slots_free_their_place() {
        let open = Arc::new(Open::default());
        let limits = ConnectionLimits {
            total: 3,
            per_ip: 2,
        };
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let b_same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
        let a1 = Open::admit(&open, a, limits).unwrap();
        let _a2 = Open::admit(&open, a, limits).unwrap();
        assert!(Open::admit(&open, a, limits).is_none(), "per address");
        let _b1 = Open::admit(&open, b, limits).unwrap();
        assert!(Open::admit(&open, b_same_64, limits).is_none(), "in total");
        drop(a1);
        assert!(Open::admit(&open, b_same_64, limits).is_some());
    }
}
