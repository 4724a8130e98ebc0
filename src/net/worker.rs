//! A data-plane worker: one thread with its own `mio` event loop and its own
//! `SO_REUSEPORT` socket per listen address. Workers share nothing on the hot path but
//! counters, which they add to once per batch.

use crate::metrics::TransportCounters;
use crate::net::batch::{BATCH, Batch};
use crate::net::demux::{self, Class};
use crate::stun;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token, Waker};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

const WAKER: Token = Token(usize::MAX);
/// Batches taken from one socket before the others get a turn.
const BATCHES_PER_TURN: usize = 16;

/// A running worker: wake it to make it look at the shutdown flag.
pub struct WorkerHandle {
    pub waker: Arc<Waker>,
    pub thread: JoinHandle<()>,
}

/// Starts a worker thread serving `sockets`. It runs until `shutdown` is set and the
/// waker is woken.
pub fn spawn(
    id: usize,
    sockets: Vec<std::net::UdpSocket>,
    counters: TransportCounters,
    shutdown: Arc<AtomicBool>,
) -> io::Result<WorkerHandle> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
    let mut socks = Vec::with_capacity(sockets.len());
    for (i, s) in sockets.into_iter().enumerate() {
        let mut s = UdpSocket::from_std(s);
        poll.registry()
            .register(&mut s, Token(i), Interest::READABLE)?;
        socks.push(s);
    }
    let thread = std::thread::Builder::new()
        .name(format!("confnode-worker-{id}"))
        .spawn(move || {
            let mut worker = Worker {
                poll,
                sockets: socks,
                counters,
                batch: Batch::new(),
            };
            if let Err(e) = worker.run(&shutdown) {
                tracing::error!("data-plane worker {id} stopped: {e}");
            }
        })?;
    Ok(WorkerHandle { waker, thread })
}

struct Worker {
    poll: Poll,
    sockets: Vec<UdpSocket>,
    counters: TransportCounters,
    batch: Batch,
}

/// What one batch came to, added to the shared counters once.
#[derive(Default)]
struct Tally {
    received: u64,
    answered: u64,
    malformed: u64,
    unrouted: u64,
    unhandled: u64,
    send_failed: u64,
}

impl Worker {
    fn run(&mut self, shutdown: &AtomicBool) -> io::Result<()> {
        let mut events = Events::with_capacity(64);
        // Sockets that still had datagrams queued when their turn ended.
        let mut pending = vec![false; self.sockets.len()];
        loop {
            let busy = pending.iter().any(|&p| p);
            let timeout = if busy { Some(Duration::ZERO) } else { None };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in events.iter() {
                match event.token() {
                    WAKER => {}
                    Token(i) if i < pending.len() => pending[i] = true,
                    Token(_) => {}
                }
            }
            if shutdown.load(Ordering::Relaxed) {
                return Ok(());
            }
            for (i, p) in pending.iter_mut().enumerate() {
                if *p {
                    *p = self.serve(i)?;
                }
            }
        }
    }

    /// Serves up to `BATCHES_PER_TURN` batches from socket `i`. Returns whether more
    /// datagrams may be waiting.
    fn serve(&mut self, i: usize) -> io::Result<bool> {
        let fd = self.sockets[i].as_raw_fd();
        let mut tally = Tally::default();
        let mut more = true;
        for _ in 0..BATCHES_PER_TURN {
            let n = match self.batch.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    more = false;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // An ICMP error queued on the socket (a client went away): not fatal.
                Err(e) if is_transient(&e) => continue,
                Err(e) => return Err(e),
            };
            tally.received += n as u64;
            for j in 0..n {
                self.handle(j, &mut tally);
            }
            let sent = self.batch.send(fd);
            tally.send_failed += sent.failed as u64;
            if n < BATCH {
                more = false;
                break;
            }
        }
        self.count(&tally);
        Ok(more)
    }

    /// Classifies datagram `j` of the batch and lets the right core answer it.
    fn handle(&mut self, j: usize, tally: &mut Tally) {
        let Some((buf, len, src)) = self.batch.packet_mut(j) else {
            tally.malformed += 1;
            return;
        };
        match demux::classify(&buf[..len]) {
            Class::Stun => match stun::answer(buf, len, src) {
                stun::Verdict::Reply(n) => {
                    tally.answered += 1;
                    self.batch.reply(j, n, src);
                }
                stun::Verdict::Indication => {}
                stun::Verdict::Unhandled => tally.unhandled += 1,
                stun::Verdict::Malformed => tally.malformed += 1,
            },
            // Routed once TURN and the SFU land; until then dropped and counted.
            Class::ChannelData | Class::Dtls | Class::Rtp => tally.unrouted += 1,
            Class::Unknown => tally.malformed += 1,
        }
    }

    fn count(&self, t: &Tally) {
        let c = &self.counters;
        for (counter, n) in [
            (&c.received, t.received),
            (&c.stun_answered, t.answered),
            (&c.malformed, t.malformed),
            (&c.unrouted, t.unrouted),
            (&c.unhandled, t.unhandled),
            (&c.send_failed, t.send_failed),
        ] {
            if n > 0 {
                counter.inc_by(n);
            }
        }
    }
}

/// Errors a UDP socket reports for an earlier datagram (ICMP unreachable and the like),
/// which say nothing about the socket itself.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH | libc::ENOBUFS)
    )
}
