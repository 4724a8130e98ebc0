//! The I/O layer: sockets, batched system calls, the first-byte demux, and the
//! data-plane workers that feed packets to the sans-IO protocol cores.

// recvmmsg/sendmmsg and their control messages.
#[allow(unsafe_code)]
pub mod batch;
pub(crate) mod client;
pub(crate) mod demux;
pub mod handoff;
pub mod liveness;
pub mod outbox;
// Reading into a buffer tokio sees as uninitialised.
#[allow(unsafe_code)]
pub(crate) mod tcp;
pub mod tls;
// Socket options socket2 does not wrap, and the interface list (getifaddrs).
#[allow(unsafe_code)]
pub(crate) mod udp;
pub(crate) mod worker;
