//! The I/O layer: sockets, batched system calls, the first-byte demux, and the
//! data-plane workers that feed packets to the sans-IO protocol cores.

pub mod batch;
pub mod client;
pub mod demux;
pub mod handoff;
pub mod liveness;
pub mod outbox;
pub mod tcp;
pub mod tls;
pub mod udp;
pub mod worker;
