//! Whether every data-plane worker still runs.
//!
//! A worker ends only at shutdown. If one ends otherwise (an error from its event loop,
//! or a panic: a bug of ours, since every call into code fed with network bytes that
//! can panic is guarded per session), its sockets, relays and media sessions are gone
//! while the rest of the process would live on and look healthy. The node does not
//! limp on like that: `/api/health` answers 503 from that moment, and the control plane
//! stops the process with a failure status, so that systemd (`Restart=on-failure`)
//! starts it again with every socket.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::Notify;

/// How many workers have ended before shutdown, and a wake-up for whoever waits for
/// the first.
#[derive(Debug, Default)]
pub struct Liveness {
    gone: AtomicUsize,
    changed: Notify,
}

impl Liveness {
    /// Whether no worker has ended before shutdown.
    pub(crate) fn all_alive(&self) -> bool {
        self.gone.load(Ordering::SeqCst) == 0
    }

    fn worker_gone(&self) {
        self.gone.fetch_add(1, Ordering::SeqCst);
        // notify_one keeps a permit when nobody waits yet: the wait below sees it.
        self.changed.notify_one();
    }

    /// Returns once a worker has ended before shutdown.
    pub(crate) async fn wait_gone(&self) {
        while self.all_alive() {
            self.changed.notified().await;
        }
    }
}

/// Held by a worker thread for its whole life: when it is dropped, by a return or by a
/// panic unwinding the thread, before `shutdown` was set, the worker is marked gone.
pub(crate) struct WorkerGuard {
    pub(crate) id: usize,
    pub(crate) liveness: Arc<Liveness>,
    pub(crate) shutdown: Arc<AtomicBool>,
}

impl Drop for WorkerGuard {
    fn drop(&mut self) {
        if self.shutdown.load(Ordering::SeqCst) {
            return;
        }
        tracing::error!(
            "data-plane worker {} ended before shutdown: the node stops so that it is restarted",
            self.id
        );
        self.liveness.worker_gone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard(liveness: &Arc<Liveness>, shutdown: &Arc<AtomicBool>) -> WorkerGuard {
        WorkerGuard {
            id: 0,
            liveness: liveness.clone(),
            shutdown: shutdown.clone(),
        }
    }

    #[test]
    fn a_worker_that_panics_is_gone() {
        let liveness = Arc::new(Liveness::default());
        let shutdown = Arc::new(AtomicBool::new(false));
        let g = guard(&liveness, &shutdown);
        let thread = std::thread::spawn(move || {
            let _g = g;
            panic!("a bug in a worker");
        });
        assert!(thread.join().is_err());
        assert!(!liveness.all_alive());
        // The control plane's wait ends (the permit was kept for it).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            tokio::time::timeout(std::time::Duration::from_secs(5), liveness.wait_gone())
                .await
                .expect("wait_gone returns");
        });
    }

    #[test]
    fn workers_ending_at_shutdown_are_not_gone() {
        let liveness = Arc::new(Liveness::default());
        let shutdown = Arc::new(AtomicBool::new(false));
        let g = guard(&liveness, &shutdown);
        shutdown.store(true, Ordering::SeqCst);
        std::thread::spawn(move || drop(g)).join().expect("join");
        assert!(liveness.all_alive());
    }
}
